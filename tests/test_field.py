"""Field fidelity of `python -m pipeline.run`, on generated inputs that replay what users meet:
tiny and degenerate images, 12-bit data in 16-bit files, web JPEGs at low quality, folders
with every kind of file, re-marking, stale temp files, and a quiet console.

One run over a generated folder (`field_run`) serves most tests; re-marking runs again on its
outputs."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import uuid
import zlib

import numpy as np
import pytest
from PIL import Image

from filigree.imaging import decode, encode
from filigree.imaging.depth import SampleDepth, sample_depth
from filigree.resources import bundled_samples_dir
from pipeline import prepare
from pipeline.console import is_native_log_line
from pipeline.run import clear_stale_temp_files, main
from pipeline.storage import safe_relative_output
from reports import read_records, read_summary

PAYLOAD = "0a1b2c3d4e5f"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _photo(width: int, height: int, name: str = "opencv_fruits.jpg") -> Image.Image:
    image = Image.open(os.path.join(bundled_samples_dir(), name)).convert("RGB")
    return image.resize((width, height), Image.Resampling.LANCZOS)


def _png_with_sbit(values: np.ndarray, sbit: int) -> bytes:
    """A 16-bit grey PNG of `values` with an sBIT chunk (Pillow writes none itself)."""
    height, width = values.shape
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0))
            + chunk(b"sBIT", bytes([sbit])) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _twelve_bit(width: int = 640, height: int = 480) -> np.ndarray:
    """A photo's luma as 12-bit data, values 584..4093 (what scanners and microscopes write)."""
    luma = np.asarray(_photo(width, height, "opencv_building.jpg").convert("L"), dtype=np.float64)
    luma = (luma - luma.min()) / (luma.max() - luma.min())
    return np.rint(584 + luma * (4093 - 584)).astype(np.uint16)


SQUARES = (1, 8, 16, 48, 150)
STRIPS = {"strip_400x1.png": (400, 1), "strip_3x600.png": (3, 600)}


