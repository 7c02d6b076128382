"""Calibration of `detected` on images, with the bundled model: unmarked natural and generated
images read blind and informed are detected at no more than the stated `--fpr`, and their
p-values are not below uniform. Also what a read promises (`ReadResult`) and how `extract`
treats its arguments. The large measurement is `benchmarks/calibration.py`."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from pipeline import Watermarker
from filigree.payload import format_payload
from filigree.reframe import SearchConfig
from filigree.resources import bundled_samples_dir
from filigree.tiling import decode_tiles

READS = 60
FPRS = (0.05, 0.01)
PAYLOAD = "0123456789abc"
SAMPLES = sorted(p for p in Path(bundled_samples_dir()).iterdir() if p.suffix in (".jpg", ".png"))


def binomial_upper(n: int, p: float, alpha: float = 1e-3) -> int:
    """Smallest c with P[Binom(n, p) > c] <= alpha: counts above it reject 'rate <= p'."""
    cdf, c = 0.0, 0
    while True:
        cdf += math.comb(n, c) * p ** c * (1 - p) ** (n - c)
        if 1.0 - cdf <= alpha:
            return c
        c += 1


def _generated(rng: np.random.Generator) -> Image.Image:
    """A smooth random scene plus grain, 96-400 px a side."""
    height, width = (int(v) for v in rng.integers(96, 400, 2))
    coarse = rng.uniform(0, 1, (int(rng.integers(2, 9)), int(rng.integers(2, 9)), 3))
    scene = Image.fromarray(np.uint8(coarse * 255)).resize((width, height), Image.BICUBIC)
    rgb = np.asarray(scene, np.float32) / 255 + rng.normal(0, rng.uniform(0, 0.05), (height, width, 3))
    return Image.fromarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def _natural(rng: np.random.Generator, photos: list[Image.Image]) -> Image.Image:
    """A random crop (30-100 % of the area) of a sample photo, mirrored or JPEG'd half the time."""
    photo = photos[int(rng.integers(len(photos)))]
    area = rng.uniform(0.3, 1.0)
    w, h = round(photo.width * math.sqrt(area)), round(photo.height * math.sqrt(area))
    left, top = int(rng.integers(0, photo.width - w + 1)), int(rng.integers(0, photo.height - h + 1))
    image = photo.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        image = ImageOps.mirror(image)
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(30, 96)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


@pytest.fixture(scope="module")
def wm() -> Watermarker:
    return Watermarker.load()


@pytest.fixture(scope="module")
def null_logits(wm) -> list[tuple[np.ndarray, str]]:
    """(logits of every grid's tiles, a random expected payload) for READS unmarked images, half
    natural, half generated."""
    photos = []
    for path in SAMPLES:  # at most 480 px a side: a read's cost is its views, the rest is resizing
        photo = Image.open(path).convert("RGB")
        photo.thumbnail((480, 480), Image.BOX)
        photos.append(photo)
    rng = np.random.default_rng(21)
    out = []
    for i in range(READS):
        image = _natural(rng, photos) if i % 2 else _generated(rng)
        expected = format_payload(int(rng.integers(0, 2 ** wm.data_bits, dtype=np.uint64)), wm.data_bits)
        out.append((wm.read_logits(np.asarray(image)), expected))
    return out


@pytest.mark.parametrize("fpr", FPRS)
def test_unmarked_images_are_detected_at_most_at_the_stated_rate(wm, null_logits, fpr):
    """Blind and informed reads of every grid (`decode_tiles`, what `extract` reads) at --fpr
    0.05 and 0.01: the detected count stays within a one-sided 0.1 % binomial bound of
    READS * fpr (60 reads: at most 9 at 0.05, 4 at 0.01)."""
    limit = binomial_upper(READS, fpr)
    for mode in ("blind", "informed"):
        reads = [decode_tiles(wm.codec, logits, wm.tiling, expected if mode == "informed" else None, fpr)
                 for logits, expected in null_logits]
        detected = sum(r.detected for r in reads)
        assert detected <= limit, (mode, fpr, detected, limit)
        assert all(r.detected == (r.p_value <= fpr) for r in reads)
        assert all(r.decoded is None for r in reads if not r.detected)


