"""Tiling: grids, tile bounds, the residual mosaic, and reading tiled logits."""

import numpy as np
import pytest
from PIL import Image

from filigree.payload import PayloadCodec
from filigree.tiling import (
    Tiling,
    cut_tiles,
    decode_grid,
    decode_tiles,
    grid_logits,
    mosaic,
    read_views,
    tile_views,
    tiled_residual,
)


def test_card_without_tiling_marks_whole_images():
    tiling = Tiling.from_card({"working_size": 64})
    assert tiling.max_grid == 1 and tiling.read_grids == (1,) and tiling.read_views == 1


def test_card_tiling_round_trips_and_is_validated():
    tiling = Tiling.from_card({"tiling": {"max_grid": 5, "min_tile": 96}})
    assert tiling == Tiling(5, 96) and Tiling.from_card({"tiling": tiling.to_dict()}) == tiling
    assert tiling.read_views == 1 + 4 + 9 + 16 + 25
    with pytest.raises(ValueError, match="max_grid"):
        Tiling(0)
    with pytest.raises(ValueError, match="min_tile"):
        Tiling(2, 0)


@pytest.mark.parametrize("height, width, grid", [
    (1000, 700, 5), (480, 2000, 5), (479, 2000, 4), (200, 200, 2), (96, 96, 1), (20, 3000, 1),
])
def test_grid_keeps_tiles_at_least_min_tile(height, width, grid):
    assert Tiling(5, 96).grid_for(height, width) == grid


def test_tiles_and_mosaic_are_inverse_layouts():
    tiles = np.random.default_rng(0).random((9, 4, 4, 2)).astype(np.float32)
    laid_out = mosaic(tiles)
    assert laid_out.shape == (12, 12, 2)
    np.testing.assert_array_equal(laid_out[4:8, 8:12], tiles[5])  # row 1, column 2
    np.testing.assert_array_equal(cut_tiles(laid_out, 3), tiles)


def test_tile_views_follow_the_image_through_a_resize():
    """Tile edges are fractions of the image: the tiles of a quarter-size copy show the same
    content as the full image's tiles."""
    y, x = np.mgrid[0:600, 0:800]
    pixels = np.stack([x * 255 // 800, y * 255 // 600, (x // 40 + y // 40) % 2 * 255], -1).astype(np.uint8)
    small = np.asarray(Image.fromarray(pixels).resize((200, 150), Image.BOX))
    full, quarter = tile_views(pixels, 4, 16), tile_views(small, 4, 16)
    assert np.abs(full - quarter).mean() < 0.02


def test_tile_views_are_each_tiles_working_view():
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[20:, 30:] = 200  # the bottom-right tile of a 2 x 2 grid
    views = tile_views(pixels, 2, 8)
    assert views.shape == (4, 8, 8, 3) and views.dtype == np.float32
    np.testing.assert_allclose(views[3], 200 / 255, atol=1e-6)
    assert views[:3].max() == 0
    assert read_views(pixels, Tiling(3), 8).shape == (1 + 4 + 9, 8, 8, 3)


def test_reads_of_large_images_go_through_one_reduced_copy():
    """Above READ_SOURCE_SCALE x the finest grid's side, every grid is cut from one shrunk copy;
    the views stay within a few grey levels of direct resizes."""
    rng = np.random.default_rng(1)
    pixels = np.repeat(np.repeat(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8), 10, 0), 10, 1)
    tiling = Tiling(3)
    views = read_views(pixels, tiling, 16)
    direct = np.concatenate([tile_views(pixels, g, 16) for g in tiling.read_grids])
    difference = np.abs(views - direct)  # random 10 px blocks: the worst case for resampling
    assert difference.mean() < 2 / 255 and difference.max() <= 12 / 255


def test_mosaic_lays_tiles_out_row_by_row():
    residuals = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) * np.ones((4, 3, 3, 1), np.float32)
    laid_out = mosaic(residuals)
    assert laid_out.shape == (6, 6, 1)
    assert laid_out[0, 0, 0] == 0 and laid_out[0, 5, 0] == 1 and laid_out[5, 0, 0] == 2 and laid_out[5, 5, 0] == 3
    with pytest.raises(ValueError, match="square"):
        mosaic(residuals[:3])


