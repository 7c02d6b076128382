"""Geometric re-synchronisation of the periodic ("lattice") layout: numpy, scipy.fft and Pillow.

Embed side: `sync_template` (key-derived templates), `period_for`, `tile_pattern` (the tile
laid out periodically over the image). Read side, in order: `analysis_luma`, `whiten`,
`comb_lattices` (the lattice from the spectrum), `fold`, `locate_template`, `align`,
`refine_lattice`; `synchronise` runs them all and returns `SyncHypothesis` objects, and
`window_hypotheses` runs them on windows of the image (a deeper search for marked pieces). The
autocorrelation's lattices (`autocorrelation`, `lattice_candidates`) give the key-less
`periodicity` score of the presence test.
"""

from filigree.sync.analysis import analysis_luma, autocorrelation, whiten
from filigree.sync.comb import comb_lattices
from filigree.sync.fold import TemplateMatch, align, fold, locate_template, template_bank
from filigree.sync.lattice import Lattice, lattice_candidates
from filigree.sync.reader import (
    SyncHypothesis,
    embedded_geometry,
    periodicity,
    refine_lattice,
    synchronise,
    synchronise_scored,
    window_boxes,
    window_hypotheses,
)
from filigree.sync.templates import (
    TEMPLATE_COUNT,
    TILE_SIZE,
    dihedral,
    period_for,
    sync_template,
    sync_templates,
    tile_pattern,
    undo_dihedral,
)

__all__ = [
    "TEMPLATE_COUNT", "TILE_SIZE", "Lattice", "SyncHypothesis", "TemplateMatch", "align",
    "analysis_luma", "autocorrelation", "comb_lattices", "dihedral", "embedded_geometry", "fold",
    "lattice_candidates", "locate_template", "period_for", "periodicity", "refine_lattice", "sync_template",
    "sync_templates", "synchronise", "synchronise_scored",
    "template_bank", "tile_pattern", "undo_dihedral", "whiten", "window_boxes", "window_hypotheses",
]
