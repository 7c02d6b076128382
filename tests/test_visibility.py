"""SSIMULACRA2 (filigree.imaging.metrics) and the visibility measures of the quality benchmark
(benchmarks/visibility.py): known scores, the flattest crop, the seam ratio, side-by-side crops."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from benchmarks.visibility import (Borders, flattest_crop_box, jpeg_resave, period_borders,
                                   seam_jumps, seam_record, side_by_side, smooth_gradient,
                                   summarise_visibility, tile_borders, visibility_record)
from filigree.imaging.metrics import screen_view, ssimulacra2


def _sky(side: int = 256, seed: int = 0) -> np.ndarray:
    """float64 [side, side, 3]: a blue-sky gradient with sensor-like noise (sigma 1 level)."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float64) / side
    rgb = np.stack([90 + 40 * y + 10 * x, 140 + 30 * y, 200 + 25 * y - 5 * x], -1)
    return rgb + np.random.default_rng(seed).normal(0, 1.0, rgb.shape)


def _u8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def test_identical_images_score_100_and_bad_input_is_refused():
    sky = _u8(_sky(64))
    assert ssimulacra2(sky, sky.copy()) == 100.0
    grey = sky[..., 1]
    assert ssimulacra2(grey, grey) == 100.0
    with pytest.raises(ValueError, match="shape mismatch"):
        ssimulacra2(sky, sky[:32])
    with pytest.raises(ValueError, match="uint8"):
        ssimulacra2(sky.astype(np.float32), sky)
    with pytest.raises(ValueError, match="at least 8"):
        ssimulacra2(sky[:4, :4], sky[:4, :4])


def test_jpeg_q90_of_a_flat_image_scores_near_visually_lossless():
    sky = _u8(_sky())
    score = ssimulacra2(sky, jpeg_resave(sky, 90))
    # JPEG q90 re-saves of flat 512² photo crops score about 91 (82-97); q50 is clearly worse.
    assert 78 < score < 97
    assert ssimulacra2(sky, jpeg_resave(sky, 50)) < score - 5


def test_smooth_low_frequency_pattern_scores_lower_than_white_noise_of_the_same_rms():
    base = _sky()
    side = base.shape[0]
    noise = np.random.default_rng(1).normal(0, 1, (side, side, 1))
    y, x = np.mgrid[0:side, 0:side]
    smooth = (np.sin(2 * np.pi * x / 96 + 0.3) * np.cos(2 * np.pi * y / 80))[..., None]
    original = _u8(base)
    scores = {}
    for name, pattern in (("noise", noise), ("smooth", smooth)):
        marked = _u8(base + pattern * (1.7 / pattern.std()))
        rms = np.sqrt(np.mean((marked.astype(np.float64) - original) ** 2))
        assert 1.6 < rms < 1.9
        scores[name] = ssimulacra2(original, marked)
    assert scores["noise"] > 75 and scores["smooth"] < 65
    assert scores["noise"] - scores["smooth"] > 20


def test_screen_view_shrinks_the_long_side_to_1600():
    big = np.zeros((2000, 3200, 3), np.uint8)
    assert screen_view(big).shape == (1000, 1600, 3)
    assert screen_view(big[:, :1000]).shape == (1600, 800, 3)
    small = big[:900, :1200]
    assert screen_view(small) is small


def test_flattest_crop_finds_the_flat_region():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)
    image[224:224 + 560, 400:400 + 560] = 120  # flat: a 512 crop on the 16 grid fits inside
    box = flattest_crop_box(image)
    assert (box.height, box.width) == (512, 512)
    assert 224 <= box.top <= 224 + 48 and 400 <= box.left <= 400 + 48
    assert box.of(image).std() == 0
    assert box.to_list() == [box.left, box.top, 512, 512]
    tiny = flattest_crop_box(image[:100, :300])
    assert (tiny.height, tiny.width) == (100, 300)


def _smooth_field(height: int, width: int, seed: int = 5) -> np.ndarray:
    """A seamless random pattern: white noise blurred with sigma 6 px, RMS about 1."""
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(0, 1, (height, width)), 6)
    return field / field.std()