def write_field_folder(root) -> dict:
    """The generated inputs; returns their expected kinds."""
    root.mkdir(parents=True, exist_ok=True)
    for side in SQUARES:
        _photo(side, side).save(root / f"sq{side}.png")
    for name, size in STRIPS.items():
        _photo(*size).save(root / name)
    photo = _photo(512, 384)
    photo.save(root / "photo.png")
    Image.fromarray(_twelve_bit()).save(root / "gray12.png")
    eight = np.asarray(_photo(512, 384, "opencv_squirrel_cls.jpg").convert("L"), dtype=np.uint16) * 257
    (root / "gray8in16_sbit.png").write_bytes(_png_with_sbit(eight, 8))
    web = _photo(640, 480, "opencv_aloeL.jpg")
    web.save(root / "web_q60.jpg", quality=60)
    web.save(root / "web_q85_progressive.jpg", quality=85, progressive=True)
    photo.save(root / "web_q50.webp", quality=50)
    web.save(root / "web_q80.webp", quality=80)
    # a folder as phones and cameras leave it
    photo.save(root / "IMG_0001.JPG", quality=90)
    photo.save(root / "IMG_0002.JPEG", quality=90)
    photo.save(root / "Scan.TIF", compression="tiff_lzw")
    photo.save(root / "render.PNG")
    photo.save(root / "shot.Jpg", quality=90)
    photo.save(root / "download.jfif", "JPEG", quality=90)
    photo.save(root / "old.jpe", "JPEG", quality=90)
    photo.save(root / "IMG_0003.HEIC", "HEIF", quality=90)
    photo.save(root / "still.avif", "AVIF", quality=90)
    photo.save(root / "no_extension", "JPEG", quality=90)
    (root / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    return {"ignored": {"notes.txt", ".DS_Store"}}


@pytest.fixture(scope="module")
def field_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("field")
    root, out = base / "in", base / "out"
    expected = write_field_folder(root)
    code = main(["--input", str(root), "--output", str(out), "--payload", PAYLOAD])
    records = read_records(out)
    return {"root": root, "out": out, "code": code, "records": records, "summary": read_summary(out),
            "by_name": {os.path.relpath(r["image"], root): r for r in records}, **expected}


# -- 1: honest status for tiny and degenerate images ------------------------------------------------

def test_ok_means_read_back_and_everything_else_is_a_clear_error_without_output(field_run):
    assert field_run["code"] == 0
    marked = field_run["out"] / "marked"
    for name, record in field_run["by_name"].items():
        if record["status"] == "ok":
            assert record["match"] is True and record["decoded"] == record["payload"], record
            assert int(record["decoded"], 16) == int(PAYLOAD, 16)
            assert record["psnr"] >= 35.0, record
            assert os.path.isfile(record["output"]), record
        elif record["status"] == "error":
            assert record["error_code"] in ("too_small", "unreadable"), record
            assert record["output"] is None, record
            stem = os.path.splitext(name)[0]
            assert not [p for p in os.listdir(marked) if p.startswith(stem)], name
    tiny = {f"sq{side}.png" for side in SQUARES} | set(STRIPS)
    for name in tiny:
        assert field_run["by_name"][name]["status"] == "error", field_run["by_name"][name]
    for name in ("photo.png", "render.PNG", "IMG_0001.JPG"):
        assert field_run["by_name"][name]["status"] == "ok", field_run["by_name"][name]


def test_a_mark_louder_than_the_floor_is_too_small(field_run):
    """The 150 px square would be marked at about 29.8 dB (its single tile is amplified 5x):
    below --min_psnr 35, refused, its PSNR in the record."""
    record = field_run["by_name"]["sq150.png"]
    assert record["error_code"] == "too_small"
    assert 25.0 < record["psnr"] < 35.0
    assert "35 dB" in record["error"]


def test_one_pixel_is_unreadable_and_not_blamed_on_saturation(field_run):
    record = field_run["by_name"]["sq1.png"]
    assert (record["status"], record["error_code"]) == ("error", "unreadable")
    assert "saturat" not in record["error"] and not any("saturat" in n for n in record["notes"])
    eight = field_run["by_name"]["sq8.png"]  # PSNR high, but nothing reads back
    assert eight["error_code"] == "unreadable" and eight["match"] is not True


def test_summary_counts_agree_with_records(field_run):
    counts, records = field_run["summary"]["counts"], field_run["records"]
    for status in ("ok", "error", "skipped", "ignored"):
        assert counts[status] == sum(r["status"] == status for r in records), status
    assert counts["total"] == counts["ok"] + counts["error"] + counts["skipped"]
    assert field_run["summary"]["views"]["clean"]["exact"] == counts["ok"]


def test_min_psnr_is_the_floor(tmp_path):
    """The same 150 px square passes the visibility check with a lower floor."""
    _photo(150, 150).save(tmp_path / "sq150.png")
    out = tmp_path / "out"
    assert main(["--input", str(tmp_path / "sq150.png"), "--output", str(out), "--payload", PAYLOAD,
                 "--min_psnr", "25", "--verify", "none"]) == 0
    [record] = read_records(out)
    assert record["status"] == "ok" and 25.0 < record["psnr"] < 35.0, record


# -- 2: true bit depth -----------------------------------------------------------------------------

def test_twelve_bit_data_is_marked_within_twelve_bits(field_run):
    record = field_run["by_name"]["gray12.png"]
    assert record["status"] == "ok", record
    source = np.asarray(Image.open(field_run["root"] / "gray12.png")).astype(np.float64)
    marked = np.asarray(Image.open(record["output"])).astype(np.float64)
    assert marked.max() <= 4095
    change = np.abs(marked - source)
    assert change.mean() < 0.01 * (4093 - 584)  # was 331 levels (about 10 % of the range)
    mse = np.mean((marked - source) ** 2)
    assert record["psnr"] == pytest.approx(10 * np.log10(4095 ** 2 / mse), abs=0.01)
    assert record["psnr"] >= 35.0


def test_eight_bit_data_in_sixteen_bits_stays_on_its_grid(field_run):
    record = field_run["by_name"]["gray8in16_sbit.png"]
    assert record["status"] == "ok", record
    marked = np.asarray(Image.open(record["output"]))
    assert marked.dtype == np.uint16 or marked.max() > 255
    assert not np.any(marked.astype(np.int64) % 257)  # still 8-bit data, scaled by 257
    assert decode.decode_image((field_run["out"] / "marked" / "gray8in16_sbit.png").read_bytes()).depth.sbit == 8


@pytest.mark.parametrize("values, sbit, expected", [
    (np.array([[584, 4093]], np.uint16), None, SampleDepth(12, "low")),
    (np.array([[0, 1023]], np.uint16), None, SampleDepth(10, "low")),
    (np.array([[0, 1023 << 6]], np.uint16), None, SampleDepth(10, "shifted")),
    (np.array([[257 * 3, 257 * 255]], np.uint16), None, SampleDepth(8, "scaled")),
    (np.array([[1, 65535]], np.uint16), None, SampleDepth(16, "low")),
    (np.array([[0, 4000]], np.uint16), 12, SampleDepth(12, "low", 12)),
    (np.array([[16, 4095 * 16]], np.uint16), 12, SampleDepth(12, "shifted", 12)),
    (np.array([[257, 65535]], np.uint16), 8, SampleDepth(8, "scaled", 8)),
])
def test_sample_depth(values, sbit, expected):
    depth = sample_depth(values, sbit)
    assert depth == expected
    np.testing.assert_array_equal(depth.to_container(depth.to_samples(values)), values)
    assert depth.full_range(values).max() <= 65535


# -- 3: output quality -----------------------------------------------------------------------------

def test_jpeg_keeps_the_source_quality_above_the_floor(field_run):
    low, high = field_run["by_name"]["web_q60.jpg"], field_run["by_name"]["web_q85_progressive.jpg"]
    assert low["status"] == high["status"] == "ok", (low, high)
    assert low["output_quality"] == encode.MIN_MARK_QUALITY == 70  # q60 raised to the floor
    assert high["output_quality"] == 85
    for record, name in ((low, "web_q60.jpg"), (high, "web_q85_progressive.jpg")):
        source_size = (field_run["root"] / name).stat().st_size
        assert record["output_bytes"] == os.path.getsize(record["output"])
        assert record["output_bytes"] < 1.5 * source_size, (name, record["output_bytes"], source_size)
    assert decode.decode_image(open(high["output"], "rb").read()).quality == 85
    assert Image.open(high["output"]).info.get("progressive")
    assert field_run["by_name"]["photo.png"]["output_quality"] is None  # lossless: no quality


def test_lossy_webp_keeps_the_source_quality_above_the_floor(field_run):
    """The source's libwebp quality is read from its VP8 header (exact for the smooth photo, an
    upper bound within the largest error measured, +12, for the textured one) and kept, raised to
    the WebP floor."""
    low, high = field_run["by_name"]["web_q50.webp"], field_run["by_name"]["web_q80.webp"]
    assert low["status"] == high["status"] == "ok", (low, high)
    assert low["source_quality"] == 50
    assert low["output_quality"] == encode.MIN_WEBP_MARK_QUALITY == 60  # q50 raised to the floor
    assert 80 <= high["source_quality"] <= 92
    assert high["output_quality"] == high["source_quality"]
    for record, name in ((low, "web_q50.webp"), (high, "web_q80.webp")):
        source_size = (field_run["root"] / name).stat().st_size
        written = open(record["output"], "rb").read()
        assert (record["source_bytes"], record["output_bytes"]) == (source_size, len(written))
        assert record["size_ratio"] == round(len(written) / source_size, 3)
        assert 0.8 < record["size_ratio"] < 1.5, (name, record["size_ratio"])  # 2.3x, 1.3x at q95
    assert decode.decode_image(open(low["output"], "rb").read()).quality == 60
    assert field_run["by_name"]["photo.png"]["size_ratio"] > 0  # every written file has one


def test_jpeg_quality_option_overrides(tmp_path):
    _photo(512, 384).save(tmp_path / "a.jpg", quality=60)
    out = tmp_path / "out"
    assert main(["--input", str(tmp_path / "a.jpg"), "--output", str(out), "--payload", PAYLOAD,
                 "--jpeg_quality", "92", "--verify", "none"]) == 0
    [record] = read_records(out)
    assert record["output_quality"] == 92
    assert decode.decode_image(open(record["output"], "rb").read()).quality == 92


def test_output_quality_rules():
    def decoded(fmt: str, quality, lossless=None):
        image = Image.new("RGB", (8, 8), (90, 100, 110))
        options = {"quality": quality} if quality else {}
        if lossless:
            options = {"lossless": True}
        return decode.decode_image(_bytes(image, fmt, **options))
    assert encode.output_quality(decoded("JPEG", 40)) == encode.MIN_MARK_QUALITY
    assert encode.output_quality(decoded("JPEG", 88)) == 88
    assert encode.output_quality(decoded("JPEG", 40), requested=50) == 50
    assert encode.output_quality(decoded("JPEG", 88), margin=5) == 93
    assert encode.output_quality(decoded("JPEG", 98), margin=5) == 100
    assert encode.output_quality(decoded("JPEG", 60), margin=5) == encode.MIN_MARK_QUALITY
    assert encode.output_quality(decoded("JPEG", 88), requested=80, margin=5) == 80  # asked for: as asked
    assert encode.output_quality(decoded("PNG", None), margin=5) is None
    assert encode.output_quality(decoded("PNG", None)) is None
    assert encode.output_quality(decoded("WEBP", None, lossless=True)) is None
    assert encode.output_quality(decoded("HEIF", 80)) == encode.UNKNOWN_SOURCE_QUALITY  # not estimated
    webp = {q: decode.decode_image(_bytes(_photo(256, 192), "WEBP", quality=q)) for q in (40, 80)}
    assert (webp[40].quality, webp[80].quality) == (41, 80)  # q40 and q41 quantise alike: the upper
    assert encode.output_quality(webp[40]) == encode.MIN_WEBP_MARK_QUALITY
    assert encode.output_quality(webp[80]) == 80
    assert encode.output_quality(webp[40], requested=30) == 30


def _bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


# -- 4: every file accounted for -------------------------------------------------------------------

def test_every_file_under_input_has_a_record(field_run):
    names = set(os.listdir(field_run["root"]))
    assert set(field_run["by_name"]) == names
    for name in field_run["ignored"]:
        assert field_run["by_name"][name]["status"] == "ignored", field_run["by_name"][name]
    summary = field_run["summary"]
    assert summary["counts"]["ignored"] == 2
    assert sorted(summary["ignored"]) == sorted(str(field_run["root"] / n) for n in field_run["ignored"])
    assert summary["counts"]["total"] == len(names) - 2


@pytest.mark.parametrize("name, fmt, output", [
    ("IMG_0001.JPG", "JPEG", "IMG_0001.JPG"), ("IMG_0002.JPEG", "JPEG", "IMG_0002.JPEG"),
    ("Scan.TIF", "TIFF", "Scan.TIF"), ("render.PNG", "PNG", "render.PNG"), ("shot.Jpg", "JPEG", "shot.Jpg"),
    ("download.jfif", "JPEG", "download.jfif"), ("old.jpe", "JPEG", "old.jpe"),
    ("IMG_0003.HEIC", "HEIF", "IMG_0003.HEIC"), ("still.avif", "AVIF", "still.avif"),
    ("no_extension", "JPEG", "no_extension.jpg"),
])
def test_formats_are_marked_in_their_own_format(field_run, name, fmt, output):
    record = field_run["by_name"][name]
    assert record["status"] == "ok", record
    assert record["output"] == str(field_run["out"] / "marked" / output)
    with Image.open(record["output"]) as marked:
        assert marked.format == fmt
        assert marked.size == (512, 384)


def test_sniffing_tells_images_from_other_files():
    image = Image.new("RGB", (4, 4))
    for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "HEIF", "AVIF"):
        assert decode.sniff_format(_bytes(image, fmt)[:decode.SNIFF_BYTES]) == fmt
    for data in (b"", b"hello", b"%PDF-1.7\n", b"\x00\x00\x00\x18ftypmp42\x00\x00"):
        assert decode.sniff_format(data) is None


