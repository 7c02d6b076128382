"""Re-framing search: read marks from images that were cropped after marking.

The extractor expects the whole marked frame squeezed to S x S. A crop shows only part of it,
so the straight read sees the mark zoomed and shifted. The search tries hypotheses "this image
is the part of the frame that spans `scale` of its width and height, starting at (x, y)": each
becomes a working view with the image shrunk to `scale * S` pixels, pasted at its place and the
rest filled with the image's mean colour. Every view is read, and the framing whose read
decodes with the strongest evidence wins. Its p-value is multiplied by the number of framings
tried (Bonferroni), so the false-positive rate of the search stays at or below the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


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

    def __post_init__(self) -> None:
        if not 0.2 <= self.min_scale <= 1.0:
            raise ValueError(f"min_scale must be in [0.2, 1], got {self.min_scale}")
        if self.scale_steps < 1 or self.grid < 1:
            raise ValueError("scale_steps and grid must be at least 1")


def framings(config: SearchConfig = SearchConfig()) -> list[Framing]:
    """Every framing of the search, the identity (scale 1) first."""
    scales = np.linspace(1.0, config.min_scale, config.scale_steps) if config.scale_steps > 1 else [1.0]
    out: list[Framing] = []
    for scale in scales:
        margin = 1.0 - float(scale)
        steps = np.linspace(0.0, margin, config.grid) if margin > 1e-9 and config.grid > 1 else [margin / 2]
        out.extend(Framing(float(scale), float(x), float(y)) for y in steps for x in steps)
    return out


def _shrink(image: Image.Image, side: int) -> np.ndarray:
    """The image squeezed to side x side, float32 RGB in [0, 1]."""
    resample = Image.BOX if min(image.size) >= side else Image.BILINEAR
    return np.asarray(image.resize((side, side), resample), dtype=np.float32) / 255.0


def search_source(image: Image.Image, size: int) -> Image.Image:
    """All a search needs of an image: RGB, at most 4 x `size` pixels a side (a small copy that
    can travel with a pipeline element instead of the full-size image)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    limit = SOURCE_SCALE * size
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


__all__ = ["Framing", "SearchConfig", "framed_views", "framings", "search_source"]
