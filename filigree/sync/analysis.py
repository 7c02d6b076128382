"""Read side, steps 1-3: the analysis image, its whitening, and its autocorrelation."""

from __future__ import annotations

import numpy as np
try:
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # numpy < 2
    from numpy import byte_bounds
from PIL import Image

ANALYSIS_LONG_SIDE = 1024
"""The analysis image's long side is at most this many pixels (area downscale, never up)."""
WHITEN_BLOCK = 5
"""Local-energy blocks of the whitening: a 3 x 3 neighbourhood of 5 x 5 blocks = 15 x 15 px."""
FLAT_RMS = 0.02
"""A 5 x 5 block whose prediction error has an RMS under this (grey levels) is flat: a margin,
a canvas, a clipped area (a marked area, even a smooth one, is far above). It and its neighbours within `FLAT_MARGIN` blocks whiten to 0, so the
straight border of a margin or canvas does not become a ridge in the autocorrelation."""
FLAT_MARGIN = 1
WHITEN_FLOOR = 2.0
"""Added to the local RMS of the prediction error before dividing (grey levels)."""


def analysis_luma(
    pixels: np.ndarray | Image.Image, long_side: int = ANALYSIS_LONG_SIDE
) -> tuple[np.ndarray, tuple[float, float]]:
    """BT.601 luma of an image, area-downscaled so its long side is at most `long_side`.

    pixels: a PIL image, or an array [H, W] / [H, W, C] (C = 1, 3 or 4; alpha ignored) of grey
    levels 0..255 (uint8 or float). uint8 RGB goes through Pillow's integer luma (rounded to a
    grey level); float input is converted exactly. Returns (luma float32 [h, w], (sy, sx)) with
    sy = h / H and sx = w / W: an analysis pixel index i covers input index (i + 0.5) / s - 0.5.
    Raises ValueError for an empty image or an unsupported shape.
    """
    image = _luma_image(pixels)
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"empty image ({height} x {width})")
    factor = min(1.0, long_side / max(width, height))
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    if size != (width, height):
        image = image.resize(size, Image.Resampling.BOX)
    luma = np.asarray(image, dtype=np.float32)
    return luma, (size[1] / height, size[0] / width)


