"""Key-derived sync templates and the periodic layout of the embed side.

A marked image carries one n x n tile (n = 64) repeated with an integer period of P image
pixels over the whole image, origin at pixel (0, 0) (a self-referencing, periodic mark:
Kutter 1998, "Watermarking resisting to translation, rotation, and scaling", SPIE 3528). Part
of every tile is a sync template S_t, a faint key-derived pattern the reader locates by
correlation to recover the tile's phase and orientation (template registration: Pereira & Pun
2000, "Robust template matching for affine resistant image watermarks", IEEE TIP 9(6)).
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np

TILE_SIZE = 64
"""Side n of the periodic tile, in tile samples."""
TEMPLATE_COUNT = 16
"""Number T of sync templates per key; an image carries one, chosen by its salt."""
TEMPLATE_BAND = (3.0, 24.0)
"""Radial band of a template's spectrum, in cycles per 64-sample tile."""
PERIOD_DIVISOR = 8
PERIOD_RANGE = (64, 384)

_TEMPLATE_DOMAIN = b"filigree-sync"


def period_for(height: int, width: int) -> int:
    """The layout period P in image pixels: clip(round(min(H, W) / 8), 64, 384).

    Raises ValueError for a non-positive size.
    """
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    lo, hi = PERIOD_RANGE
    return int(np.clip(round(min(height, width) / PERIOD_DIVISOR), lo, hi))


def _keyed_uniforms(key: bytes, index: int, count: int) -> np.ndarray:
    """`count` float64 numbers in [0, 1) from HMAC-SHA256(key, b"filigree-sync" + index).

    The index is 4 bytes big-endian; SHAKE-256 stretches the MAC into the stream, so the values
    depend on the standard hashes only (not on numpy's generators).
    """
    mac = hmac.new(bytes(key), _TEMPLATE_DOMAIN + int(index).to_bytes(4, "big"), hashlib.sha256)
    stream = hashlib.shake_256(mac.digest()).digest(4 * count)
    return np.frombuffer(stream, dtype=">u4").astype(np.float64) / 2.0**32


def radial_band(size: int) -> np.ndarray:
    """bool [size, size // 2 + 1]: the rfft2 bins inside `TEMPLATE_BAND` (scaled to `size`)."""
    lo, hi = (f * size / TILE_SIZE for f in TEMPLATE_BAND)
    fy = np.fft.fftfreq(size) * size
    fx = np.fft.rfftfreq(size) * size
    radius = np.hypot(fy[:, None], fx[None, :])
    return (radius >= lo) & (radius <= hi)


def sync_template(key: bytes, index: int, size: int = TILE_SIZE) -> np.ndarray:
    """Sync template S_index of `key`: float32 [size, size], zero mean, unit RMS, circular.

    Its spectrum has unit magnitude and key-derived phases on every bin of the radial band
    3..24 cycles per tile (for size 64; scaled with size) and is zero elsewhere, so its circular
    autocorrelation is a sharp peak and its correlation with anything else is small. The
    phases come from HMAC-SHA256(key, b"filigree-sync" + index as 4 bytes big-endian).
    Raises ValueError for an index outside [0, 2**32) or a size below 8.
    """
    if not 0 <= index < 2**32:
        raise ValueError(f"template index must be in [0, 2**32), got {index}")
    if size < 8:
        raise ValueError(f"template size must be at least 8, got {size}")
    band = radial_band(size)
    phases = 2.0 * np.pi * _keyed_uniforms(key, index, band.size).reshape(band.shape)
    spectrum = np.where(band, np.exp(1j * phases), 0.0)
    template = np.fft.irfft2(spectrum, s=(size, size))
    template -= template.mean()
    return (template / np.sqrt(np.mean(template**2))).astype(np.float32)


def sync_templates(key: bytes, count: int = TEMPLATE_COUNT, size: int = TILE_SIZE) -> np.ndarray:
    """All templates of a key: float32 [count, size, size], S_0 .. S_{count-1}."""
    return np.stack([sync_template(key, t, size) for t in range(count)])


def dihedral(tile: np.ndarray, d: int) -> np.ndarray:
    """Dihedral transform d in [0, 8) of the last two axes: rot90 by d // 2, then a mirror of
    the columns when d is odd."""
    turned = np.rot90(tile, d // 2, axes=(-2, -1))
    return turned[..., ::-1] if d % 2 else turned


def undo_dihedral(tile: np.ndarray, d: int) -> np.ndarray:
    """Inverse of `dihedral(., d)`: undo_dihedral(dihedral(x, d), d) == x."""
    unmirrored = tile[..., ::-1] if d % 2 else tile
    return np.rot90(unmirrored, -(d // 2), axes=(-2, -1))


def tile_pattern(tile: np.ndarray, height: int, width: int, period: int) -> np.ndarray:
    """The periodic layout: float32 [height, width] with pattern[y, x] = tile at tile
    coordinates (y * n / period, x * n / period) modulo n, bilinear between tile samples.

    Equivalent to np.tile of the n x n tile, a bilinear resize by period / n and a crop to
    height x width with the origin at (0, 0); the pattern repeats exactly every `period`
    pixels in both directions. Raises ValueError for a non-square tile or a bad size/period.
    """
    tile = np.asarray(tile, dtype=np.float32)
    if tile.ndim != 2 or tile.shape[0] != tile.shape[1]:
        raise ValueError(f"tile must be square [n, n], got shape {tile.shape}")
    if height < 1 or width < 1 or period < 1:
        raise ValueError(f"size and period must be positive, got {height} x {width}, P={period}")
    n = tile.shape[0]

    def axis_weights(length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coord = (np.arange(min(length, period)) * (n / period)) % n
        lower = np.floor(coord).astype(np.intp)
        return lower, (lower + 1) % n, (coord - lower).astype(np.float32)

    y0, y1, fy = axis_weights(height)
    x0, x1, fx = axis_weights(width)
    rows = tile[y0] * (1 - fy)[:, None] + tile[y1] * fy[:, None]  # [min(H, P), n]
    block = rows[:, x0] * (1 - fx) + rows[:, x1] * fx  # one period (or less) in each direction
    reps = (-(-height // block.shape[0]), -(-width // block.shape[1]))
    return np.ascontiguousarray(np.tile(block, reps)[:height, :width])