# -- 5: re-marking ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def remark_runs(field_run, tmp_path_factory):
    """The first run's marked photo.png, marked again: same key, same key with
    --overwrite_marks, another key; and an unmarked photo with another key."""
    base = tmp_path_factory.mktemp("remark")
    (base / "in").mkdir()
    marked = field_run["by_name"]["photo.png"]["output"]
    (base / "in" / "marked.png").write_bytes(open(marked, "rb").read())
    _photo(512, 384, "opencv_squirrel_cls.jpg").save(base / "in" / "unmarked.png")
    runs = {}
    for label, extra in (("same", []), ("overwrite", ["--overwrite_marks"]), ("other", ["--key", "another key"])):
        out = base / label
        assert main(["--input", str(base / "in"), "--output", str(out), "--payload", "77", *extra]) == 0
        runs[label] = {os.path.basename(r["image"]): r for r in read_records(out)}
    return runs


def test_same_key_remarking_is_refused_and_names_the_payload(remark_runs, field_run):
    record = remark_runs["same"]["marked.png"]
    assert (record["status"], record["error_code"]) == ("skipped", "already_marked"), record
    assert record["existing_payload"] == field_run["by_name"]["photo.png"]["payload"]
    assert record["existing_payload"] in record["error"] and record["output"] is None
    assert remark_runs["same"]["unmarked.png"]["status"] == "ok"


