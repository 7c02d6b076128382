"""Detection statistics of a read: binomial tails, the blind p-value of a BCH decode, the
bundle's informed-read calibration, and `ReadResult`, what a read promises.

A blind read is priced by the chance that a uniformly random word lies within the decode's
distance of some codeword (exact for distances up to t: the radius-t balls of a code of minimum
distance 2t + 1 are disjoint); an informed read by the one-sided binomial tail of the raw bits
agreeing with the expected payload's, times the calibration factor measured on unmarked photos
(`benchmarks/calibration.py`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping


@lru_cache(maxsize=64)
def _binomial_tails(n: int) -> tuple[float, ...]:
    """``tails[j] = P[Binom(n, 1/2) >= j]`` for j in 0..n+1, exactly rounded."""
    total = 1 << n
    tails = [0.0] * (n + 2)
    acc, c = 0, 1
    counts = []
    for i in range(n + 1):
        counts.append(c)
        c = c * (n - i) // (i + 1)
    for j in range(n, -1, -1):
        acc += counts[j]
        tails[j] = acc / total
    return tuple(tails)


def binomial_tail(n: int, k: int) -> float:
    """``P[Binom(n, 1/2) >= k]``."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    return _binomial_tails(n)[k]


def blind_p_value(n: int, k: int, corrections: int) -> float:
    """P[uniform n-bit word lies within ``corrections`` of one of 2^k codewords]: the union
    bound ``2^k * sum_{i <= d} C(n, i) / 2^n`` (capped at 1), exact when the balls are disjoint,
    i.e. for ``corrections <= t`` of a code of minimum distance ``>= 2t + 1``."""
    if corrections < 0:
        raise ValueError(f"corrections must be >= 0, got {corrections}")
    ball = sum(math.comb(n, i) for i in range(min(corrections, n) + 1))
    return min(1.0, (ball << k) / (1 << n))


def informed_p_scale(card: Mapping[str, Any]) -> float:
    """The card's ``calibration.informed_p_scale`` (1 when the card has none).

    The binomial tail of an informed read is exact for uniformly random raw bits. On unmarked
    natural images the agreement with a random codeword has the binomial's mean and variance
    (codeword bits are pairwise independent) but a heavier upper tail; a bundle whose null was
    measured (`benchmarks/calibration.py`) records the factor that keeps its informed p-values
    at or above uniform there."""
    entry = card.get("calibration") or {}
    if not isinstance(entry, Mapping):
        raise ValueError(f"calibration must be an object, got {type(entry).__name__}")
    value = entry.get("informed_p_scale", 1.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 1.0:
        raise ValueError(f"calibration.informed_p_scale must be a number >= 1, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ReadResult:
    """Outcome of reading one image's logits. What the fields promise:

    * ``detected``: ``p_value <= fpr``, and for a blind read (no expected payload) a payload
      was decoded; for an informed read, error correction did not recover a *different*
      payload. Over unmarked images, ``detected`` is true at a rate of at most ``fpr``.
    * ``p_value``: the probability that an unmarked image's read is at least this strong, over
      every hypothesis the read tried (grids, framings; Bonferroni). Blind: BCH accepted a
      codeword at Hamming distance ``corrected`` (<= t), priced by `acceptance_probability`.
      Informed: ``P[Binom(L, 1/2) >= raw bits agreeing with the expected payload]``, 1 when
      error correction recovered another payload.
    * ``decoded``: the payload error correction recovered (canonical hex), only on a detected
      read. A blind detected read always has one. An informed read may be detected with
      ``decoded`` None: the expected payload's bits are present beyond chance but too damaged
      (more than t errors) to be read without knowing them.
    * ``corrected``: bits error correction changed (the true distance), None with ``decoded``.
    * ``match``: informed reads only (None for blind ones): True when detected and
      ``decoded`` equals the expected payload, else False.
    * ``ber``: informed reads only: the share of raw bits that disagree with the expected
      payload's.
    """

    decoded: str | None
    corrected: int | None
    detected: bool
    p_value: float
    ber: float | None = None
    match: bool | None = None
    framing: dict | None = None
    """Set when a re-framing search found the mark: the framing that read it (see reframe.py)."""
    grid: int | None = None
    """Set for a tiled bundle: the g of the g x g tile grid whose read this is (see tiling.py)."""

    @property
    def payload(self) -> str | None:
        """The decoded payload (canonical hex), or None (see ``decoded``)."""
        return self.decoded

    @property
    def conclusive(self) -> bool:
        """Detected with its payload decoded: a further search cannot add anything."""
        return self.detected and self.decoded is not None

    def judged(self, fpr: float, p_value: float | None = None) -> "ReadResult":
        """This read with ``p_value`` (default its own) judged at ``fpr``: ``detected`` as the
        class docstring defines it; an undetected read keeps no payload."""
        p_value = self.p_value if p_value is None else min(1.0, p_value)
        if self.match is None:
            consistent = self.decoded is not None
        else:
            consistent = self.decoded is None or self.match
        if p_value <= fpr and consistent:
            return dataclasses.replace(self, p_value=p_value, detected=True)
        return dataclasses.replace(self, p_value=p_value, detected=False, decoded=None, corrected=None,
                                   match=None if self.match is None else False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def better_read(straight: ReadResult, searched: ReadResult) -> ReadResult:
    """The deeper search's read when it is detected and adds to the straight read (which found
    no mark, or an informed mark without its payload), else the straight read."""
    if searched.detected and (not straight.detected or searched.decoded is not None):
        return searched
    return straight
