"""Image quality metrics between an image and its marked copy: PSNR, SSIM and the perceptual
SSIMULACRA2, and the "screen" view (whole image at a screen's size) they are also taken on."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from filigree.imaging.pixels import LUMA, rgbx_base, row_blocks, tile_rows

def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float | None = None) -> float:
    """PSNR in dB between two images of the same shape; ``inf`` when identical.

    ``data_range`` defaults to 255 for uint8, 65535 for uint16 and 1.0 for floats in [0, 1],
    so PSNR of [0, 1] floats equals PSNR of the same pixels at 8-bit scale. Accumulates in row
    blocks of float32 differences.
    """
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} != {b.shape}")
    if data_range is None:
        data_range = _default_range(a.dtype, b.dtype)
    base_a, base_b = rgbx_base(a), rgbx_base(b)
    if base_a is not None and base_b is not None:
        total = _squared_error_rgbx(base_a, base_b)
    else:
        total = 0.0
        row_elements = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
        for rows in row_blocks(a.shape[0], row_elements):
            diff = np.subtract(a[rows], b[rows], dtype=np.float32).ravel()
            total += float(np.dot(diff, diff))
    if total == 0.0:
        return math.inf
    mse = total / max(1, a.size)
    return 10.0 * math.log10(data_range * data_range / mse)


def _squared_error_rgbx(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of squared R, G, B differences of two ``[H, W, 4]`` arrays (pad bytes ignored),
    over contiguous row tiles."""
    height, width = a.shape[:2]
    rows = tile_rows(width)
    diff = np.empty((rows, width * 4), np.float32)
    total = 0.0
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        n = stop - start
        d = np.subtract(a[start:stop].reshape(n, -1), b[start:stop].reshape(n, -1), out=diff[:n],
                        dtype=np.float32)
        d.reshape(n, width, 4)[..., 3] = 0
        flat = d.ravel()
        total += float(np.dot(flat, flat))
    return total


def _default_range(*dtypes: np.dtype) -> float:
    if all(d == np.uint8 for d in dtypes):
        return 255.0
    if all(np.issubdtype(d, np.integer) for d in dtypes):
        return 65535.0 if any(d == np.uint16 for d in dtypes) else 255.0
    if any(np.issubdtype(d, np.integer) for d in dtypes):
        raise ValueError("mixing integer and float images needs an explicit data_range")
    return 1.0


def ssim(
    a: np.ndarray, b: np.ndarray, *, data_range: float | None = None, window: int = 7
) -> float:
    """Mean SSIM of the BT.601 luma of two images (uniform ``window``, sample covariance).

    Matches the usual definition with K1=0.01, K2=0.03. Meant for evaluation-sized images:
    it works in float64 on ``[H, W]`` planes.
    """
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} != {b.shape}")
    if data_range is None:
        data_range = _default_range(a.dtype, b.dtype)
    x, y = (_luma64(v) / data_range for v in (a, b))
    if min(x.shape) < window:
        raise ValueError(f"images must be at least {window} pixels on each side")
    n = window * window
    cov_norm = n / (n - 1)
    mx, my = _box_mean(x, window), _box_mean(y, window)
    vx = cov_norm * (_box_mean(x * x, window) - mx * mx)
    vy = cov_norm * (_box_mean(y * y, window) - my * my)
    cxy = cov_norm * (_box_mean(x * y, window) - mx * my)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def _luma64(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 3 and values.shape[2] >= 3:
        return values[..., :3] @ LUMA.astype(np.float64)
    if values.ndim == 3:
        return values[..., 0]
    return values


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)


SCREEN_SIDE = 1600
"""Long side, in pixels, of the "screen" view of an image (`screen_view`)."""


def ssimulacra2(reference: np.ndarray, distorted: np.ndarray) -> float:
    """SSIMULACRA2 score of ``distorted`` against ``reference``: 100 for identical images,
    about 90 and above visually lossless at 100 % zoom, about 70 like a JPEG q70 re-save, 50
    and below clearly visible; it can go negative.

    Both are 8-bit sRGB ``uint8 [H, W, 3]`` arrays (or ``[H, W]`` grey, taken as R = G = B) of
    the same shape, at least 8 pixels a side. Raises ValueError otherwise. Costs about 0.6 s of
    one CPU core per 512 x 512 pair and 4-5 s per 1600 x 1067 pair (float64 multi-scale).

    Source: J. Sneyers, SSIMULACRA 2 (libjxl ``tools/ssimulacra2.cc``): multi-scale SSIM and
    edge-artifact/detail-loss maps in the XYB colour space, 6 scales, tuned on human ratings;
    computed by the PyPI ``ssimulacra2`` package (pure Python, numpy + scipy).
    """
    from ssimulacra2 import compute_ssimulacra2

    a, b = _rgb8(reference, "reference"), _rgb8(distorted, "distorted")
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} != {b.shape}")
    if min(a.shape[:2]) < 8:
        raise ValueError(f"images must be at least 8 pixels a side, got {a.shape[1]}x{a.shape[0]}")
    # The package reads images with Pillow; an uncompressed PPM in memory passes the exact pixels.
    return float(compute_ssimulacra2(_ppm(a), _ppm(b)))


def _rgb8(pixels: np.ndarray, name: str) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"{name}: expected uint8 pixels, got {pixels.dtype}")
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"{name}: expected [H, W, 3] or [H, W], got {pixels.shape}")
    return pixels


def _ppm(rgb: np.ndarray) -> io.BytesIO:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buffer, "PPM")
    buffer.seek(0)
    return buffer


def screen_view(pixels: np.ndarray, long_side: int = SCREEN_SIDE) -> np.ndarray:
    """The image as a screen shows it whole: ``uint8 [H, W, 3]`` (or ``[H, W]``) resized with
    Pillow's Lanczos filter (antialiased) so that its long side is ``long_side`` pixels; an
    image already that small is returned as it is. Aspect ratio kept, sides rounded."""
    pixels = np.asarray(pixels)
    height, width = pixels.shape[:2]
    if max(height, width) <= long_side:
        return pixels
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.LANCZOS))
