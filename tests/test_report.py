"""Tests for the run report (pipeline.summary, pipeline.thumbnails, pipeline.report): records and
images are generated on the fly."""

from __future__ import annotations

import base64
import io
import json
import math
import pickle
import random

import numpy as np
import pytest
from PIL import Image

from pipeline import report, summary as run_summary, thumbnails
from pipeline.report import format_console_summary, render_html, write_summary
from pipeline.summary import SAMPLE_SIZE, SummaryFn, summarize
from pipeline.thumbnails import make_thumbnails, sample_thumbnails

HOSTILE = "<script>alert(1)</script>.jpg"
ERROR_CODES = ("corrupt", "truncated", "not_an_image")
SKIP_REASONS = ("exists", "too_small")


def _record(i: int, rng: random.Random) -> dict:
    """A varied per-image record; about 1 in 10 errors and 1 in 20 skipped."""
    base = {
        "image": f"gs://bucket/in/img_{i:05d}.jpg", "status": "ok", "error": None,
        "error_code": None, "output": f"gs://bucket/out/img_{i:05d}.jpg", "payload": None,
        "decoded": None, "detected": None, "p_value": None, "ber": None, "corrected": None,
        "match": None, "psnr": None, "attacks": {}, "width": 640, "height": 480,
        "format": "JPEG", "line": None, "notes": [], "mode": "embed",
    }
    roll = rng.random()
    if roll < 0.10:
        code = rng.choice(ERROR_CODES)
        return {**base, "status": "error", "error": f"{code}: bad", "error_code": code,
                "output": None, "width": None, "height": None, "format": None}
    if roll < 0.15:
        return {**base, "status": "skipped", "error_code": rng.choice(SKIP_REASONS),
                "output": None}
    payload = "deadbeef"
    ber = rng.choice([0.0, 0.0, 0.0, rng.random() * 0.2, None, float("nan")])
    decoded = None if ber is None else payload if ber == 0.0 else "deadbeee"
    attacks = {}
    for name in ("jpeg:50", "resize:0.5", "jpeg:90"):
        if rng.random() < 0.8:
            attack_ber = rng.random() * 0.3
            attack_decoded = rng.choice([payload, "00000000", None])
            attacks[name] = {"ber": attack_ber, "decoded": attack_decoded,
                             "detected": rng.random() < 0.7, "p_value": rng.random() * 1e-3,
                             "match": None if attack_decoded is None
                             else attack_decoded == payload}
    return {**base, "payload": payload, "decoded": decoded, "detected": ber is not None,
            "p_value": 1e-9, "ber": ber, "match": None if decoded is None else decoded == payload,
            "psnr": rng.choice([rng.uniform(15.0, 65.0), rng.uniform(38.0, 46.0), None,
                                float("nan"), float("inf")]),
            "attacks": attacks}


@pytest.fixture(scope="module")
def records() -> list[dict]:
    rng = random.Random(1234)
    return [_record(i, rng) for i in range(600)]


def _partial(fn: SummaryFn, chunk: list[dict]):
    acc = fn.create_accumulator()
    for record in chunk:
        acc = fn.add_input(acc, record)
    return acc


def _chunks(items: list, rng: random.Random, n: int) -> list[list]:
    cuts = sorted(rng.sample(range(1, len(items)), n - 1))
    return [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)])]


def _png(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _decode_b64_png(value: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(value)))
    assert image.format == "PNG"
    return image


# --------------------------------------------------------------------------------------------
# Summary


def test_counts_add_up(records):
    summary = summarize(records)
    counts = summary["counts"]
    assert counts["total"] == len(records) == counts["ok"] + counts["error"] + counts["skipped"]
    assert counts["ok"] == sum(r["status"] == "ok" for r in records)
    assert sum(summary["error_codes"].values()) == counts["error"]
    assert sum(summary["skip_reasons"].values()) == counts["skipped"]
    assert set(summary["error_codes"]) <= set(ERROR_CODES)
    assert set(summary["skip_reasons"]) <= set(SKIP_REASONS)
    assert summary["mode"] == "embed"
    assert summary["views"]["clean"]["n"] == counts["ok"]


