"""Re-framing search: read marks from images that were cropped after marking.

The extractor expects the whole marked frame squeezed to S x S. A crop shows only part of it,
so the straight read sees the mark zoomed and shifted. The search tries hypotheses "this image
is the part of the frame that spans `scale` of its width and height, starting at (x, y)": each
becomes a working view with the image shrunk to `scale * S` pixels, pasted at its place and the
rest filled with the image's mean colour. Every view is read, and the framing whose read
decodes with the strongest evidence wins. Its p-value is multiplied by the number of framings
tried (Bonferroni), so the false-positive rate of the search stays at or below the target.

A tiled mark (see `filigree.tiling`) is read per tile, and a tile reads only when the view
lines up with it to within about 2 % of its side: a search over positions would need a grid
ten times finer on each axis. Its search covers centred crops instead (`centred_framings`, the
crop a platform makes to a thumbnail or a feed): one scale per hypothesis, in steps fine enough
to line the tiles up, each read on every grid (`framed_tile_views`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from filigree.tiling import READ_SOURCE_SCALE, Tiling, read_views


SOURCE_SCALE = 4
"""A search works from a copy of at most SOURCE_SCALE x the working size a side."""


@dataclass(frozen=True)
class Framing:
    """The image covers `scale` of the marked frame's sides, its top-left corner at (x, y),
    both as fractions of the frame."""

    scale: float
    x: float
    y: float

    def to_dict(self) -> dict[str, float]:
        return {"scale": round(self.scale, 4), "x": round(self.x, 4), "y": round(self.y, 4)}


@dataclass(frozen=True)
class SearchConfig:
    """Which framings to try."""

    min_scale: float = 0.75
    """Smallest kept side fraction (0.75 is a crop keeping 56% of the area)."""
    scale_steps: int = 11
    """Scales from `min_scale` to 1, evenly spaced."""
    grid: int = 7
    """Positions per axis at each scale, evenly spaced over the free margin (odd: the centre is one)."""
    centred_step: float = 0.008
    """Scale step of the centred search for tiled marks (a tile reads within about ±0.01)."""

    def __post_init__(self) -> None:
        if not 0.2 <= self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in [0.2, 1], got {self.min_scale}")
        if self.scale_steps < 1 or self.grid < 1:
            raise ValueError("scale_steps and grid must be at least 1")
        if not 0.001 <= self.centred_step <= 0.1:
            raise ValueError(f"centred_step must be in [0.001, 0.1], got {self.centred_step}")


def framings(config: SearchConfig = SearchConfig()) -> list[Framing]:
    """Every framing of the search, the identity (scale 1) first."""
    scales = np.linspace(1.0, config.min_scale, config.scale_steps) if config.scale_steps > 1 else [1.0]
    out: list[Framing] = []
    for scale in scales:
        margin = 1.0 - float(scale)
        steps = np.linspace(0.0, margin, config.grid) if margin > 1e-9 and config.grid > 1 else [margin / 2]
        out.extend(Framing(float(scale), float(x), float(y)) for y in steps for x in steps)
    return out


def centred_framings(config: SearchConfig = SearchConfig()) -> list[Framing]:
    """Centred crops from just under scale 1 down to `min_scale`, `centred_step` apart (the
    straight read already covers scale 1)."""
    count = int((1.0 - config.min_scale) / config.centred_step + 1e-9)
    scales = [1.0 - config.centred_step * k for k in range(1, count + 1)]
    return [Framing(scale, (1.0 - scale) / 2, (1.0 - scale) / 2) for scale in scales]


def framed_tile_views(image: Image.Image, candidates: list[Framing], tiling: Tiling,
                      size: int) -> np.ndarray:
    """float32 [N * tiling.read_views, size, size, 3]: for each framing, the read views (every
    tile of every grid) of the frame it hypothesises: the image squeezed to `scale` of a canvas
    of READ_SOURCE_SCALE x the finest grid's side, pasted at its place, the rest filled with
    its mean colour."""
    side = READ_SOURCE_SCALE * tiling.max_grid * size
    rgb = search_source(image, size, tiling)
    fill = tuple(int(round(v)) for v in np.asarray(rgb).reshape(-1, 3).mean(axis=0))
    views = []
    for framing in candidates:
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(_squeeze(rgb, max(1, round(framing.scale * side))),
                     (round(framing.x * side), round(framing.y * side)))
        views.append(read_views(np.asarray(canvas), tiling, size))
    return np.concatenate(views) if views else np.empty((0, size, size, 3), np.float32)


def _squeeze(image: Image.Image, side: int) -> Image.Image:
    """The image squeezed to side x side (area averaging when shrinking, else bilinear)."""
    resample = Image.BOX if min(image.size) >= side else Image.BILINEAR
    return image.resize((side, side), resample)


def _shrink(image: Image.Image, side: int) -> np.ndarray:
    """The image squeezed to side x side, float32 RGB in [0, 1]."""
    return np.asarray(_squeeze(image, side), dtype=np.float32) / 255.0


def search_source(image: Image.Image, size: int, tiling: Tiling = Tiling()) -> Image.Image:
    """All a search needs of an image: RGB, at most 4 x `size` pixels a side, or the canvas of
    a tiled search (`framed_tile_views`) if larger (a small copy that can travel with a
    pipeline element instead of the full-size image)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    limit = max(SOURCE_SCALE * size, READ_SOURCE_SCALE * tiling.max_grid * size)
    if rgb.width > limit or rgb.height > limit:
        rgb = rgb.resize((min(rgb.width, limit), min(rgb.height, limit)), Image.BOX)
    return rgb


def framed_views(image: Image.Image, candidates: list[Framing], size: int) -> np.ndarray:
    """float32 [N, size, size, 3]: the working view of each framing hypothesis.

    The image is first reduced by `search_source`, then shrunk once per distinct scale; each
    view pastes it, placed to the nearest working pixel, into a canvas of its mean colour."""
    rgb = search_source(image, size)
    views = np.empty((len(candidates), size, size, 3), dtype=np.float32)
    shrunk: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, framing in enumerate(candidates):
        side = max(1, min(size, round(framing.scale * size)))
        if side not in shrunk:
            patch = _shrink(rgb, side)
            shrunk[side] = patch, patch.mean(axis=(0, 1))
        patch, fill = shrunk[side]
        left = min(size - side, max(0, round(framing.x * size)))
        top = min(size - side, max(0, round(framing.y * size)))
        views[i] = fill
        views[i, top:top + side, left:left + side] = patch
    return views


__all__ = ["Framing", "SearchConfig", "centred_framings", "framed_tile_views", "framed_views",
           "framings", "search_source"]
