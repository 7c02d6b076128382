"""Manifest parsing and input listing plans (pure functions)."""

import pytest

from pipeline.manifest import describe_input, normalize, parse_manifest_text, relative_to, resolve_image

ROOT = "/data/in"


def rows(text, kind="csv"):
    return list(parse_manifest_text(text, ROOT, kind))


def test_csv_with_bom_crlf_blank_lines_and_extra_columns():
    text = "\ufeffid,image,payload,comment\r\n1,a.jpg,00ff,x\r\n\r\n2,sub/b.png,dec:12,y\r\n"
    parsed = rows(text)
    assert [(r.line, r.path, r.payload, r.error) for r in parsed] == [
        (2, "/data/in/a.jpg", "00ff", None),
        (4, "/data/in/sub/b.png", "dec:12", None),
    ]


def test_csv_header_must_name_image_and_payload():
    with pytest.raises(ValueError, match="image,payload"):
        rows("file,bits\na.jpg,00\n")


def test_rows_escaping_input_are_errors_absolute_and_uris_are_allowed():
    parsed = rows("image,payload\n../secret.jpg,00\n/abs/x.jpg,01\ngs://b/y.jpg,02\nok/../z.jpg,03\n")
    assert parsed[0].error_code == "bad_path" and "leaves the --input folder" in parsed[0].error
    assert parsed[1].path == "/abs/x.jpg" and parsed[1].error is None
    assert parsed[2].path == "gs://b/y.jpg"
    assert parsed[3].path == "/data/in/z.jpg"


def test_missing_payload_and_short_rows_are_row_errors():
    parsed = rows("image,payload\na.jpg,\nb.jpg\n")
    assert [r.error_code for r in parsed] == ["bad_payload", "bad_payload"]


def test_jsonl_rows_and_bad_lines():
    text = '{"image": "a.jpg", "payload": "0a"}\n\nnot json\n[1, 2]\n{"image": 5, "payload": "00"}\n'
    parsed = rows(text, "jsonl")
    assert parsed[0].path == "/data/in/a.jpg" and parsed[0].payload == "0a"
    assert [r.error_code for r in parsed[1:]] == ["bad_manifest_row"] * 3
    assert [r.line for r in parsed] == [1, 3, 4, 5]


def test_input_plans():
    assert describe_input("/d", is_dir=True, is_file=False).pattern == "/d/**"
    assert describe_input("/d/x.jpg", is_dir=False, is_file=True).root == "/d"
    glob = describe_input("gs://b/in/*/x*.jpg", is_dir=False, is_file=False)
    assert glob.pattern == "gs://b/in/*/x*.jpg" and glob.root == "gs://b/in"
    prefix = describe_input("gs://b/in/day1", is_dir=False, is_file=False)
    assert prefix.pattern == "gs://b/in/day1*" and prefix.root == "gs://b/in"


def test_relative_and_normalize():
    assert relative_to("gs://b/in", "gs://b/in/x/y.jpg") == "x/y.jpg"
    assert relative_to("/a/b", "/a/bc/y.jpg") is None
    assert normalize("gs://b//in/./x/../y.jpg") == "gs://b/in/y.jpg"
    assert resolve_image(ROOT, "  ")[1] == "empty image path"


# -- manifests read in blocks, and globs of shards --------------------------------------------

import gzip  # noqa: E402
import random  # noqa: E402

from pipeline.manifest import (check_manifests, plan_shards, read_block_rows, scan_block,  # noqa: E402
                               shard_blocks)
from pipeline.options import RunConfig  # noqa: E402
from pipeline.planning import group_key, key_path, plan_jobs  # noqa: E402

# BOM, CRLF, blank lines (also before the header), quoted fields with commas, bad rows, a
# non-ASCII name, a JSON-looking field: everything but a line break inside quotes.
CSV_TEXT = ("\ufeff\r\n\r\nid,image,payload,note\r\n" + "".join(
    f'{i},{"sub/" if i % 3 else ""}ph\u00f6to_{i}.jpg,{i:x},"note, with ""quotes"" {i}"\r\n' for i in range(40))
    + "\r\n40,../out.jpg,1,x\r\n41,,2,x\r\n42,x.jpg,,x\r\n43,short.jpg\r\n")
