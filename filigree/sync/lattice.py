"""Key-less presence: the layout's period lattice from the autocorrelation's peaks (the read
itself finds the lattice with the spectral comb, `comb.py`).

The layout is square in the marked image's pixels, and every edit the reader must survive
(crop, shift, uniform rescale, rotation, mirror, quarter turn) keeps it square. So a lattice is
searched as a rotated and scaled square, two parameters, not as any pair of peaks: a pair such as
(v1, v1 + v2) spans the same points but would fold a sheared tile, and a pair of unrelated
content peaks rarely fits a square. Candidates come from the strongest peaks (each taken as the
point (1, 0), (1, 1), (2, 0), ... (4, 0) of a square lattice), are scored by the summed
prominence of the autocorrelation at the lattice's points up to six periods out (over the square
root of their number), and the best are refined by a weighted
least-squares fit to the sub-pixel peaks at up to four periods.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

MIN_LAG = 12
"""Shortest period looked for, in analysis pixels."""
PEAK_COUNT = 24
"""Most prominent of the strongest autocorrelation peaks, which seed candidate lattices."""
FINER_RATIO = 1.0
"""A finer lattice replaces coarser ones it contains when it scores at least this share of them
(the score of a lattice with the same peaks and more empty points is lower)."""
_SEED_POINTS = ((1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1), (2, 2), (4, 0))
_FIT_RANGE = 4
_SIDE_STEP = 3.0
_SCORE_RANGE = 6
_SCORE_POINTS = np.array([(m, n) for m in range(_SCORE_RANGE + 1) for n in range(-_SCORE_RANGE, _SCORE_RANGE + 1)
                          if m > 0 or n > 0])
_FIT_POINTS = np.array([(m, n) for m in range(_FIT_RANGE + 1) for n in range(-_FIT_RANGE, _FIT_RANGE + 1)
                        if m > 0 or n > 0])
_FIT_MIN_Z = 3.0


@dataclass(frozen=True)
class Lattice:
    """A square period lattice found in an analysis image (by the autocorrelation or by the
    spectral comb)."""

    basis: np.ndarray
    """float64 [2, 2]: rows v1, v2 = period vectors (dy, dx) in analysis pixels."""
    score: float
    """How strongly the image holds it: from `lattice_candidates`, the summed prominence
    (z-score above its radial neighbours) of the autocorrelation at the lattice's points up to
    six periods out, over the square root of their number; from `comb_lattices`, the comb
    z-score of its spectral points."""


def _turn(v: np.ndarray) -> np.ndarray:
    """v turned by 90 degrees: (dy, dx) -> (dx, -dy); works on [..., 2]."""
    return np.stack([v[..., 1], -v[..., 0]], axis=-1)


def _canonical(v: np.ndarray) -> np.ndarray:
    """The 90-degree turn of each v1 [..., 2] with dx > 0 and -dx < dy <= dx."""
    out = np.array(v, dtype=np.float64)
    for _ in range(3):
        bad = ~((out[..., 1] > 0) & (out[..., 0] <= out[..., 1]) & (out[..., 0] > -out[..., 1]))
        if not bad.any():
            break
        out[bad] = _turn(out[bad])
    return out


def _points(v1: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """Lattice points m v1 + n turn(v1): [..., len(mn), 2] for v1 [..., 2] (isotropic units)."""
    v1 = v1[..., None, :]
    return mn[:, 0, None] * v1 + mn[:, 1, None] * _turn(v1)


def _radial_z(half: np.ndarray, bins: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, bool]:
    """z-scores of the autocorrelation against its own statistics at the same lag length.

    A photo's whitened autocorrelation still falls off with the lag; measured per 2-px ring of
    lag lengths (mean and std, from every other row and column), a period peak stands out as
    much at 15 px as at 300 px."""
    sample = ring[::2, ::2]
    flat_bins, values = bins[::2, ::2][sample], half[::2, ::2][sample].astype(np.float64)
    if values.size < 16:
        return np.zeros_like(half), False
    size = int(bins.max()) + 1
    count = np.bincount(flat_bins, minlength=size)
    total = np.bincount(flat_bins, values, minlength=size)
    total_sq = np.bincount(flat_bins, values * values, minlength=size)
    mean = total / np.maximum(count, 1)
    std = np.sqrt(np.maximum(total_sq / np.maximum(count, 1) - mean**2, 0))
    floor = np.median(std[count > 0])
    if not floor > 0:
        return np.zeros_like(half), False
    scale = (1.0 / np.maximum(std, 0.5 * floor)).astype(np.float32)
    return (half - mean.astype(np.float32)[bins]) * scale[bins], True


@functools.lru_cache(maxsize=16)
def _lag_geometry(reach: int, min_lag: float, rmax: float) -> tuple[np.ndarray, np.ndarray]:
    """(2-px radius bin, ring) over the half window of lags dy in [-1, reach], dx in [-reach,
    reach]."""
    dy = np.arange(-1, reach + 1, dtype=np.float32)[:, None]
    dx = np.arange(-reach, reach + 1, dtype=np.float32)[None, :]
    radius = np.sqrt(dy * dy + dx * dx)
    ring = (radius >= min_lag) & (radius <= rmax)
    ring[0, :] = False  # dy = -1: only there for the neighbours of dy = 0
    ring[1, : reach + 1] = False  # dy = 0: dx > 0 only (the other half is its mirror)
    return (radius * 0.5).astype(np.intp), ring


def _max3(z: np.ndarray) -> np.ndarray:
    """3 x 3 maximum filter (edges: the pixels inside)."""
    rows = z.copy()
    np.maximum(rows[1:], z[:-1], out=rows[1:])
    np.maximum(rows[:-1], z[1:], out=rows[:-1])
    out = rows.copy()
    np.maximum(out[:, 1:], rows[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :-1], rows[:, 1:], out=out[:, :-1])
    return out


class _PeakMap:
    """The autocorrelation's half plane (dy >= 0) as z-scores, looked up in isotropic
    (input-pixel) lag units; AC(-q) = AC(q) gives the other half."""

    def __init__(self, ac: np.ndarray, scale: tuple[float, float], min_lag: float) -> None:
        full_h, full_w = ac.shape
        self.rmax = float(min(full_h // 2, full_w // 2) - 2)
        reach = max(int(self.rmax), 0) + 1
        cy, cx = full_h // 2, full_w // 2
        half = ac[cy - 1 : cy + reach + 1, cx - reach : cx + reach + 1]
        self.h, self.w = half.shape
        self.cy, self.cx = 1, reach
        self.min_lag = min_lag
        self.scale = np.asarray(scale, dtype=np.float64)
        bins, self.ring = _lag_geometry(reach, float(min_lag), self.rmax)
        self.z, self.valid = _radial_z(half, bins, self.ring)
        self.z_max = _max3(self.z)

    def peaks(self, count: int) -> np.ndarray:
        """[k, 2] sub-pixel lags (analysis px) of the most prominent of the strongest local
        maxima (3 x 3)."""
        is_max = (self.z == self.z_max) & self.ring
        ys, xs = np.nonzero(is_max)
        order = np.argsort(self.z[ys, xs])[::-1][: 4 * count]
        lags = self._subpixel(ys[order], xs[order])
        step = np.maximum(_SIDE_STEP, np.hypot(lags[:, 0], lags[:, 1]) / 16)
        keep = np.argsort(self.prominence(lags / self.scale, step))[::-1][:count]
        return lags[keep]

    def _subpixel(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """[k, 2] parabolic sub-pixel peaks at array indices (y, x), as lags (dy, dx)."""
        z = self.z
        y = np.minimum(np.maximum(y, 1), self.h - 2)
        x = np.minimum(np.maximum(x, 1), self.w - 2)

        def offset(m: np.ndarray, c: np.ndarray, p: np.ndarray) -> np.ndarray:
            d = m - 2 * c + p
            safe = np.where(d < 0, d, -1.0)
            return np.where(d < 0, np.minimum(np.maximum(0.5 * (m - p) / safe, -0.5), 0.5), 0.0)

        centre = z[y, x]
        dy = offset(z[y - 1, x], centre, z[y + 1, x])
        dx = offset(z[y, x - 1], centre, z[y, x + 1])
        return np.stack([y - self.cy + dy, x - self.cx + dx], axis=-1)

    def in_range(self, lags_iso: np.ndarray) -> np.ndarray:
        """bool [...]: whether isotropic lags fall inside the usable ring."""
        r = np.hypot(*np.moveaxis(lags_iso * self.scale, -1, 0))
        return (r >= self.min_lag - 1) & (r <= self.rmax)

    def _indices(self, lags_iso: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nearest half-plane array indices (y, x) of lags and the sign that took them there."""
        lag = lags_iso * self.scale
        y, x = np.rint(lag[..., 0]).astype(int), np.rint(lag[..., 1]).astype(int)
        sign = np.where((y < 0) | ((y == 0) & (x < 0)), -1, 1)
        y = np.minimum(np.maximum(sign * y + self.cy, 1), self.h - 2)
        x = np.minimum(np.maximum(sign * x + self.cx, 1), self.w - 2)
        return y, x, sign

    def _best_neighbour(self, lags_iso: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(z, y, x, sign): the highest of the 3 x 3 pixels around each lag, and where it is."""
        y, x, sign = self._indices(lags_iso)
        stack = np.stack([self.z[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        k = np.argmax(stack, axis=0)
        best = np.take_along_axis(stack, k[None], axis=0)[0]
        return best, y + k // 3 - 1, x + k % 3 - 1, sign

    def prominence(self, lags_iso: np.ndarray, step: np.ndarray | float) -> np.ndarray:
        """z at each lag [..., 2] (best of 3 x 3) minus the mean z `step` analysis pixels
        before and after it along its own direction.

        A straight edge (a margin, a canvas, the border of a rotated or pasted photo, a horizon)
        puts a ridge through the origin of the autocorrelation along its direction, high at
        every lag on it; a period peak is high only at its lag. The ridge cancels, the peak
        stays."""
        lag = lags_iso * self.scale
        length = np.maximum(np.hypot(lag[..., 0], lag[..., 1]), 1e-9)
        along = lag * (np.asarray(step)[..., None] / length[..., None]) / self.scale
        centre = self._max_near(lags_iso)
        sides = self._max_near(lags_iso + along) + self._max_near(lags_iso - along)
        return centre - 0.5 * sides

    def _max_near(self, lags_iso: np.ndarray) -> np.ndarray:
        """The highest z of the 3 x 3 pixels around each lag [..., 2]."""
        y, x, _ = self._indices(lags_iso)
        return self.z_max[y, x]

    def score(self, v1_iso: np.ndarray) -> np.ndarray:
        """Sum of the prominences at the lattice points of each v1 [k, 2] (up to 6 periods along
        each vector, those in range) over the square root of their number: a z-score of the
        whole lattice, which a coarser lattice (2 v1, v1 + v2, ...) with a subset of the same
        peaks cannot beat. -inf with under 4 points in range."""
        pts = _points(v1_iso, _SCORE_POINTS)
        ok = self.in_range(pts)
        period = np.hypot(*(v1_iso * self.scale).T)
        step = np.broadcast_to(np.maximum(_SIDE_STEP, period / 16)[:, None], ok.shape)
        z = np.where(ok, self.prominence(pts, step), 0.0)
        count = ok.sum(-1)
        return np.where(count >= 4, z.sum(-1) / np.sqrt(np.maximum(count, 1)), -np.inf)

    def refine(self, v1_iso: np.ndarray) -> np.ndarray:
        """Weighted least-squares v1 from the sub-pixel peaks at up to 4 periods."""
        for _ in range(2):
            pts = _points(v1_iso, _FIT_POINTS)
            z, y, x, sign = self._best_neighbour(pts)
            use = self.in_range(pts) & (z >= _FIT_MIN_Z) & (y > 1)
            if use.sum() < 3:
                break
            peaks_iso = self._subpixel(y[use], x[use]) * sign[use, None] / self.scale
            m, n = _FIT_POINTS[use, 0].astype(float), _FIT_POINTS[use, 1].astype(float)
            # q = m v1 + n turn(v1), v1 = (a, b): q_y = m a + n b, q_x = -n a + m b
            rows = np.concatenate([np.stack([m, n], 1), np.stack([-n, m], 1)])
            weight = np.sqrt(np.concatenate([z[use], z[use]]))
            rhs = np.concatenate([peaks_iso[:, 0], peaks_iso[:, 1]])
            v1_iso = np.linalg.lstsq(rows * weight[:, None], rhs * weight, rcond=None)[0]
        return v1_iso


def is_sublattice(v1: np.ndarray, basis: np.ndarray, tolerance: float = 0.06) -> bool:
    """Whether the square lattice of v1 lies on the lattice of `basis` (rows; same units):
    the same lattice, or a coarser one (2 v1, v1 + v2, ...) that would fold the same pattern."""
    (a, b), (c, d) = basis
    det = a * d - b * c
    vectors = np.array([v1, (v1[1], -v1[0])])
    # coefficients k with vector = k0 * row0 + k1 * row1
    coefficients = np.stack([(vectors[:, 0] * d - vectors[:, 1] * c), (vectors[:, 1] * a - vectors[:, 0] * b)]) / det
    return bool(np.all(np.abs(coefficients - np.rint(coefficients)) < tolerance))


def lattice_candidates(
    ac: np.ndarray,
    scale: tuple[float, float] = (1.0, 1.0),
    max_lattices: int = 3,
    min_lag: float = MIN_LAG,
) -> list[Lattice]:
    """The best `max_lattices` distinct square lattices in an autocorrelation, best first.

    ac: float32 [h, w] from `autocorrelation` (lag (0, 0) at the centre). scale: (sy, sx) of
    the analysis image (`analysis_luma`); the lattice is square in the input's pixels, so its
    two period vectors are perpendicular and equally long there. Lags below `min_lag` or beyond
    min(h, w) / 2 are ignored; z = (AC - mean) / std per 2-px ring of lag lengths. A lattice
    that lies on one already kept (2 v1, v1 + v2, ...) is skipped; a finer one that scores at
    least as well replaces those it contains. Returns [] when the ring is empty or flat.
    """
    peak_map = _PeakMap(np.asarray(ac, dtype=np.float32), scale, min_lag)
    if peak_map.rmax < 1.5 * min_lag or not peak_map.valid:
        return []
    peaks = peak_map.peaks(PEAK_COUNT) / peak_map.scale
    if len(peaks) == 0:
        return []
    seeds = []
    for m, n in _SEED_POINTS:
        # q = (m I + n T) v1 with T the turn; (m I + n T)^-1 = (m I - n T) / (m^2 + n^2)
        seeds.append((m * peaks - n * _turn(peaks)) / (m * m + n * n))
    candidates = _canonical(np.concatenate(seeds))
    candidates = candidates[np.hypot(*(candidates * peak_map.scale).T) >= min_lag]
    if len(candidates) == 0:
        return []
    scores = peak_map.score(candidates)
    order = np.argsort(scores)[::-1]
    chosen: list[Lattice] = []
    tried: list[np.ndarray] = []
    for i in order:
        if not np.isfinite(scores[i]) or len(tried) >= 2 * max_lattices + 2:
            break
        v1 = candidates[i]
        if any(np.linalg.norm(v1 - t) < 0.02 * np.linalg.norm(v1) for t in tried):
            continue
        tried.append(v1)
        refined = _canonical(peak_map.refine(v1))
        score = float(peak_map.score(refined[None])[0])
        if not np.isfinite(score):
            refined, score = v1, float(scores[i])
        if any(is_sublattice(refined, c.basis / peak_map.scale) for c in chosen):
            continue  # a coarser copy of a lattice already kept
        basis = np.stack([refined, _turn(refined)]) * peak_map.scale
        coarser = [c for c in chosen if is_sublattice(c.basis[0] / peak_map.scale, basis / peak_map.scale)]
        if coarser and score < FINER_RATIO * max(c.score for c in coarser):
            continue
        if not coarser and len(chosen) >= max_lattices:
            continue
        # A finer lattice that scores as well explains every peak of the coarser ones.
        chosen = [c for c in chosen if not any(c is k for k in coarser)]
        chosen.append(Lattice(basis=basis, score=max([score] + [c.score for c in coarser])))
    chosen.sort(key=lambda lattice: -lattice.score)
    return chosen
