"""End-to-end runs of `python -m pipeline.run` on the DirectRunner: local folders of mixed
sizes and formats, manifests, verification after attacks, extract mode, and gs:// against a
real local GCS server. Uses the bundled model."""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest
from PIL import Image

from filigree.resources import bundled_samples_dir
from pipeline.run import main
from reports import read_records, read_summary

SAMPLES = sorted(glob.glob(os.path.join(bundled_samples_dir(), "*.*")))
PHOTOS = [p for p in SAMPLES if p.lower().endswith((".jpg", ".png"))]


def photo_crop(path: str, width: int, height: int) -> Image.Image:
    image = Image.open(path).convert("RGB")
    return image.resize((width, height), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Photos of mixed sizes and formats, in nested folders."""
    root = tmp_path_factory.mktemp("in")
    (root / "nested").mkdir()
    photo_crop(PHOTOS[0], 640, 480).save(root / "a.jpg", quality=92)
    photo_crop(PHOTOS[1], 512, 512).save(root / "nested" / "b.png")
    photo_crop(PHOTOS[2], 800, 600).save(root / "c.webp", quality=90)
    photo_crop(PHOTOS[3], 32, 32).save(root / "tiny.png")
    photo_crop(PHOTOS[4], 4000, 3000).save(root / "big.jpg", quality=90)
    (root / "notes.txt").write_text("not an image: an ignored record")
    return root


def test_embed_with_manifest_and_attacks(mixed_folder, tmp_path):
    out = tmp_path / "out"
    manifest = tmp_path / "assign.csv"
    payloads = {"a.jpg": "1234567890abc", "nested/b.png": "dec:42", "c.webp": "text:hi",
                "tiny.png": "0f", "big.jpg": "1"}
    manifest.write_text("image,payload\n" + "".join(f"{k},{v}\n" for k, v in payloads.items()))
    code = main(["--input", str(mixed_folder), "--assignments", str(manifest), "--output", str(out),
                 "--verify", "attacks", "--attacks", "jpeg:50,resize:0.5,noise:0.04,brightness:1.3"])
    assert code == 0
    records = {os.path.relpath(r["image"], mixed_folder): r for r in read_records(str(out))}
    # The manifest's rows are the work: --input is not listed, so notes.txt (named by no row) gets
    # no record.
    assert set(records) == set(payloads)
    assert records.pop("tiny.png")["error_code"] == "too_small"
    for name, record in records.items():
        assert record["status"] == "ok", record
        assert os.path.exists(record["output"])
        assert record["output"].startswith(str(out / "marked"))
        assert record["psnr"] >= 35
        assert set(record["attacks"]) == {"jpeg:50", "resize:0.5", "noise:0.04", "brightness:1.3"}
    for name in ("a.jpg", "nested/b.png", "big.jpg"):
        # The mark is read from the written file: far fewer bit errors than chance, so the
        # binomial test against the expected payload detects it.
        assert records[name]["ber"] < 0.25, records[name]
        assert records[name]["detected"] is True, records[name]
        assert records[name]["p_value"] < 1e-6
    assert Image.open(records["big.jpg"]["output"]).size == (4000, 3000)
    assert Image.open(records["c.webp"]["output"]).format == "WEBP"
    summary = read_summary(str(out))
    assert summary["counts"] == {"total": 5, "ok": 4, "error": 1, "skipped": 0, "ignored": 0}
    assert os.path.exists(out / "report" / "summary.html")


def test_glob_of_manifest_shards_rows_are_the_work(tmp_path):
    """`--assignments` a glob of CSV and JSON Lines shards: every row ends in one record (its
    line in its shard), a row naming a missing file is `not_found`, a duplicate across shards
    loses to the first in (shard path, line) order, and an image under --input that no row names
    is not listed (the manifest's rows are the work)."""
    root = tmp_path / "in"
    root.mkdir()
    for i, name in enumerate(("a.jpg", "b.png", "unnamed.jpg")):
        photo_crop(PHOTOS[i], 96, 64).save(root / name)
    shards = tmp_path / "manifests"
    shards.mkdir()
    (shards / "part-0.csv").write_bytes("\ufeffimage,payload\r\na.jpg,0a\r\nmissing.jpg,0b\r\n".encode())
    (shards / "part-1.jsonl").write_text('{"image": "b.png", "payload": "0c"}\n{"image": "a.jpg", "payload": "0d"}\n'
                                         '{"image": "../x.jpg", "payload": "0e"}\n')
    out = tmp_path / "out"
    assert main(["--input", str(root), "--assignments", str(shards / "part-*"), "--output", str(out),
                 "--verify", "none", "--min_psnr", "0"]) == 0
    got = sorted((os.path.basename(r["image"]), r["line"], r["status"], r["error_code"]) for r in read_records(out))
    assert got == [("a.jpg", 2, "ok", None), ("a.jpg", 2, "skipped", "duplicate_row"), ("b.png", 1, "ok", None),
                   ("missing.jpg", 3, "error", "not_found"), ("x.jpg", 3, "error", "bad_path")]
    [duplicate] = [r for r in read_records(out) if r["status"] == "skipped"]
    assert duplicate["payload"] == "0d" and "part-0.csv line 2 is used" in duplicate["error"]
    assert read_summary(out)["counts"] == {"total": 5, "ok": 2, "error": 2, "skipped": 1, "ignored": 0}


def test_a_list_of_input_folders_is_listed_in_parallel_under_their_common_root(tmp_path):
    days = [tmp_path / "incoming" / day for day in ("2026-11-01", "2026-11-02")]
    for i, day in enumerate(days):
        day.mkdir(parents=True)
        photo_crop(PHOTOS[i], 96, 64).save(day / "photo.jpg")
    (tmp_path / "incoming" / "2026-11-03").mkdir()
    photo_crop(PHOTOS[2], 96, 64).save(tmp_path / "incoming" / "2026-11-03" / "not-this-day.jpg")
    out = tmp_path / "out"
    assert main(["--input", ",".join(str(day) for day in days), "--payload", "0a", "--output", str(out),
                 "--verify", "none", "--min_psnr", "0"]) == 0
    records = read_records(out)
    assert sorted((os.path.relpath(r["output"], out / "marked"), r["status"]) for r in records) == [
        ("2026-11-01/photo.jpg", "ok"), ("2026-11-02/photo.jpg", "ok")]


def test_extract_mode_compares_with_expected_payloads(tmp_path):
    marked = tmp_path / "marked"
    assert main(["--input", PHOTOS[0], "--payload", "abcdef", "--output", str(marked), "--verify", "none",
                 "--key", "k1"]) == 0
    wild = tmp_path / "wild"
    wild.mkdir()
    [output] = glob.glob(str(marked / "marked" / "*"))
    os.replace(output, wild / ("found" + os.path.splitext(output)[1]))
    photo_crop(PHOTOS[1], 400, 300).save(wild / "unmarked.jpg")
    found = os.path.basename(glob.glob(str(wild / "found*"))[0])
    manifest = tmp_path / "expected.jsonl"
    manifest.write_text(json.dumps({"image": found, "payload": "abcdef"}) + "\n"
                        + json.dumps({"image": "unmarked.jpg", "payload": "abcdef"}) + "\n")

    def extract(key):
        out = tmp_path / f"read-{key}"
        assert main(["--mode", "extract", "--input", str(wild), "--assignments", str(manifest),
                     "--output", str(out), "--key", key]) == 0
        return {os.path.basename(r["image"]): r for r in read_records(str(out))}

    right = extract("k1")
    assert right[found]["status"] == "ok" and right[found]["payload"] == "0000000abcdef"
    assert right[found]["detected"] is True and right[found]["ber"] < 0.25
    assert right["unmarked.jpg"]["detected"] is False and right["unmarked.jpg"]["ber"] > 0.25
    wrong = extract("k2")
    assert wrong[found]["detected"] is False and wrong[found]["ber"] > 0.25
    assert not any(glob.glob(str(tmp_path / "read-k1" / "marked" / "*")))


def test_bad_options_fail_fast_with_clear_errors(tmp_path, capsys):
    assert main(["--input", PHOTOS[0], "--payload", "zz-not-hex", "--output", str(tmp_path)]) == 2
    assert "payload" in capsys.readouterr().err
    assert main(["--input", PHOTOS[0], "--model", str(tmp_path / "nope"), "--payload", "1"]) == 2
    assert "model" in capsys.readouterr().err
    assert main(["--input", PHOTOS[0], "--payload", "1", "--max_grid", "0", "--output", str(tmp_path)]) == 2
    assert "--max_grid" in capsys.readouterr().err


def test_max_grid_caps_the_embedding_grid(tmp_path):
    """`--max_grid 2` marks on a 2 x 2 grid; verification reads it back on that grid."""
    out = tmp_path / "out"
    assert main(["--input", PHOTOS[0], "--payload", "abcdef", "--output", str(out), "--max_grid", "2"]) == 0
    (record,) = read_records(out)
    assert record["status"] == "ok" and record["match"] and record["grid"] == 2


def test_gcs_input_and_output(gcs_bucket, tmp_path):
    from apache_beam.io.filesystems import FileSystems
    bucket = gcs_bucket.name if hasattr(gcs_bucket, "name") else gcs_bucket
    for i, photo in enumerate(PHOTOS[:2]):
        data = open(photo, "rb").read()
        with FileSystems.create(f"gs://{bucket}/in/p{i}{os.path.splitext(photo)[1]}") as f:
            f.write(data)
    out = f"gs://{bucket}/out"
    assert main(["--input", f"gs://{bucket}/in/", "--payload", "c0ffee", "--output", out]) == 0
    marked = FileSystems.match([f"{out}/marked/*"])[0].metadata_list
    assert len(marked) == 2
    with FileSystems.open(f"{out}/report/summary.json") as f:
        summary = json.loads(f.read())
    assert summary["counts"]["ok"] == 2