def test_view_metrics_match_a_direct_computation(records):
    summary = summarize(records)
    ok = [r for r in records if r["status"] == "ok"]
    for name in ("clean", "jpeg:50", "jpeg:90", "resize:0.5"):
        entries = ok if name == "clean" else [r["attacks"][name] for r in ok
                                              if name in r["attacks"]]
        bers = [e["ber"] for e in entries if e["ber"] is not None and not math.isnan(e["ber"])]
        view = summary["views"][name]
        assert view["n"] == len(entries)
        assert view["ber_mean"] == pytest.approx(sum(bers) / len(bers), rel=1e-12)
        assert view["bit_accuracy"] == pytest.approx(1 - view["ber_mean"])
        assert view["exact_rate"] == pytest.approx(
            sum(e["match"] is True for e in entries) / len(entries))
        assert view["decoded_rate"] == pytest.approx(
            sum(e["decoded"] is not None for e in entries) / len(entries))
        detected = [e["detected"] for e in entries if e["detected"] is not None]
        assert view["detected_rate"] == pytest.approx(sum(detected) / len(detected))


def test_psnr_stats_and_histogram(records):
    summary = summarize(records)
    values = [r["psnr"] for r in records if r["status"] == "ok" and r["psnr"] is not None
              and math.isfinite(r["psnr"])]
    psnr = summary["psnr"]
    assert psnr["n"] == len(values)
    assert psnr["mean"] == pytest.approx(sum(values) / len(values), rel=1e-12)
    assert (psnr["min"], psnr["max"]) == (min(values), max(values))
    hist = psnr["histogram"]
    assert len(hist["counts"]) == 40 and (hist["lo"], hist["hi"]) == (20, 60)
    assert hist["underflow"] == sum(v < 20 for v in values)
    infinite = sum(r["status"] == "ok" and r["psnr"] == float("inf") for r in records)
    assert psnr["infinite"] == infinite > 0
    assert hist["overflow"] == sum(v >= 60 for v in values) + infinite
    assert sum(hist["counts"]) + hist["underflow"] + hist["overflow"] == len(values) + infinite


def test_merge_of_partials_equals_one_pass_in_any_order(records):
    fn = SummaryFn()
    one_pass = fn.extract_output(_partial(fn, records))
    rng = random.Random(7)
    results = []
    for trial in range(6):
        shuffled = records[:]
        rng.shuffle(shuffled)
        partials = [_partial(fn, chunk) for chunk in _chunks(shuffled, rng, 2 + trial)]
        rng.shuffle(partials)
        # Merge as a tree in a random shape, through a pickle round trip like Beam's coder.
        while len(partials) > 1:
            i = rng.randrange(len(partials) - 1)
            merged = fn.merge_accumulators([partials[i], partials[i + 1]])
            partials[i:i + 2] = [pickle.loads(pickle.dumps(merged))]
        results.append(fn.extract_output(partials[0]))
    for result in results:
        assert result == one_pass
        assert json.dumps(result, sort_keys=True) == json.dumps(one_pass, sort_keys=True)


def test_merge_leaves_inputs_untouched(records):
    fn = SummaryFn()
    a, b = _partial(fn, records[:300]), _partial(fn, records[300:])
    before = (fn.extract_output(a), fn.extract_output(b))
    fn.merge_accumulators([a, b])
    fn.merge_accumulators([b, a])
    assert (fn.extract_output(a), fn.extract_output(b)) == before
    assert fn.extract_output(fn.merge_accumulators([])) == summarize([])