def test_overwrite_marks_marks_again_and_says_what_was_there(remark_runs, field_run):
    record = remark_runs["overwrite"]["marked.png"]
    assert record["existing_payload"] == field_run["by_name"]["photo.png"]["payload"]
    assert any(PAYLOAD in note for note in record["notes"]), record
    assert record["status"] in ("ok", "error"), record
    if record["status"] == "ok":
        assert record["decoded"].lstrip("0") == "77"


def test_another_keys_mark_is_found_without_the_key(remark_runs):
    """Marked with the default key, checked with another: the key-less presence test sees a
    Filigree mark; the unmarked photo passes."""
    record = remark_runs["other"]["marked.png"]
    assert (record["status"], record["error_code"]) == ("skipped", "already_marked"), record
    assert record["existing_payload"] is None
    assert "another key" in record["error"]
    assert remark_runs["other"]["unmarked.png"]["status"] == "ok"


# -- 6: decode timeout, temp files, external paths -------------------------------------------------

def test_decode_timeout_stops_the_work_itself(tmp_path):
    worker = prepare.DecodeWorker(10, decoder="slow_decoder:sleepy_decode")
    try:
        with pytest.raises(RuntimeError, match="not a real decoder"):  # the child is up and decoding
            worker.decode(f"0|{tmp_path / 'warm'}".encode(), 120)
        assert (tmp_path / "warm").exists()
        started = time.monotonic()
        with pytest.raises(decode.ImageDecodeError) as info:
            prepare.decode_with_timeout(f"3|{tmp_path / 'finished'}".encode(), 10, 1.0, worker)
        assert info.value.code == "timeout"
        assert time.monotonic() - started < 8
        time.sleep(4)
        assert not (tmp_path / "finished").exists()  # the decode was killed, not left running
    finally:
        worker.close()


