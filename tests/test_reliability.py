"""Reliability and security of `python -m pipeline.run` on hostile inputs, faults and re-runs.

A hostile corpus is generated on the fly (no binaries in git): odd but valid images, broken
files, a decompression bomb, traversal paths, bad payloads, a missing file and a duplicate row.
The bundled model is an early checkpoint, so these tests assert statuses, codes, counts, files
and preserved metadata, never payload read-back quality.

The 48 MP case is slow on small machines: set FILIGREE_SKIP_48MP=1 to skip it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import logging
import os
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from imagefiles import encoded as _save, srgb_icc as _srgb_icc
from reports import read_records, read_summary
from filigree.imaging import decode, encode
from pipeline import handlers, marking, planning, prepare, storage
from pipeline.records import StepFailure
from pipeline.run import main

KEY = "s3cret-Key-7f3a9e2b-do-not-leak"
FORMAT_RUN = ("--min_psnr", "0", "--verify", "none")
"""The corpus's images are tiny (formats and faults, not marking quality): marked at any
visibility and not read back (tests/test_field.py checks the visibility floor and read-back)."""
DEFAULT_PAYLOAD = "c0ffee"


# -- corpus --------------------------------------------------------------------------------------

def _gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth uint8 RGB content with a little texture."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = x / max(1, width - 1)
    g = y / max(1, height - 1)
    b = 0.5 + 0.4 * np.sin((x + seed) / 5.0) * np.cos(y / 7.0)
    return np.rint(np.stack([r, g, b], -1) * 255).astype(np.uint8)


def _rgb(height: int, width: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(_gradient(height, width, seed), "RGB")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(rows))
            + _png_chunk(b"IEND", b""))


def _bomb_png() -> bytes:
    """A valid PNG header declaring 200000 x 200000 pixels (40 gigapixels) with a tiny body."""
    return _raw_png(200_000, 200_000, 8, 2, b"\x00" * 64)


def _rgb16_png(height: int, width: int) -> bytes:
    values = (_gradient(height, width).astype(np.uint16) * 257).astype(">u2")
    rows = b"".join(b"\x00" + values[y].tobytes() for y in range(height))
    return _raw_png(width, height, 16, 2, rows)


def _exif_rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return _save(_rgb(24, 40, 3), "JPEG", quality=90, exif=exif.tobytes())


def _animated(fmt: str) -> bytes:
    frames = [_rgb(16, 16, seed) for seed in (0, 9)]
    options = {"save_all": True, "append_images": frames[1:], "duration": 100, "loop": 0}
    if fmt == "WEBP":
        options["lossless"] = True
    return _save(frames[0], fmt, **options)


def _rgba() -> Image.Image:
    image = _rgb(32, 48, 5).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (32, 1))
    image.putalpha(Image.fromarray(alpha, "L"))
    return image


# Valid images: name -> (bytes factory, expected output format, expected output name)
def _valid_images() -> dict[str, tuple[bytes, str, str]]:
    palette = _rgb(20, 30, 2).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return {
        "tiny_1x1.png": (_save(_rgb(1, 1), "PNG"), "PNG", "tiny_1x1.png"),
        "thin_1x300.png": (_save(_rgb(300, 1), "PNG"), "PNG", "thin_1x300.png"),
        "thin_300x2.jpg": (_save(_rgb(2, 300), "JPEG", quality=90), "JPEG", "thin_300x2.jpg"),
        "cmyk.jpg": (_save(_rgb(24, 32, 1).convert("CMYK"), "JPEG", quality=90), "JPEG", "cmyk.jpg"),
        "gray16.png": (_save(Image.fromarray(_gradient(24, 32)[..., 0].astype(np.uint16) * 257), "PNG"),
                       "PNG", "gray16.png"),
        "rgb16.png": (_rgb16_png(24, 32), "PNG", "rgb16.png"),
        "palette_trns.png": (_save(palette, "PNG", transparency=0), "PNG", "palette_trns.png"),
        "la.png": (_save(_rgb(24, 32, 4).convert("L").convert("LA"), "PNG"), "PNG", "la.png"),
        "rgba.png": (_save(_rgba(), "PNG"), "PNG", "rgba.png"),
        "exif_rotated.jpg": (_exif_rotated_jpeg(), "JPEG", "exif_rotated.jpg"),
        "progressive.jpg": (_save(_rgb(40, 56, 6), "JPEG", quality=90, progressive=True), "JPEG", "progressive.jpg"),
        "icc.jpg": (_save(_rgb(32, 40, 7), "JPEG", quality=90, icc_profile=_srgb_icc()), "JPEG", "icc.jpg"),
        "icc.png": (_save(_rgb(32, 40, 8), "PNG", icc_profile=_srgb_icc()), "PNG", "icc.png"),
        "photo.bmp": (_save(_rgb(24, 32, 9), "BMP"), "BMP", "photo.bmp"),
        "photo.tif": (_save(_rgb(24, 32, 10), "TIFF", compression="tiff_lzw"), "TIFF", "photo.tif"),
        "lossy.webp": (_save(_rgb(32, 32, 11), "WEBP", quality=90), "WEBP", "lossy.webp"),
        "alpha_lossless.webp": (_save(_rgba(), "WEBP", lossless=True), "WEBP", "alpha_lossless.webp"),
        "static.gif": (_save(palette, "GIF"), "PNG", "static.gif.png"),
        "png_named.jpg": (_save(_rgb(24, 32, 12), "PNG"), "PNG", "png_named.jpg.png"),
        "sub/nested.jpg": (_save(_rgb(30, 30, 13), "JPEG", quality=90), "JPEG", "sub/nested.jpg"),
    }


# Broken images: name -> (bytes, expected error code)
def _broken_images() -> dict[str, tuple[bytes, str]]:
    jpeg = _save(_rgb(64, 64, 14), "JPEG", quality=90)
    png = _save(_rgb(64, 64, 15), "PNG")
    return {
        "empty.jpg": (b"", "empty"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "text.png": (b"this is not an image at all\n" * 20, "not_an_image"),
        "icon.png": (_save(_rgb(16, 16), "ICO"), "unsupported"),
        "animated.gif": (_animated("GIF"), "animated"),
        "animated.webp": (_animated("WEBP"), "animated"),
        "bomb.png": (_bomb_png(), "too_large"),
    }


def write_corpus(base) -> dict:
    """Create BASE/in (the corpus), BASE/outside (files that a manifest reaches outside --input)
    and BASE/assignments.csv; returns what each input should yield."""
    root, outside = base / "in", base / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    valid, broken = _valid_images(), _broken_images()
    for name, (data, _, _) in valid.items():
        (root / name).write_bytes(data)
    for name, (data, _) in broken.items():
        (root / name).write_bytes(data)
    (root / "bad_payload.png").write_bytes(_save(_rgb(16, 16, 16), "PNG"))
    (root / "too_long_payload.png").write_bytes(_save(_rgb(16, 16, 17), "PNG"))
    (root / "notes.txt").write_text("not an image: listed as ignored")
    (outside / "secret.jpg").write_bytes(_save(_rgb(16, 16, 18), "JPEG"))
    (outside / "external.png").write_bytes(_save(_rgb(20, 20, 19), "PNG"))
    rows = [  # (image, payload); written with a BOM, CRLF, blank lines and an extra column
        ("rgba.png", "0a1b2c"),
        ("../outside/secret.jpg", "01"),
        ("sub/../../outside/secret.jpg", "02"),
        (str(outside / "external.png"), "03"),
        ("missing.jpg", "04"),
        ("bad_payload.png", "zz-not-hex"),
        ("too_long_payload.png", "f" * 20),
        ("./rgba.png", "ffff"),
        ("bomb.png", "05"),
    ]
    lines = ["image,payload,note"]
    for image, payload in rows:
        lines += [f"{image},{payload},\"free text, with a comma\"", ""]
    (base / "assignments.csv").write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode("utf-8"))
    # manifest line numbers: header is line 1, rows on lines 2, 4, 6, ... (blank lines between)
    return {"root": root, "outside": outside, "manifest": base / "assignments.csv",
            "valid": valid, "broken": broken, "rows": rows}


def tree(base) -> set[str]:
    """Every file under `base`, relative."""
    return {os.path.relpath(os.path.join(d, f), base) for d, _, files in os.walk(base) for f in files}


def by_image(records: list[dict], root) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for record in records:
        image = record["image"]
        key = os.path.relpath(image, root) if os.path.isabs(image) else image
        out.setdefault(key, []).append(record)
    return out


# -- the end-to-end run over the hostile corpus ---------------------------------------------------

@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory):
    """One run over the corpus with a secret key, capturing everything it logs and prints."""
    base = tmp_path_factory.mktemp("hostile")
    corpus = write_corpus(base)
    before = tree(base)
    out = base / "out"
    handler = _Capture()
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.INFO)  # capture more than the run would normally show
    stdout, stderr = io.StringIO(), io.StringIO()
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = main(["--input", str(corpus["root"]), "--assignments", str(corpus["manifest"]),
                         "--payload", DEFAULT_PAYLOAD, "--output", str(out), "--key", KEY,
                         "--batch_size", "4", *FORMAT_RUN])
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(level)
    elapsed = time.monotonic() - started
    return {**corpus, "base": base, "out": out, "code": code, "before": before, "elapsed": elapsed,
            "logs": handler.text(), "stdout": stdout.getvalue(), "stderr": stderr.getvalue(),
            "records": read_records(out), "summary": read_summary(out)}


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.lines: list[str] = []
        self.lock_ = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001
            text = str(record.msg)
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        with self.lock_:
            self.lines.append(text)

    def text(self) -> str:
        with self.lock_:
            return "\n".join(self.lines)


def test_corpus_run_finishes_with_one_record_per_input(corpus_run):
    assert corpus_run["code"] == 0, corpus_run["stderr"]
    records, summary = corpus_run["records"], corpus_run["summary"]
    counts = summary["counts"]
    assert counts["total"] == counts["ok"] + counts["error"] + counts["skipped"] == len(records) - 1
    assert counts["ignored"] == 1 and summary["ignored"] == [str(corpus_run["root"] / "notes.txt")]
    for record in records:
        assert record["status"] in ("ok", "error", "skipped", "ignored"), record
        if record["status"] != "ok":
            assert record["error_code"] and record["error"], record
    # every listed image and every manifest row: exactly one record
    listed = {name for name in corpus_run["valid"]} | set(corpus_run["broken"]) | {
        "bad_payload.png", "too_long_payload.png"}
    # one per listed image, plus the duplicate row of rgba.png, plus the rows that name no listed
    # image: two traversal paths, one external image and one missing file; notes.txt is ignored
    assert len(records) == len(listed) + 1 + 4 + 1
    groups = by_image(records, corpus_run["root"])
    for name in listed - {"rgba.png"}:
        assert len(groups[name]) == 1, (name, groups.get(name))
    assert len(groups["rgba.png"]) == 2
    assert corpus_run["elapsed"] < 120


def test_valid_images_are_marked_in_their_format_with_alpha_and_icc(corpus_run):
    groups = by_image(corpus_run["records"], corpus_run["root"])
    out = corpus_run["out"]
    for name, (data, fmt, output_name) in corpus_run["valid"].items():
        [record] = [r for r in groups[name] if r["status"] != "skipped"]
        if name == "tiny_1x1.png":  # its one pixel rounds back to itself: no mark, no file
            assert (record["status"], record["error_code"], record["output"]) == ("error", "unreadable", None)
            continue
        assert record["status"] == "ok", record
        assert record["output"] == str(out / "marked" / output_name), record
        assert record["psnr"] is not None, record
        with Image.open(record["output"]) as marked:
            assert marked.format == fmt, (name, marked.format)
            with Image.open(io.BytesIO(data)) as source:
                size = source.size[::-1] if name == "exif_rotated.jpg" else source.size
                assert marked.size == size, name
                if name.startswith("icc"):
                    assert marked.info.get("icc_profile") == source.info.get("icc_profile"), name
                if name in ("rgba.png", "alpha_lossless.webp", "la.png"):
                    assert marked.mode == source.mode, name
                    np.testing.assert_array_equal(np.asarray(marked.getchannel("A")),
                                                  np.asarray(source.getchannel("A")))
                if name == "palette_trns.png":
                    assert marked.mode == "RGBA"
                    np.testing.assert_array_equal(np.asarray(marked.getchannel("A")),
                                                  np.asarray(source.convert("RGBA").getchannel("A")))
                if name == "gray16.png":
                    assert marked.mode.startswith("I")
                if name == "exif_rotated.jpg":
                    assert marked.getexif().get(0x0112, 1) == 1
                if name == "progressive.jpg":
                    assert marked.info.get("progressive") or marked.info.get("progression")
    # the external image (absolute path in the manifest) is marked under marked/_external/
    [external] = [r for r in corpus_run["records"] if r["image"].endswith("external.png")]
    assert external["status"] == "ok"
    assert external["output"].startswith(str(out / "marked" / "_external") + os.sep)
    assert os.path.isfile(external["output"])
    assert external["payload"].endswith("3")


def test_broken_inputs_get_clear_error_codes(corpus_run):
    groups = by_image(corpus_run["records"], corpus_run["root"])
    for name, (_, code) in corpus_run["broken"].items():
        [record] = groups[name]
        assert (record["status"], record["error_code"]) == ("error", code), record
        assert record["output"] is None
    assert not glob.glob(str(corpus_run["out"] / "marked" / "*bomb*"))
    [bad] = groups["bad_payload.png"]
    assert (bad["status"], bad["error_code"]) == ("error", "bad_payload")
    [long] = groups["too_long_payload.png"]
    assert (long["status"], long["error_code"]) == ("error", "bad_payload")
    assert "bits" in long["error"] or "fit" in long["error"] or "capacity" in long["error"], long
    [missing] = groups["missing.jpg"]
    assert (missing["status"], missing["error_code"], missing["line"]) == ("error", "not_found", 10)
    traversal = [r for r in corpus_run["records"] if "secret.jpg" in r["image"]]
    assert sorted(r["line"] for r in traversal) == [4, 6]
    assert {(r["status"], r["error_code"]) for r in traversal} == {("error", "bad_path")}


def test_duplicate_row_first_line_wins(corpus_run):
    groups = by_image(corpus_run["records"], corpus_run["root"])
    first, second = sorted(groups["rgba.png"], key=lambda r: r["line"])
    assert (first["status"], first["line"]) == ("ok", 2)
    assert first["payload"].lstrip("0") == "a1b2c"
    assert (second["status"], second["error_code"], second["line"]) == ("skipped", "duplicate_row", 16)
    assert "line 2" in second["error"]


def test_counts_and_codes_add_up(corpus_run):
    summary, records = corpus_run["summary"], corpus_run["records"]
    counts = summary["counts"]
    assert counts["ok"] == len(corpus_run["valid"]) - 1 + 1  # - the 1x1 image (unreadable), + the external one
    assert counts["skipped"] == 1
    assert counts["error"] == len(records) - counts["ok"] - counts["skipped"] - counts["ignored"]
    codes: dict[str, int] = {}
    for record in records:
        if record["status"] == "error":
            codes[record["error_code"]] = codes.get(record["error_code"], 0) + 1
    assert summary["error_codes"] == dict(sorted(codes.items()))
    assert sum(summary["error_codes"].values()) == counts["error"]
    assert summary["skip_reasons"] == {"duplicate_row": 1}


def test_nothing_is_written_outside_output(corpus_run):
    after = tree(corpus_run["base"])
    new = after - corpus_run["before"]
    assert new and all(path.startswith("out" + os.sep) for path in new), sorted(new)
    assert not [p for p in new if p.endswith(".tmp")], sorted(new)
    marked = {os.path.relpath(p, os.path.join("out", "marked")) for p in new
              if p.startswith(os.path.join("out", "marked") + os.sep)}
    outputs = {os.path.relpath(r["output"], corpus_run["out"] / "marked")
               for r in corpus_run["records"] if r["status"] == "ok"}
    assert marked == outputs  # one file per ok record, nothing else


def test_key_never_appears_in_outputs_reports_or_logs(corpus_run):
    needle = KEY.encode()
    for path in tree(corpus_run["out"]):
        with open(corpus_run["out"] / path, "rb") as f:
            assert needle not in f.read(), path
    for text in (corpus_run["logs"], corpus_run["stdout"], corpus_run["stderr"]):
        assert KEY not in text


def test_rerun_over_the_same_output_gives_identical_results(corpus_run, monkeypatch):
    """Same inputs, same output folder, batches cut differently: identical summary.json,
    identical records (sorted), byte-identical marked files, no leftovers of the first report."""
    out = corpus_run["out"]
    first_summary = (out / "report" / "summary.json").read_bytes()
    key = lambda r: (r["image"], r["line"] or 0)  # noqa: E731
    first_records = sorted(corpus_run["records"], key=key)
    digest = lambda: {p: hashlib.sha256((out / "marked" / p).read_bytes()).hexdigest()  # noqa: E731
                      for p in tree(out / "marked")}
    first_files = digest()
    threes = {"min_batch_size": 3, "max_batch_size": 3}  # cut batches otherwise than the first run
    monkeypatch.setattr(handlers.BundleHandler, "batch_elements_kwargs", lambda self: threes)
    code = main(["--input", str(corpus_run["root"]), "--assignments", str(corpus_run["manifest"]),
                 "--payload", DEFAULT_PAYLOAD, "--output", str(out), "--key", KEY, "--batch_size", "4",
                 *FORMAT_RUN])
    assert code == 0
    assert (out / "report" / "summary.json").read_bytes() == first_summary
    assert sorted(read_records(out), key=key) == first_records
    assert digest() == first_files
    assert not [p for p in tree(out) if p.endswith(".tmp")]


def test_inference_results_do_not_depend_on_how_batches_are_cut():
    """TensorFlow's CPU kernels differ in the last bits between batch sizes (1 vs 2 or 3 here);
    the handlers call the model with one fixed shape, so an image's residual and logits are the
    same whatever batch it rides in (with 1, 4 or 9 tiles an image)."""
    from filigree.bundle import load_bundle
    from filigree.payload import PayloadCodec
    from filigree.resources import bundled_model_dir

    model = load_bundle(bundled_model_dir())
    size = model.card.working_size
    codec = PayloadCodec.from_card(model.card.raw)
    rng = np.random.default_rng(1)
    items = [planning.Item(planning.Job(f"/x/{i}.png", "1", None, f"{i}.png"), {},
                             bits=codec.encode(str(i + 1)),
                             views={"clean": rng.random((tiles, size, size, 3), dtype=np.float32)})
             for i, tiles in enumerate((1, 4, 9))]
    embedder = handlers.EmbedderHandler(bundled_model_dir(), 8)
    extractor = handlers.ExtractorHandler(bundled_model_dir(), 8)
    for handler in (embedder, extractor):
        alone = handler.run_inference(items[:1], model)[0].inference
        together = handler.run_inference(items, model)[0].inference
        name = "residual" if handler is embedder else "clean"
        np.testing.assert_array_equal(alone[name], together[name])
        if handler is embedder:
            np.testing.assert_array_equal(alone["source_logits"], together["source_logits"])
    embedded = embedder.run_inference(items, model)[2].inference
    assert embedded["residual"].shape[:2] == (3 * size, 3 * size)
    assert embedded["source_logits"].shape == (9, model.card.payload_bits)
    assert extractor.run_inference(items, model)[2].inference["clean"].shape == (9, model.card.payload_bits)


def test_fixed_shape_calls_pad_and_trim():
    seen = []

    def fn(a, b):
        seen.append(a.shape)
        return a.sum(axis=1) + b

    a, b = np.arange(14, dtype=np.float32).reshape(7, 2), np.ones(7, np.float32)
    np.testing.assert_array_equal(handlers.fixed_shape_calls(fn, (a, b), 3), a.sum(axis=1) + 1)
    assert seen == [(3, 2)] * 3


# -- smaller runs -----------------------------------------------------------------------------

@pytest.fixture
def small_folder(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    _rgb(24, 32, 1).save(root / "a.png")
    _rgb(24, 32, 2).save(root / "b.jpg", quality=90)
    _rgb(24, 32, 3).convert("P").save(root / "c.gif")
    return root


def test_skip_existing_resumes_without_redoing_and_output_inside_input_is_not_an_input(small_folder):
    """--output inside --input: a re-run never lists the marked files as inputs; with
    --skip_existing it redoes only the image whose output is missing."""
    out = small_folder / "out"
    assert main(["--input", str(small_folder), "--payload", "1", "--output", str(out), "--verify", "none", "--min_psnr", "0"]) == 0
    assert len(read_records(out)) == 3
    marked = {p: os.path.getmtime(out / "marked" / p) for p in ("a.png", "b.jpg", "c.gif.png")}
    os.remove(out / "marked" / "b.jpg")
    assert main(["--input", str(small_folder), "--payload", "1", "--output", str(out), "--verify", "none", "--min_psnr", "0",
                 "--skip_existing"]) == 0
    records = {os.path.basename(r["image"]): r for r in read_records(out)}
    assert {k: (r["status"], r["error_code"]) for k, r in records.items()} == {
        "a.png": ("skipped", "exists"), "b.jpg": ("ok", None), "c.gif": ("skipped", "exists")}
    assert records["c.gif"]["output"] == str(out / "marked" / "c.gif.png")
    assert os.path.getmtime(out / "marked" / "a.png") == marked["a.png"]
    assert read_summary(out)["counts"] == {"total": 3, "ok": 1, "error": 0, "skipped": 2, "ignored": 0}
    assert sorted(tree(out / "marked")) == ["a.png", "b.jpg", "c.gif.png"]


def test_max_error_rate_fails_the_job_loudly(small_folder, tmp_path, capsys):
    (small_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out"
    code = main(["--input", str(small_folder), "--payload", "1", "--output", str(out), "--verify", "none", "--min_psnr", "0",
                 "--max_error_rate", "0.1"])
    assert code == 3
    err = capsys.readouterr().err
    assert "1 of 4 inputs failed" in err and "--max_error_rate" in err
    assert read_summary(out)["counts"] == {"total": 4, "ok": 3, "error": 1, "skipped": 0, "ignored": 0}
    # under the limit the same run passes
    assert main(["--input", str(small_folder), "--payload", "1", "--output", str(out), "--verify", "none", "--min_psnr", "0",
                 "--max_error_rate", "0.25"]) == 0


def test_bad_manifest_header_fails_before_the_job(small_folder, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    manifest.write_text("file,value\na.png,1\n")
    assert main(["--input", str(small_folder), "--assignments", str(manifest), "--output", str(tmp_path / "o")]) == 2
    assert "image,payload" in capsys.readouterr().err
    manifest.write_bytes(b"image,payload\n\xff\xfe.png,1\n")
    assert main(["--input", str(small_folder), "--assignments", str(manifest), "--output", str(tmp_path / "o")]) == 2
    assert "UTF-8" in capsys.readouterr().err


# -- faults --------------------------------------------------------------------------------------

def test_transient_write_failure_is_retried_to_exactly_one_output(small_folder, tmp_path, monkeypatch):
    """The rename that publishes b.jpg's marked file fails on its first attempt (after the temp
    file was written): the write is retried, one correct output remains and no temp file."""
    from apache_beam.io.filesystems import FileSystems

    real_rename = FileSystems.rename
    calls = {"failed": 0, "renames": 0}

    def flaky_rename(sources, destinations, *args, **kwargs):
        if any(d.endswith(os.path.join("marked", "b.jpg")) for d in destinations):
            calls["renames"] += 1
            if calls["failed"] == 0:
                calls["failed"] += 1
                raise OSError("injected transient failure")
        return real_rename(sources, destinations, *args, **kwargs)

    monkeypatch.setattr(FileSystems, "rename", staticmethod(flaky_rename))
    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.0,))
    out = tmp_path / "out"
    assert main(["--input", str(small_folder), "--payload", "1", "--output", str(out), "--verify", "none", "--min_psnr", "0"]) == 0
    assert calls == {"failed": 1, "renames": 2}
    records = {os.path.basename(r["image"]): r for r in read_records(out)}
    assert len(records) == 3 and all(r["status"] == "ok" for r in records.values()), records
    assert sorted(tree(out / "marked")) == ["a.png", "b.jpg", "c.gif.png"]
    with Image.open(out / "marked" / "b.jpg") as marked:
        assert marked.format == "JPEG" and marked.size == (32, 24)


def test_failed_step_then_rerun_leaves_exactly_one_correct_output(small_folder, tmp_path, monkeypatch):
    """A fault that kills the job on its first attempt (not an element error: it escapes every
    handler) leaves no partial or duplicate output; the re-run a scheduler makes completes it."""
    out = tmp_path / "out"

    class Crash(BaseException):
        pass

    real_write = storage.write_atomically
    attempts = {"n": 0}

    def crash_once(path, data):
        if path.endswith("b.jpg"):
            attempts["n"] += 1
            if attempts["n"] == 1:
                raise Crash("worker died")
        return real_write(path, data)

    monkeypatch.setattr(storage, "write_atomically", crash_once)
    with pytest.raises(BaseException):
        main(["--input", str(small_folder), "--payload", "1", "--output", str(out), "--verify", "none", "--min_psnr", "0"])
    assert not [p for p in tree(tmp_path) if p.endswith(".tmp")]
    assert not os.path.exists(out / "marked" / "b.jpg")
    assert main(["--input", str(small_folder), "--payload", "1", "--output", str(out), "--verify", "none", "--min_psnr", "0"]) == 0
    records = read_records(out)
    assert sorted((os.path.basename(r["image"]), r["status"]) for r in records) == [
        ("a.png", "ok"), ("b.jpg", "ok"), ("c.gif", "ok")]
    assert sorted(tree(out / "marked")) == ["a.png", "b.jpg", "c.gif.png"]


def _marked_small_folder(small_folder, out) -> dict[str, dict]:
    """Embed into `small_folder` (payload 1, no verification); its records by file name, one per image."""
    assert main(["--input", str(small_folder), "--payload", "1", "--output", str(out), "--verify", "none", "--min_psnr", "0"]) == 0
    records = {os.path.basename(r["image"]): r for r in read_records(out)}
    assert set(records) == {"a.png", "b.jpg", "c.gif"}
    return records


def test_unexpected_exceptions_become_error_records(small_folder, tmp_path, monkeypatch):
    """An encoder failure on one image (handled by the step) and an exception escaping the step
    on another (a dead letter): every image still gets exactly one record with a code, no file is
    written for either, and the job finishes."""
    real_encode = encode.encode_image

    def failing_encode(decoded, rgb, **kwargs):
        if decoded.format == "JPEG":  # b.jpg only
            raise RuntimeError("injected encoder failure")
        return real_encode(decoded, rgb, **kwargs)

    monkeypatch.setattr(encode, "encode_image", failing_encode)
    escaping = _raise_outside_handlers(marking.MarkAndWrite.process, "a.png")
    monkeypatch.setattr(marking.MarkAndWrite, "process", escaping)
    out = tmp_path / "out"
    records = _marked_small_folder(small_folder, out)
    assert (records["a.png"]["status"], records["a.png"]["error_code"]) == ("error", "mark_failed")
    assert "injected escape" in records["a.png"]["error"]
    assert (records["b.jpg"]["status"], records["b.jpg"]["error_code"]) == ("error", "encode_failed")
    assert "injected encoder failure" in records["b.jpg"]["error"]
    for name in ("a.png", "b.jpg"):
        assert records[name]["payload"] is not None and records[name]["output"] is None
    assert records["c.gif"]["status"] == "ok"
    assert sorted(tree(out / "marked")) == ["c.gif.png"]
    assert read_summary(out)["counts"] == {"total": 3, "ok": 1, "error": 2, "skipped": 0, "ignored": 0}


def test_an_exception_escaping_decoding_gives_its_image_one_record(small_folder, tmp_path, monkeypatch):
    """Planning and decoding run in one step: an exception escaping it for one image (its group
    is the dead letter) becomes that image's `internal_error` record; the others go on."""
    real_process = prepare.Prepare.process

    def escaping(self, job):
        if job.path.endswith("b.jpg"):
            raise KeyError("injected escape from decoding")
        yield from real_process(self, job)

    monkeypatch.setattr(prepare.Prepare, "process", escaping)
    out = tmp_path / "out"
    records = _marked_small_folder(small_folder, out)
    assert (records["b.jpg"]["status"], records["b.jpg"]["error_code"]) == ("error", "internal_error")
    assert "planning, reading or decoding failed unexpectedly" in records["b.jpg"]["error"]
    assert records["a.png"]["status"] == records["c.gif"]["status"] == "ok"