def _luma_image(pixels: np.ndarray | Image.Image) -> Image.Image:
    """Mode 'F' (or 'L') PIL image of the luma of `pixels`."""
    if isinstance(pixels, Image.Image):
        if pixels.mode in ("L", "F"):
            return pixels
        return pixels.convert("RGB").convert("L")
    array = np.asarray(pixels)
    if array.ndim == 3 and array.shape[2] in (1, 3, 4):
        if array.shape[2] == 1:
            array = array[..., 0]
        elif array.dtype == np.uint8:
            return Image.fromarray(_rgbx_or_copy(array)).convert("L")
        else:
            weights = np.array([0.299, 0.587, 0.114], np.float32)
            array = array[..., :3].astype(np.float32) @ weights
    if array.ndim != 2:
        raise ValueError(f"pixels must be [H, W] or [H, W, 1|3|4], got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"empty image ({array.shape[0]} x {array.shape[1]})")
    return Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")


def _rgbx_or_copy(array: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3 | 4] that Pillow can take without a strided gather: a C-contiguous
    array as it is; the RGB view of 4-byte pixels (Pillow's own RGBX/RGBA memory, as
    `Watermarker` reads it) as the 4-channel rows it lies in (Pillow's RGBA -> L ignores the
    fourth byte); anything else copied."""
    if array.flags.c_contiguous:
        return array
    h, w, c = array.shape
    if c == 3 and array.strides[1:] == (4, 1) and array.strides[0] == 4 * w:
        rows = np.lib.stride_tricks.as_strided(array, shape=(h, w, 4), strides=(4 * w, 4, 1), writeable=False)
        base = array
        while isinstance(base.base, np.ndarray):
            base = base.base
        if byte_bounds(rows)[1] <= byte_bounds(base)[1]:  # the fourth byte is in the buffer
            return rows
    return np.ascontiguousarray(array)


def whiten(luma: np.ndarray) -> np.ndarray:
    """Whitened analysis image w: float32, the shape of `luma` [h, w] (h, w >= 2).

    e = y - mean of its 4 neighbours (reflect padding): the prediction error removes most of
    the content's low frequencies, where photos hold their energy. w = e / (local RMS of e over
    about 15 x 15 px + 2): local normalisation keeps edges and texture from dominating the
    autocorrelation. The local RMS is taken on 5 x 5 blocks (a 3 x 3 block neighbourhood) and
    interpolated bilinearly, which is close to a 15 x 15 box at a fraction of its cost.
    Raises ValueError for an image under 2 x 2.
    """
    y = np.asarray(luma, dtype=np.float32)
    if y.ndim != 2 or min(y.shape) < 2:
        raise ValueError(f"luma must be [h, w] with h, w >= 2, got shape {y.shape}")
    p = np.pad(y, 1, mode="reflect")
    e = p[:-2, 1:-1] + p[2:, 1:-1]
    e += p[1:-1, :-2]
    e += p[1:-1, 2:]
    e *= np.float32(-0.25)
    e += y
    e *= _local_gain(e)
    return e


def _local_gain(e: np.ndarray) -> np.ndarray:
    """float32 [h, w]: 1 / (RMS of e over a ~15 x 15 neighbourhood + floor) (see `whiten`);
    0 on flat areas (black margins, canvases) and their borders."""
    h, w = e.shape
    energy = Image.fromarray(e * e, mode="F")
    grid = (max(1, -(-w // WHITEN_BLOCK)), max(1, -(-h // WHITEN_BLOCK)))
    blocks = np.asarray(energy.resize(grid, Image.Resampling.BOX), dtype=np.float32)
    padded = np.pad(blocks, 1, mode="edge")
    gh, gw = blocks.shape
    local = sum(padded[i : i + gh, j : j + gw] for i in range(3) for j in range(3)) / 9.0
    gain = (1.0 / (np.sqrt(local) + WHITEN_FLOOR)).astype(np.float32)
    flat = np.pad(blocks < FLAT_RMS**2, FLAT_MARGIN, mode="edge")
    span = 2 * FLAT_MARGIN + 1
    near_flat = np.zeros((gh, gw), bool)
    for i in range(span):
        for j in range(span):
            near_flat |= flat[i : i + gh, j : j + gw]
    gain[near_flat] = 0.0
    smooth = Image.fromarray(gain, mode="F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(smooth, dtype=np.float32)


def _smooth_length(n: int) -> int:
    """Largest m <= n whose prime factors are 2, 3 and 5 (fast FFT lengths)."""
    for m in range(n, 0, -1):
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
    return 1


def autocorrelation(w: np.ndarray) -> np.ndarray:
    """Circular autocorrelation of a whitened image (Kutter 1998: a periodic mark shows as a
    lattice of peaks at its period vectors).

    w: float32 [h, w]. The top-left corner is cropped to FFT-friendly sides (factors 2, 3, 5;
    at most a few pixels), the mean removed, and AC = irfft2(|rfft2(w)|^2) normalised by its
    zero lag and fftshifted: float32 [h', w'] with lag (0, 0) at (h' // 2, w' // 2).
    A constant image gives all zeros.
    """
    h, wd = (_smooth_length(n) for n in np.shape(w))
    x = np.asarray(w, dtype=np.float32)[:h, :wd]
    x = x - x.mean(dtype=np.float64).astype(np.float32)
    from scipy.fft import irfft2, rfft2

    spectrum = rfft2(x)
    power = spectrum.real**2 + spectrum.imag**2
    ac = irfft2(power, s=(h, wd)).astype(np.float32, copy=False)
    if ac[0, 0] > 0:
        ac /= ac[0, 0]
    return np.fft.fftshift(ac)
