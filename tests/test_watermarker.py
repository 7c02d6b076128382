"""`Watermarker` on PIL images: the native-pixel path (filigree.imaging.kernels.add_residual) against the float
reference path, mode families, inputs left untouched, images Pillow holds in several blocks.
Uses the bundled model; nothing here depends on how well it reads payloads back."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from filigree import Watermarker
from filigree.imaging.kernels import working_view
from filigree.imaging.metrics import psnr
from filigree.imaging.pixels import pixel_view
from filigree.watermarker import pil_to_rgb, rgb_to_pil


@pytest.fixture(scope="module")
def wm() -> Watermarker:
    return Watermarker.load()


def _photo(height: int = 96, width: int = 128) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width, y / height, 0.5 + 0.4 * np.sin(x / 9) * np.cos(y / 7)], -1)
    noise = np.random.default_rng(0).normal(0, 0.02, rgb.shape)
    return Image.fromarray(np.rint(np.clip(rgb + noise, 0, 1) * 255).astype(np.uint8))


def _as(image: Image.Image, mode: str) -> Image.Image:
    if mode == "I;16":
        return Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
    if mode == "P+trns":
        palette = image.convert("P")
        palette.info["transparency"] = 0
        return palette
    return image.convert(mode)


@pytest.mark.parametrize("mode, expected", [("RGB", "RGB"), ("L", "L"), ("RGBA", "RGBA"), ("LA", "LA"),
                                            ("P", "RGB"), ("P+trns", "RGBA"), ("I;16", "I;16"),
                                            ("CMYK", "RGB"), ("1", "L")])
def test_embed_matches_the_float_reference(wm, mode, expected):
    image = _as(_photo(), mode)
    marked = wm.embed(image, "abc")
    assert marked.mode == expected and marked.size == image.size
    rgb, alpha = pil_to_rgb(image)
    reference = rgb_to_pil(wm.embed_rgb(rgb, "abc"), alpha, image.mode)
    diff = np.abs(np.asarray(marked).astype(np.int64) - np.asarray(reference).astype(np.int64))
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.01  # rounding at .5 ties only
    assert np.asarray(marked).astype(np.int64).std() > 0


def test_embed_leaves_the_input_alone_and_extract_reads_views(wm):
    image = _photo()
    before = np.asarray(image).copy()
    marked = wm.embed(image, "abc")
    np.testing.assert_array_equal(np.asarray(image), before)
    assert not np.array_equal(np.asarray(marked), before)
    pixels = np.asarray(marked)
    np.testing.assert_array_equal(wm.view(marked), working_view(pixels, wm.working_size))
    assert wm.extract(marked, "abc").ber is not None
    again = wm.embed(image, "abc")
    np.testing.assert_array_equal(np.asarray(again), np.asarray(marked))  # deterministic


def test_image_held_in_several_blocks_is_copied_once(wm, monkeypatch):
    image = _photo()
    expected = np.asarray(wm.embed(image, "abc"))
    size = Image.core.get_block_size()
    try:
        Image.core.set_block_size(4096)  # every image below is split across blocks
        split = _photo()
        assert pixel_view(split) is None
        np.testing.assert_array_equal(np.asarray(wm.embed(split, "abc")), expected)
    finally:
        Image.core.set_block_size(max(size, Image.core.get_block_size()))


def _sample(name: str) -> Image.Image:
    from filigree.resources import bundled_samples_dir
    return Image.open(f"{bundled_samples_dir()}/{name}").convert("RGB")


def test_tiled_mark_reads_back_after_resizing_with_its_grid(wm):
    """The bundled model marks a 868 x 600 photo on its finest grid; the read finds that grid
    at full size and at a quarter of the size (tile edges are fractions of the image)."""
    photo = _sample("opencv_building.jpg")
    grid = wm.tiling.grid_for(photo.height, photo.width)
    assert grid == wm.tiling.max_grid > 1
    marked = wm.embed(photo, "abc")
    for image in (marked, marked.resize((photo.width // 4, photo.height // 4), Image.BOX)):
        read = wm.extract(image, "abc")
        assert read.detected and read.match and read.grid == grid


def test_small_image_gets_a_coarse_grid_and_a_stronger_mark(wm):
    """Below `min_tile` per tile the grid shrinks, and the residual grows by the grid's gain:
    a 96 px image (one tile) still reads back, at a lower PSNR than a large photo."""
    photo = _sample("opencv_fruits.jpg")
    small = photo.resize((96, 90), Image.BOX)
    assert wm.tiling.grid_for(90, 96) == 1
    marked_small, marked_big = wm.embed(small, "abc"), wm.embed(photo, "abc")
    assert wm.extract(marked_small, "abc").match
    assert psnr(np.asarray(small), np.asarray(marked_small)) < \
        psnr(np.asarray(photo), np.asarray(marked_big)) - 6


def test_a_marked_image_can_be_marked_again(wm):
    """`embed` returns an image over memory it does not own; reading or marking it again copies
    instead of exporting that memory (which crashed Pillow)."""
    marked = wm.embed(_photo(), "abc")
    assert pixel_view(marked) is None
    twice = wm.embed(marked, "def")
    assert twice.size == marked.size and wm.extract(twice, "def").ber is not None


def test_a_read_at_the_marked_size_stops_at_its_own_grid(wm, monkeypatch):
    """An image read at the size it was marked with is read on its own grid only (25 views, not
    55); its p-value still pays for every grid the reader could have tried."""
    from filigree.payload import binomial_tail
    marked = wm.embed(_sample("opencv_building.jpg"), "abc")
    monkeypatch.setattr(wm, "read_logits", lambda pixels: pytest.fail("read every grid"))
    read = wm.extract(marked, "abc")
    assert read.detected and read.grid == wm.tiling.max_grid
    matches = round((1 - read.ber) * wm.codec.raw_bits)
    assert read.p_value == pytest.approx(wm.tiling.max_grid * binomial_tail(wm.codec.raw_bits, matches))


def test_a_capped_grid_marks_fewer_tiles_more_strongly(wm):
    """`max_grid` caps the embedding grid (fewer embedder calls); the residual's gain keeps the
    read as strong, at a PSNR lower by about 20 log10(5 / 3) dB; reading needs no option."""
    photo = _sample("opencv_building.jpg")
    capped = Watermarker(wm.bundle, wm.codec, max_grid=3)
    full, three = wm.embed(photo, "abc"), capped.embed(photo, "abc")
    read = wm.extract(three, "abc")
    assert read.detected and read.match and read.grid == 3
    drop = psnr(np.asarray(photo), np.asarray(full)) - psnr(np.asarray(photo), np.asarray(three))
    assert drop == pytest.approx(20 * np.log10(5 / 3), abs=1.5)