def test_records_are_encoded_lean_and_decoded_whole():
    from apache_beam.coders import FastPrimitivesCoder

    from pipeline.records import RecordCoder, error_record

    record = error_record("/in/a.jpg", "embed", "not_found", "image file not found", line=7, payload="0a")
    coder = RecordCoder()
    assert coder.decode(coder.encode(record)) == record
    assert len(coder.encode(record)) < len(FastPrimitivesCoder().encode(record)) / 1.5
    marked = {**record, "status": "ok", "error_code": None, "error": None, "psnr": 41.5, "attacks": {"clean": {}}}
    assert coder.decode(coder.encode(marked)) == marked


def _raise_outside_handlers(process, victim):
    def wrapped(self, element):
        path, _ = element
        if path.endswith(victim):
            raise KeyError("injected escape from MarkAndWrite")
        yield from process(self, element)
    return wrapped


def test_failed_inference_batch_gives_each_image_its_own_record(small_folder, tmp_path, monkeypatch):
    def failing(self, batch, model, inference_args=None):
        raise RuntimeError("injected inference failure")

    monkeypatch.setattr(handlers.EmbedderHandler, "run_inference", failing)
    out = tmp_path / "out"
    assert main(["--input", str(small_folder), "--payload", "1", "--output", str(out), "--verify", "none", "--min_psnr", "0",
                 "--batch_size", "2"]) == 0
    records = read_records(out)
    assert sorted(os.path.basename(r["image"]) for r in records) == ["a.png", "b.jpg", "c.gif"]
    assert {(r["status"], r["error_code"]) for r in records} == {("error", "inference_failed")}
    assert all("injected inference failure" in r["error"] for r in records)
    assert all(r["width"] == 32 and r["payload"] for r in records)
    assert read_summary(out)["counts"] == {"total": 3, "ok": 0, "error": 3, "skipped": 0, "ignored": 0}
    assert not (out / "marked").exists() or not tree(out / "marked")