def test_decode_worker_decodes_and_reports_errors():
    worker = prepare.DecodeWorker(10_000)
    try:
        data = _bytes(Image.new("RGB", (30, 20), (1, 2, 3)), "PNG")
        image = worker.decode(data, 60)
        assert image.pixels.shape == (20, 30, 3) and image.pixels[0, 0].tolist() == [1, 2, 3]
        with pytest.raises(decode.ImageDecodeError) as info:
            worker.decode(b"not an image", 60)
        assert info.value.code == "not_an_image"
        with pytest.raises(decode.ImageDecodeError) as info:
            worker.decode(_bytes(Image.new("RGB", (200, 100)), "PNG"), 60)
        assert info.value.code == "too_large"
    finally:
        worker.close()


def test_stale_temp_files_are_cleaned_by_a_later_run(tmp_path):
    marked = tmp_path / "marked" / "sub"
    marked.mkdir(parents=True)
    stale = marked / f".a.jpg.{uuid.uuid4().hex}.tmp"
    fresh = marked / f".b.jpg.{uuid.uuid4().hex}.tmp"
    keep = marked / "c.jpg"
    for path in (stale, fresh, keep):
        path.write_bytes(b"x")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert clear_stale_temp_files(str(tmp_path)) == [str(stale)]
    assert not stale.exists() and fresh.exists() and keep.exists()


def test_local_and_remote_paths_never_share_an_external_output():
    local = safe_relative_output("/data/in", "/x/a.jpg")
    remote = safe_relative_output("/data/in", "gs://x/a.jpg")
    assert local != remote
    assert (local, remote) == ("_external/local/x/a.jpg", "_external/gs/x/a.jpg")


