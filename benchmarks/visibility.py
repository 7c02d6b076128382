"""Visibility measures of the quality benchmark (`benchmarks/quality.py`): PSNR and SSIMULACRA2
in two views of a marked photo, a JPEG q90 reference on the same crops, the tile-seam measure on
a smooth gradient, and side-by-side 100 % crops for the docs.

Views (both on the 8-bit marked output against the 8-bit original):

* **screen**: the whole image downscaled so its long side is 1600 px
  (`filigree.imaging.metrics.screen_view`), what a viewer sees of the whole photo;
* **flat crop**: the flattest 512 x 512 crop at native resolution (`flattest_crop_box`: lowest
  mean standard deviation of BT.601 luma over its 16 x 16 blocks: sky, skin, walls), where a
  smooth mark shows most at 100 % zoom.

Seams (`seam_jumps`): the residual (marked - original, 8-bit levels) of a smooth gradient, and
its absolute 1-pixel steps: the mean step across the layout's borders against the mean step
elsewhere. A layout without seams scores about 1.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from benchmarks.common import finite
from filigree.imaging.metrics import psnr, screen_view, ssimulacra2
from filigree.imaging.pixels import LUMA

CROP_SIDE = 512
FLATNESS_BLOCK = 16
REFERENCE_JPEG_QUALITY = 90
GRADIENT_SIZE = (1024, 768)  # width, height of the seam test image
CROP_GAIN = 10.0


@dataclass(frozen=True)
class Box:
    """A crop in pixels: ``pixels[top:top + height, left:left + width]``."""

    top: int
    left: int
    height: int
    width: int

    def of(self, pixels: np.ndarray) -> np.ndarray:
        return pixels[self.top:self.top + self.height, self.left:self.left + self.width]

    def to_list(self) -> list[int]:
        return [self.left, self.top, self.width, self.height]


def flattest_crop_box(pixels: np.ndarray, side: int = CROP_SIDE,
                      block: int = FLATNESS_BLOCK) -> Box:
    """The ``side x side`` crop (on the ``block`` grid) of ``uint8 [H, W, 3]`` pixels whose
    ``block x block`` blocks have the lowest mean standard deviation of BT.601 luma; an image
    smaller than ``side`` keeps its whole extent on that axis. Ties go to the top-left one."""
    height, width = pixels.shape[:2]
    crop_h, crop_w = min(side, height), min(side, width)
    rows, cols = height // block, width // block
    span_r, span_c = max(1, crop_h // block), max(1, crop_w // block)
    if rows < 1 or cols < 1:
        return Box(0, 0, crop_h, crop_w)
    luma = pixels[:rows * block, :cols * block, :3].astype(np.float64) @ LUMA.astype(np.float64)
    blocks = luma.reshape(rows, block, cols, block).transpose(0, 2, 1, 3).reshape(rows, cols, -1)
    stds = blocks.std(axis=2)
    summed = np.pad(stds, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    window = (summed[span_r:, span_c:] - summed[:-span_r, span_c:]
              - summed[span_r:, :-span_c] + summed[:-span_r, :-span_c])
    r, c = np.unravel_index(int(np.argmin(window)), window.shape)
    top, left = min(r * block, height - crop_h), min(c * block, width - crop_w)
    return Box(int(top), int(left), crop_h, crop_w)


def view_scores(original: np.ndarray, marked: np.ndarray) -> dict[str, float | None]:
    """PSNR (dB; None when identical) and SSIMULACRA2 of one view, uint8 [H, W, 3] each."""
    return {"psnr": finite(psnr(original, marked)), "ssimulacra2": ssimulacra2(original, marked)}


def visibility_record(original: np.ndarray, marked: np.ndarray) -> dict[str, Any]:
    """Both views of a marked photo: ``{"screen": {psnr, ssimulacra2, size}, "flat":
    {psnr, ssimulacra2, box [left, top, width, height]}}``; uint8 [H, W, 3] inputs."""
    box = flattest_crop_box(original)
    screen_a, screen_b = screen_view(original), screen_view(marked)
    return {
        "screen": {**view_scores(screen_a, screen_b), "size": [screen_a.shape[1], screen_a.shape[0]]},
        "flat": {**view_scores(box.of(original), box.of(marked)), "box": box.to_list()},
    }


def jpeg_resave(pixels: np.ndarray, quality: int = REFERENCE_JPEG_QUALITY) -> np.ndarray:
    """uint8 [H, W, 3] after a Pillow JPEG round trip at ``quality`` (4:2:0, IJG tables)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return np.asarray(decoded.convert("RGB"))