def test_coarser_grids_get_a_stronger_residual():
    tiling = Tiling(4)
    one = np.ones((1, 2, 2, 1), np.float32)
    assert tiled_residual(one, tiling).max() == pytest.approx(4.0)
    assert tiled_residual(np.ones((16, 2, 2, 1), np.float32), tiling).max() == pytest.approx(1.0)


def test_grid_logits_average_each_grids_tiles():
    logits = np.concatenate([np.full((1, 2), 1.0), np.full((4, 2), 2.0), np.full((9, 2), 3.0)])
    np.testing.assert_array_equal(grid_logits(logits, Tiling(3)), [[1, 1], [2, 2], [3, 3]])
    with pytest.raises(ValueError, match="14 views"):
        grid_logits(logits[:5], Tiling(3))


def _tile_logits(codec, payload, tiling, grid, rng, noise):
    """Logits of every read view: the tiles of `grid` carry the payload's bits (weakly, under
    noise); the other grids see unrelated content."""
    signs = codec.encode(payload) * 2 - 1
    blocks = []
    for g in tiling.read_grids:
        block = rng.normal(0, noise, (g * g, codec.raw_bits))
        if g == grid:
            block += signs
        blocks.append(block)
    return np.concatenate(blocks)


def test_tiles_average_to_a_read_no_single_tile_gives():
    codec, tiling, rng = PayloadCodec(100), Tiling(5), np.random.default_rng(3)
    logits = _tile_logits(codec, "beef", tiling, 5, rng, noise=2.0)
    one_tile = codec.decode(logits[-1], expected="beef")
    read = decode_tiles(codec, logits, tiling, expected="beef")
    assert not one_tile.detected and one_tile.ber > 0.2
    assert read.detected and read.match and read.grid == 5 and read.decoded is not None


def test_decode_tiles_counts_every_grid_tried():
    codec, rng = PayloadCodec(100), np.random.default_rng(4)
    logits = _tile_logits(codec, "beef", Tiling(4), 2, rng, noise=3.0)
    two = decode_tiles(codec, logits[:Tiling(2).read_views], Tiling(2), expected="beef")
    four = decode_tiles(codec, logits, Tiling(4), expected="beef")
    assert two.grid == four.grid == 2 and four.detected
    assert 0 < two.p_value < 1e-6
    assert four.p_value == pytest.approx(2 * two.p_value)


def test_untiled_read_equals_a_plain_decode():
    codec, rng = PayloadCodec(100), np.random.default_rng(5)
    logits = rng.normal(0, 1, (1, 100))
    assert decode_tiles(codec, logits, Tiling(1), expected="12") == codec.decode(logits[0], expected="12")


def test_unmarked_tiles_are_not_detected():
    codec, tiling, rng = PayloadCodec(100), Tiling(5), np.random.default_rng(6)
    reads = [decode_tiles(codec, rng.normal(0, 1, (tiling.read_views, 100)), tiling) for _ in range(200)]
    assert not any(read.detected for read in reads)


@pytest.mark.parametrize("tiling", [{"max_grid": 0}, {"max_grid": "many"}, {"min_tile": -1}, ["5"]])
def test_a_bad_tiling_entry_is_a_clear_bundle_error(tiling):
    import json

    from filigree.bundle import BundleError, ModelCard
    from filigree.resources import bundled_model_dir
    with open(f"{bundled_model_dir()}/model.json") as f:
        card = json.load(f)
    card["tiling"] = tiling
    with pytest.raises(BundleError, match="tiling"):
        ModelCard.from_dict(card)


def test_a_known_grid_reads_like_the_blind_reader_that_picks_it():
    """`decode_grid` reads one grid's tiles; its p-value pays for every grid, like
    `decode_tiles` when that grid wins."""
    codec, tiling, rng = PayloadCodec(100), Tiling(4), np.random.default_rng(7)
    logits = _tile_logits(codec, "beef", tiling, 3, rng, noise=3.0)
    blind = decode_tiles(codec, logits, tiling, expected="beef")
    known = decode_grid(codec, logits[1 + 4:1 + 4 + 9], 3, tiling, expected="beef")
    assert blind.grid == known.grid == 3 and known.detected
    assert known.p_value == pytest.approx(blind.p_value) and known.ber == blind.ber
