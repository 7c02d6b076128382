"""Does an image already carry a Filigree mark? With this key (its payload), or with any key.

A mark repeats the same raw bits in every tile of its grid (see `filigree.tiling`), scrambled
by the key. With the key, the tiles' mean logits decode to a payload (`PayloadCodec`). Without
it, nothing can be decoded, but the repetition itself shows: in a marked image the extractor's
logits agree across tiles, bit by bit, far beyond what the content of unmarked tiles gives.
`tile_agreement` measures that as the mean over bits of ``|mean| / (std / sqrt(n))`` of the
tiles' logits (a t-like statistic per bit, averaged), which needs no key.

Measured on 30 development photos at 512 px (grids of 3 to 5 tiles a side; the script is
in docs/formats.md): unmarked 0.78-1.18, marked with another key 2.32-25.2. `FOREIGN_MARK_Z`
sits between. A single-tile grid (images under twice the bundle's minimum tile) has no spread
to measure, so only a same-key read applies there.

The periodic layout (bundles that declare it) repeats one tile with a fixed period whatever
the key, so its key-less statistic is the strength of that period in the whitened image's
autocorrelation (`filigree.sync.periodicity`; `existing_periodic_mark`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from filigree.payload import PayloadCodec
from filigree.tiling import Tiling, decode_grid

FOREIGN_MARK_Z = 1.8
"""`tile_agreement` at or above which an image is said to carry a mark made with some key."""
FOREIGN_LATTICE_SCORE = 16.0
"""Periodic layout: the autocorrelation lattice score (`filigree.sync.periodicity`) at or
above which an image is said to carry a periodic mark made with some key. Measured on 28
development photos (every other one, long side at most 1600 px; a spread-spectrum periodic
bundle): unmarked 0.3-15.5 (median 3.6), marked 0.3-110 (median 24; flat photos such as an
apple on white hold almost no mark)."""


@dataclass(frozen=True)
class ExistingMark:
    """A mark found in an image before marking it: `payload` when readable with this key."""

    payload: str | None
    agreement: float | None
    statistic: str = "tile agreement"
    threshold: float = FOREIGN_MARK_Z

    @property
    def same_key(self) -> bool:
        return self.payload is not None

    def describe(self) -> str:
        if self.same_key:
            return f"the image already carries payload {self.payload} (readable with this key)"
        return ("the image already carries a Filigree mark made with another key "
                f"({self.statistic} {self.agreement:.1f} >= {self.threshold:g})")


def tile_agreement(logits: np.ndarray) -> float | None:
    """Key-less presence statistic of the logits [n_tiles, L] of one grid's tiles; None for a
    single tile."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) < 2:
        return None
    spread = logits.std(axis=0, ddof=1) / np.sqrt(len(logits))
    return float(np.mean(np.abs(logits.mean(axis=0)) / (spread + 1e-6)))


def existing_mark(codec: PayloadCodec, logits: np.ndarray, grid: int, tiling: Tiling,
                  fpr: float = 1e-6) -> ExistingMark | None:
    """The mark an unmarked-looking source carries, read from the extractor's logits
    [grid^2, L] on the tiles it is about to be marked with; None when it carries none."""
    read = decode_grid(codec, logits, grid, tiling, None, fpr)
    agreement = tile_agreement(logits)
    if read.detected and read.decoded is not None:
        return ExistingMark(read.decoded, agreement)
    if agreement is not None and agreement >= FOREIGN_MARK_Z:
        return ExistingMark(None, agreement)
    return None


def existing_periodic_mark(read, lattice_score: float | None) -> ExistingMark | None:
    """The mark a source carries under the periodic layout: its payload when this key's read
    (`read`, a ReadResult of the source) is detected, else a mark of another key when the
    source's periodic lattice scores at least `FOREIGN_LATTICE_SCORE`; None otherwise."""
    if read.detected and read.decoded is not None:
        return ExistingMark(read.decoded, lattice_score, "lattice score", FOREIGN_LATTICE_SCORE)
    if lattice_score is not None and lattice_score >= FOREIGN_LATTICE_SCORE:
        return ExistingMark(None, lattice_score, "lattice score", FOREIGN_LATTICE_SCORE)
    return None
