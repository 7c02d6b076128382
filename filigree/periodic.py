"""The periodic layout (docs/sync.md): embed a payload as one circular tile repeated over the
whole image, and read it back after crops, shifts, margins, rotations, mirrors and rescaling.

Embed, for an image of H x W pixels:
  payload -> BCH codeword, scrambled under a per-image salt (`SaltedCodec`) -> raw bits
  -> generator (the bundle's embedder) -> payload tile G, unit RMS, n x n
  -> tile = sqrt(1 - a^2) G + a S_t, with S_t the key's sync template t (t from the salt)
  -> laid out with period P = `period_for(H, W)` from pixel (0, 0) (`tile_pattern`)
  -> times strength x the JND amplitude map of the image (`mark_weights`) -> added to luma.
Read: `synchronise` finds the lattice, template, orientation and phase (plus the unedited
layout's own lattice), each hypothesis's aligned tile goes through the tile extractor, and the
codec decodes it under the salt the template and the carried salt bits give. The p-value pays
for every hypothesis the read may try.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from filigree.detection import ReadResult, better_read
from filigree.imaging.jnd import JndConfig, mark_weights
from filigree.imaging.pixels import LUMA
from filigree.payload import EccSpec, PayloadCodec, Scrambler, _key_bytes
from filigree.sync import (analysis_luma, period_for, sync_templates, synchronise, synchronise_scored, template_bank,
                           tile_pattern, window_hypotheses)
from filigree.sync.analysis import ANALYSIS_LONG_SIDE
from filigree.sync.reader import WINDOW_STEPS
from filigree.sync.templates import PERIOD_DIVISOR, PERIOD_RANGE, TILE_SIZE

LAYOUT_KIND = "periodic"
MIN_PERIODS = 2
"""Fewest whole periods along an image's shorter side for its mark to be readable: smaller
images are refused (`too_small`) rather than marked unreadably."""
QUALITY_MARGIN = 5
"""Points above the source's estimated quality at which the job writes a marked JPEG or lossy
WebP (`filigree.imaging.encode.output_quality`). Re-saved with its source's own quantisation
tables, the faint periodic mark mostly falls back into the source's bins: the 12 held-out JPEG
photos, each marked with 8 payloads and written at the source's quality + d, read back 74 of 96
at d = 0, 91 at d = 3, 94 at d = 5 and 96 at d = 10, for 1.15 x (worst 1.53 x) the bytes of an
unmarked re-save at d = 5 (`benchmarks/requantise.py`, docs/formats.md)."""


@dataclass(frozen=True)
class PeriodicLayout:
    """The card's `layout` entry for a periodic bundle (docs/bundle.md)."""

    tile_size: int = TILE_SIZE
    """Side n of the payload tile (tile samples)."""
    template_weight: float = 0.35
    """Amplitude share a of the sync template in the tile (RMS units)."""
    template_count: int = 16
    """Sync templates per key; the template index is part of the per-image salt."""
    salt_bits: int = 4
    """Salt bits carried in the raw bits (the template index adds log2(template_count))."""
    salt_repeats: int = 2
    """Times each carried salt bit is repeated (soft-combined when read)."""
    max_lattices: int = 3
    """Spectral-comb lattices a read tries (plus the unedited layout's own)."""
    jnd: JndConfig = JndConfig()

    @property
    def carried_bits(self) -> int:
        return self.salt_bits * self.salt_repeats

    @property
    def hypotheses(self) -> int:
        """What a read's p-value is multiplied by: the card's contract counts max_lattices + 2
        aligned tiles (`synchronise` gives at most the unedited lattice, `max_lattices` found
        ones and the presence-weighted fold of the best of them)."""
        return self.max_lattices + 2

    def to_dict(self) -> dict[str, Any]:
        return {"kind": LAYOUT_KIND, "tile_size": self.tile_size, "template_weight": self.template_weight,
                "template_count": self.template_count, "salt_bits": self.salt_bits,
                "salt_repeats": self.salt_repeats, "max_lattices": self.max_lattices,
                "period": {"divisor": PERIOD_DIVISOR, "min": PERIOD_RANGE[0], "max": PERIOD_RANGE[1]},
                "jnd": self.jnd.to_dict()}

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> "PeriodicLayout":
        """Parse and check a card's `layout` entry. Raises ValueError when it is not a periodic
        layout this reader implements (tile size, period rule) or a value is out of range."""
        if entry.get("kind") != LAYOUT_KIND:
            raise ValueError(f"layout kind is {entry.get('kind')!r}, expected {LAYOUT_KIND!r}")
        period = entry.get("period", {})
        if (period.get("divisor"), period.get("min"), period.get("max")) != (PERIOD_DIVISOR, *PERIOD_RANGE):
            raise ValueError(f"layout period {period!r} is not this reader's "
                             f"(divisor {PERIOD_DIVISOR}, range {PERIOD_RANGE})")
        layout = cls(
            tile_size=int(entry.get("tile_size", TILE_SIZE)),
            template_weight=float(entry.get("template_weight", 0.35)),
            template_count=int(entry.get("template_count", 16)),
            salt_bits=int(entry.get("salt_bits", 4)),
            salt_repeats=int(entry.get("salt_repeats", 2)),
            max_lattices=int(entry.get("max_lattices", 3)),
            jnd=JndConfig.from_dict(entry.get("jnd")),
        )
        if layout.tile_size != TILE_SIZE:
            raise ValueError(f"layout tile_size {layout.tile_size} is not {TILE_SIZE}")
        if not 0.0 <= layout.template_weight < 1.0 or layout.template_count < 1 or layout.salt_bits < 0 \
                or layout.salt_repeats < 1 or layout.max_lattices < 1:
            raise ValueError(f"bad layout entry: {dict(entry)!r}")
        return layout


