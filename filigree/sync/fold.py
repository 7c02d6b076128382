"""Read side, steps 5-7: fold the image over a lattice, locate the sync template, align.

Template registration after Pereira & Pun 2000 ("Robust template matching for affine resistant
image watermarks", IEEE TIP 9(6)): the folded tile is cross-correlated (FFT, circular) with
every key template under every dihedral transform; the peak gives the template, the
orientation and the phase.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from filigree.sync.templates import TILE_SIZE, dihedral, radial_band, undo_dihedral


def fold(
    w: np.ndarray,
    basis: np.ndarray,
    size: int = TILE_SIZE,
    origin: tuple[float, float] = (0.0, 0.0),
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Average of an image over all periods of a lattice: float32 [size, size].

    w: [h, w] image (float32 or float64). basis: [2, 2], rows v1, v2 = period vectors (dy, dx)
    in w's pixels. Tile sample (u, v) is the mean of the pixels at origin + (u + i) / size * v1
    + (v + j) / size * v2 for all integers i, j, each pixel counted in its nearest sample (a
    box of one sample: gentler on the tile's high frequencies than a bilinear gather, and one
    pass over the pixels; `fold_bins`). weights: optional float [h, w] >= 0, the weight of each
    pixel in its sample's mean. Samples no pixel (or weight) falls in are 0. Raises ValueError
    for a singular basis.
    """
    flat = fold_bins(np.shape(w), basis, size, origin).ravel()
    values = np.asarray(w, dtype=np.float64).ravel()
    if weights is not None and np.shape(weights) != np.shape(w):
        raise ValueError(f"weights must have the image's shape {np.shape(w)}, got {np.shape(weights)}")
    if weights is None:
        sums = np.bincount(flat, weights=values, minlength=size * size)
        counts = np.bincount(flat, minlength=size * size)
    else:
        weight = np.asarray(weights, dtype=np.float64).ravel()
        sums = np.bincount(flat, weights=values * weight, minlength=size * size)
        counts = np.bincount(flat, weights=weight, minlength=size * size)
    return (sums / np.where(counts > 0, counts, 1)).reshape(size, size).astype(np.float32)


