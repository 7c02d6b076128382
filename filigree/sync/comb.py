"""Read side, step 4 (spectral): the layout's lattice from a comb over the image's spectrum.

A mark that repeats with the square lattice of period vectors v1, v2 (|v1| = |v2| = p, angle
theta) puts all its energy on the reciprocal lattice: the frequencies R_theta (a, b) / p for
integers (a, b), and, its tile being band-limited to `TEMPLATE_BAND` cycles per tile, only where
3 <= |(a, b)| <= 24. The comb score of a lattice is the sum of the whitened image's normalised
power at those frequencies over the square root of their number: a z-score that uses every
spectral line of the mark at once and none of the image's energy outside the mark's band, so
a mark too faint for the autocorrelation's peaks (`lattice.py`) still stands out. This is
the frequency-domain form of periodic-mark detection (Kutter 1998; the reciprocal-lattice
search of Deguillaume, Voloshynovskiy & Pun 2002, "A method for the estimation and recovering
from general affine transforms in digital watermarking applications", SPIE 4675).

The search covers the edits the reader is promised: rotations within `MAX_ANGLE` of upright
(a square lattice looks the same after quarter turns and, mirrored, at -theta) and periods
from `MIN_PERIOD` input pixels to half the shorter side. A coarse grid on the band's low
frequencies finds candidates, each is refined on the whole band, and its integer multiples
are tested, since the points of a lattice's 1/k sub-lattice are a subset of its own.
"""

from __future__ import annotations

import functools
import numpy as np

from filigree.sync.analysis import _smooth_length
from filigree.sync.lattice import Lattice
from filigree.sync.templates import TEMPLATE_BAND

JPEG_BLOCK = 8
"""Side of a JPEG block, input pixels: the block grid's spectral lines are ignored."""
MAX_ANGLE = 6.0
"""Largest rotation from upright searched, degrees."""
MIN_PERIOD = 28.0
"""Shortest layout period searched, input pixels (the layout's shortest, 64, at 0.44 x)."""
POWER_CLIP = 6.0
"""Normalised power is clipped here, so that a few strong lines (JPEG block harmonics,
textures) cannot outvote the mark's many weak ones."""
NORMALISE_BINS = 15
"""Side of the box of frequency bins whose mean power normalises each bin."""
MIN_SCORE = 4.0
"""Comb z-score below which a lattice is not reported (unmarked photos: mostly under 4; a
mark the templates can register: 7 and up)."""
_COARSE_BAND = (8.0, 14.0)
_COARSE_MIN = 2.0  # coarse z under which no lattice is refined
_COARSE_PERIOD_STEP = 0.012  # log-period step of the coarse grid
_COARSE_ANGLE_STEP = 0.75  # degrees
_FINE = 7  # fine grid points per axis around a coarse candidate
_MAX_MULTIPLE = 4
_MULTIPLE_Z = 4.0


@functools.lru_cache(maxsize=4)
def band_points(lo: float, hi: float) -> np.ndarray:
    """float64 [k, 2]: integer (a, b) with lo <= |(a, b)| <= hi in one half plane (the power
    spectrum of a real image is symmetric)."""
    r = int(hi) + 1
    a, b = np.mgrid[-r : r + 1, 0 : r + 1]
    radius = np.hypot(a, b)
    keep = (radius >= lo) & (radius <= hi) & ((b > 0) | (a > 0))
    points = np.stack([a[keep], b[keep]], axis=1).astype(np.float64)
    points.flags.writeable = False
    return points


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of x [h, w] over k x k boxes (reflected edges), by cumulative sums."""
    p = k // 2
    padded = np.pad(x, p, mode="reflect").astype(np.float64)
    c = np.cumsum(padded, axis=0)
    c = np.concatenate([np.zeros((1, c.shape[1])), c])
    rows = c[k:] - c[:-k]
    c = np.cumsum(rows, axis=1)
    c = np.concatenate([np.zeros((c.shape[0], 1)), c], axis=1)
    return (c[:, k:] - c[:, :-k]) / (k * k)


@functools.lru_cache(maxsize=8)
def _rings(h: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    """(ring index intp [h, half], bins per ring) of an rfft2 grid: 1-bin rings in units of
    the longer side's bins."""
    width = 2 * (half - 1)
    fy = np.fft.fftfreq(h)[:, None] * max(h, width)
    fx = np.fft.rfftfreq(width)[None, :] * max(h, width)
    ring = np.rint(np.hypot(fy, fx)).astype(np.intp)
    ring.flags.writeable = False
    return ring, np.maximum(np.bincount(ring.ravel()), 1)