JSONL_TEXT = "".join(f'{{"image": "j{i}.jpg", "payload": "{i:x}"}}\n' for i in range(30)) + \
    '\nnot json\n[1]\n{"image": "k.jpg", "payload": true}\n{"image": "last.jpg", "payload": "7"}'


def read_in_blocks(path, block_bytes: int) -> list:
    """Every row of the shard at `path`, read block by block as the job reads it (both passes)."""
    blocks = shard_blocks(str(path), path.stat().st_size, block_bytes)
    plans = plan_shards([scan_block(block) for block in random.Random(block_bytes).sample(blocks, len(blocks))])
    return [row for block in blocks for row in read_block_rows(block, plans[str(path)], ROOT)]


@pytest.mark.parametrize("name,text", [("m.csv", CSV_TEXT), ("m.jsonl", JSONL_TEXT)])
def test_blocks_of_any_size_give_the_rows_and_line_numbers_of_the_whole_text(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    whole = list(parse_manifest_text(text, ROOT, "csv" if name.endswith(".csv") else "jsonl", shard=str(path)))
    assert len(whole) > 30 and any(r.error for r in whole) and whole[0].line in (4, 1)
    for block_bytes in (1, 2, 3, 5, 17, 64, 1000, 1 << 20):
        assert read_in_blocks(path, block_bytes) == whole, block_bytes


def test_csv_with_a_quoted_line_break_is_read_whole_with_csv_line_numbers(tmp_path):
    text = 'image,payload,note\na.jpg,01,"one\nnote, two lines"\nb.jpg,02,plain\n"c.jpg",03,"x"\n'
    path = tmp_path / "m.csv"
    path.write_text(text)
    expected = [("a.jpg", 3), ("b.jpg", 4), ("c.jpg", 5)]  # a record's line is its last line
    assert [(r.image, r.line) for r in parse_manifest_text(text, ROOT, "csv")] == expected
    for block_bytes in (4, 16, 1 << 20):
        blocks = shard_blocks(str(path), path.stat().st_size, block_bytes)
        plan = plan_shards([scan_block(b) for b in blocks])[str(path)]
        assert plan.sequential
        rows = [r for b in blocks for r in read_block_rows(b, plan, ROOT)]
        assert [(r.image, r.line, r.error) for r in rows] == [(i, n, None) for i, n in expected]


def test_line_that_is_not_utf8_is_a_row_error_and_compressed_shards_are_one_block(tmp_path):
    plain = tmp_path / "m.jsonl"
    plain.write_bytes(b'{"image": "a.jpg", "payload": "1"}\n\xff\xfe\n{"image": "b.jpg", "payload": "2"}\n')
    rows = read_in_blocks(plain, 8)
    assert [(r.line, r.error_code) for r in rows] == [(1, None), (2, "bad_manifest_row"), (3, None)]
    assert rows[1].error == "line is not UTF-8"
    packed = tmp_path / "m.csv.gz"
    packed.write_bytes(gzip.compress(CSV_TEXT.encode("utf-8")))
    assert len(shard_blocks(str(packed), packed.stat().st_size, 8)) == 1
    assert read_in_blocks(packed, 8) == list(parse_manifest_text(CSV_TEXT, ROOT, "csv", shard=str(packed)))


def test_duplicates_across_shards_first_in_shard_path_then_line_order_wins():
    cfg = RunConfig(input=ROOT, assignments="m/part-*.csv")
    shards = ("m/part-00001.csv", "m/part-00002.csv", "m/part-00010.csv")
    entries = [(2, 3, "cc"), (1, 9, "bb"), (1, 2, "b0"), (0, 50, "aa")]
    for order in range(5):
        shuffled = random.Random(order).sample(entries, len(entries))
        job, *skipped = plan_jobs("x.jpg", shuffled, cfg, ROOT, shards)
        assert (job.path, job.payload, job.line) == ("/data/in/x.jpg", "aa", 50)
        assert [(s["line"], s["error_code"]) for s in skipped] == [(2, "duplicate_row"), (9, "duplicate_row"),
                                                                   (3, "duplicate_row")]
        assert "m/part-00002.csv line 2 repeats this image; m/part-00001.csv line 50 is used" in skipped[0]["error"]


def test_group_keys_are_paths_below_the_root_when_they_lead_back():
    assert group_key(ROOT, "/data/in/a/b.jpg") == "a/b.jpg" and key_path(ROOT, "a/b.jpg") == "/data/in/a/b.jpg"
    for path in ("/elsewhere/x.jpg", "gs://b/in/x.jpg", "/data/in//x.jpg", "/data/in"):
        assert key_path(ROOT, group_key(ROOT, path)) == path
    assert group_key("gs://b/in", "gs://b/in/x.jpg") == "x.jpg"


def test_check_manifests_matches_globs_and_checks_every_shard(tmp_path):
    (tmp_path / "part-2.csv").write_text("image,payload\nb.jpg,2\n")
    (tmp_path / "part-1.jsonl").write_text('{"image": "a.jpg", "payload": "1"}\n')
    assert check_manifests(str(tmp_path / "part-*")) == [str(tmp_path / "part-1.jsonl"), str(tmp_path / "part-2.csv")]
    assert check_manifests(str(tmp_path / "part-2.csv")) == [str(tmp_path / "part-2.csv")]
    with pytest.raises(ValueError, match="matches no file"):
        check_manifests(str(tmp_path / "nothing-*.csv"))
    with pytest.raises(ValueError, match="does not exist"):
        check_manifests(str(tmp_path / "nothing.csv"))
    (tmp_path / "part-3.csv").write_text("path,value\nc.jpg,3\n")
    with pytest.raises(ValueError, match="image,payload"):
        check_manifests(str(tmp_path / "part-*"))


def test_read_manifest_transform_reads_a_glob_of_shards_in_blocks(tmp_path):
    """A real Beam pipeline over three shards (CSV, JSON Lines, CSV with a quoted line break),
    in blocks of 16 bytes: every row once, as the whole-text parse gives it; bad rows as error
    records naming their shard and line."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.planning import ReadManifest

    texts = {"part-0.csv": CSV_TEXT, "part-1.jsonl": JSONL_TEXT,
             "part-2.csv": 'image,payload,note\nq.jpg,1,"two\nlines"\nphoto_1.jpg,2,x\n'}
    expected_rows, expected_records = [], []
    for ordinal, (name, text) in enumerate(sorted(texts.items())):
        (tmp_path / name).write_bytes(text.encode("utf-8"))
        shard = str(tmp_path / name)
        for row in parse_manifest_text(text, ROOT, "jsonl" if name.endswith(".jsonl") else "csv", shard=shard):
            if row.error:
                expected_records.append((row.line, row.error_code, f"manifest {shard} line {row.line}: {row.error}"))
            else:
                expected_rows.append((group_key(ROOT, row.path), (ordinal, row.line, row.payload)))
    assert len(expected_rows) > 60 and len(expected_records) > 5
    with beam.Pipeline() as pipeline:
        read = pipeline | ReadManifest(str(tmp_path / "part-*"), ROOT, "embed", block_bytes=16)
        assert_that(read["rows"], equal_to(expected_rows), label="rows")
        assert_that(read["records"] | beam.Map(lambda r: (r["line"], r["error_code"], r["error"])),
                    equal_to(expected_records), label="records")
        assert_that(read["shards"], equal_to([tuple(str(tmp_path / n) for n in sorted(texts))]), label="shards")


def test_blocks_of_a_gcs_shard_are_read_by_seeking(gcs_bucket):
    from apache_beam.io.filesystems import FileSystems

    bucket = gcs_bucket.name if hasattr(gcs_bucket, "name") else gcs_bucket
    path = f"gs://{bucket}/manifests/part-0.csv"
    with FileSystems.create(path) as f:
        f.write(CSV_TEXT.encode("utf-8"))
    [shard] = check_manifests(f"gs://{bucket}/manifests/part-*.csv")
    size = FileSystems.match([shard])[0].metadata_list[0].size_in_bytes
    blocks = shard_blocks(shard, size, 37)
    assert len(blocks) > 20
    plans = plan_shards([scan_block(block) for block in blocks])
    rows = [row for block in blocks for row in read_block_rows(block, plans[shard], ROOT)]
    assert rows == list(parse_manifest_text(CSV_TEXT, ROOT, "csv", shard=shard))


def test_a_failed_planning_group_gives_a_record_per_row_under_its_full_path():
    from pipeline.graph import dead_letter_records

    group = ("sub/x.jpg", [None, (1, 7, "0b"), (0, 3, "0a")])
    records = dead_letter_records((group, (RuntimeError, "RuntimeError('boom')", [])), "plan", "embed", ROOT)
    assert [(r["image"], r["line"], r["payload"], r["status"], r["error_code"]) for r in records] == [
        ("/data/in/sub/x.jpg", 3, "0a", "error", "internal_error"),
        ("/data/in/sub/x.jpg", 7, "0b", "error", "internal_error")]
    [listed_only] = dead_letter_records((("y.jpg", [None]), (RuntimeError, "x", [])), "plan", "embed", ROOT)
    assert listed_only["image"] == "/data/in/y.jpg" and listed_only["line"] is None


def test_a_list_of_inputs_is_listed_pattern_by_pattern_from_their_common_root():
    from pipeline.manifest import combine_inputs, split_inputs

    assert split_inputs(" gs://b/in/a/, gs://b/in/b/*.jpg ,") == ["gs://b/in/a/", "gs://b/in/b/*.jpg"]
    days = [describe_input("gs://b/in/2026-11-01/", is_dir=True, is_file=False),
            describe_input("gs://b/in/2026-11-02/*.jpg", is_dir=False, is_file=False),
            describe_input("gs://b/in/extra/x.png", is_dir=False, is_file=True)]
    spec = combine_inputs(days)
    assert spec.root == "gs://b/in"
    assert spec.patterns == ("gs://b/in/2026-11-01/**", "gs://b/in/2026-11-02/*.jpg", "gs://b/in/extra/x.png")
    assert spec.files == ("gs://b/in/extra/x.png",)
    assert combine_inputs(days[:1]) == days[0] and days[0].patterns == ("gs://b/in/2026-11-01/**",)
    local = combine_inputs([describe_input("/d/a", True, False), describe_input("/e/b", True, False)])
    assert local.root == "/" and local.patterns == ("/d/a/**", "/e/b/**")
    with pytest.raises(ValueError, match="one bucket"):
        combine_inputs([describe_input("gs://b1/in/", True, False), describe_input("gs://b2/in/", True, False)])
    with pytest.raises(ValueError, match="one filesystem"):
        combine_inputs([describe_input("gs://b/in/", True, False), describe_input("/d/a", True, False)])


@pytest.mark.parametrize("root", ["in", "/data/in", "/data/in/", "./in", ".", "/", "gs://bucket/in", "gs://bucket/a/../in"])
@pytest.mark.parametrize("key", ["a.jpg", "cam/2026/IMG_1.jpg", "a/./b.jpg", "a/../b.jpg", "../b.jpg", "a//b.jpg",
                                 "a/b/", ".", "..", ".hidden/x.jpg", "a..b/c.jpg"])
def test_key_path_is_the_normalised_join(root, key):
    """`key_path`'s shortcut for plain keys gives what normalising the joined path gives."""
    from pipeline.manifest import normalize
    from pipeline.planning import key_path
    assert key_path(root, key) == normalize(root.rstrip("/") + "/" + key)


@pytest.mark.parametrize("image", ["a.jpg", "cam/IMG_1.jpg", "a/./b.jpg", "a/../b.jpg", "../b.jpg", "a//b.jpg",
                                   "a/b/", "/abs/x.jpg", "gs://b/x.jpg", ".hidden/x.jpg", " a.jpg "])
@pytest.mark.parametrize("root", ["in", "/data/in/", ".", "gs://bucket/in"])
def test_resolve_image_shortcut_matches_the_normalised_join(root, image):
    """A plain relative image path is joined without normalising; the result is the same."""
    from pipeline.manifest import is_plain, normalize, resolve_image
    path, error = resolve_image(root, image)
    if is_plain(image.strip()):
        assert error is None and path == normalize(root.rstrip("/") + "/" + image.strip())
    assert not is_plain("/abs/x.jpg") and not is_plain("gs://b/x.jpg") and not is_plain("a/")


@pytest.mark.parametrize("image, expected", [("a.jpg", "a.jpg"), ("./a.jpg", "a.jpg"), ("sub/../a.jpg", "a.jpg"),
                                             ("sub/a.jpg", "sub/a.jpg"), ("../a.jpg", None), ("a/../../b.jpg", None)])
def test_resolve_image_below_the_current_folder(image, expected):
    """A root of `.` (an `--input` that names a file in the current folder): relative images that
    stay below it resolve, plain or not; those that climb out are refused."""
    from pipeline.manifest import resolve_image
    path, error = resolve_image(".", image)
    assert path == expected and (error is None) == (expected is not None), (path, error)