# -- 7: quiet console ------------------------------------------------------------------------------

def test_native_log_lines_are_recognised():
    assert is_native_log_line(b"E0000 00:00:1796007435.431596   19663 cuda_platform.cc:52] failed call to "
                              b"cuInit: INTERNAL: CUDA error")
    assert is_native_log_line(b"I0000 00:00:1796007418.392117   19663 cudart_stub.cc:31] Could not find cuda")
    assert is_native_log_line(b"WARNING: All log messages before absl::InitializeLog() is called are written "
                              b"to STDERR")
    assert not is_native_log_line(b"filigree: embed /in/** with model filigree-default")
    assert not is_native_log_line(b"error: --fpr must be in (0, 1), got 2.0")


FILTER_SCRIPT = """
import os, sys
from pipeline.console import quiet_native_logs
quiet_native_logs(verbose=sys.argv[1] == "verbose")
os.write(2, b"E0000 00:00:1796007435.431596   19663 cuda_platform.cc:52] failed call to cuInit\\n")
print("own line", file=sys.stderr)
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_native_lines_are_filtered_from_the_process_stderr(mode):
    done = subprocess.run([sys.executable, "-c", FILTER_SCRIPT, mode], cwd=ROOT, capture_output=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    lines = done.stderr.decode().splitlines()
    assert "own line" in lines
    assert any("cuInit" in line for line in lines) == (mode == "verbose")


def test_a_run_prints_only_filigree_lines(tmp_path):
    """The whole CLI in a fresh process on a CPU machine: no TensorFlow start-up line."""
    _photo(384, 288).save(tmp_path / "a.png")
    done = subprocess.run([sys.executable, "-m", "pipeline.run", "--input", str(tmp_path / "a.png"),
                           "--output", str(tmp_path / "out"), "--payload", PAYLOAD],
                          cwd=ROOT, capture_output=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    lines = (done.stdout + done.stderr).decode().splitlines()
    assert lines[0].startswith("filigree: embed ")
    assert lines[1].startswith("Filigree embed: 1 images — 1 ok")
    for line in lines:
        assert line.startswith(("filigree:", "Filigree ", "  ")), line
        assert "cuInit" not in line and "absl" not in line and "cudart" not in line, line
    assert json.loads((tmp_path / "out" / "report" / "summary.json").read_text())["counts"]["ok"] == 1


def test_remote_bundle_cache_is_verified_by_hash_not_size(gcs_bucket):
    """A remote file changed to other bytes of the same size, and a cached copy edited in place,
    are both copied again; an unchanged file is reused."""
    from apache_beam.io.filesystems import FileSystems

    from filigree.bundle import localize

    root = f"gs://{gcs_bucket.name}/bundle-{uuid.uuid4().hex[:8]}"

    def put(name: str, data: bytes) -> None:
        with FileSystems.create(f"{root}/{name}") as f:
            f.write(data)

    put("model.json", b'{"a": 1}')
    put("embedder/saved_model.pb", b"first-bytes")
    local = localize(root)
    record = json.loads(open(os.path.join(local, "model.json.filigree-source.json")).read())
    assert record["remote_checksum"]  # the store gave a checksum: the cache is checked by it
    put("model.json", b'{"a": 2}')  # same size, other bytes
    local = localize(root)
    assert open(os.path.join(local, "model.json"), "rb").read() == b'{"a": 2}'
    cached = os.path.join(local, "embedder", "saved_model.pb")
    with open(cached, "wb") as f:
        f.write(b"first-BYTES")  # the cache edited, size kept
    localize(root)
    assert open(cached, "rb").read() == b"first-bytes"
    before = os.stat(cached).st_mtime_ns
    localize(root)
    assert os.stat(cached).st_mtime_ns == before  # unchanged: reused, not copied again


def test_progress_counts_images_across_step_instances(caplog):
    from pipeline.progress import Progress

    Progress.reset()
    first, second = Progress("checked", every_s=0.0), Progress("checked", every_s=0.0)
    with caplog.at_level("WARNING", logger="filigree"):
        assert [first.tick(), second.tick(), first.tick()] == [1, 2, 3]
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("checked 1 image so far") and messages[-1].startswith("checked 3 images so far")
    Progress.reset()