def layout_of(card: Mapping[str, Any]) -> PeriodicLayout | None:
    """The card's periodic layout, or None for a tiled bundle (no `layout` entry)."""
    entry = card.get("layout")
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise ValueError(f"layout must be an object, got {type(entry).__name__}")
    return PeriodicLayout.from_dict(entry)


class SaltedCodec:
    """Payload <-> raw bits with a per-image salt, so that marks of one payload under one key
    differ from image to image (an average of many marked images then holds no payload).

    A salt s in [0, template_count * 2^salt_bits) selects the sync template (s >> salt_bits)
    and keys the scrambling of the BCH codeword: the inner codec of salt s is a `PayloadCodec`
    over the raw bits left after the carried salt, keyed by (key, s). The low salt bits are
    carried, `salt_repeats` times each, ahead of the codeword; an outer key-only scrambler
    permutes and masks all raw bits. A reader gets the template index from the sync and the
    carried bits from the logits, so it needs no stored state.
    """

    def __init__(self, raw_bits: int, ecc: EccSpec, layout: PeriodicLayout,
                 key: bytes | str | None = None, informed_p_scale: float = 1.0) -> None:
        self.layout = layout
        self.raw_bits = int(raw_bits)
        self.inner_bits = self.raw_bits - layout.carried_bits
        if self.inner_bits < ecc.codeword_bits:
            raise ValueError(f"{raw_bits} raw bits less {layout.carried_bits} salt bits do not hold a "
                             f"{ecc.codeword_bits}-bit codeword")
        self.ecc = ecc
        material = _key_bytes(key)
        self.outer = Scrambler(self.raw_bits, material)
        self.informed_p_scale = informed_p_scale
        # Only material derived from the key is kept (the key itself never travels with a job):
        self._salt_key = hmac.new(material, b"filigree/salt-mac/v1", hashlib.sha256).digest()
        self._inner_key = hmac.new(material, b"filigree/inner/v1", hashlib.sha256).digest()
        self.templates = sync_templates(material, layout.template_count, layout.tile_size)
        """float32 [T, n, n]: the key's sync templates S_0 .. S_{T-1}."""
        del material
        self._inner: dict[int, PayloadCodec] = {}
        self._first = self.codec_for(0)

    def __repr__(self) -> str:
        key = "<default>" if self.outer.is_default_key else "<secret>"
        return f"SaltedCodec(raw_bits={self.raw_bits}, ecc={self.ecc!r}, layout=periodic, key={key})"

    @property
    def scrambler(self) -> Scrambler:
        return self.outer

    @property
    def data_bits(self) -> int:
        return self.ecc.data_bits

    @property
    def salt_count(self) -> int:
        return self.layout.template_count << self.layout.salt_bits

    def parse(self, payload: str | int) -> int:
        """Payload string or int -> value, checked against capacity (`PayloadCodec.parse`)."""
        return self._first.parse(payload)

    def codec_for(self, salt: int) -> PayloadCodec:
        """The inner codec of one salt (built once)."""
        codec = self._inner.get(salt)
        if codec is None:
            salted_key = hmac.new(self._inner_key, int(salt).to_bytes(4, "big"), hashlib.sha256).digest()
            codec = PayloadCodec(self.inner_bits, self.ecc, salted_key, self.informed_p_scale)
            self._inner[salt] = codec
        return codec

    def salt_for(self, value: int, content: bytes | memoryview) -> int:
        """The salt of one marking: HMAC-SHA256(key, content digest | payload value), so re-runs
        on the same pixels give the same mark and different images different ones."""
        digest = hashlib.sha256(content).digest()
        mac = hmac.new(self._salt_key, digest + value.to_bytes(64, "big"), hashlib.sha256).digest()
        return int.from_bytes(mac[:4], "big") % self.salt_count

    def template_of(self, salt: int) -> int:
        return salt >> self.layout.salt_bits

    def encode(self, payload: str | int, salt: int) -> np.ndarray:
        """Raw bits, float32 {0, 1} [raw_bits], of a payload under a salt."""
        value = self.parse(payload)
        k = self.layout.salt_bits
        carried = np.array([(salt >> (k - 1 - i)) & 1 for i in range(k)], np.uint8)
        logical = np.concatenate([np.tile(carried, self.layout.salt_repeats),
                                  self.codec_for(salt).encode(value).astype(np.uint8)])
        return self.outer.scramble(logical).astype(np.float32)

    def carried_salt(self, logical: np.ndarray) -> int:
        """The carried salt bits read from unscrambled logits (soft-combined repeats)."""
        k, r = self.layout.salt_bits, self.layout.salt_repeats
        if k == 0:
            return 0
        sums = logical[:k * r].reshape(r, k).sum(axis=0)
        return int(sum(int(b) << (k - 1 - i) for i, b in enumerate(sums > 0)))

    def decode(self, logits: np.ndarray, template: int, expected: str | int | None = None,
               fpr: float = 1e-6) -> ReadResult:
        """Read one aligned tile's logits [raw_bits] found with sync template `template`
        (`PayloadCodec.decode` of the salt's inner codec; same promises). Raises ValueError for
        a bad shape or non-finite logits."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != (self.raw_bits,):
            raise ValueError(f"expected logits of shape ({self.raw_bits},), got {logits.shape}")
        logical = self.outer.unscramble_logits(logits)
        salt = (int(template) << self.layout.salt_bits) | self.carried_salt(logical)
        return self.codec_for(salt).decode(logical[self.layout.carried_bits:], expected, fpr)


def codec_for_card(card, key: bytes | str | None = None) -> "PayloadCodec | SaltedCodec":
    """The payload codec a bundle's card (`ModelCard`) asks for: a `SaltedCodec` for a periodic
    layout, else a plain `PayloadCodec`."""
    from filigree.detection import informed_p_scale
    if card.layout is None:
        return PayloadCodec.from_card(card.raw, key=key)
    return SaltedCodec(card.payload_bits, EccSpec.from_dict(card.ecc), card.layout, key,
                       informed_p_scale(card.raw))


def too_small(height: int, width: int) -> bool:
    """Whether an image is too small to carry the periodic layout (under `MIN_PERIODS` periods
    of `period_for` along its shorter side)."""
    return min(height, width) < MIN_PERIODS * period_for(max(height, 1), max(width, 1))


def eight_bit_scale(pixels: np.ndarray) -> np.ndarray:
    """Pixels as a reader analyses them: uint8 as they are, uint16 as float32 grey levels on
    the 8-bit scale (0..255), float in [0, 1] (`Watermarker.extract_rgb`) clipped and scaled
    to float32 0..255."""
    if pixels.dtype == np.uint16:
        return pixels.astype(np.float32) * np.float32(255.0 / 65535.0)
    if pixels.dtype != np.uint8:
        return np.clip(pixels, 0.0, 1.0).astype(np.float32) * np.float32(255.0)
    return pixels


SEARCH_LONG_SIDE = 2 * ANALYSIS_LONG_SIDE
"""Long side of `search_luma`: each half-size window of the deeper search is then analysed
without further downscaling up to the reader's analysis side."""