def test_pathological_decode_times_out(monkeypatch):
    def slow(data, max_pixels):
        time.sleep(5)

    monkeypatch.setattr(decode, "decode_image", slow)
    started = time.monotonic()
    with pytest.raises(decode.ImageDecodeError) as info:
        prepare.decode_with_timeout(b"x", 10, 0.2)
    assert info.value.code == "timeout"
    assert time.monotonic() - started < 2


def test_bomb_is_refused_from_the_header_without_allocating():
    import resource
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(decode.ImageDecodeError) as info:
        decode.decode_image(_bomb_png())
    assert info.value.code == "too_large"
    assert time.monotonic() - started < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    # the limit is configurable (--max_pixels): a small image above it is refused the same way
    with pytest.raises(decode.ImageDecodeError) as info:
        decode.decode_image(_save(_rgb(24, 32), "PNG"), max_pixels=24 * 32 - 1)
    assert info.value.code == "too_large"


def test_output_paths_never_leave_the_output_folder(tmp_path):
    from pipeline.options import RunConfig
    cfg = RunConfig(input=str(tmp_path / "in"), output=str(tmp_path / "out"))
    root = str(tmp_path / "in")
    for path in ("/etc/passwd", str(tmp_path / "in" / ".." / ".." / "x.jpg"), "gs://bucket/../../x.jpg",
                 "/a/b/../../../../c.png", str(tmp_path / "in" / "sub" / "y.png"), "//double//slash.png"):
        relative = planning.output_relative(root, path)
        job = planning.Job(path, "1", None, relative)
        target = planning.output_path(cfg, job, ".png")
        assert os.path.normpath(target).startswith(str(tmp_path / "out" / "marked") + os.sep), (path, target)
    with pytest.raises(StepFailure):
        planning.output_path(cfg, planning.Job("x", "1", None, "../../escape.png"))


