"""The blind re-synchronisation of a read: image -> hypotheses of the periodic layout."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from filigree.sync.analysis import analysis_luma, autocorrelation, whiten
from filigree.sync.fold import align, fold, locate_template, template_bank
from filigree.sync.lattice import MIN_LAG, lattice_candidates
from filigree.sync.templates import dihedral

MIN_ANALYSIS_SIDE = 4 * MIN_LAG
"""Shorter analysis side below which there is no lattice to find."""


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
    """Mean autocorrelation z-score at the lattice's points."""


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
    `template_bank`. For each of the best `max_lattices` lattices of the autocorrelation
    (Kutter 1998) the whitened image is folded and registered against the templates
    (Pereira & Pun 2000), and so is the best lattice halved. `layout_period` (input pixels)
    adds one hypothesis first: the image as marked, unedited (a square lattice of that period
    at pixel (0, 0)), which needs no autocorrelation peak. At most max_lattices + 2 hypotheses;
    a read that tries them must count them all in its p-value (each is one aligned tile). An image too small, too thin or flat to hold a lattice
    gives []; a malformed array raises ValueError.
    """
    luma, scale = analysis_luma(pixels)
    if min(luma.shape) < MIN_ANALYSIS_SIDE:
        return []
    w = whiten(luma)
    ac = autocorrelation(w)
    if not np.any(ac):
        return []
    bank = templates if np.iscomplexobj(templates) else template_bank(templates)
    w64 = w.astype(np.float64)
    hypotheses = []
    if layout_period is not None:
        basis = np.diag([layout_period * scale[0], layout_period * scale[1]])
        origin = (0.5 * scale[0] - 0.5, 0.5 * scale[1] - 0.5)
        hypotheses.append(register(w64, basis, bank, scale, origin, lattice_score=0.0))
    lattices = lattice_candidates(ac, scale, max_lattices)
    for lattice in lattices:
        hypotheses.append(register(w64, lattice.basis, bank, scale, lattice_score=lattice.score))
    if lattices and np.hypot(*lattices[0].basis[0]) >= 2 * MIN_LAG:
        # the best lattice's half: edits such as a rotation with cut corners can leave the
        # autocorrelation's peaks at every second period stronger than those at the first
        half = lattices[0].basis / 2.0
        hypotheses.append(register(w64, half, bank, scale, lattice_score=lattices[0].score))
    hypotheses.sort(key=lambda h: -h.z)
    return hypotheses


def register(
    w: np.ndarray,
    basis: np.ndarray,
    bank: np.ndarray,
    scale: tuple[float, float],
    origin: tuple[float, float] = (0.0, 0.0),
    lattice_score: float = 0.0,
) -> SyncHypothesis:
    """One hypothesis: fold the whitened analysis image w [h, w] over `basis` (rows v1, v2,
    analysis pixels) from `origin`, locate the best template of `bank` (`template_bank`) and
    align the fold to it. `scale` = (sy, sx), analysis over input pixels."""
    size = bank.shape[-2]
    folded = fold(w, basis, size, origin)
    spacing = float(np.sqrt(abs(np.linalg.det(basis)))) / size
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
