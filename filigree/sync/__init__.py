"""Geometric re-synchronisation of the periodic ("lattice") layout, numpy + Pillow only.

Embed side: `sync_template` (key-derived templates), `period_for`, `tile_pattern` (the tile
laid out periodically over the image). Read side, in order: `analysis_luma`, `whiten`,
`autocorrelation`, `lattice_candidates`, `fold`, `locate_template`, `align`; `synchronise`
runs them all and returns `SyncHypothesis` objects.
"""

from filigree.sync.analysis import analysis_luma, autocorrelation, whiten
from filigree.sync.fold import TemplateMatch, align, fold, locate_template, template_bank
from filigree.sync.lattice import Lattice, lattice_candidates
from filigree.sync.reader import SyncHypothesis, embedded_geometry, synchronise
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
    "analysis_luma", "autocorrelation", "dihedral", "embedded_geometry", "fold",
    "lattice_candidates", "locate_template", "period_for", "sync_template", "sync_templates", "synchronise",
    "template_bank", "tile_pattern", "undo_dihedral", "whiten",
]