# -- 48 MP ---------------------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("FILIGREE_SKIP_48MP") == "1", reason="FILIGREE_SKIP_48MP=1")
def test_48_megapixel_photo(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    small = _rgb(600, 800, 21).resize((8000, 6000), Image.Resampling.BILINEAR)
    small.save(root / "big.jpg", quality=85)
    del small
    out = tmp_path / "out"
    assert main(["--input", str(root), "--payload", "1", "--output", str(out), "--verify", "clean"]) == 0
    [record] = read_records(out)
    assert record["status"] == "ok", record
    assert (record["width"], record["height"]) == (8000, 6000)
    with Image.open(record["output"]) as marked:
        assert marked.size == (8000, 6000) and marked.format == "JPEG"


def test_listing_skips_what_the_job_writes_unless_reading_from_it():
    assert planning.excluded_prefixes("/p/out", "/p") == ("/p/out/marked", "/p/out/report")
    assert planning.excluded_prefixes("/p", "/p") == ("/p/marked", "/p/report")
    assert planning.excluded_prefixes("/p/out", "/p/out/marked") == ("/p/out/report",)
    assert planning.excluded_prefixes("/p/out", "/p/out/marked/sub") == ("/p/out/report",)
    assert planning.excluded_prefixes("gs://b/out", "gs://b") == ("gs://b/out/marked", "gs://b/out/report")


def test_hostile_manifest_rows_are_error_records_not_crashes(tmp_path):
    from pipeline.manifest import check_manifest_header, parse_manifest_text
    root = "/data/in"
    jsonl = "\n".join([
        '{"image": "a.jpg", "payload": "01"}',
        "not json at all",
        "[1, 2]",
        '{"image": 7, "payload": "01"}',
        '{"image": "b.jpg", "payload": true}',
        '{"image": "c.jpg", "payload": 12}',
        '{"image": "nul\\u0000.jpg", "payload": "01"}',
        '{"image": "C:\\\\x.jpg", "payload": "01"}',
        '{"image": "../../etc/passwd", "payload": "01"}',
        '{"image": "/abs/ok.jpg", "payload": "01"}',
        '{"image": "$(rm -rf /).jpg", "payload": "__import__(\'os\')"}',
        "",
    ])
    rows = list(parse_manifest_text("\ufeff" + jsonl, root, "jsonl"))
    got = [(row.line, row.error_code) for row in rows]
    assert got == [(1, None), (2, "bad_manifest_row"), (3, "bad_manifest_row"), (4, "bad_manifest_row"),
                   (5, "bad_payload"), (6, None), (7, "bad_path"), (8, "bad_path"), (9, "bad_path"),
                   (10, None), (11, None)]
    assert rows[9].path == "/abs/ok.jpg"
    assert rows[10].path == "/data/in/$(rm -rf /).jpg"  # a plain name: nothing is ever run
    csv_text = "\ufeffimage,payload,extra\r\n\r\na.jpg,01,x\r\n,02\r\nb.jpg\r\n"
    rows = list(parse_manifest_text(csv_text, root, "csv"))
    assert [(row.line, row.error_code) for row in rows] == [(3, None), (4, "bad_path"), (5, "bad_payload")]
    (tmp_path / "ok.csv").write_bytes(b"\xef\xbb\xbfImage , PAYLOAD\r\n")
    check_manifest_header(str(tmp_path / "ok.csv"))
    (tmp_path / "empty.csv").write_bytes(b"")
    check_manifest_header(str(tmp_path / "empty.csv"))
    (tmp_path / "bad.csv").write_text("path,value\n")
    with pytest.raises(ValueError, match="image,payload"):
        check_manifest_header(str(tmp_path / "bad.csv"))