def jpeg_reference(original: np.ndarray) -> dict[str, Any]:
    """The visibility of a JPEG q90 re-save of the photo's flattest crop (a calibration point:
    visually lossless for most people)."""
    box = flattest_crop_box(original)
    crop = np.ascontiguousarray(box.of(original))
    return {**view_scores(crop, jpeg_resave(crop)), "box": box.to_list(),
            "quality": REFERENCE_JPEG_QUALITY}


# -- seams -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Borders:
    """Where a layout's borders fall, in pixel coordinates along each axis (pixel ``i`` spans
    ``[i, i + 1)``, so the 1-pixel step between pixels ``i - 1`` and ``i`` sits at ``i``).

    An upsampled residual spreads a border's jump over ``spread`` pixels along that axis (the
    upsampling factor; 1 for a hard border): the steps within ``(spread - 1) / 2`` of a border
    (at least the nearest one) are its border steps, and steps within ``spread / 2 + 1`` of any
    border count as neither border nor inside."""

    rows: tuple[float, ...]
    cols: tuple[float, ...]
    row_spread: float = 1.0
    col_spread: float = 1.0
    kind: str = ""


def tile_borders(height: int, width: int, grid: int, working_size: int) -> Borders:
    """Borders of a ``grid x grid`` tiled layout whose ``working_size`` tiles are upsampled onto
    the image (`filigree.tiling`): at ``k * side / grid`` for k = 1 .. grid - 1, spread over
    each axis' upsampling factor ``side / (grid * working_size)``."""
    rows = tuple(k * height / grid for k in range(1, grid))
    cols = tuple(k * width / grid for k in range(1, grid))
    return Borders(rows, cols, row_spread=max(1.0, height / (grid * working_size)),
                   col_spread=max(1.0, width / (grid * working_size)), kind=f"{grid}x{grid} tiles")


def period_borders(height: int, width: int, period: int, offset: int = 0) -> Borders:
    """Grid lines of a periodic layout (every ``period`` pixels from ``offset``): the same
    measure then compares the 1-pixel steps on its grid with those off it."""
    if period < 2:
        raise ValueError(f"period must be at least 2 pixels, got {period}")
    start = offset % period or period
    return Borders(tuple(float(v) for v in range(start, height, period)),
                   tuple(float(v) for v in range(start, width, period)),
                   kind=f"period {period} px")


def _step_classes(extent: int, lines: Sequence[float], spread: float) -> tuple[np.ndarray, np.ndarray]:
    """(on a border, inside) masks over the steps at positions 1 .. extent - 1."""
    position = np.arange(1, extent, dtype=np.float64)
    on = np.zeros(extent - 1, bool)
    near = np.zeros(extent - 1, bool)
    for line in lines:
        distance = np.abs(position - line)
        on |= distance <= max((spread - 1) / 2, distance.min())
        near |= distance <= spread / 2 + 1
    return on, ~near


def seam_jumps(residual: np.ndarray, borders: Borders) -> dict[str, Any]:
    """Mean absolute 1-pixel step of a residual ``[H, W]`` or ``[H, W, C]`` (any unit; 8-bit
    levels here; channels averaged) across ``borders`` and inside (see `Borders`), horizontal
    and vertical steps pooled, and their ratio border / inside (None when there are no
    borders, no inside steps, or the inside is exactly flat). About 1 means no seam."""
    r = np.asarray(residual, dtype=np.float64)
    if r.ndim == 2:
        r = r[..., None]
    height, width = r.shape[:2]
    per_column = np.abs(np.diff(r, axis=1)).mean(axis=2).sum(axis=0)  # step at x = 1 .. W-1
    per_row = np.abs(np.diff(r, axis=0)).mean(axis=2).sum(axis=1)  # step at y = 1 .. H-1
    border_sum = inside_sum = 0.0
    border_n = inside_n = 0
    for sums, lines, extent, count, spread in (
            (per_column, borders.cols, width, height, borders.col_spread),
            (per_row, borders.rows, height, width, borders.row_spread)):
        if extent < 2:
            continue
        on, inside = _step_classes(extent, lines, spread)
        border_sum += float(sums[on].sum())
        border_n += int(on.sum()) * count
        inside_sum += float(sums[inside].sum())
        inside_n += int(inside.sum()) * count
    border = border_sum / border_n if border_n else None
    inside = inside_sum / inside_n if inside_n else None
    ratio = border / inside if border is not None and inside else None
    return {"layout": borders.kind, "border_step": border, "inside_step": inside, "ratio": ratio,
            "border_steps": border_n, "inside_steps": inside_n,
            "spread": [borders.col_spread, borders.row_spread]}


