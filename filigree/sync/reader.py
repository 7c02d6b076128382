"""The blind re-synchronisation of a read: image -> hypotheses of the periodic layout."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from filigree.sync.analysis import analysis_luma, autocorrelation, whiten
from filigree.sync.comb import comb_lattices
from filigree.sync.fold import (
    TemplateMatch,
    align,
    band_excess,
    fold,
    fold_bins,
    fold_blocks,
    locate_template,
    matched_pattern,
    template_bank,
    template_shift,
)
from filigree.sync.lattice import MIN_LAG, lattice_candidates
from filigree.sync.templates import dihedral

MIN_ANALYSIS_SIDE = 4 * MIN_LAG
"""Shorter analysis side below which there is no lattice to find."""
RELATIVE_SCORE = 0.3
"""Comb lattices scoring under this share of the best one are not registered (a strong mark's
lattice leaves weak echoes, such as its 2/3 harmonic, that never beat it)."""
REFINE_MIN_Z = 5.5
"""A found lattice whose template z reaches this is refined (`refine_lattice`)."""
QUADRANT_MIN_Z = 2.5
"""Template z each half image's fold needs, within 3 samples of the whole image's phase, for
the refinement (`refine_lattice`)."""


@dataclass(frozen=True)
class SyncHypothesis:
    """One geometric hypothesis of a read: where the layout's tile lies in the input image."""

    lattice: np.ndarray
    """float64 [2, 2]: rows v1, v2 = the period vectors (dy, dx) found, in input pixels."""
    template: int
    """Index t of the sync template found."""
    dihedral: int
    """d in [0, 8): the fold of `lattice` ~ roll(dihedral(tile, d), shift)."""
    shift: tuple[float, float]
    """Phase (dy, dx) of the template in that fold, in tile samples."""
    z: float
    """Template-correlation z-score (see `locate_template`)."""
    tile: np.ndarray
    """float32 [n, n]: the fold aligned to the embedded tile (phase 0, upright), of the
    whitened image, zero mean and unit RMS."""
    origin: np.ndarray
    """float64 [2]: an input pixel (y, x) at which the embedded tile's sample (0, 0) lies."""
    basis: np.ndarray
    """float64 [2, 2]: rows b1, b2 = input-pixel displacement of one period along the
    embedded tile's rows and columns (P times the edit's linear map, for a P-pixel layout)."""
    lattice_score: float
    """The lattice's spectral comb z-score (`comb_lattices`); 0 for the unedited layout."""