def test_sample_is_smallest_hashes_and_order_independent(records):
    import hashlib

    ok_images = {r["image"] for r in records if r["status"] == "ok"}
    expected = sorted(ok_images, key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    samples = set()
    rng = random.Random(3)
    for _ in range(5):
        shuffled = records + records[:50]  # duplicates must not take two slots
        rng.shuffle(shuffled)
        sample = summarize(shuffled)["sample"]
        samples.add(json.dumps(sample, sort_keys=True))
        assert [s["image"] for s in sample] == expected[:SAMPLE_SIZE]
    assert len(samples) == 1


def test_sample_accumulator_stays_small():
    fn = SummaryFn()
    acc = fn.create_accumulator()
    rng = random.Random(0)
    for i in range(3000):
        acc = fn.add_input(acc, {**_record(i, rng), "status": "ok"})
    assert len(acc.sample) == SAMPLE_SIZE
    assert len(pickle.dumps(acc)) < 8000


def test_none_nan_and_inf_are_handled():
    nan, inf = float("nan"), float("inf")
    records = [
        {"image": "a.png", "status": "ok", "payload": "ab", "decoded": None, "ber": nan,
         "detected": None, "match": None, "psnr": nan, "attacks": {"jpeg:50": None},
         "mode": "embed"},
        {"image": "b.png", "status": "ok", "payload": None, "decoded": None, "ber": None,
         "detected": None, "match": None, "psnr": inf,
         "attacks": {"jpeg:50": {"ber": inf, "decoded": None, "detected": False,
                                 "p_value": nan, "match": None}}, "mode": "embed"},
        {"image": "c.png", "status": "ok", "payload": "ab", "decoded": "ab",
         "ber": np.float32(0.0), "detected": np.bool_(True), "match": True,
         "psnr": np.float64(41.5), "attacks": {}, "mode": "embed"},
        {"image": "d.png", "status": "error", "error_code": None, "mode": "embed"},
        {"image": "e.png", "status": "skipped", "error_code": None, "mode": "extract"},
        {"image": "f.png", "status": "weird", "error_code": "x", "mode": None},
    ]
    summary = summarize(records)
    json.dumps(summary, allow_nan=False)  # strictly valid JSON
    assert summary["counts"] == {"total": 6, "ok": 3, "error": 2, "skipped": 1, "ignored": 0}
    assert summary["error_codes"] == {"invalid_status": 1, "unknown": 1}
    assert summary["skip_reasons"] == {"unknown": 1}
    assert summary["mode"] == "mixed"
    clean = summary["views"]["clean"]
    assert (clean["n"], clean["ber_n"], clean["ber_mean"]) == (3, 1, 0.0)
    assert (clean["with_payload"], clean["exact_rate"]) == (2, 0.5)
    assert (clean["detected_n"], clean["detected_rate"]) == (1, 1.0)
    jpeg = summary["views"]["jpeg:50"]
    assert (jpeg["n"], jpeg["ber_mean"], jpeg["exact_rate"], jpeg["detected_rate"]) == (
        1, None, None, 0.0)
    assert summary["psnr"]["n"] == 1 and summary["psnr"]["infinite"] == 1
    assert summary["psnr"]["mean"] == summary["psnr"]["min"] == 41.5
    [b] = [s for s in summary["sample"] if s["image"] == "b.png"]
    assert b["psnr"] is None


def test_empty_summary_renders():
    summary = summarize([])
    assert summary["counts"]["total"] == 0 and summary["mode"] is None
    assert summary["psnr"]["mean"] is None and summary["views"] == {}
    page = render_html(summary, [])
    assert "<svg" in page and "No thumbnails" in page
    assert "0 images" in format_console_summary(summary, "/tmp/out")


# --------------------------------------------------------------------------------------------
# HTML and console


def test_html_escapes_hostile_names():
    hostile_record = {"image": f"gs://b/{HOSTILE}", "status": "ok", "payload": "aa",
                      "decoded": "aa", "ber": 0.0, "detected": True, "match": True, "psnr": 40.0,
                      "attacks": {"<b>x</b>": {"ber": 0.1, "decoded": None, "detected": True,
                                               "p_value": 0.0, "match": None}},
                      "mode": "embed"}
    errors = [{"image": HOSTILE, "status": "error", "error_code": "<img src=x onerror=y>",
               "mode": "embed"}]
    summary = summarize([hostile_record, *errors])
    thumb = {"image": f"gs://b/{HOSTILE}", "name": HOSTILE, "original": "AAAA",
             "marked": 'x" onerror="alert(1)', "residual": "AAAA", "gain": 20}
    page = render_html(summary, [thumb])
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in page
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=y&gt;" in page
    assert 'onerror="alert' not in page  # malformed base64 is never put into an attribute
    assert "unavailable" in page
    console = format_console_summary(summary, "/out")
    assert "<img src=x onerror=y> 1" in console  # plain text, not HTML


def test_html_has_tables_charts_and_headlines(records):
    summary = summarize(records)
    page = render_html(summary, [])
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<svg") == 2
    assert 'id="accuracy-chart"' in page and 'id="psnr-chart"' in page
    assert '<table class="views">' in page and '<table class="codes">' in page
    for name in ("clean", "jpeg:50", "jpeg:90", "resize:0.5", *summary["error_codes"],
                 *summary["skip_reasons"]):
        assert f">{name}<" in page
    assert f"{summary['counts']['total']:,}" in page
    assert f"{summary['psnr']['mean']:.2f} dB" in page
    assert f"{100 * summary['views']['clean']['exact_rate']:.2f}%" in page
    # No external assets or scripts.
    assert "<script" not in page and "src=\"http" not in page and "href=" not in page
    # Attacks appear in natural order after "clean".
    order = [page.index(f'<th scope="row">{n}</th>') for n in
             ("clean", "jpeg:50", "jpeg:90", "resize:0.5")]
    assert order == sorted(order)


def test_console_summary(records):
    summary = summarize(records)
    text = format_console_summary(summary, "gs://bucket/out")
    counts = summary["counts"]
    assert f"{counts['total']:,} images" in text
    assert f"marked: {counts['ok']:,}" in text
    for code in summary["error_codes"]:
        assert code in text
    assert f"mean {summary['psnr']['mean']:.2f} dB" in text
    assert "clean " in text and "jpeg:50 " in text
    assert "gs://bucket/out/report/summary.html" in text
    assert len(text.splitlines()) <= 10


# --------------------------------------------------------------------------------------------
# Thumbnails and files


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    noise = np.random.default_rng(seed).normal(0, 4, base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _mark(array: np.ndarray) -> np.ndarray:
    pattern = (np.indices(array.shape[:2]).sum(axis=0) % 2 * 2 - 1)[..., None] * 2
    return np.clip(array.astype(np.int16) + pattern, 0, 255).astype(np.uint8)


def test_thumbnails_from_generated_images():
    original = _photo(300, 500)
    thumb = make_thumbnails("gs://b/dir/a <b>.png", _png(original), _png(_mark(original)), 128)
    assert thumb["name"] == "a <b>.png" and thumb["image"] == "gs://b/dir/a <b>.png"
    assert (thumb["width"], thumb["height"]) == (500, 300)
    assert thumb["residual_max"] == 2 and thumb["gain"] == 20
    for key in ("original", "marked", "residual"):
        image = _decode_b64_png(thumb[key])
        assert image.size == (128, 77) and image.mode == "RGB"
    # The residual (computed at full size, then reduced) shows the amplified ±2 pattern.
    residual = np.asarray(_decode_b64_png(thumb["residual"]))
    assert 30 < residual.mean() <= 40
    # A ±2 checkerboard is high-frequency texture: visible to SSIMULACRA2 but not glaring.
    assert 40 < thumb["ssimulacra2"] < 95
    page = render_html(summarize([]), [thumb])
    assert f"SSIMULACRA2 {thumb['ssimulacra2']:.1f}" in page
    assert f"Mean over these 1: {thumb['ssimulacra2']:.1f}" in page
    assert "sampled images only" in page


def test_thumbnails_apply_exif_orientation_and_modes():
    gray16 = (np.arange(40 * 60, dtype=np.uint16).reshape(40, 60) * 20)
    buffer = io.BytesIO()
    Image.fromarray(gray16).save(buffer, format="PNG")
    thumb = make_thumbnails("g.png", buffer.getvalue(), buffer.getvalue())
    assert thumb is not None and thumb["residual_max"] == 0 and thumb["ssimulacra2"] == 100

    rgba = np.dstack([_photo(20, 30), np.full((20, 30), 128, np.uint8)])
    assert make_thumbnails("a.png", _png(rgba), _png(rgba)) is not None

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise for display
    buffer = io.BytesIO()
    Image.fromarray(_photo(40, 80)).save(buffer, format="JPEG", exif=exif.tobytes())
    thumb = make_thumbnails("r.jpg", buffer.getvalue(), buffer.getvalue())
    assert (thumb["width"], thumb["height"]) == (40, 80)


def test_thumbnails_of_undecodable_input_are_none():
    good = _png(_photo(10, 10))
    assert make_thumbnails("x.jpg", b"not an image", good) is None
    assert make_thumbnails("x.jpg", good, b"") is None
    assert make_thumbnails("x.jpg", good[:40], good) is None


def test_write_summary_and_sample_thumbnails_locally(tmp_path):
    records = []
    for i in range(3):
        src, out = tmp_path / "in" / f"p{i}.png", tmp_path / "out" / f"p{i}.png"
        for path, array in ((src, _photo(32, 48, i)), (out, _mark(_photo(32, 48, i)))):
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(_png(array))
        records.append({"image": str(src), "status": "ok", "output": str(out), "payload": "aa",
                        "decoded": "aa", "ber": 0.0, "detected": True, "match": True,
                        "psnr": 42.0 + i, "attacks": {}, "mode": "embed"})
    records.append({"image": str(tmp_path / "gone.png"), "status": "ok",
                    "output": str(tmp_path / "gone_out.png"), "psnr": 40.0, "mode": "embed"})
    summary = summarize(records)
    thumbs = sample_thumbnails(summary, size=64)
    assert sorted(t["image"] for t in thumbs) == sorted(r["image"] for r in records[:3])
    assert all(t["psnr"] in (42.0, 43.0, 44.0) for t in thumbs)

    output = tmp_path / "result" / "run1"
    json_path, html_path = write_summary(str(output), summary, thumbs)
    assert json_path == str(output / "report" / "summary.json")
    assert html_path == str(output / "report" / "summary.html")
    text = (output / "report" / "summary.json").read_text()
    assert json.loads(text) == summary
    assert text == json.dumps(summary, indent=2, sort_keys=True) + "\n"
    page = (output / "report" / "summary.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 9 and "42.00 dB" in page
    assert sorted(p.name for p in (output / "report").iterdir()) == [
        "summary.html", "summary.json"]  # no temp files left behind
    # Rewriting replaces the files.
    write_summary(str(output) + "/", summarize([]), [])
    assert json.loads((output / "report" / "summary.json").read_text())["counts"]["total"] == 0


def test_summary_fn_in_a_beam_pipeline(records):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    expected = summarize(records)
    with TestPipeline() as pipeline:
        result = (pipeline | beam.Create(records, reshuffle=False)
                  | beam.CombineGlobally(SummaryFn()))
        assert_that(result, equal_to([expected]))


def test_report_modules_export_what_they_list():
    for module in (report, run_summary, thumbnails):
        for name in module.__all__:
            assert hasattr(module, name)


def test_write_summary_to_gcs(gcs_bucket):
    from apache_beam.io.filesystems import FileSystems

    summary = summarize([{"image": "gs://x/a.jpg", "status": "ok", "psnr": 40.0,
                          "mode": "embed"}])
    prefix = f"gs://{gcs_bucket.name}/runs/1"
    json_path, html_path = write_summary(prefix, summary, [])
    assert (json_path, html_path) == (f"{prefix}/report/summary.json",
                                      f"{prefix}/report/summary.html")
    with FileSystems.open(json_path) as handle:
        assert json.loads(handle.read()) == summary
    with FileSystems.open(html_path) as handle:
        assert handle.read().startswith(b"<!DOCTYPE html>")
    [match] = FileSystems.match([f"{prefix}/report/*"])
    assert sorted(m.path for m in match.metadata_list) == [html_path, json_path]


def test_thumbnails_of_a_large_jpeg_are_made_reduced():
    height, width = 2400, 3200  # larger than thumbnails.ANALYSIS_SIDE: decoded at reduced scale
    original = _photo(height, width)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.rint(6 * np.sin(x / 150.0) * np.cos(y / 110.0)).astype(np.int16)[..., None]
    marked = np.clip(original.astype(np.int16) + smooth, 0, 255).astype(np.uint8)

    def jpeg(array):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=95)
        return buffer.getvalue()

    thumb = make_thumbnails("big.jpg", jpeg(original), jpeg(marked), 128)
    assert (thumb["width"], thumb["height"]) == (width, height)
    assert (thumb["thumb_width"], thumb["thumb_height"]) == (128, 96)
    assert 3 <= thumb["residual_max"] <= 12
    residual = np.asarray(_decode_b64_png(thumb["residual"])).astype(np.float32)
    assert residual.mean() > 20  # the smooth ±6 pattern, amplified, survives the reduction
    # On the 1600 x 1200 screen view the smooth ±6 blobs are plainly visible.
    assert thumb["ssimulacra2"] < 70
