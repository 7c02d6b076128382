"""Read side, step 4: the layout's lattice from a comb over the image's spectrum.

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

The search covers every angle (a square lattice looks the same after quarter turns, and a
mirror only negates its angle) and periods from `MIN_PERIOD` input pixels to half the shorter
side: the scores of all of them come at once from one correlation in log-polar coordinates
(`log_polar_scores`). The best candidates are refined on a fine grid, replaced by a multiple
of their period when it explains more (the points of a lattice's 1/k sub-lattice are a subset
of its own), snapped to upright when that scores as well (most edits keep the layout upright),
and a candidate that is a finer copy of one already found is dropped.

Most edits in the wild keep the layout upright (crops, shifts, margins, re-sizes, screenshots),
and the log-polar grid, coarse in both period and angle, catches a faint upright lattice at
about half its score. So upright lattices get a search of their own (`upright_candidates`): a
1-D grid of periods fine enough that no spectral line moves by more than a bin between steps
(the fine comb map's reach), scored on that map, each peak placed where the band's interpolated
power peaks. Its best peaks join the log-polar ones before the best `count` are chosen.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
import numpy as np

from filigree.imaging.jnd import box_mean
from filigree.sync.analysis import _smooth_length
from filigree.sync.lattice import Lattice, is_sublattice
from filigree.sync.templates import TEMPLATE_BAND

MIN_PERIOD = 28.0
"""Shortest layout period searched, input pixels (the layout's shortest, 64, at 0.44 x)."""
POWER_CLIP = 6.0
"""Normalised power is clipped here, so that a few strong lines (JPEG block harmonics,
textures) cannot outvote the mark's many weak ones."""
NORMALISE_BINS = 15
"""Side of the box of frequency bins whose mean power normalises each bin."""
MIN_SCORE = 5.0
"""Comb z-score below which a lattice is not reported: the best of every period and angle of
an unmarked photo scores about 4-5 (the search's own maximum of noise, more on periodic
textures); the marks of the held-out photos cropped to 50-64 % of their area that the comb
found scored 6 to 67."""
LOG_STEP = 0.006
"""Step of the log-polar grid in ln(frequency): 0.6 % of the period."""
ANGLE_STEP = 0.375
"""Step of the log-polar grid in angle, degrees (240 steps over a quarter turn)."""
MIN_POINTS = 16
"""A lattice with fewer of its band's points below Nyquist is not scored (its period is too
short for the analysis resolution)."""
_COARSE_MIN = 2.0  # coarse z under which no lattice is refined
_TRIES = 6  # log-polar peaks refined at most
UPRIGHT_TRIES = 3
"""Peaks of the upright search (`upright_candidates`) refined and offered beside the log-polar
ones."""
UPRIGHT_STEPS_PER_BIN = 1.0
"""Upright grid density: periods step so that the band's highest line moves by at most
1 / this many frequency bins."""
_PLATEAU = 0.25  # comb scores this close to the best count as the best
_SNAP_ANGLE = 0.5  # degrees
_SNAP_SCORE = 2.0
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


@functools.lru_cache(maxsize=8)
def _rings(h: int, half: int) -> tuple[np.ndarray, np.ndarray]:
    """(ring index intp [h, half], bins per ring) of an rfft2 grid: 1-bin rings in units of
    the longer side's bins."""
    width = 2 * (half - 1)
    fy = np.fft.fftfreq(h)[:, None] * max(h, width)
    fx = np.fft.rfftfreq(width)[None, :] * max(h, width)
    ring = np.rint(np.hypot(fy, fx)).astype(np.intp)
    count = np.maximum(np.bincount(ring.ravel()), 1)
    ring.flags.writeable = count.flags.writeable = False
    return ring, count


def _ring_mean(power: np.ndarray) -> np.ndarray:
    """float32 [h, w // 2 + 1]: each rfft2 bin's mean power over its ring (`_rings`)."""
    ring, count = _rings(*power.shape)
    total = np.bincount(ring.ravel(), power.ravel())
    return (total / count).astype(np.float32)[ring]


def _smooth_even_length(n: int) -> int:
    """Largest even m <= n whose prime factors are 2, 3 and 5 (an FFT-friendly even width)."""
    for m in range(n - (n % 2), 1, -2):
        if _smooth_length(m) == m:
            return m
    return 2


def normalised_power(w: np.ndarray) -> np.ndarray:
    """float32 [h', w' // 2 + 1]: the whitened image's rfft2 power over its local level
    (clipped at `POWER_CLIP`), on FFT-friendly sides h', w' (`_smooth_length`; w' even, so that
    the rfft's last column is Nyquist and the width is 2 (w' // 2 + 1 - 1)). The local level
    comes from power clipped at a few times its ring's mean, so that a strong mark's own lines
    (several in every box) do not raise the level they are measured against."""
    h, wd = _smooth_length(np.shape(w)[0]), _smooth_even_length(np.shape(w)[1])
    x = np.asarray(w, dtype=np.float32)[:h, :wd]
    x = x - x.mean(dtype=np.float64).astype(np.float32)
    from scipy.fft import rfft2  # scipy's is 4x faster than numpy's at 1024 px

    spectrum = rfft2(x)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    ring = _ring_mean(power)
    local = box_mean(np.minimum(power, POWER_CLIP * ring), NORMALISE_BINS)
    return np.minimum(power / np.maximum(local, 1e-20), POWER_CLIP)


def comb_map(norm: np.ndarray, reach: int) -> np.ndarray:
    """float32 [h', w' // 2 + 1]: z-scores of the highest `normalised_power` near each bin, so
    that a spectral line between bins (or, for the coarse search, up to a bin away) still
    scores. reach 1: the bin and its three forward neighbours (the fine map, indexed by
    floor); reach 2: its 3 x 3 neighbourhood (the coarse map)."""
    best = np.maximum(norm, np.roll(norm, -1, axis=0))
    if reach > 1:
        np.maximum(best, np.roll(norm, 1, axis=0), out=best)
        best[:, 1:-1] = np.maximum(np.maximum(best[:, 1:-1], best[:, 2:]), best[:, :-2])
    else:
        best[:, :-1] = np.maximum(best[:, :-1], best[:, 1:])
    std = float(best.std())
    if not std > 0:
        return np.zeros_like(best)
    return ((best - best.mean()) / std).astype(np.float32)


def comb_scores(zmap: np.ndarray, height: int, periods: np.ndarray, angles: np.ndarray,
                points: np.ndarray) -> np.ndarray:
    """float32 [len(periods), len(angles)]: the comb z-score of every (period, angle) lattice.

    zmap: `comb_map` of an image whose FFT height is `height` (its width is
    2 * (zmap.shape[1] - 1)); periods in analysis pixels; angles in degrees; points [k, 2] the
    (a, b) of `band_points`; points beyond Nyquist do not count."""
    width = 2 * (zmap.shape[1] - 1)
    theta = np.radians(np.asarray(angles, np.float64))[:, None]
    c, s = np.cos(theta), np.sin(theta)
    a, b = points[:, 0], points[:, 1]
    fy, fx = c * a - s * b, s * a + c * b  # [angles, k], cycles per period
    flip = fx < 0  # the other half plane: the conjugate bin
    fy = np.where(flip, -fy, fy) * height
    fx = np.where(flip, -fx, fx) * width
    inverse = (1.0 / np.asarray(periods, np.float64))[:, None, None]
    ky, kx = fy * inverse, fx * inverse
    valid = (np.abs(ky) < 0.5 * height) & (kx < 0.5 * width)
    iy = np.floor(ky).astype(np.intp)
    iy %= height
    ix = np.floor(kx).astype(np.intp)
    np.minimum(ix, zmap.shape[1] - 1, out=ix)
    iy *= zmap.shape[1]
    iy += ix
    values = np.where(valid, zmap.ravel()[iy], np.float32(0.0))
    return values.sum(axis=-1) / np.sqrt(np.maximum(valid.sum(axis=-1), 1))


def comb_lattices(w: np.ndarray, scale: tuple[float, float], count: int = 3) -> list[Lattice]:
    """The best `count` square lattices of a whitened analysis image w [h, w] by the spectral
    comb (module docstring), best first: candidates from `log_polar_scores` (every period from
    `MIN_PERIOD` input pixels to half the shorter side, every angle) and from
    `upright_candidates` (upright lattices only, on a finer grid), each refined on the whole
    band (`comb_scores`) and replaced by its best integer multiple (2 to 4 times the period)
    when that multiple's extra points hold energy too. scale: (sy, sx) of the analysis image.
    [] when the image is too small or holds no lattice scoring `MIN_SCORE`."""
    lo = MIN_PERIOD * float(np.mean(scale))
    hi = min(np.shape(w)) / 2.0
    if hi <= lo:
        return []
    norm = normalised_power(w)
    h_fft = norm.shape[0]
    zmap = comb_map(norm, 1)
    full = band_points(*TEMPLATE_BAND)
    candidates = _log_polar_candidates(zmap, comb_map(norm, 2), lo, hi, full)
    candidates += upright_candidates(zmap, norm, lo, hi, UPRIGHT_TRIES)
    found: list[Lattice] = []
    for period, angle, score in sorted(candidates, key=lambda c: -c[2]):
        if len(found) == count:
            break
        if score < MIN_SCORE:
            break
        period, angle, score = _best_multiple(zmap, h_fft, period, angle, score, full, hi)
        period, angle, score = _upright(zmap, period, angle, score, full)
        basis = _square_basis(period, angle)
        if any(is_sublattice(f.basis[0], basis) or is_sublattice(basis[0], f.basis) for f in found):
            continue  # the same lattice, a finer one (a subset of its spectral points) or a coarser one
        found.append(Lattice(basis=basis, score=score))
    found.sort(key=lambda lattice: -lattice.score)
    return found


def _log_polar_candidates(zmap: np.ndarray, coarse_map: np.ndarray, lo: float, hi: float,
                          points: np.ndarray) -> list[tuple[float, float, float]]:
    """(period, angle, score) of the best `_TRIES` peaks of `log_polar_scores` on the coarse
    map, each refined twice on the fine `zmap`."""
    periods, angles, coarse = log_polar_scores(coarse_map, lo, hi)
    found = []
    for _ in range(_TRIES if coarse.size else 0):
        i, j = np.unravel_index(int(np.argmax(coarse)), coarse.shape)
        if not coarse[i, j] >= _COARSE_MIN:
            break
        _suppress(coarse, i, j)
        period, angle, score = _refine(zmap, zmap.shape[0], periods[i], angles[j], points, LOG_STEP, ANGLE_STEP)
        found.append(_refine(zmap, zmap.shape[0], period, angle, points, LOG_STEP / 3, ANGLE_STEP / 3))
    return found


def upright_periods(lo: float, hi: float, bins: int, steps_per_bin: float = UPRIGHT_STEPS_PER_BIN) -> np.ndarray:
    """float64 [K]: the periods (analysis pixels) of the upright search from `lo` to `hi`, each
    step small enough that the band's highest line (`TEMPLATE_BAND[1]` cycles per period, on a
    spectrum of `bins` bins per cycle per pixel) moves by at most 1 / `steps_per_bin` bins: a
    relative step of p / (steps_per_bin * band_hi * bins)."""
    if not lo > 0:
        raise ValueError(f"the shortest period must be positive, got {lo}")
    rate = 1.0 / (steps_per_bin * TEMPLATE_BAND[1] * bins)
    periods = [lo]
    while periods[-1] < hi:
        periods.append(periods[-1] * (1.0 + periods[-1] * rate))
    return np.asarray(periods[:-1] + [hi] if len(periods) > 1 else periods, np.float64)


def upright_scores(zmap: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """(periods float64 [K], comb z-scores float32 [K]) of every upright square lattice on the
    `upright_periods` grid from `lo` to `hi` analysis pixels: `comb_scores` at angle 0. An
    upright lattice's point (a, b) lies in row a h / p and column b w / p, so the bins come
    from one row per (period, a) and one column per (period, b); points beyond Nyquist read a
    zero appended to the map, and a period with fewer than `MIN_POINTS` points below Nyquist
    scores -inf. zmap: the fine `comb_map` [h, w // 2 + 1]."""
    height, half = zmap.shape
    width = 2 * (half - 1)
    periods = upright_periods(float(lo), float(hi), max(height, width))
    points = band_points(*TEMPLATE_BAND)
    rows_a, a_of = np.unique(points[:, 0], return_inverse=True)
    cols_b, b_of = np.unique(points[:, 1], return_inverse=True)
    inverse = (1.0 / periods)[:, None]
    ky = rows_a[None, :] * (height * inverse)  # [K, A]
    kx = cols_b[None, :] * (width * inverse)  # [K, B]; b >= 0 on the half plane
    outside = height * half  # the appended zero
    rows = np.where(np.abs(ky) < 0.5 * height, (np.floor(ky).astype(np.intp) % height) * half, outside)
    cols = np.where(kx < 0.5 * width, np.minimum(np.floor(kx).astype(np.intp), half - 1), outside)
    index = rows[:, a_of]
    index += cols[:, b_of]
    np.minimum(index, outside, out=index)
    values = np.append(zmap.ravel(), np.float32(0.0))[index]
    counts = ((rows < outside)[:, a_of] & (cols < outside)[:, b_of]).sum(axis=-1)
    scores = values.sum(axis=-1) / np.sqrt(np.maximum(counts, 1))
    scores[counts < MIN_POINTS] = -np.inf
    return periods, scores


def upright_candidates(zmap: np.ndarray, norm: np.ndarray, lo: float, hi: float,
                       count: int) -> list[tuple[float, float, float]]:
    """(period, 0.0, score) of the `count` best distinct peaks of `upright_scores` (peaks within
    2 % of a better one's period are the same line set), each refined twice (`_refine_upright`:
    over its grid step to either side, then over a third of it), then placed where the band's
    interpolated power in `norm`, the `normalised_power` the map came from, peaks
    (`interpolated_period`)."""
    if hi <= lo:
        return []
    periods, scores = upright_scores(zmap, lo, hi)
    points = band_points(*TEMPLATE_BAND)
    found: list[tuple[float, float, float]] = []
    for k in np.argsort(scores)[::-1]:
        if len(found) == count or not scores[k] >= _COARSE_MIN:
            break
        if any(abs(np.log(periods[k] / period)) < 0.02 for period, _, _ in found):
            continue
        step = float(np.log(periods[min(k + 1, len(periods) - 1)] / periods[max(k - 1, 0)])) / 2.0
        period, score = float(periods[k]), float(scores[k])
        for reach in (step, step / 3.0):
            period, score = _refine_upright(zmap, period, reach, points)
        found.append((interpolated_period(norm, period, step, points), 0.0, score))
    return found


def interpolated_period(norm: np.ndarray, period: float, reach: float, points: np.ndarray,
                        steps: int = 21) -> float:
    """The upright period within a relative `reach` of `period` where the mean of the
    `normalised_power` `norm`, interpolated bilinearly at the band's points, peaks (parabolic
    between grid steps). The comb map's reach makes its score flat over a bin; the interpolated
    power is not, and places a faint lattice to about 0.02 % of its period (median on held-out
    crops, against 0.14 % for the plateau's middle), which the fold needs over ten periods."""
    height, half = norm.shape
    width = 2 * (half - 1)
    grid = period * np.exp(np.linspace(-reach, reach, steps))
    ky = points[None, :, 0] * height / grid[:, None]
    kx = points[None, :, 1] * width / grid[:, None]
    inside = (np.abs(ky) < 0.5 * height - 1) & (kx < 0.5 * width - 1)
    y0, x0 = np.floor(ky), np.floor(kx)
    fy, fx = ky - y0, kx - x0
    rows, cols = y0.astype(np.intp) % height, np.minimum(x0.astype(np.intp), half - 2)
    below = (rows + 1) % height
    values = ((1 - fy) * ((1 - fx) * norm[rows, cols] + fx * norm[rows, cols + 1])
              + fy * ((1 - fx) * norm[below, cols] + fx * norm[below, cols + 1]))
    if not inside.any():
        return float(period)
    means = np.where(inside, values, 0.0).sum(axis=1) / np.maximum(inside.sum(axis=1), 1)
    k = int(np.argmax(means))
    if not 0 < k < steps - 1:
        return float(grid[k])
    curve = means[k - 1] - 2 * means[k] + means[k + 1]
    offset = 0.5 * (means[k - 1] - means[k + 1]) / curve if curve < 0 else 0.0
    return float(grid[k] * np.exp(offset * 2 * reach / (steps - 1)))


def _refine_upright(zmap: np.ndarray, period: float, reach: float, points: np.ndarray) -> tuple[float, float]:
    """(period, score): the middle of the plateau of best scores (as `_refine`) of the upright
    lattices on a grid of `_FINE` periods within a relative `reach` of `period`."""
    fine = period * np.exp(np.linspace(-reach, reach, _FINE))
    scores = comb_scores(zmap, zmap.shape[0], fine, np.zeros(1), points)[:, 0]
    near = scores >= scores.max() - _PLATEAU
    return float(np.exp(np.mean(np.log(fine[near])))), float(scores.max())


def _suppress(scores: np.ndarray, i: int, j: int) -> None:
    """Blank, in place, the neighbourhood of a log-polar peak (period index i, circular angle
    index j) so that the next peak is another lattice."""
    rows = slice(max(0, i - 4), i + 5)
    for dj in range(-3, 4):
        scores[rows, (j + dj) % scores.shape[1]] = -np.inf


@functools.lru_cache(maxsize=4)
def _log_polar_pattern(rho_bins: int, phi_bins: int) -> np.ndarray:
    """float32 [rho_bins, phi_bins]: the band's points (`band_points(*TEMPLATE_BAND)`, a half
    plane) at (ln |(a, b)| - ln 3, angle mod 90 degrees) on the `LOG_STEP` x `ANGLE_STEP` grid."""
    points = band_points(*TEMPLATE_BAND)
    u = np.rint((np.log(np.hypot(points[:, 0], points[:, 1])) - np.log(TEMPLATE_BAND[0])) / LOG_STEP)
    v = np.rint((np.degrees(np.arctan2(points[:, 1], points[:, 0])) % 90.0) / ANGLE_STEP) % phi_bins
    pattern = np.zeros((rho_bins, phi_bins), np.float32)
    np.add.at(pattern, (u.astype(np.intp), v.astype(np.intp)), 1.0)
    pattern.flags.writeable = False
    return pattern


def log_polar_scores(zmap: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(periods [K], angles [J] in degrees within [-45, 45), scores float32 [K, J]): the comb
    score of every square lattice with a period in [lo, hi] analysis pixels, at every angle.

    In log-polar coordinates (ln |f|, angle of f) of the spectrum, the lattice of period p and
    angle theta puts its point (a, b) at (ln |(a, b)| - ln p, angle(a, b) + theta): one pattern,
    shifted. So the scores of every (p, theta) are one cross-correlation of the log-polar map of
    `zmap`, folded over quarter turns (a square lattice's symmetry), with the pattern of the
    band's points, computed by FFT (the Fourier-Mellin idea: Reddy & Chatterji 1996, "An
    FFT-based technique for translation, rotation, and scale-invariant image registration",
    IEEE TIP 5(8)). Each score is normalised by the square root of the number of the lattice's
    points below Nyquist. zmap: the coarse `comb_map` (reach 2)."""
    grid = _log_polar_grid(*zmap.shape, float(hi))
    folded = np.where(grid.inside, zmap.ravel()[grid.index], np.float32(0.0)).sum(axis=0)
    size = grid.spectrum.shape[0]
    from scipy.fft import irfft2, rfft2

    sums = irfft2(rfft2(folded, s=(size, folded.shape[1])) * grid.spectrum, s=(size, folded.shape[1]))
    keep = (grid.periods >= lo) & (grid.periods <= hi * (1.0 + 1e-9))
    scores = sums[keep] / np.sqrt(np.maximum(grid.counts[keep], 1.0))
    scores[grid.counts[keep] < MIN_POINTS] = -np.inf
    return grid.periods[keep], grid.angles, scores.astype(np.float32)


@dataclass(frozen=True)
class _LogPolarGrid:
    """What `log_polar_scores` needs that depends on the spectrum's shape only."""

    index: np.ndarray  # intp [2, R, J]: flat zmap bin of each log-polar sample, two quarter turns
    inside: np.ndarray  # bool [2, R, J]: the sample is below Nyquist
    spectrum: np.ndarray  # complex: conjugate rfft2 of the band's pattern, zero-padded
    counts: np.ndarray  # float64 [S, J]: points below Nyquist of each shifted pattern
    periods: np.ndarray  # float64 [S]: the period of each shift
    angles: np.ndarray  # float64 [J]: the angle of each column, degrees in [-45, 45)


@functools.lru_cache(maxsize=4)
def _log_polar_grid(height: int, half: int, hi: float) -> _LogPolarGrid:
    width = 2 * (half - 1)
    band_lo, band_hi = TEMPLATE_BAND
    rho0 = np.log(band_lo / hi)
    rho_bins = int(np.ceil((np.log(0.5 * np.sqrt(2.0)) - rho0) / LOG_STEP)) + 1
    phi_bins = int(round(90.0 / ANGLE_STEP))
    radius = np.exp(rho0 + LOG_STEP * np.arange(rho_bins))[:, None]
    phi = np.radians(ANGLE_STEP * np.arange(phi_bins))[None, :]
    index, inside = [], []
    for fy, fx in ((radius * np.cos(phi), radius * np.sin(phi)), (-radius * np.sin(phi), radius * np.cos(phi))):
        inside.append((np.abs(fy) < 0.5) & (fx < 0.5))
        iy = np.floor(fy * height).astype(np.intp) % height
        ix = np.minimum(np.floor(fx * width).astype(np.intp), half - 1)
        index.append(iy * half + ix)
    pattern_bins = int(np.ceil(np.log(band_hi / band_lo) / LOG_STEP)) + 1
    size = rho_bins + pattern_bins
    spectrum = np.conj(np.fft.rfft2(_log_polar_pattern(pattern_bins, phi_bins), s=(size, phi_bins)))
    valid = np.sum(inside, axis=0).astype(np.float32)
    counts = np.fft.irfft2(np.fft.rfft2(valid, s=(size, phi_bins)) * spectrum, s=(size, phi_bins))
    # shift m puts the pattern's ln 3 at rho0 + m LOG_STEP: ln p = ln 3 - rho0 - m LOG_STEP
    periods = np.exp(np.log(band_lo) - rho0 - LOG_STEP * np.arange(size))
    angles = (ANGLE_STEP * np.arange(phi_bins) + 45.0) % 90.0 - 45.0
    grid = _LogPolarGrid(np.stack(index), np.stack(inside), spectrum.astype(np.complex64), counts, periods, angles)
    for array in (grid.index, grid.inside, grid.spectrum, grid.counts, grid.periods, grid.angles):
        array.flags.writeable = False
    return grid


def _refine(zmap, height, period, angle, points, period_step, angle_step):
    """(period, angle, score): the middle of the best scores (within `_PLATEAU` of the highest;
    a lattice scores the same over a plateau as wide as a spectral bin) of a fine grid over one
    coarse cell."""
    periods = period * np.exp(np.linspace(-period_step, period_step, _FINE))
    angles = angle + np.linspace(-angle_step, angle_step, _FINE)
    scores = comb_scores(zmap, height, periods, angles, points)
    top = scores >= scores.max() - _PLATEAU
    rows, cols = np.nonzero(top)
    best_period = float(np.exp(np.mean(np.log(periods[rows]))))
    best_angle = float(np.mean(angles[cols]))
    return best_period, best_angle, float(scores.max())


def _upright(zmap, period, angle, score, points):
    """The lattice snapped to upright (angle 0) when it is within `_SNAP_ANGLE` of it and
    scores within `_SNAP_SCORE` of its own score there (the fine grid's best angle also fits
    noise): crops, shifts, margins and screenshots
    keep the layout upright, and the comb alone leaves a tenth of a degree of doubt."""
    if abs(angle) > _SNAP_ANGLE:
        return period, angle, score
    snapped, upright_score = _refine_upright(zmap, period, 0.002, points)
    if upright_score < score - _SNAP_SCORE:
        return period, angle, score
    return snapped, 0.0, upright_score


def _best_multiple(zmap, height, period, angle, score, points, longest):
    """The largest multiple k of a lattice's period (k <= 4, k p <= longest) whose points
    off the k-times-finer lattice score above `_MULTIPLE_Z` (refined), else the lattice itself."""
    best = (period, angle, score)
    for k in range(2, _MAX_MULTIPLE + 1):
        if k * period > longest:
            break
        extra = points[(points[:, 0] % k != 0) | (points[:, 1] % k != 0)]
        if comb_scores(zmap, height, np.array([k * period]), np.array([angle]), extra)[0, 0] < _MULTIPLE_Z - 2.0:
            continue  # nothing there even before refining
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