def test_unmarked_p_values_are_not_below_uniform(wm, null_logits):
    for mode in ("blind", "informed"):
        p = np.array([decode_tiles(wm.codec, logits, wm.tiling, expected if mode == "informed" else None, 1.0).p_value
                      for logits, expected in null_logits])
        for alpha in (0.5, 0.2, 0.1):
            assert (p < alpha).sum() <= binomial_upper(READS, alpha), (mode, alpha, np.sort(p)[:10])


def test_bad_arguments_fail_clearly(wm):
    image = Image.new("RGB", (80, 64), (120, 110, 100))
    with pytest.raises(TypeError, match="reframe"):
        wm.extract(image, reframe="yes")
    with pytest.raises(TypeError, match="PIL"):
        wm.extract(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="fpr"):
        Watermarker(wm.bundle, wm.codec, fpr=0.0)
    with pytest.raises(TypeError, match="fpr"):
        Watermarker(wm.bundle, wm.codec, fpr="0.01")
    with pytest.raises(ValueError, match="strength"):
        Watermarker(wm.bundle, wm.codec, strength=-1)
    with pytest.raises(ValueError, match="max_grid"):
        Watermarker(wm.bundle, wm.codec, max_grid=0)
    with pytest.raises(ValueError):
        wm.extract(image, expected="not hex!")


def test_reframe_true_searches_and_false_does_not(wm):
    """`reframe=True` is the default search (it used to fail when the straight read found
    nothing); False and None read straight."""
    image = _natural(np.random.default_rng(3), [Image.open(SAMPLES[0]).convert("RGB")])
    for reframe in (None, False, True):
        read = wm.extract(image, reframe=reframe)
        assert not read.detected and read.decoded is None and read.framing is None


def test_informed_read_searches_until_it_decodes(wm):
    """A marked photo trimmed by 1 % on the left: the straight informed read sees the payload's
    bits (detected) but cannot decode them, so it is not conclusive, and with `reframe` it goes
    on to the search, which lines the tiles up and decodes the payload (the read used to stop at
    the straight read, leaving the informed read weaker than a blind one)."""
    photo = Image.open(Path(bundled_samples_dir()) / "opencv_squirrel_cls.jpg").convert("RGB")
    marked = wm.embed(photo, PAYLOAD)
    trimmed = marked.crop((round(0.01 * marked.width), 0, marked.width, marked.height))
    straight = wm.extract(trimmed, expected=PAYLOAD)
    assert straight.detected and straight.decoded is None and straight.match is False
    assert not straight.conclusive
    searched = wm.extract(trimmed, expected=PAYLOAD, reframe=True)
    assert searched.conclusive and searched.match and searched.decoded == PAYLOAD
    assert searched.framing is not None and searched.p_value <= wm.fpr


def test_the_bundled_card_records_its_calibration_and_old_cards_load(wm):
    import json

    from filigree.bundle import BundleError, ModelCard
    card = dict(wm.bundle.card.raw)
    assert wm.codec.informed_p_scale == card["calibration"]["informed_p_scale"] >= 1.0
    old = {k: v for k, v in card.items() if k != "calibration"}
    assert ModelCard.from_dict(json.loads(json.dumps(old))).raw.get("calibration") is None
    for bad in ({"informed_p_scale": 0.5}, {"informed_p_scale": "2"}, [2.0]):
        with pytest.raises(BundleError, match="calibration"):
            ModelCard.from_dict({**card, "calibration": bad})


def test_clopper_pearson_intervals(load_benchmark):
    calibration = load_benchmark("calibration")
    lo, hi = calibration.clopper_pearson(0, 1200)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 1200), rel=1e-6)
    lo, hi = calibration.clopper_pearson(3, 100)
    assert (lo, hi) == (pytest.approx(0.00622, abs=1e-4), pytest.approx(0.0852, abs=1e-4))


def test_calibration_benchmark_smoke(load_benchmark, tmp_path, capsys):
    calibration = load_benchmark("calibration")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        _generated(rng).save(photos / name)
    out = tmp_path / "out"
    assert calibration.main(["--photos", str(photos), "--marked", "--reads", "3", "--search-reads", "1",
                             "--out", str(out)]) == 0
    report = (out / "calibration.md").read_text()
    assert "| blind, straight | 3 |" in report and "| informed, --reframe | 1 |" in report
    assert len(list((out / "cache").rglob("*.npz"))) == 3
    assert calibration.main(["--photos", str(photos), "--marked", "--reads", "3", "--search-reads", "1",
                             "--out", str(out)]) == 0  # from the cache
    assert (out / "calibration.md").read_text() == report
