"""Tiling: the same payload repeated over a grid of tiles, read back by averaging their logits.

The networks work on one S x S view. A photo of a thousand pixels squeezed to S = 64 leaves
every bit a few dozen working pixels, so the read is noisy at an invisible strength. Tiling
cuts the image into g x g tiles, gives each tile its own working view and its own residual
for the same raw bits, and reads each tile back: the extractor's logits, averaged over the
tiles, carry g^2 independent looks at every bit. The gain can buy accuracy or invisibility
(`docs/quality.md` measures both).

A g x g grid's tiles are the image resized to g*S x g*S and cut into S x S squares
(`tile_views`); the residuals go back the same way (`mosaic`, upsampled to the image's size),
so tile edges are exact fractions of the image and survive any resize. The grid of an image
follows from its size when it is marked (`Tiling.grid_for`); a reader cannot know whether the
image was resized since, so it tries every grid from 1 to `max_grid` and keeps the strongest
read (its p-value counts every grid tried, see `PayloadCodec.decode_best`).

An image too small for the finest grid gets fewer tiles, and so fewer looks per bit; its
residual is amplified by `max_grid / grid` to make up (`Tiling.gain`): small images carry a
stronger mark (a lower PSNR) that gives their averaged logits about the same signal-to-noise
ratio as a large image's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from filigree.imaging.kernels import working_view
from filigree.payload import PayloadCodec, ReadResult


@dataclass(frozen=True)
class Tiling:
    """How a model bundle lays its payload out (the `tiling` entry of `model.json`)."""

    max_grid: int = 1
    """Largest g of a g x g grid; 1 marks the whole image as one view."""
    min_tile: int = 96
    """Smallest tile side in image pixels when marking: small images get coarser grids."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_grid <= 16:
            raise ValueError(f"tiling max_grid must be in [1, 16], got {self.max_grid}")
        if self.min_tile < 1:
            raise ValueError(f"tiling min_tile must be positive, got {self.min_tile}")

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> "Tiling":
        """The card's tiling; a card without one marks whole images (grid 1)."""
        entry = card.get("tiling") or {}
        return cls(max_grid=int(entry.get("max_grid", 1)), min_tile=int(entry.get("min_tile", 96)))

    def to_dict(self) -> dict[str, int]:
        return {"max_grid": self.max_grid, "min_tile": self.min_tile}

    def grid_for(self, height: int, width: int, cap: int | None = None) -> int:
        """The grid an image of this size is marked with: as fine as `max_grid` (or a smaller
        `cap`, for fewer embedder calls) allows while every tile keeps at least `min_tile`
        pixels a side."""
        finest = self.max_grid if cap is None else max(1, min(cap, self.max_grid))
        return max(1, min(finest, min(height, width) // self.min_tile))

    def gain(self, grid: int) -> float:
        """Residual amplification of an image marked with `grid`: the logits' signal-to-noise
        ratio grows with the grid side, so a coarser grid needs a proportionally stronger mark."""
        return self.max_grid / grid

    @property
    def read_grids(self) -> tuple[int, ...]:
        """The grids a reader tries, coarsest first."""
        return tuple(range(1, self.max_grid + 1))

    @property
    def read_views(self) -> int:
        """Working views one read takes (every tile of every grid)."""
        return sum(g * g for g in self.read_grids)


def tile_views(pixels: np.ndarray, grid: int, size: int) -> np.ndarray:
    """float32 [grid^2, size, size, 3], row by row: the image (native pixels or float RGB)
    resized to grid*size pixels a side and cut into its tiles' working views."""
    return cut_tiles(working_view(pixels, grid * size), grid)


def cut_tiles(view: np.ndarray, grid: int) -> np.ndarray:
    """[grid^2, S, S, C] tiles of a [grid*S, grid*S, C] array, row by row (`mosaic`'s inverse)."""
    side, _, channels = view.shape
    size = side // grid
    return view.reshape(grid, size, grid, size, channels).transpose(0, 2, 1, 3, 4).reshape(
        grid * grid, size, size, channels)


READ_SOURCE_SCALE = 2
"""A read first shrinks a large image to READ_SOURCE_SCALE x the finest grid's side, once,
and resizes every grid's view from that (area averaging twice differs from once by rounding)."""


def read_views(pixels: np.ndarray, tiling: Tiling, size: int) -> np.ndarray:
    """float32 [tiling.read_views, size, size, 3]: every tile of every grid a reader tries."""
    if tiling.max_grid == 1:
        return working_view(pixels, size)[None]
    side = READ_SOURCE_SCALE * tiling.max_grid * size
    if min(pixels.shape[:2]) > side:
        pixels = to_uint8_rgb(working_view(pixels, side))
    return np.concatenate([tile_views(pixels, grid, size) for grid in tiling.read_grids])


def to_uint8_rgb(view: np.ndarray) -> np.ndarray:
    """uint8 RGB of a working view (whose values are multiples of 1/255)."""
    return np.rint(view * 255.0).astype(np.uint8)


def grid_logits(logits: np.ndarray, tiling: Tiling) -> np.ndarray:
    """[max_grid, L]: per grid tried, the mean of its tiles' logits (`logits` is the extractor's
    output on `read_views`)."""
    logits = np.asarray(logits)
    if len(logits) != tiling.read_views:
        raise ValueError(f"expected logits for {tiling.read_views} views, got {len(logits)}")
    out, at = [], 0
    for grid in tiling.read_grids:
        out.append(logits[at:at + grid * grid].mean(axis=0))
        at += grid * grid
    return np.stack(out)


def decode_tiles(codec: PayloadCodec, logits: np.ndarray, tiling: Tiling,
                 expected: str | int | None = None, fpr: float = 1e-6) -> ReadResult:
    """Read one image from the logits of its `read_views`: each grid's mean logits is one
    hypothesis, the strongest wins, its p-value counts every grid tried; the result names
    the grid. A bundle without tiling reads its single view as it is."""
    per_grid = grid_logits(logits, tiling)
    if tiling.max_grid == 1:
        return codec.decode(per_grid[0], expected=expected, fpr=fpr)
    best, read = codec.decode_best(per_grid, expected=expected, fpr=fpr)
    return dataclasses.replace(read, grid=tiling.read_grids[best])


def tiled_residual(residuals: np.ndarray, tiling: Tiling) -> np.ndarray:
    """The residual to upsample onto an image from its tiles' residuals [g^2, S, S, C]: their
    `mosaic`, amplified by the grid's `gain`."""
    laid_out = mosaic(residuals)
    gain = tiling.gain(laid_out.shape[0] // residuals.shape[1])
    return laid_out if gain == 1 else laid_out * np.float32(gain)


def decode_grid(codec: PayloadCodec, logits: np.ndarray, grid: int, tiling: Tiling,
                expected: str | int | None = None, fpr: float = 1e-6) -> ReadResult:
    """Read one image from the logits of one grid's tiles (a reader that knows or guesses the
    grid); the p-value still pays for every grid a blind reader tries, so a read that stops
    here keeps the false-positive rate of `decode_tiles`."""
    if tiling.max_grid == 1:
        return codec.decode(np.asarray(logits).mean(axis=0), expected=expected, fpr=fpr)
    _, read = codec.decode_best(np.asarray(logits).mean(axis=0)[None], expected=expected, fpr=fpr,
                                tried=len(tiling.read_grids))
    return dataclasses.replace(read, grid=grid)


def mosaic(residuals: np.ndarray) -> np.ndarray:
    """[g*S, g*S, C]: the tiles' residuals [g^2, S, S, C] laid out as the grid they came from
    (`cut_tiles`' inverse). Upsampled to the image's size, each lands on its own tile."""
    count, size, _, channels = residuals.shape
    grid = int(round(count ** 0.5))
    if grid * grid != count:
        raise ValueError(f"expected a square number of tile residuals, got {count}")
    return residuals.reshape(grid, grid, size, size, channels).transpose(0, 2, 1, 3, 4).reshape(
        grid * size, grid * size, channels)


__all__ = ["Tiling", "cut_tiles", "decode_grid", "decode_tiles", "grid_logits", "mosaic", "read_views",
           "tile_views", "tiled_residual"]