def search_luma(pixels: np.ndarray) -> np.ndarray:
    """The copy of an image that the deeper search (`PeriodicMarker.search`) reads as well as
    the image: its luma (`filigree.sync.analysis_luma`: BT.601, area-downscaled to a long side
    of at most `SEARCH_LONG_SIDE` px), float16 [h, w] in 8-bit grey levels (at most 8 MiB)."""
    return analysis_luma(eight_bit_scale(pixels), SEARCH_LONG_SIDE)[0].astype(np.float16)


def luma_of(pixels: np.ndarray) -> np.ndarray:
    """float32 [H, W] luma in 8-bit grey levels of native pixels (uint8 RGB/grey, uint16 grey)."""
    if pixels.ndim == 3:
        return pixels[..., :3].astype(np.float32) @ LUMA
    scale = 255.0 / 65535.0 if pixels.dtype == np.uint16 else 1.0
    return pixels.astype(np.float32) * np.float32(scale)


class PeriodicMarker:
    """Embed and read with a periodic bundle: `tile_fn` (raw bits [N, L] -> payload tiles
    [N, n, n], unit RMS) and `logits_fn` (aligned tiles [N, n, n] -> logits [N, L]). The
    pipeline, which batches model calls itself, uses the steps between them: `salted_bits`,
    `residual_from_tile`, `read_views` and `decode_views`."""

    def __init__(self, tile_fn, logits_fn, codec: SaltedCodec, strength: float, fpr: float = 1e-6):
        self.tile_fn, self.logits_fn = tile_fn, logits_fn
        self.codec = codec
        self.layout = codec.layout
        self.strength = float(strength)
        self.fpr = fpr
        self.templates = codec.templates
        self.bank = template_bank(self.templates)

    # -- embed -------------------------------------------------------------------------------
    def salted_bits(self, pixels: np.ndarray, payload: str | int) -> tuple[np.ndarray, int]:
        """(raw bits float32 [L], salt) of a payload for these native pixels."""
        value = self.codec.parse(payload)
        salt = self.codec.salt_for(value, memoryview(np.ascontiguousarray(pixels)).cast("B"))
        return self.codec.encode(value, salt), salt

    def mixed_tile(self, payload_tile: np.ndarray, salt: int) -> np.ndarray:
        """The embedded tile, float32 [n, n]: sqrt(1 - a^2) G + a S_t, t the salt's template."""
        a = self.layout.template_weight
        template = self.templates[self.codec.template_of(salt)]
        return (math.sqrt(1.0 - a * a) * np.asarray(payload_tile, np.float32) + a * template).astype(np.float32)

    def residual_from_tile(self, pixels: np.ndarray, payload_tile: np.ndarray, salt: int) -> np.ndarray:
        """The mark of native pixels [H, W(, 3)] for the generator's tile [n, n] (unit RMS),
        float32 [H, W] in 8-bit grey levels: strength x JND amplitude x the periodic layout."""
        height, width = pixels.shape[:2]
        pattern = tile_pattern(self.mixed_tile(payload_tile, salt), height, width, period_for(height, width))
        weights = mark_weights(luma_of(pixels), self.layout.jnd)
        weights *= np.float32(self.strength)
        pattern *= weights
        return pattern

    def residual(self, pixels: np.ndarray, payload: str | int) -> np.ndarray:
        """The mark of native pixels [H, W(, 3)], float32 [H, W] in 8-bit grey levels."""
        bits, salt = self.salted_bits(pixels, payload)
        tile = np.asarray(self.tile_fn(bits[None])[0], np.float32)
        return self.residual_from_tile(pixels, tile, salt)

    # -- read --------------------------------------------------------------------------------
    def read_views(self, pixels: np.ndarray) -> tuple[np.ndarray, tuple[int, ...]]:
        """(aligned tiles float32 [K, n, n], their template indices) of every sync hypothesis
        of native pixels (8-bit scale); K may be 0."""
        hypotheses = synchronise(pixels, self.bank, self.layout.max_lattices,
                                 layout_period=period_for(*pixels.shape[:2]))
        return self._tiles(hypotheses), tuple(h.template for h in hypotheses)

    def read_views_scored(self, pixels: np.ndarray) -> tuple[np.ndarray, tuple[int, ...], float]:
        """`read_views` and the image's key-less periodicity score (`filigree.sync.periodicity`:
        0 without a lattice), the presence statistic of `filigree.presence.existing_periodic_mark`."""
        hypotheses, score = synchronise_scored(pixels, self.bank, self.layout.max_lattices,
                                               layout_period=period_for(*pixels.shape[:2]))
        return self._tiles(hypotheses), tuple(h.template for h in hypotheses), score

    def _tiles(self, hypotheses) -> np.ndarray:
        n = self.layout.tile_size
        return np.stack([h.tile for h in hypotheses]).astype(np.float32) if hypotheses \
            else np.zeros((0, n, n), np.float32)

    def decode_views(self, logits: np.ndarray, templates: tuple[int, ...],
                     expected: str | int | None = None, fpr: float | None = None,
                     searching: bool = False) -> ReadResult:
        """The read of one image from its hypotheses' logits [K, L]: each decoded under its
        template's salts, the smallest p-value kept and multiplied by `tried(searching)`."""
        fpr = self.fpr if fpr is None else fpr
        if len(templates) == 0:
            return self._nothing(expected)
        _, read = self._decode_best(logits, templates, expected)
        return read.judged(fpr, read.p_value * self.tried(searching))

    def _decode_best(self, logits: np.ndarray, templates, expected) -> tuple[int, ReadResult]:
        """(index, read) of the hypothesis whose logits [K, L], decoded under its template's
        salts, give the smallest p-value (not yet priced for the hypotheses tried); K >= 1."""
        decoded = [self.codec.decode(row, t, expected, fpr=1.0) for row, t in zip(logits, templates)]
        best = min(range(len(decoded)), key=lambda i: decoded[i].p_value)
        return best, decoded[best]

    def tried(self, searching: bool = False) -> int:
        """The hypotheses a read's p-value pays for (Bonferroni): the straight read's
        `layout.hypotheses`, plus the `WINDOW_STEPS` ** 2 windows when the read may go on to the
        deeper search (`search`), so that the straight and the searched read together keep the
        false-positive rate."""
        return self.layout.hypotheses + (WINDOW_STEPS ** 2 if searching else 0)

    def read_pixels(self, pixels: np.ndarray, expected: str | int | None = None,
                    searching: bool = False) -> ReadResult:
        """Read native pixels (8-bit scale): every sync hypothesis decoded, the one with the
        smallest p-value kept, priced by `tried(searching)` (Bonferroni; `searching`: the read
        may go on to `search`)."""
        tiles, templates = self.read_views(pixels)
        if not templates:
            return self._nothing(expected)
        return self.decode_views(np.asarray(self.logits_fn(tiles)), templates, expected, searching=searching)

    def search(self, pixels: np.ndarray, straight: ReadResult,
               expected: str | int | None = None) -> ReadResult:
        """The deeper search after a `straight` read that was not conclusive (`--reframe`): the
        best hypothesis of each window of the image (`filigree.sync.window_hypotheses`) decoded,
        the smallest p-value kept and priced by `tried(searching=True)`: the straight read's
        hypotheses and the windows. The straight read must have been priced the same way
        (`read_pixels(..., searching=True)`), so that a detection by either stays within the
        false-positive rate. The search's read when detected and it adds to the straight one
        (`better_read`), else the straight read. `pixels`: native pixels (8-bit scale) or their
        `search_luma`. `framing` gives the window that read: ``{"window": [x, y, width,
        height]}``, fractions of the image's width and height."""
        found = window_hypotheses(np.asarray(pixels, np.float32) if pixels.dtype == np.float16 else pixels,
                                  self.bank)
        if not found:
            return straight
        logits = np.asarray(self.logits_fn(self._tiles([h for _, h in found])))
        best, read = self._decode_best(logits, [h.template for _, h in found], expected)
        read = read.judged(self.fpr, read.p_value * self.tried(searching=True))
        return better_read(straight, dataclasses.replace(read, framing={"window": [round(v, 4) for v in found[best][0]]}))

    def _nothing(self, expected) -> ReadResult:
        if expected is None:
            return ReadResult(None, None, False, 1.0)
        self.codec.parse(expected)
        return ReadResult(None, None, False, 1.0, ber=0.5, match=False)