def _ring_mean(power: np.ndarray) -> np.ndarray:
    """float32 [h, w // 2 + 1]: each rfft2 bin's mean power over its ring (`_rings`)."""
    ring, count = _rings(*power.shape)
    total = np.bincount(ring.ravel(), power.ravel())
    return (total / count).astype(np.float32)[ring]


def normalised_power(w: np.ndarray) -> np.ndarray:
    """float32 [h', w' // 2 + 1]: the whitened image's rfft2 power over its local level
    (clipped at `POWER_CLIP`), on FFT-friendly sides h', w' (`_smooth_length`). The local level
    comes from power clipped at a few times its ring's mean, so that a strong mark's own lines
    (several in every box) do not raise the level they are measured against."""
    h, wd = (_smooth_length(n) for n in np.shape(w))
    x = np.asarray(w, dtype=np.float32)[:h, :wd]
    x = x - x.mean(dtype=np.float64).astype(np.float32)
    spectrum = np.fft.rfft2(x)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    ring = _ring_mean(power)
    local = _box_mean(np.minimum(power, POWER_CLIP * ring), NORMALISE_BINS).astype(np.float32)
    return np.minimum(power / np.maximum(local, 1e-20), POWER_CLIP)


def comb_map(norm: np.ndarray, reach: int, grid_period: tuple[float, float] | None = None) -> np.ndarray:
    """float32 [h', w' // 2 + 1]: z-scores of the highest `normalised_power` near each bin, so
    that a spectral line between bins (or, for the coarse search, up to a bin away) still
    scores. reach 1: the bin and its three forward neighbours (the fine map, indexed by
    floor); reach 2: its 3 x 3 neighbourhood (the coarse map). The spectral lines of a grid of
    `grid_period` (py, px) analysis pixels and its harmonics (a JPEG source's 8 x 8 blocks)
    score 0: that grid would otherwise pass for a lattice of 8, 16, 24 ... pixels."""
    h = norm.shape[0]
    best = np.maximum(norm, np.roll(norm, -1, axis=0))
    if reach > 1:
        np.maximum(best, np.roll(norm, 1, axis=0), out=best)
        best[:, 1:-1] = np.maximum(np.maximum(best[:, 1:-1], best[:, 2:]), best[:, :-2])
    else:
        best[:, :-1] = np.maximum(best[:, :-1], best[:, 1:])
    std = float(best.std())
    if not std > 0:
        return np.zeros_like(best)
    z = ((best - best.mean()) / std).astype(np.float32)
    if grid_period is not None:
        wd = 2 * (norm.shape[1] - 1)
        for axis, (length, p) in enumerate(zip((h, wd), grid_period)):
            if not p > 2.0:
                continue
            centres = np.rint(np.arange(1, int(p // 2) + 1) * (length / p)).astype(int)
            index = (centres[:, None] + np.arange(-2, 3)[None, :]).ravel()
            if axis == 0:
                z[np.concatenate([index, -index]) % length, :] = 0.0
            else:
                z[:, index[(index >= 0) & (index < z.shape[1])]] = 0.0
    return z


def comb_scores(zmap: np.ndarray, height: int, periods: np.ndarray, angles: np.ndarray,
                points: np.ndarray) -> np.ndarray:
    """float32 [len(periods), len(angles)]: the comb z-score of every (period, angle) lattice.

    zmap: `comb_map` of an image whose FFT height is `height` (its width is
    2 * (zmap.shape[1] - 1)); periods in analysis pixels; angles in degrees; points [k, 2] the
    (a, b) of `band_points`."""
    width = 2 * (zmap.shape[1] - 1)
    theta = np.radians(np.asarray(angles, np.float64))[:, None]
    c, s = np.cos(theta), np.sin(theta)
    a, b = points[:, 0], points[:, 1]
    fy, fx = c * a - s * b, s * a + c * b  # [angles, k], cycles per period
    flip = fx < 0  # the other half plane: the conjugate bin
    fy = np.where(flip, -fy, fy) * height
    fx = np.where(flip, -fx, fx) * width
    inverse = (1.0 / np.asarray(periods, np.float64))[:, None, None]
    iy = np.floor(fy * inverse).astype(np.intp)
    iy %= height
    ix = np.floor(fx * inverse).astype(np.intp)
    np.minimum(ix, zmap.shape[1] - 1, out=ix)
    flat = zmap.ravel()
    iy *= zmap.shape[1]
    iy += ix
    return flat[iy].sum(axis=-1) / np.float32(np.sqrt(len(points)))


def comb_lattices(w: np.ndarray, scale: tuple[float, float], count: int = 3,
                  grid_period: float | None = JPEG_BLOCK) -> list[Lattice]:
    """The best `count` square lattices of a whitened analysis image w [h, w] by the spectral
    comb (module docstring), best first; each refined on the whole band and replaced by its
    best integer multiple (2 to 4 times the period) when that multiple's extra points hold
    energy too. scale: (sy, sx) of the analysis image; grid_period: input pixels of a block
    grid to ignore (`comb_map`; None: none). [] when the image is too small."""
    h_fft = _smooth_length(np.shape(w)[0])
    shortest = min(np.shape(w))
    lo = MIN_PERIOD * float(np.mean(scale))
    hi = shortest / 2.0
    if hi <= lo:
        return []
    grid = None if grid_period is None else (grid_period * scale[0], grid_period * scale[1])
    norm = normalised_power(w)
    zmap = comb_map(norm, 1, grid)
    periods = np.exp(np.arange(np.log(lo), np.log(hi), _COARSE_PERIOD_STEP))
    angles = np.arange(-MAX_ANGLE, MAX_ANGLE + 1e-9, _COARSE_ANGLE_STEP)
    coarse = comb_scores(comb_map(norm, 2, grid), h_fft, periods, angles, coarse_points())
    full = band_points(*TEMPLATE_BAND)
    found: list[Lattice] = []
    for _ in range(3 * count):
        if len(found) == count:
            break
        i, j = np.unravel_index(int(np.argmax(coarse)), coarse.shape)
        if not coarse[i, j] >= _COARSE_MIN:
            break
        coarse[max(0, i - 3) : i + 4, max(0, j - 2) : j + 3] = -np.inf
        period, angle, score = _refine(zmap, h_fft, periods[i], angles[j], full,
                                       _COARSE_PERIOD_STEP, _COARSE_ANGLE_STEP)
        period, angle, score = _refine(zmap, h_fft, period, angle, full,
                                       _COARSE_PERIOD_STEP / 3, _COARSE_ANGLE_STEP / 3)
        if score < MIN_SCORE:
            continue
        period, angle, score = _best_multiple(zmap, h_fft, period, angle, score, full, hi)
        if any(_same(period, angle, f.basis) for f in found):
            continue
        found.append(Lattice(basis=_square_basis(period, angle), score=score))
    found.sort(key=lambda lattice: -lattice.score)
    return found


@functools.lru_cache(maxsize=1)
def coarse_points() -> np.ndarray:
    """The coarse search's points: those of `band_points(*_COARSE_BAND)` with a + b even."""
    points = band_points(*_COARSE_BAND)
    chosen = points[(points.sum(axis=1) % 2) == 0]
    chosen.flags.writeable = False
    return chosen


def _same(period: float, angle: float, basis: np.ndarray) -> bool:
    """Whether (period, angle) is the lattice of `basis` (within 2 % and 1 degree)."""
    other = float(np.hypot(*basis[0]))
    other_angle = float(np.degrees(np.arctan2(basis[0][1], basis[0][0])))
    return abs(period / other - 1.0) < 0.02 and abs(angle - other_angle) < 1.0


def _refine(zmap, height, period, angle, points, period_step, angle_step):
    """(period, angle, score): the best of a fine grid over one coarse cell."""
    periods = period * np.exp(np.linspace(-period_step, period_step, _FINE))
    angles = angle + np.linspace(-angle_step, angle_step, _FINE)
    scores = comb_scores(zmap, height, periods, angles, points)
    k, m = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return float(periods[k]), float(angles[m]), float(scores[k, m])


def _best_multiple(zmap, height, period, angle, score, points, longest):
    """The largest multiple k of a lattice's period (k <= 4, k p <= longest) whose points
    off the k-times-finer lattice score above `_MULTIPLE_Z` (refined), else the lattice itself."""
    best = (period, angle, score)
    for k in range(2, _MAX_MULTIPLE + 1):
        if k * period > longest:
            break
        extra = points[(points[:, 0] % k != 0) | (points[:, 1] % k != 0)]
        p, a, s = _refine(zmap, height, k * period, angle, extra, 0.003, 0.12)
        if s > _MULTIPLE_Z:
            best = (p, a, float(comb_scores(zmap, height, np.array([p]), np.array([a]), points)[0, 0]))
    return best


def _square_basis(period: float, angle: float) -> np.ndarray:
    """Rows v1, v2 (dy, dx) of the square lattice whose reciprocal points are
    R_angle (a, b) / period: v1 = p (cos, sin)... in (dy, dx) order, v2 = v1 turned."""
    theta = np.radians(angle)
    v1 = period * np.array([np.cos(theta), np.sin(theta)])
    v2 = period * np.array([-np.sin(theta), np.cos(theta)])
    return np.stack([v1, v2])