def fold_blocks(
    w: np.ndarray,
    basis: np.ndarray,
    size: int = TILE_SIZE,
    grid: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sums, counts float64 [grid, grid, size, size], energy float64 [grid, grid]): the fold of
    w over `basis` (from origin 0, as `fold`) kept apart for each block of a grid x grid split
    of the image, and each block's sum of w squared, in one pass over the pixels. The fold of
    any union of blocks is its sums over its counts, in the same tile coordinates as the whole
    image's fold."""
    h, wd = np.shape(w)
    block = (np.arange(h) * grid // h)[:, None] * grid + (np.arange(wd) * grid // wd)[None, :]
    values = np.asarray(w, np.float64).ravel()
    energy = np.bincount(block.ravel(), weights=values * values, minlength=grid * grid)
    flat = fold_bins((h, wd), basis, size) + (block * (size * size)).astype(np.int32)
    length = grid * grid * size * size
    sums = np.bincount(flat.ravel(), weights=values, minlength=length)
    counts = np.bincount(flat.ravel(), minlength=length).astype(np.float64)
    return sums.reshape(grid, grid, size, size), counts.reshape(grid, grid, size, size), energy.reshape(grid, grid)


def band_excess(sums: np.ndarray, counts: np.ndarray, energy: float) -> float:
    """z-score of a fold's energy in the templates' band over what folding noise leaves.

    sums, counts: float [n, n], a fold's sums and pixel counts (`fold_blocks`); energy: the sum
    of the folded pixels' squares. Scaled by sqrt(count) / RMS, the fold of independent noise is
    white with unit variance, so each band bin's power over n^2 has mean 1 and standard
    deviation 1, and a periodic mark raises it. A photo's whitened content is not independent
    from pixel to pixel and leaves some excess of its own (tens, on held-out photos), so the
    score ranks regions of one image by their lattice-locked signal, whatever the template; it
    is not a detection statistic."""
    n = sums.shape[-1]
    total = counts.sum()
    if total <= 0 or energy <= 0:
        return 0.0
    rms = np.sqrt(energy / total)
    scaled = sums / np.sqrt(np.where(counts > 0, counts, 1.0)) / rms
    band = radial_band(n)
    power = np.abs(np.fft.rfft2(scaled))[band] ** 2 / (n * n)
    return float((power.mean() - 1.0) * np.sqrt(power.size))


def fold_bins(
    shape: tuple[int, int],
    basis: np.ndarray,
    size: int = TILE_SIZE,
    origin: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """int32 [h, w], read-only: the flat tile sample (u * size + v) each pixel of an [h, w]
    image falls in when folded over the lattice `basis` (rows v1, v2, pixels) from `origin`
    (see `fold`). The last few are kept: a read folds its best lattice several times (a view of
    a read-only array is returned, which cannot be made writeable). Raises ValueError for a
    singular basis."""
    basis = np.asarray(basis, dtype=np.float64)
    det = np.linalg.det(basis)
    if not np.isfinite(det) or abs(det) < 1e-6:
        raise ValueError(f"lattice basis is singular: {basis.tolist()}")
    key = (tuple(int(n) for n in shape), basis.tobytes(), int(size), (float(origin[0]), float(origin[1])))
    return _cached_bins(*key).view()


@functools.lru_cache(maxsize=2)
def _cached_bins(shape: tuple[int, int], basis_bytes: bytes, size: int, origin: tuple[float, float]) -> np.ndarray:
    basis = np.frombuffer(basis_bytes, dtype=np.float64).reshape(2, 2)
    h, wd = shape
    to_tile = np.linalg.inv(basis.T) * size  # (dy, dx) -> tile units (u, v)
    ys = np.arange(h, dtype=np.float64) - origin[0]
    xs = np.arange(wd, dtype=np.float64) - origin[1]
    flat = _bins(to_tile[0], ys, xs, size)
    flat *= size
    flat += _bins(to_tile[1], ys, xs, size)
    flat.flags.writeable = False
    return flat


_FIXED_BITS = 16


def _bins(row: np.ndarray, ys: np.ndarray, xs: np.ndarray, size: int) -> np.ndarray:
    """int32 [h, w]: nearest tile sample index along one tile axis, row @ (y, x) mod size.

    For a power-of-two size the sum is formed in 16-bit fixed point with int32 wrap-around,
    which keeps it exact modulo size * 2^16 (each term rounded once, no drift)."""
    if size & (size - 1) == 0 and size <= 2 ** (31 - _FIXED_BITS):
        one = float(1 << _FIXED_BITS)
        col_y = np.rint((row[0] * ys + 0.5) * one).astype(np.int64).astype(np.int32)
        col_x = np.rint(row[1] * xs * one).astype(np.int64).astype(np.int32)
        fixed = col_y[:, None] + col_x[None, :]
        fixed >>= _FIXED_BITS
        fixed &= size - 1
        return fixed
    values = (row[0] * ys + 0.5)[:, None] + (row[1] * xs)[None, :]
    return (np.floor(values) % size).astype(np.int32)


def template_bank(templates: np.ndarray) -> np.ndarray:
    """Spectra of every template under every dihedral transform, conjugated, band-limited:
    complex64 [T, 8, n, n // 2 + 1] for templates float [T, n, n] (or one [n, n]). The last
    few banks are cached by the templates' bytes (a key's bank is built once per process)."""
    t = np.ascontiguousarray(templates, dtype=np.float32)
    return _cached_bank(t.tobytes(), t.shape)


@functools.lru_cache(maxsize=8)
def _cached_bank(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    t = np.frombuffer(data, dtype=np.float32).reshape(shape)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[1] != t.shape[2]:
        raise ValueError(f"templates must be [T, n, n], got shape {t.shape}")
    variants = np.stack([dihedral(t, d) for d in range(8)], axis=1)
    bank = (np.conj(np.fft.rfft2(variants)) * radial_band(t.shape[-1])).astype(np.complex64)
    bank.flags.writeable = False
    return bank


def prediction_response(size: int, spacing: float = 1.0) -> np.ndarray:
    """float32 [size, size // 2 + 1]: frequency response, on a tile's rfft2 bins, of the
    whitening's 4-neighbour prediction error when one tile sample spans `spacing` pixels."""
    fy = np.fft.fftfreq(size)[:, None] / spacing
    fx = np.fft.rfftfreq(size)[None, :] / spacing
    return (1.0 - 0.5 * (np.cos(2 * np.pi * fy) + np.cos(2 * np.pi * fx))).astype(np.float32)


@dataclass(frozen=True)
class TemplateMatch:
    """Where a sync template sits in a folded tile."""

    template: int
    """Index t of the best template."""
    dihedral: int
    """d in [0, 8): folded ~ roll(dihedral(S_t, d), shift) (see `templates.dihedral`)."""
    shift: tuple[float, float]
    """Cyclic shift (dy, dx) in tile samples, sub-sample (parabolic), each in [0, n)."""
    z: float
    """(peak - mean) / std of the winning correlation surface."""


def locate_template(folded: np.ndarray, templates: np.ndarray, spacing: float = 1.0) -> TemplateMatch:
    """Best (template, dihedral, shift, z) for a folded tile, by circular cross-correlation.

    folded: float [n, n]. templates: float [T, n, n] sync templates, or a `template_bank`.
    spacing: analysis pixels per tile sample (|v1| / n), so the templates are whitened like
    the image was. The fold's spectrum is limited to the templates' band; the z-score of each
    of the T x 8 correlation surfaces is (value - mean) / std over its n^2 shifts.
    """
    n = np.shape(folded)[-1]
    bank = templates if np.iscomplexobj(templates) else template_bank(templates)
    spectrum = _fold_spectrum(folded, spacing)
    surfaces = np.fft.irfft2(bank * spectrum.astype(np.complex64), s=(n, n))  # [T, 8, n, n]
    flat = surfaces.reshape(surfaces.shape[0], 8, -1)
    mean = flat.mean(-1, keepdims=True)
    std = flat.std(-1, keepdims=True)
    z = (flat - mean) / np.where(std > 0, std, 1.0)
    best = int(np.argmax(z))
    t, d, k = np.unravel_index(best, z.shape)
    shift = _subsample_peak(z[t, d].reshape(n, n), *divmod(int(k), n))
    return TemplateMatch(template=int(t), dihedral=int(d), shift=shift, z=float(z[t, d, k]))


def template_shift(folded: np.ndarray, spectrum: np.ndarray, spacing: float,
                   near: tuple[float, float], reach: int = 3) -> tuple[tuple[float, float], float]:
    """((dy, dx), z): where one known template variant sits in a folded tile within `reach`
    samples (cyclically) of `near`, as `locate_template` finds it on a single correlation
    surface. spectrum: one entry `template_bank(...)[t, d]`, complex [n, n // 2 + 1]."""
    n = np.shape(folded)[-1]
    surface = np.fft.irfft2(_fold_spectrum(folded, spacing) * spectrum, s=(n, n))
    std = surface.std()
    z = (surface - surface.mean()) / (std if std > 0 else 1.0)
    rows = (int(round(near[0])) + np.arange(-reach, reach + 1)) % n
    cols = (int(round(near[1])) + np.arange(-reach, reach + 1)) % n
    i, j = divmod(int(np.argmax(z[np.ix_(rows, cols)])), len(cols))
    y, x = int(rows[i]), int(cols[j])
    return _subsample_peak(z, y, x), float(z[y, x])


def matched_pattern(bank: np.ndarray, match: TemplateMatch, spacing: float) -> np.ndarray:
    """float32 [n, n]: the pattern whose dot product with a fold (less its mean) is the value
    of `match`'s correlation surface at its shift: the template variant of `bank`, band-limited
    and whitened as `locate_template` sees it, moved to the match's (sub-sample) shift. Spread
    back over the pixels (`fold_bins`), it tells where in the image the template is."""
    n = bank.shape[-2]
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    ramp = np.exp(-2j * np.pi * (fy * match.shift[0] + fx * match.shift[1]))
    spectrum = np.conj(bank[match.template, match.dihedral]) * prediction_response(n, spacing) * ramp
    return np.fft.irfft2(spectrum, s=(n, n)).astype(np.float32)


def _fold_spectrum(folded: np.ndarray, spacing: float) -> np.ndarray:
    """rfft2 of a folded tile less its mean, through the whitening's response at `spacing`
    analysis pixels per sample (what the templates are correlated with)."""
    f = np.asarray(folded, dtype=np.float32)
    return np.fft.rfft2(f - f.mean()) * prediction_response(f.shape[-1], spacing)


def _subsample_peak(surface: np.ndarray, y: int, x: int) -> tuple[float, float]:
    """The peak at sample (y, x) of a circular surface [n, n], refined to a sub-sample
    position by a parabola through its neighbours along each axis, each in [0, n)."""
    n = surface.shape[-1]
    return (
        (y + _parabolic(surface[(y - 1) % n, x], surface[y, x], surface[(y + 1) % n, x])) % n,
        (x + _parabolic(surface[y, (x - 1) % n], surface[y, x], surface[y, (x + 1) % n])) % n,
    )


def _parabolic(m: float, c: float, p: float) -> float:
    d = m - 2 * c + p
    return float(np.clip(0.5 * (m - p) / d, -0.5, 0.5)) if d < 0 else 0.0


def align(folded: np.ndarray, dihedral_index: int, shift: tuple[float, float]) -> np.ndarray:
    """Folded tile brought back to the embedded tile's phase and orientation: float32 [n, n].

    Undoes `locate_template`'s model folded ~ roll(dihedral(S, d), shift): a cyclic shift by
    -shift (Fourier, exact for sub-sample shifts of a band-limited tile; the Nyquist bins are
    dropped), then the inverse dihedral transform.
    """
    f = np.asarray(folded, dtype=np.float32)
    n = f.shape[-1]
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    ramp = np.exp(2j * np.pi * (fy * shift[0] + fx * shift[1]))
    if n % 2 == 0:
        ramp[n // 2, :] = 0
        ramp[:, -1] = 0
    shifted = np.fft.irfft2(np.fft.rfft2(f) * ramp, s=(n, n)).astype(np.float32)
    return np.ascontiguousarray(undo_dihedral(shifted, dihedral_index))