def smooth_gradient(width: int = GRADIENT_SIZE[0], height: int = GRADIENT_SIZE[1]) -> np.ndarray:
    """uint8 [height, width, 3]: a smooth colour gradient in mid tones (no clipping of a mark of
    a few levels), every channel monotonic along x and y."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(1, width - 1), y / max(1, height - 1)
    rgb = np.stack([70 + 110 * u + 20 * v, 90 + 40 * u + 90 * v, 170 - 40 * u + 30 * v], -1)
    return np.rint(rgb).astype(np.uint8)


def seam_record(marks: Sequence[Callable[[np.ndarray], np.ndarray]],
                borders_for: Callable[[int, int], Borders | None]) -> dict[str, Any]:
    """Marks `smooth_gradient` with each of ``marks`` (uint8 [H, W, 3] -> the marked uint8
    output; one per payload) and measures `seam_jumps` of each residual at
    ``borders_for(height, width)`` (None: the layout has no borders, reported as such): every
    payload's numbers, and the mean and largest ratio."""
    original = smooth_gradient()
    height, width = original.shape[:2]
    borders = borders_for(height, width)
    record: dict[str, Any] = {"size": [width, height], "payloads": len(marks),
                              "layout": "no borders (one view)" if borders is None else borders.kind}
    runs = []
    for mark in marks:
        residual = np.asarray(mark(original)).astype(np.int16) - original.astype(np.int16)
        run = {"residual_rms": float(np.sqrt(np.mean(residual.astype(np.float64) ** 2)))}
        if borders is not None:
            run.update(seam_jumps(residual, borders))
        runs.append(run)
    ratios = [r["ratio"] for r in runs if r.get("ratio") is not None]
    return {**record, "runs": runs, "ratio_mean": float(np.mean(ratios)) if ratios else None,
            "ratio_max": float(np.max(ratios)) if ratios else None}


# -- side-by-side crops ------------------------------------------------------------------------

def side_by_side(original: np.ndarray, marked: np.ndarray, gain: float = CROP_GAIN,
                 gap: int = 8) -> Image.Image:
    """original | marked | residual: ``128 + gain * (marked - original)`` per channel, clipped
    (mid grey is no change), each at 100 %, separated by ``gap`` white pixels; uint8 inputs."""
    height, width = original.shape[:2]
    residual = np.clip(128.0 + gain * (marked.astype(np.float32) - original.astype(np.float32)),
                       0, 255)
    canvas = np.full((height, 3 * width + 2 * gap, 3), 255, np.uint8)
    for i, panel in enumerate((original, marked, np.rint(residual).astype(np.uint8))):
        canvas[:, i * (width + gap):i * (width + gap) + width] = panel
    return Image.fromarray(canvas, "RGB")


def summarise_visibility(records: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Means and worst values (lowest SSIMULACRA2 and PSNR) of both views over photos."""
    records = [r for r in records if r]
    if not records:
        return None
    out: dict[str, Any] = {"photos": len(records)}
    for view in ("screen", "flat"):
        scores = [r[view]["ssimulacra2"] for r in records]
        psnrs = [r[view]["psnr"] for r in records if r[view]["psnr"] is not None]
        out[view] = {"ssimulacra2_mean": float(np.mean(scores)),
                     "ssimulacra2_min": float(np.min(scores)),
                     "psnr_mean": float(np.mean(psnrs)) if psnrs else None,
                     "psnr_min": float(np.min(psnrs)) if psnrs else None}
    return out