def _tiled_residual(height: int, width: int, grid: int, seed: int = 3) -> np.ndarray:
    """A smooth pattern with an independent offset per tile of a grid x grid layout."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    offsets = rng.normal(0, 2, (grid, grid))
    tile = offsets[np.minimum(y * grid // height, grid - 1), np.minimum(x * grid // width, grid - 1)]
    return tile + _smooth_field(height, width)


def test_seam_ratio_sees_tile_borders_and_not_a_seamless_pattern():
    height, width = 768, 1024
    borders = tile_borders(height, width, 5, 64)
    assert borders.cols == (204.8, 409.6, 614.4, 819.2) and borders.rows[0] == 153.6
    assert borders.col_spread == pytest.approx(3.2) and borders.row_spread == pytest.approx(2.4)
    seamed = seam_jumps(_tiled_residual(height, width, 5), borders)
    assert seamed["ratio"] > 3 and seamed["layout"] == "5x5 tiles"
    seamless = seam_jumps(_smooth_field(height, width), borders)
    assert 0.8 < seamless["ratio"] < 1.2
    # A periodic layout: steps on its own grid against those off it.
    periodic = period_borders(height, width, 64)
    assert periodic.cols[:2] == (64.0, 128.0) and periodic.row_spread == 1
    block = np.kron(np.random.default_rng(4).normal(0, 2, (12, 16)), np.ones((64, 64)))
    assert seam_jumps(block, periodic)["ratio"] is None  # exactly flat inside
    block += 0.2 * _smooth_field(height, width)
    assert seam_jumps(block, periodic)["ratio"] > 10
    assert 0.8 < seam_jumps(_smooth_field(height, width, 6), periodic)["ratio"] < 1.2
    assert seam_jumps(block, Borders((), ()))["ratio"] is None


def test_seam_record_marks_the_gradient_per_payload():
    gradient = smooth_gradient()
    assert gradient.shape == (768, 1024, 3) and 60 <= gradient.min() and gradient.max() <= 225
    assert np.all(np.diff(gradient.astype(int), axis=1)[..., 0] >= 0)

    def tiled(seed):
        return lambda px: _u8(px + _tiled_residual(*px.shape[:2], 5, seed)[..., None])

    record = seam_record([tiled(1), tiled(2)], lambda h, w: tile_borders(h, w, 5, 64))
    assert record["payloads"] == 2 and len(record["runs"]) == 2
    assert record["ratio_max"] >= record["ratio_mean"] > 2
    assert record["runs"][0]["residual_rms"] > 1
    none = seam_record([tiled(1)], lambda h, w: None)
    assert none["ratio_mean"] is None and none["layout"].startswith("no borders")


def test_side_by_side_and_visibility_record():
    original = _u8(_sky(96))
    marked = original.copy()
    marked[:48] += 1
    panel = side_by_side(original, marked, gap=4)
    assert panel.size == (3 * 96 + 8, 96)
    pixels = np.asarray(panel)
    assert np.array_equal(pixels[:, :96], original) and np.array_equal(pixels[:, 100:196], marked)
    residual = pixels[:, 200:]
    assert (residual[:48] == 138).all() and (residual[48:] == 128).all()
    png = io.BytesIO()
    panel.save(png, "PNG")
    assert Image.open(io.BytesIO(png.getvalue())).size == panel.size

    record = visibility_record(original, marked)
    assert record["screen"]["size"] == [96, 96] and record["flat"]["box"] == [0, 0, 96, 96]
    assert 40 < record["flat"]["psnr"] < 60 and record["flat"]["ssimulacra2"] < 100
    same = visibility_record(original, original)
    assert same["screen"]["psnr"] is None and same["screen"]["ssimulacra2"] == 100
    summary = summarise_visibility([record, same, None])
    assert summary["photos"] == 2
    assert summary["flat"]["ssimulacra2_min"] == record["flat"]["ssimulacra2"]
    assert summary["flat"]["ssimulacra2_mean"] == pytest.approx(
        (record["flat"]["ssimulacra2"] + 100) / 2)
    assert summary["screen"]["psnr_mean"] == record["screen"]["psnr"]
    assert summarise_visibility([None]) is None