def embedded_geometry(
    basis: np.ndarray, dihedral_index: int, shift: tuple[float, float], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """(origin [2], tile basis [2, 2]) of the embedded tile, from a fold of `basis` (rows v1,
    v2, fold origin 0) whose template sits at `shift` under `dihedral_index`.

    With dihedral(T, d)[a] = T[R a + c] (mod n), the fold's sample a holds the tile's sample
    b = R (a - shift) + c, at position A a / n (A: columns v1, v2); so b sits at
    A (R^-1 (b - c) + shift) / n.
    """
    iy, ix = np.indices((size, size))
    gy, gx = dihedral(iy, dihedral_index), dihedral(ix, dihedral_index)
    c = np.array([gy[0, 0], gx[0, 0]], float)
    step = lambda a: (np.array([gy[a], gx[a]], float) - c + 1) % size - 1  # noqa: E731
    r = np.stack([step((1, 0)), step((0, 1))], axis=1)
    columns = np.asarray(basis, float).T
    r_inv = np.linalg.inv(r)
    tile_basis = (columns @ r_inv).T
    origin = columns @ (np.asarray(shift, float) - r_inv @ c) / size
    return origin, tile_basis


def synchronise(
    pixels: np.ndarray | Image.Image,
    templates: np.ndarray,
    max_lattices: int = 3,
    layout_period: float | None = None,
) -> list[SyncHypothesis]:
    """Blind re-synchronisation of the periodic layout: hypotheses, highest z first.

    pixels: PIL image or array [H, W] / [H, W, C] of grey levels (see `analysis_luma`).
    templates: float [T, n, n] sync templates of the key (`sync_templates`) or their
    `template_bank`. The whitened image is folded over each of the best `max_lattices`
    lattices of the spectral comb (`comb_lattices`: any period and angle) and registered
    against the templates (Pereira & Pun 2000); the best is refined (`refine_lattice`).
    `layout_period` (input pixels) adds one hypothesis first: the image as marked, unedited (a
    square lattice of that period at pixel (0, 0)). The best found lattice, unless its template z
    reaches `PRESENCE_MAX_Z`, is also folded again with each pixel weighted by its template's
    presence (`presence_weights`, from the window `best_window_match` picks). At most max_lattices + 2 hypotheses, highest template z first; a
    read that decodes them must count them all in its p-value (the periodic layout's contract
    counts max_lattices + 2). An image too small, too thin or flat to hold a lattice gives []; a
    malformed array raises ValueError.
    """
    analysis = analyse(pixels)
    if analysis is None:
        return []
    return hypotheses_of(*analysis, templates, max_lattices, layout_period)


def synchronise_scored(
    pixels: np.ndarray | Image.Image,
    templates: np.ndarray,
    max_lattices: int = 3,
    layout_period: float | None = None,
) -> tuple[list[SyncHypothesis], float]:
    """`synchronise` and the image's key-less periodicity score (`periodicity`; 0 for an image
    with no lattice to find), from one analysis of the image."""
    analysis = analyse(pixels)
    if analysis is None:
        return [], 0.0
    hypotheses = hypotheses_of(*analysis, templates, max_lattices, layout_period)
    return hypotheses, periodicity(*analysis)


def analyse(pixels: np.ndarray | Image.Image) -> tuple[np.ndarray, tuple[float, float]] | None:
    """(whitened analysis image float32 [h, w], scale (sy, sx)), or None for an image too
    small or too flat to hold a lattice (`analysis_luma`, `whiten`)."""
    luma, scale = analysis_luma(pixels)
    if min(luma.shape) < MIN_ANALYSIS_SIDE:
        return None
    w = whiten(luma)
    if not np.any(w):
        return None
    return w, scale


WINDOW_FRACTION = 0.5
"""Side of a search window as a fraction of the image's (`window_hypotheses`)."""
WINDOW_STEPS = 3
"""Window positions per axis, evenly spaced from edge to edge (3 x 3 windows)."""


def window_boxes(height: int, width: int, fraction: float = WINDOW_FRACTION,
                 steps: int = WINDOW_STEPS) -> list[tuple[int, int, int, int]]:
    """(top, left, height, width) of the search windows of an [height, width] image: `steps` x
    `steps` windows of `fraction` of each side, evenly spaced from edge to edge, so a piece of
    a quarter of the image's area (half of each side) lies at least three quarters inside one
    of them along each axis."""
    wh, ww = max(1, int(height * fraction)), max(1, int(width * fraction))
    tops = np.linspace(0, height - wh, steps).round().astype(int)
    lefts = np.linspace(0, width - ww, steps).round().astype(int)
    return [(int(y), int(x), wh, ww) for y in tops for x in lefts]


def window_hypotheses(
    pixels: np.ndarray | Image.Image, templates: np.ndarray
) -> list[tuple[tuple[float, float, float, float], SyncHypothesis]]:
    """(window, hypothesis) for each search window (`window_boxes`: `WINDOW_STEPS` ** 2 of
    them) of an image that holds one: the best (highest template z) found in the window alone;
    window = (x, y, width, height) as fractions of the image's width and height.

    A mark that covers only part of the image (a marked photo pasted into another, a screenshot
    that shows a small copy) is diluted in the whole image's spectrum and fold by the unmarked
    rest; within a window that it mostly fills, its lines and its fold stand out. Each window is
    cut from the pixels as given and searched like a whole image (`analyse`, so at its own
    resolution up to the analysis side; `hypotheses_of` with one comb lattice and no unedited
    layout): a pasted piece, whose period is already smaller than the layout's, is not
    downscaled further with the whole image. The hypotheses' `origin` is given in the whole
    image's input pixels. Costs about 40-100 ms of CPU per window (windows of up to 1024 px).
    [] for an image too small or flat to analyse.
    """
    pixels = np.asarray(pixels)
    rows, columns = pixels.shape[:2]
    bank = templates if np.iscomplexobj(templates) else template_bank(templates)
    found = []
    for top, left, height, width in window_boxes(rows, columns):
        analysis = analyse(pixels[top:top + height, left:left + width])
        if analysis is None:
            continue
        hypotheses = hypotheses_of(*analysis, bank, 1, None)
        if hypotheses:
            box = (left / columns, top / rows, width / columns, height / rows)
            found.append((box, replace(hypotheses[0], origin=hypotheses[0].origin + np.array([top, left], float))))
    return found


def periodicity(w: np.ndarray, scale: tuple[float, float], candidates: int = 3) -> float:
    """The key-less presence statistic of a periodic mark: the best autocorrelation lattice
    score (`lattice_candidates` with `candidates` lattices, as `FOREIGN_LATTICE_SCORE` was
    measured; Kutter 1998) of a whitened analysis image, 0 without one."""
    ac = autocorrelation(w)
    if not np.any(ac):
        return 0.0
    lattices = lattice_candidates(ac, scale, candidates)
    return float(lattices[0].score) if lattices else 0.0


def hypotheses_of(
    w: np.ndarray,
    scale: tuple[float, float],
    templates: np.ndarray,
    max_lattices: int = 3,
    layout_period: float | None = None,
) -> list[SyncHypothesis]:
    """`synchronise` from the whitened analysis image w [h, w] and its scale (`analyse`)."""
    bank = templates if np.iscomplexobj(templates) else template_bank(templates)
    w64 = w.astype(np.float64)
    hypotheses = []
    if layout_period is not None:
        basis = np.diag([layout_period * scale[0], layout_period * scale[1]])
        origin = (0.5 * scale[0] - 0.5, 0.5 * scale[1] - 0.5)
        hypotheses.append(register(w64, basis, bank, scale, origin, lattice_score=0.0))
    combs = comb_lattices(w, scale, max_lattices)
    floor = RELATIVE_SCORE * max((c.score for c in combs), default=0.0)
    lattices = [(c.basis, c.score) for c in combs if c.score >= floor
                and (layout_period is None or not _same_lattice(c.basis, hypotheses[0].lattice * np.asarray(scale)))]
    found = [register(w64, basis, bank, scale, lattice_score=score) for basis, score in lattices]
    if found:
        # the best found lattice is refined from its template's phase drift (`refine_lattice`)
        best = max(range(len(found)), key=lambda i: found[i].z)
        basis = lattices[best][0]
        if found[best].z >= REFINE_MIN_Z:
            refined = refine_lattice(w64, basis, bank, found[best])
            if refined is not None:
                again = register(w64, refined, bank, scale, lattice_score=lattices[best][1])
                if again.z > found[best].z:
                    found[best], basis = again, refined
    if found and found[best].z < PRESENCE_MAX_Z:
        # and folded again where its template is (`presence_weights`): a mark on part of the image
        whole = TemplateMatch(found[best].template, found[best].dihedral, found[best].shift, found[best].z)
        match = best_window_match(w64, basis, bank, whole)
        refolded = register(w64, basis, bank, scale, lattice_score=lattices[best][1],
                            weights=presence_weights(w64, basis, bank, match))
        # weights drawn from the template inflate its z in the refold, even on unmarked images:
        # the hypothesis carries the z of the match it was drawn from
        found.append(replace(refolded, z=match.z))
    hypotheses += found
    hypotheses.sort(key=lambda h: -h.z)
    return hypotheses


def _spacing(basis: np.ndarray, size: int) -> float:
    """Analysis pixels per tile sample of a fold over `basis` (rows v1, v2) into `size` samples."""
    return float(np.sqrt(abs(np.linalg.det(basis)))) / size


def _same_lattice(basis: np.ndarray, other: np.ndarray, tolerance: float = 0.003) -> bool:
    """Whether two square lattices (rows v1, v2) are the same up to the order and signs of
    their vectors, within `tolerance` of the period."""
    period = float(np.hypot(*other[0]))
    return all(min(np.linalg.norm(v - sign * u) for u in other for sign in (1, -1)) < tolerance * period
               for v in basis)


def refine_lattice(w: np.ndarray, basis: np.ndarray, bank: np.ndarray,
                   hypothesis: "SyncHypothesis") -> np.ndarray | None:
    """The lattice (rows v1, v2, analysis pixels; fold origin 0) refined from the drift of the
    found template's phase across the image's halves, or None when the template is not found
    (z >= `QUADRANT_MIN_Z`) in both halves along each axis.

    Folding over a lattice B (columns v1, v2) puts pixel x at tile coordinate n B^-1 x; the true
    lattice B* puts the template there at n B*^-1 x, so the template's shift in a fold of a
    region centred at c is n (B^-1 - B*^-1) c + const. The shifts in the top and bottom halves
    give that map's column along y, those in the left and right halves its column along x."""
    size = bank.shape[-2]
    h, wd = w.shape
    spacing = _spacing(basis, size)
    spectrum = bank[hypothesis.template, hypothesis.dihedral]

    def shift_of(y0: int, y1: int, x0: int, x1: int) -> np.ndarray | None:
        folded = fold(w[y0:y1, x0:x1], basis, size, (-float(y0), -float(x0)))
        shift, z = template_shift(folded, spectrum, spacing, near=hypothesis.shift)
        return np.asarray(shift) if z >= QUADRANT_MIN_Z else None

    halves = [shift_of(0, h // 2, 0, wd), shift_of(h // 2, h, 0, wd),
              shift_of(0, h, 0, wd // 2), shift_of(0, h, wd // 2, wd)]
    if any(s is None for s in halves):
        return None
    top, bottom, left, right = halves
    along_y = ((bottom - top + size / 2) % size - size / 2) / (h / 2.0)
    along_x = ((right - left + size / 2) % size - size / 2) / (wd / 2.0)
    drift_map = np.stack([along_y, along_x], axis=1)  # drift = drift_map @ (dy, dx)
    inverse = np.linalg.inv(np.asarray(basis, float).T) - drift_map / size
    if abs(np.linalg.det(inverse)) < 1e-12:
        return None
    return np.linalg.inv(inverse).T


PRESENCE_MAX_Z = 9.0
"""A best found lattice whose template z reaches this is not folded again by presence: its mark
fills the image (the presence-weighted fold only helps a mark on part of the image)."""
PRESENCE_BLOCK = 1.0
"""Side of the blocks of `presence_weights`, in periods."""
PRESENCE_SMOOTHING = 1
"""Blocks to each side over which a block's template evidence is pooled (`presence_weights`)."""
PRESENCE_GRID = 4
"""`best_window_match` splits the image into this many blocks per side; its windows are 2 x 2
blocks (half the image's sides, at 3 x 3 positions)."""
PRESENCE_WINDOWS = 3
"""Windows (those with the most band energy) in which `best_window_match` locates the template:
on 12 held-out collages x 3 seeds, 1 window read 28 of 36, 3 windows 30."""


def best_window_match(w: np.ndarray, basis: np.ndarray, bank: np.ndarray, whole: TemplateMatch) -> TemplateMatch:
    """`whole` (the template match of the fold of the whole whitened image w over `basis`,
    origin 0) or, when one's template z is higher, the match (`locate_template`) in one of the
    `PRESENCE_WINDOWS` half-size windows (2 x 2 blocks of `PRESENCE_GRID`) whose folds hold the
    most energy in the band (`band_excess`), in the whole fold's coordinates. The windows'
    folds come from one pass over the pixels (`fold_blocks`). A marked piece covering a quarter
    of the image shows its template more clearly in the window it fills than in the whole,
    where the rest dilutes it."""
    size = bank.shape[-2]
    spacing = _spacing(basis, size)
    sums, counts, energy = fold_blocks(w, basis, size, PRESENCE_GRID)
    windows = [(slice(i, i + 2), slice(j, j + 2)) for i in range(PRESENCE_GRID - 1) for j in range(PRESENCE_GRID - 1)]
    windows.sort(key=lambda window: -band_excess(
        sums[window].sum(axis=(0, 1)), counts[window].sum(axis=(0, 1)), float(energy[window].sum())))
    best = whole
    for rows, cols in windows[:PRESENCE_WINDOWS]:
        total = counts[rows, cols].sum(axis=(0, 1))
        folded = (sums[rows, cols].sum(axis=(0, 1)) / np.where(total > 0, total, 1.0)).astype(np.float32)
        match = locate_template(folded, bank, spacing)
        best = match if match.z > best.z else best
    return best


def presence_weights(w: np.ndarray, basis: np.ndarray, bank: np.ndarray,
                     match: TemplateMatch) -> np.ndarray:
    """float32 [h, w] >= 0: where in the whitened analysis image w the template `match` (found
    in a fold of w over `basis` from origin 0) lies, as weights for folding again.

    The template's correlation with the fold is a sum over pixels of w times the
    `matched_pattern` at each pixel's tile sample. Summed over blocks of about one period, and
    over the `PRESENCE_SMOOTHING` blocks around each, over the root of its sum of squares, it is
    a z-score of the template's presence there; its positive part is the block's weight. A mark
    over the whole image keeps nearly even weights; a marked photo pasted into another, or a
    screenshot of one, gets the unmarked rest weighted down, which otherwise dilutes its fold.
    """
    size = bank.shape[-2]
    spacing = _spacing(basis, size)
    pattern = matched_pattern(bank, match, spacing)
    evidence = w * pattern.ravel()[fold_bins(w.shape, basis, size)]
    block = max(8, int(round(PRESENCE_BLOCK * spacing * size)))
    h, wd = w.shape
    gh, gw = -(-h // block), -(-wd // block)
    padded = np.zeros((gh * block, gw * block))
    padded[:h, :wd] = evidence
    sums = padded.reshape(gh, block, gw, block).sum(axis=(1, 3))
    padded[:h, :wd] **= 2
    energy = padded.reshape(gh, block, gw, block).sum(axis=(1, 3))
    from scipy.ndimage import uniform_filter

    span = 2 * PRESENCE_SMOOTHING + 1  # box means: their common factor leaves the weights' ratios alone
    sums = uniform_filter(sums, size=span, mode="constant")
    energy = uniform_filter(energy, size=span, mode="constant")
    z = np.where(energy > 0, sums / np.sqrt(np.where(energy > 0, energy, 1.0)), 0.0)
    weights = np.maximum(z, 0.0).astype(np.float32)
    return np.repeat(np.repeat(weights, block, axis=0), block, axis=1)[:h, :wd]


def register(
    w: np.ndarray,
    basis: np.ndarray,
    bank: np.ndarray,
    scale: tuple[float, float],
    origin: tuple[float, float] = (0.0, 0.0),
    lattice_score: float = 0.0,
    weights: np.ndarray | None = None,
) -> SyncHypothesis:
    """One hypothesis: fold the whitened analysis image w [h, w] over `basis` (rows v1, v2,
    analysis pixels) from `origin` (each pixel weighted by `weights` [h, w] when given), locate
    the best template of `bank` (`template_bank`) and align the fold to it. `scale` = (sy, sx),
    analysis over input pixels."""
    size = bank.shape[-2]
    folded = fold(w, basis, size, origin, weights)
    spacing = _spacing(basis, size)
    match = locate_template(folded, bank, spacing)
    tile = align(folded, match.dihedral, match.shift)
    tile -= tile.mean()
    rms = float(np.sqrt(np.mean(tile**2)))
    tile_origin, tile_basis = embedded_geometry(basis, match.dihedral, match.shift, size)
    to_input = 1.0 / np.asarray(scale)
    return SyncHypothesis(
        lattice=np.asarray(basis) * to_input,
        template=match.template,
        dihedral=match.dihedral,
        shift=match.shift,
        z=match.z,
        tile=tile / rms if rms > 0 else tile,
        origin=(tile_origin + np.asarray(origin) + 0.5) * to_input - 0.5,
        basis=tile_basis * to_input,
        lattice_score=lattice_score,
    )
