"""Tests for the re-framing search (filigree/reframe.py, PayloadCodec.decode_best and
Watermarker.extract(..., reframe=...))."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from filigree import Watermarker
from filigree.payload import PayloadCodec, binomial_tail, blind_p_value
from filigree.reframe import Framing, SearchConfig, centred_framings, framed_views, framings
from filigree.resources import bundled_samples_dir
from reports import read_records

PAYLOAD = "0123456789abc"
SAMPLES = Path(bundled_samples_dir())


def test_framings_start_with_the_identity_and_cover_the_grid():
    found = framings(SearchConfig(min_scale=0.75, scale_steps=11, grid=7))
    assert found[0] == Framing(1.0, 0.0, 0.0)
    assert len(found) == 1 + 10 * 49
    assert min(f.scale for f in found) == pytest.approx(0.75)
    assert all(0 <= f.x <= 1 - f.scale + 1e-9 and 0 <= f.y <= 1 - f.scale + 1e-9 for f in found)
    # odd grids include the centred framing of every scale
    assert Framing(0.75, 0.125, 0.125) in found


def test_search_config_rejects_nonsense():
    with pytest.raises(ValueError):
        SearchConfig(min_scale=0.1)
    with pytest.raises(ValueError):
        SearchConfig(grid=0)


def test_a_true_framing_rebuilds_the_frame_view():
    rng = np.random.default_rng(0)
    frame = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).resize((256, 256), Image.NEAREST)
    crop = frame.crop((32, 64, 32 + 192, 64 + 192))  # scale 0.75 at (0.125, 0.25)
    view = framed_views(crop, [Framing(0.75, 0.125, 0.25)], 64)[0]
    expected = np.asarray(frame.resize((64, 64), Image.BOX), np.float32) / 255
    np.testing.assert_allclose(view[16:64, 8:56], expected[16:64, 8:56], atol=1e-5)
    outside = view[:16].reshape(-1, 3)
    np.testing.assert_allclose(outside, np.broadcast_to(outside[0], outside.shape))  # mean-colour fill


def test_decode_best_picks_the_marked_hypothesis_and_pays_for_the_others():
    codec = PayloadCodec(100)
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 100))
    logits[17] = np.where(codec.encode(PAYLOAD) > 0.5, 3.0, -3.0)
    best, read = codec.decode_best(logits)
    assert best == 17 and read.decoded == PAYLOAD and read.detected
    assert read.p_value == pytest.approx(50 * blind_p_value(100, codec.data_bits, 0))
    best, read = codec.decode_best(logits, expected=PAYLOAD)
    assert best == 17 and read.ber == 0.0 and read.detected and read.match
    _, read = codec.decode_best(logits, tried=51)  # one more read made elsewhere
    assert read.p_value == pytest.approx(51 * blind_p_value(100, codec.data_bits, 0))
    with pytest.raises(ValueError):
        codec.decode_best(logits, tried=49)


def test_decode_best_on_noise_detects_nothing():
    codec = PayloadCodec(100)
    rng = np.random.default_rng(2)
    for _ in range(20):
        _, read = codec.decode_best(rng.normal(size=(491, 100)))
        assert not read.detected and read.decoded is None
        _, read = codec.decode_best(rng.normal(size=(491, 100)), expected=PAYLOAD)
        assert not read.detected and read.match is False


@pytest.fixture(scope="module")
def watermarker(untiled_model):
    return Watermarker.load(untiled_model)


def _centre_crop(image: Image.Image, area: float) -> Image.Image:
    w, h = image.size
    cw, ch = round(w * area ** 0.5), round(h * area ** 0.5)
    left, top = (w - cw) // 2, (h - ch) // 2
    return image.crop((left, top, left + cw, top + ch))


def test_search_finds_the_mark_in_a_centre_crop(watermarker):
    photo = Image.open(SAMPLES / "opencv_building.jpg").convert("RGB")
    cropped = _centre_crop(watermarker.embed(photo, PAYLOAD), 0.8)
    straight = watermarker.extract(cropped, expected=PAYLOAD)
    searched = watermarker.extract(cropped, expected=PAYLOAD, reframe=SearchConfig())
    assert not straight.detected and straight.framing is None
    assert searched.detected and searched.ber < straight.ber - 0.1
    # The true framing (scale 0.894, offset 0.053) lies between grid points (scale steps of
    # 0.025, offset steps of about 0.015): the winner is within a step or two of it.
    assert searched.framing["scale"] == pytest.approx(0.8 ** 0.5, abs=0.05)
    assert searched.framing["x"] == pytest.approx((1 - 0.8 ** 0.5) / 2, abs=0.05)


def test_search_on_an_unmarked_photo_finds_nothing(watermarker):
    photo = _centre_crop(Image.open(SAMPLES / "opencv_fruits.jpg").convert("RGB"), 0.8)
    for expected in (None, PAYLOAD):
        read = watermarker.extract(photo, expected=expected, reframe=SearchConfig())
        assert not read.detected and read.framing is None


@pytest.fixture(scope="module")
def tiled():
    return Watermarker.load()


def test_centred_framings_step_down_from_the_identity():
    found = centred_framings(SearchConfig(min_scale=0.9, centred_step=0.025))
    assert [round(f.scale, 3) for f in found] == [0.975, 0.95, 0.925, 0.9]
    assert all(f.x == f.y == pytest.approx((1 - f.scale) / 2) for f in found)
    with pytest.raises(ValueError, match="centred_step"):
        SearchConfig(centred_step=0.5)


def test_tiled_search_finds_the_mark_in_a_centre_crop(tiled):
    """A crop moves a tiled mark's grid: the straight read fails; the centred search lines the
    tiles up again, reports the framing and the grid, and pays for every hypothesis."""
    assert tiled.tiling.max_grid > 1
    photo = Image.open(SAMPLES / "opencv_building.jpg").convert("RGB")
    cropped = _centre_crop(tiled.embed(photo, PAYLOAD), 0.8)
    straight = tiled.extract(cropped, expected=PAYLOAD)
    searched = tiled.extract(cropped, expected=PAYLOAD, reframe=SearchConfig())
    assert not straight.detected and straight.ber > 0.3
    assert searched.detected and searched.match and searched.ber < 0.05
    assert searched.grid == tiled.tiling.grid_for(photo.height, photo.width)
    assert searched.framing["scale"] == pytest.approx(0.8 ** 0.5, abs=0.01)
    hypotheses = (len(centred_framings()) + 1) * tiled.tiling.max_grid
    matches = round((1 - searched.ber) * 100)
    assert searched.p_value == pytest.approx(hypotheses * binomial_tail(100, matches))
    blind = tiled.extract(cropped, reframe=SearchConfig())
    assert blind.detected and blind.decoded == searched.decoded


def test_tiled_search_on_an_unmarked_crop_finds_nothing(tiled):
    photo = _centre_crop(Image.open(SAMPLES / "opencv_fruits.jpg").convert("RGB"), 0.8)
    for expected in (None, PAYLOAD):
        read = tiled.extract(photo, expected=expected, reframe=SearchConfig())
        assert not read.detected and read.framing is None


@pytest.mark.parametrize("tiled_model", [False, True], ids=["untiled", "tiled"])
def test_pipeline_reframe_reads_cropped_images(tmp_path, untiled_model, tiled_model):
    """A marked sample centre-cropped to 80% of its area, and an unmarked one: `--mode extract
    --reframe` finds the mark (with its framing), and no mark in the other; without it, neither.
    For an untiled bundle and for the bundled (tiled) one."""
    from filigree.resources import bundled_model_dir
    from pipeline.run import main

    model = bundled_model_dir() if tiled_model else untiled_model
    marked = tmp_path / "marked"
    assert main(["--model", model, "--input", str(SAMPLES / "opencv_building.jpg"), "--payload", PAYLOAD,
                 "--output", str(marked), "--verify", "none", "--min_psnr", "0"]) == 0  # untiled: a louder mark
    wild = tmp_path / "wild"
    wild.mkdir()
    (source,) = (marked / "marked").rglob("*.jpg")
    _centre_crop(Image.open(source), 0.8).save(wild / "building.png")
    Image.open(SAMPLES / "opencv_fruits.jpg").save(wild / "fruits.png")  # never marked
    manifest = tmp_path / "expected.csv"
    manifest.write_text(f"image,payload\nbuilding.png,{PAYLOAD}\nfruits.png,{PAYLOAD}\n")
    for reframe in (False, True):
        out = tmp_path / f"read-{reframe}"
        args = ["--model", model, "--mode", "extract", "--input", str(wild), "--assignments", str(manifest), "--output", str(out)]
        assert main(args + (["--reframe"] if reframe else [])) == 0
        records = {Path(r["image"]).name: r for r in read_records(out)}
        assert records["building.png"]["detected"] is reframe
        assert ("framing" in records["building.png"]) is reframe
        assert records["fruits.png"]["detected"] is False and "framing" not in records["fruits.png"]
