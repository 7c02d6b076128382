"""Payload layer: payload syntax, BCH error correction, keyed scrambling and detection statistics.

Payload syntax (what users type; parsed by `parse_payload`):

* ``1a2b``, ``0x1a2b``, ``hex:1a2b`` -- hexadecimal, case-insensitive. A string without one of
  the prefixes below is always read as hex, so ``"123"`` means 0x123.
* ``dec:12345`` -- a non-negative decimal integer (ASCII digits only).
* ``text:abc`` -- UTF-8 text, read as a big-endian integer of its bytes. Everything after the
  colon is taken verbatim (whitespace included); NUL characters are not allowed.

Prefixes are case-insensitive; surrounding whitespace is ignored except inside ``text:``. A
payload fits a model when its integer value has at most ``data_bits`` significant bits. The
canonical form (`format_payload`, `ReadResult.decoded`) is lowercase hex without a prefix,
zero-padded to ``ceil(data_bits / 4)`` digits.

Bit pipeline for a model with ``L`` raw bits and a BCH code of ``n`` codeword bits::

    payload -> data bits (k, MSB first) -> codeword (data bits + BCH parity, n bits)
            -> tile (logical position i carries codeword bit i mod n, for i < L)
            -> XOR key mask -> permute by key -> raw bits fed to the embedder

BCH uses the Linux-kernel implementation in ``bchlib``. The data bits are stored in
``ceil(k / 8)`` bytes with the spare bits as leading zeros (a further shortened code); a
decode that "corrects" one of those known-zero bits counts as a failure. The parity length is
the degree of the BCH generator polynomial (``bchlib``'s ``ecc_bits``), which is ``m * t``
for most but not all ``(m, t)``; ``bchlib``'s parity buffer is ``ceil(m * t / 8)`` bytes
regardless, and its unused trailing bits are zero.

Reading undoes the permutation and mask on the logits, sums the logits of all positions that
carry the same codeword bit (soft combining), takes hard decisions (an exact zero sum is broken
by a key-derived pseudo-random bit) and BCH-decodes, accepting only a codeword within ``t`` bits
of the hard decisions (`bch_decode`). Two statistics are offered; both are p-values for the null
"the raw bits are uniformly random" (what the keyed scrambling makes of an unmarked image), and
`benchmarks/calibration.py` measures them on unmarked photos:

* blind (no expected payload): the probability that uniformly random bits are accepted at a
  distance of at most ``d`` from *some* codeword, ``2^k * sum_{i<=d} C(n, i) / 2^n``, where ``d``
  is the true distance to the decoded codeword (exact: the radius-``t`` balls are disjoint).
  Detected when BCH accepts and that p-value is <= ``fpr``.
* expected payload given (informed): the one-sided binomial tail ``P[Binom(L, 1/2) >= matches]``
  of the raw hard bits (``logit > 0`` reads as 1) against the expected payload's raw bits,
  times the bundle's calibrated ``informed_p_scale`` (`informed_p_scale`; 1 when error
  correction recovers a different payload). Detected when that p-value is <= ``fpr``,
  even when there are too many errors to correct (then ``decoded`` is None).

`ReadResult` lists what each field of a read promises.

Keys are mixed in with HMAC-SHA256 in counter mode. When no key is given a public default key is
used, so the bias of unmarked images is still whitened (but offers no secrecy). Key material
never appears in ``repr``, ``str`` or exception messages, and codec objects do not keep it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import bchlib
import numpy as np

from filigree.detection import ReadResult, binomial_tail, blind_p_value, informed_p_scale

DEFAULT_KEY = b"filigree/public-default-key/v1"
KEY_ENV_VAR = "FILIGREE_KEY"

_MIN_M, _MAX_M = 5, 7
_HEX_RE = re.compile(r"[0-9a-fA-F]+")
_DEC_RE = re.compile(r"[0-9]+")


class PayloadError(ValueError):
    """A payload that cannot be parsed or does not fit the model."""


# ---------------------------------------------------------------------------------------------
# Payload syntax


def _show(value: int) -> str:
    digits = format(value, "x")
    if len(digits) > 32:
        digits = digits[:16] + "..." + digits[-4:]
    return "0x" + digits


def _clip(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def check_capacity(value: int, data_bits: int) -> int:
    """Return ``value`` if it fits in ``data_bits`` bits, else raise `PayloadError`."""
    if data_bits < 1:
        raise PayloadError(f"data_bits must be >= 1, got {data_bits}")
    if value < 0:
        raise PayloadError(f"payload must be non-negative, got {value}")
    needed = value.bit_length()
    if needed > data_bits:
        raise PayloadError(
            f"payload {_show(value)} needs {needed} bits but model carries {data_bits} data bits")
    return value


def _parse_value(text: str) -> int:
    if not isinstance(text, str):
        raise PayloadError(f"payload must be a string, got {type(text).__name__}")
    if text[:5].lower() == "text:":
        body = text[5:]
        if not body:
            raise PayloadError("empty payload: 'text:' needs at least one character")
        if "\x00" in body:
            raise PayloadError("text payload must not contain NUL characters")
        return int.from_bytes(body.encode("utf-8"), "big")
    stripped = text.strip()
    if not stripped:
        raise PayloadError("empty payload")
    lowered = stripped.lower()
    if lowered.startswith("dec:"):
        body = stripped[4:].strip()
        if not _DEC_RE.fullmatch(body):
            raise PayloadError(f"bad decimal payload {_clip(stripped)!r}: expected 'dec:<digits>'")
        return int(body)
    if lowered.startswith("hex:"):
        body = stripped[4:].strip()
    elif lowered.startswith("0x"):
        body = stripped[2:]
    else:
        body = stripped
    if not _HEX_RE.fullmatch(body):
        if ":" in stripped and not lowered.startswith("hex:"):
            prefix = stripped.split(":", 1)[0]
            raise PayloadError(
                f"unknown payload prefix {_clip(prefix)!r}: use 'hex:', 'dec:' or 'text:'")
        raise PayloadError(
            f"bad hex payload {_clip(stripped)!r}: plain payloads are hex digits (optionally "
            "0x-prefixed); use 'dec:<digits>' or 'text:<utf-8>' for other forms")
    return int(body, 16)


def parse_payload(text: str, data_bits: int) -> int:
    """Parse a payload string (syntax in the module docstring) and check it fits ``data_bits``."""
    return check_capacity(_parse_value(text), data_bits)


def payload_text(value: int) -> str | None:
    """The UTF-8 text a payload value spells, or None when it is not valid text."""
    if value <= 0:
        return None
    try:
        text = value.to_bytes((value.bit_length() + 7) // 8, "big").decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def format_payload(value: int | str, data_bits: int, style: str = "hex") -> str:
    """Format a payload: canonical padded lowercase hex, or ``dec:``/``text:`` forms.

    ``value`` may be an int or any string `parse_payload` accepts. Every output parses back
    to the same value.
    """
    number = parse_payload(value, data_bits) if isinstance(value, str) else check_capacity(
        int(value), data_bits)
    if style == "hex":
        return format(number, "x").zfill((data_bits + 3) // 4)
    if style == "dec":
        return f"dec:{number}"
    if style == "text":
        text = payload_text(number)
        if text is None:
            raise PayloadError(f"payload {_show(number)} is not UTF-8 text")
        return "text:" + text
    raise ValueError(f"unknown payload style {style!r}: use 'hex', 'dec' or 'text'")


def canonical_payload(text: str, data_bits: int) -> str:
    """Parse ``text`` and return its canonical hex form."""
    return format_payload(parse_payload(text, data_bits), data_bits)


# ---------------------------------------------------------------------------------------------
# BCH


@lru_cache(maxsize=None)
def _bch(m: int, t: int) -> tuple[Any, threading.Lock]:
    try:
        code = bchlib.BCH(t, m=m)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"bchlib has no BCH code with m={m}, t={t}") from exc
    return code, threading.Lock()


def bch_ecc_bits(m: int, t: int) -> int:
    """Parity bits of the binary BCH code (m, t): the generator's degree, at most m*t."""
    return _bch(m, t)[0].ecc_bits


@dataclass(frozen=True)
class EccSpec:
    """A shortened binary BCH code: ``data_bits`` payload bits plus parity in GF(2^m)."""

    m: int
    t: int
    data_bits: int
    scheme: str = "bch"

    def __post_init__(self) -> None:
        if self.scheme != "bch":
            raise ValueError(f"unsupported ecc scheme {self.scheme!r}")
        if not 5 <= self.m <= 15:
            raise ValueError(f"BCH m must be in [5, 15], got {self.m}")
        if self.t < 1 or self.data_bits < 1:
            raise ValueError(f"BCH needs t >= 1 and data_bits >= 1, got {self}")
        if 8 * self.data_bytes + self.ecc_bits > 2 ** self.m - 1:
            raise ValueError(
                f"{self.data_bits} data bits ({self.data_bytes} bytes) plus {self.ecc_bits} "
                f"parity bits exceed the BCH length {2 ** self.m - 1} for m={self.m}")

    @property
    def ecc_bits(self) -> int:
        """Parity bits (``m * t`` for most codes; less when the generator's degree is lower)."""
        return bch_ecc_bits(self.m, self.t)

    @property
    def data_bytes(self) -> int:
        return (self.data_bits + 7) // 8

    @property
    def codeword_bits(self) -> int:
        return self.data_bits + self.ecc_bits

    def to_dict(self) -> dict[str, Any]:
        """The ``ecc`` object of ``model.json``."""
        return {"scheme": self.scheme, "m": self.m, "t": self.t, "data_bits": self.data_bits}

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "EccSpec":
        return cls(m=int(obj["m"]), t=int(obj["t"]), data_bits=int(obj["data_bits"]),
                   scheme=str(obj.get("scheme", "bch")))


def _max_data_bits(m: int, ecc_bits: int, limit: int) -> int:
    """Most data bits with ``data + ecc <= limit`` and whole data bytes within 2^m - 1."""
    by_length = limit - ecc_bits
    by_bytes = 8 * ((2 ** m - 1 - ecc_bits) // 8)
    return min(by_length, by_bytes)


def choose_ecc(raw_bits: int) -> EccSpec:
    """Default code for ``raw_bits`` raw bits.

    Among m in [5, 7] (codewords of at most 127 bits; longer raw vectors repeat the codeword),
    pick the largest t whose code keeps a rate of at least 1/2 (data bits >= parity bits) and
    fits ``min(raw_bits, 2^m - 1)``; ties go to more data bits, then to the smaller m. This
    gives 100 -> (m=7, t=7, 51 data bits), 120 -> (7, 9, 64) (the periodic layout's 128 raw
    bits less 8 salt bits), 64 -> (6, 5, 32), 32 -> (5, 3, 16) and >= 127 -> (7, 10, 64).
    """
    best: tuple[int, int, int] | None = None
    for m in range(_MIN_M, _MAX_M + 1):
        limit = min(raw_bits, 2 ** m - 1)
        t = 1
        while True:
            try:
                ecc = bch_ecc_bits(m, t)
            except ValueError:
                break
            data = _max_data_bits(m, ecc, limit)
            if data < ecc:
                break
            key = (t, data, -m)
            if best is None or key > best:
                best = key
            t += 1
    if best is None:
        raise ValueError(f"no BCH code fits {raw_bits} raw bits (need at least 10)")
    t, data, neg_m = best
    return EccSpec(m=-neg_m, t=t, data_bits=data)


def bch_encode(spec: EccSpec, value: int) -> np.ndarray:
    """Codeword bits (uint8, length ``spec.codeword_bits``): data bits MSB first, then parity."""
    check_capacity(value, spec.data_bits)
    code, _ = _bch(spec.m, spec.t)
    data = value.to_bytes(spec.data_bytes, "big")
    ecc = np.frombuffer(code.encode(data), dtype=np.uint8)
    pad = 8 * spec.data_bytes - spec.data_bits
    data_bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[pad:]
    return np.concatenate([data_bits, np.unpackbits(ecc)[:spec.ecc_bits]])


def bch_decode(spec: EccSpec, bits: np.ndarray) -> tuple[int | None, int | None]:
    """Bounded-distance decoding of hard codeword bits (``codeword_bits`` of 0/1).

    Returns ``(value, distance)`` when the codeword of ``value`` lies within ``t`` bits of
    ``bits`` (``distance``: the Hamming distance between them, i.e. the errors corrected),
    else ``(None, None)``. The decoder of a shortened code can report success after placing
    "errors" at positions the shortened word does not have (a word far from every codeword
    then "decodes" to one 14 to 40 bits away); re-encoding the result and measuring the
    distance to the received bits rejects those, so the acceptance region is exactly the
    union of the radius-``t`` Hamming balls around the codewords (`acceptance_probability`).
    """
    bits = np.asarray(bits, dtype=np.uint8).reshape(-1)
    if bits.size != spec.codeword_bits:
        raise ValueError(f"expected {spec.codeword_bits} codeword bits, got {bits.size}")
    pad = np.zeros(8 * spec.data_bytes - spec.data_bits, dtype=np.uint8)
    data = bytearray(np.packbits(np.concatenate([pad, bits[:spec.data_bits]])).tobytes())
    code, lock = _bch(spec.m, spec.t)
    ecc = bytearray(np.packbits(bits[spec.data_bits:]).tobytes().ljust(code.ecc_bytes, b"\0"))
    with lock:
        if code.decode(bytes(data), bytes(ecc)) < 0:
            return None, None
        code.correct(data, ecc)
    fixed = int.from_bytes(data, "big")
    if fixed >> spec.data_bits:
        return None, None
    distance = int(np.count_nonzero(bch_encode(spec, fixed) != bits))
    if distance > spec.t:
        return None, None
    return fixed, distance


# ---------------------------------------------------------------------------------------------
# Keys and scrambling


def _key_bytes(key: bytes | str | None) -> bytes:
    if key is None:
        return DEFAULT_KEY
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError(f"key must be bytes, str or None, not {type(key).__name__}")
    if not key:
        raise ValueError("key is empty")
    return bytes(key)


def _keystream(key: bytes, label: str, length: int, nbytes: int) -> bytes:
    """``nbytes`` of HMAC-SHA256(key, domain | label | length | counter) in counter mode."""
    prefix = b"filigree/scrambler/v1\x00" + label.encode() + b"\x00" + length.to_bytes(8, "big")
    blocks = [hmac.new(key, prefix + i.to_bytes(8, "big"), hashlib.sha256).digest()
              for i in range((nbytes + 31) // 32)]
    return b"".join(blocks)[:nbytes]


def _stream_bits(key: bytes, label: str, length: int) -> np.ndarray:
    raw = np.frombuffer(_keystream(key, label, length, (length + 7) // 8), dtype=np.uint8)
    return np.unpackbits(raw)[:length]


class Scrambler:
    """Key-derived permutation and XOR mask over ``length`` raw positions.

    ``scramble`` maps logical bits to raw bits: ``raw[i] = (bits ^ mask)[perm[i]]``. Only the
    derived permutation and masks are kept, never the key.
    """

    __slots__ = ("length", "is_default_key", "perm", "mask", "tiebreak", "_sign")

    def __init__(self, length: int, key: bytes | str | None = None) -> None:
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        material = _key_bytes(key)
        self.length = int(length)
        self.is_default_key = material == DEFAULT_KEY
        order = np.frombuffer(_keystream(material, "perm", length, 8 * length), dtype=">u8")
        self.perm = np.argsort(order, kind="stable")
        self.mask = _stream_bits(material, "mask", length)
        self.tiebreak = _stream_bits(material, "tiebreak", length)
        self._sign = 1.0 - 2.0 * self.mask.astype(np.float64)
        for array in (self.perm, self.mask, self.tiebreak, self._sign):
            array.setflags(write=False)

    def __repr__(self) -> str:
        key = "<default>" if self.is_default_key else "<secret>"
        return f"Scrambler(length={self.length}, key={key})"

    def _check(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        if values.shape != (self.length,):
            raise ValueError(f"expected shape ({self.length},), got {values.shape}")
        return values

    def scramble(self, bits: np.ndarray) -> np.ndarray:
        """Logical bits -> raw bits (uint8)."""
        bits = self._check(bits).astype(np.uint8)
        return (bits ^ self.mask)[self.perm]

    def unscramble(self, raw: np.ndarray) -> np.ndarray:
        """Raw bits -> logical bits (uint8)."""
        raw = self._check(raw).astype(np.uint8)
        logical = np.empty_like(raw)
        logical[self.perm] = raw
        return logical ^ self.mask

    def unscramble_logits(self, logits: np.ndarray) -> np.ndarray:
        """Raw logits -> logical logits (float64; mask bits flip the sign)."""
        logits = self._check(logits).astype(np.float64)
        logical = np.empty_like(logits)
        logical[self.perm] = logits
        return logical * self._sign


def _read_key_file(path: str | os.PathLike) -> bytes:
    """The bytes of a local key file, or of a URI (gs://…) through Beam's filesystems: a Flex
    Template launcher has no local file to read, and a key in a launch parameter would be visible
    to anyone who can view the job."""
    path = os.fspath(path)
    if "://" not in path:
        with open(path, "rb") as handle:
            return handle.read()
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            return handle.read()
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - NotFound, Forbidden, BeamIOError: all "cannot read"
        raise OSError(0, type(exc).__name__) from None


def resolve_key(key: str | bytes | None = None, key_file: str | os.PathLike | None = None,
                env_var: str | None = KEY_ENV_VAR) -> bytes | None:
    """The user's key: ``key``, else ``key_file``'s bytes, else ``$env_var``, else None.

    A key file is read as bytes with trailing CR/LF removed. Giving both ``key`` and
    ``key_file`` is an error, as is an empty key.
    """
    if key is not None and key_file is not None:
        raise ValueError("give either a key or a key file, not both")
    if key is not None:
        return _key_bytes(key)
    if key_file is not None:
        try:
            material = _read_key_file(key_file).rstrip(b"\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read key file {os.fspath(key_file)!r}: "
                             f"{exc.strerror or type(exc).__name__}") from None
        if not material:
            raise ValueError(f"key file {os.fspath(key_file)!r} is empty")
        return material
    if env_var:
        value = os.environ.get(env_var)
        if value is not None:
            if not value:
                raise ValueError(f"environment variable {env_var} is set but empty")
            return _key_bytes(value)
    return None


# ---------------------------------------------------------------------------------------------
# Statistics of a decode (the rest lives in filigree.detection)


def acceptance_probability(spec: EccSpec, distance: int) -> float:
    """P[`bch_decode` accepts a uniformly random word at a distance <= ``distance``] (``<= t``).

    A BCH code corrects ``t`` errors because its minimum distance is at least ``2t + 1``, so
    the radius-``t`` balls around its ``2^k`` codewords are disjoint and the blind p-value is
    exact: ``2^k * sum_{i <= distance} C(n, i) / 2^n``. For the default code (n = 100,
    k = 51, t = 7): 3.1e-5 at distance 7, 1.4e-7 at 5, 1.8e-15 at 0."""
    if not 0 <= distance <= spec.t:
        raise ValueError(f"distance must be in [0, t={spec.t}], got {distance}")
    return blind_p_value(spec.codeword_bits, spec.data_bits, distance)


# ---------------------------------------------------------------------------------------------
# Codec


class PayloadCodec:
    """Payload <-> raw bits for a model with ``raw_bits`` raw bits, an ECC code and a key."""

    def __init__(self, raw_bits: int, ecc: EccSpec | None = None,
                 key: bytes | str | None = None, informed_p_scale: float = 1.0) -> None:
        if not (math.isfinite(informed_p_scale) and informed_p_scale >= 1.0):
            raise ValueError(f"informed_p_scale must be a finite number >= 1, got {informed_p_scale}")
        self.informed_p_scale = float(informed_p_scale)
        """Factor on every informed p-value (>= 1: conservative), calibrated on the model's null."""
        self.ecc = choose_ecc(raw_bits) if ecc is None else ecc
        if self.ecc.codeword_bits > raw_bits:
            raise ValueError(f"codeword of {self.ecc.codeword_bits} bits does not fit "
                             f"{raw_bits} raw bits")
        self.raw_bits = int(raw_bits)
        self.scrambler = Scrambler(raw_bits, key)
        self._slot = np.arange(raw_bits) % self.ecc.codeword_bits
        self._slot.setflags(write=False)
        self._last: tuple[int, np.ndarray] | None = None

    @classmethod
    def from_card(cls, card: Mapping[str, Any], key: bytes | str | None = None) -> "PayloadCodec":
        """Codec for a bundle's ``model.json`` (``payload_bits``, ``ecc`` and the optional
        ``calibration.informed_p_scale``, 1 when absent)."""
        return cls(int(card["payload_bits"]), EccSpec.from_dict(card["ecc"]), key,
                   informed_p_scale=informed_p_scale(card))

    def __repr__(self) -> str:
        return f"PayloadCodec(raw_bits={self.raw_bits}, ecc={self.ecc!r}, " \
               f"key={'<default>' if self.scrambler.is_default_key else '<secret>'})"

    @property
    def data_bits(self) -> int:
        return self.ecc.data_bits

    @property
    def codeword_bits(self) -> int:
        return self.ecc.codeword_bits

    def parse(self, payload: str | int) -> int:
        """Payload string or int -> value, checked against capacity."""
        if isinstance(payload, str):
            return parse_payload(payload, self.data_bits)
        if isinstance(payload, (int, np.integer)) and not isinstance(payload, bool):
            return check_capacity(int(payload), self.data_bits)
        raise PayloadError(f"payload must be a string or int, got {type(payload).__name__}")

    def codeword(self, payload: str | int) -> np.ndarray:
        """BCH codeword bits (uint8, ``codeword_bits``) of a payload."""
        return bch_encode(self.ecc, self.parse(payload))

    def encode(self, payload: str | int) -> np.ndarray:
        """Raw bits for the embedder: float32 {0, 1} of shape ``[raw_bits]``."""
        tiled = self.codeword(payload)[self._slot]
        return self.scrambler.scramble(tiled).astype(np.float32)

    def _raw_bits(self, value: int) -> np.ndarray:
        """Boolean raw bits of a payload value, remembering the last one asked for."""
        last = self._last
        if last is None or last[0] != value:
            last = (value, self.encode(value) > 0.5)
            self._last = last
        return last[1]

    def fold(self, logits: np.ndarray) -> np.ndarray:
        """Soft-combined codeword logits: per codeword bit, the sum of its unscrambled logits."""
        logical = self.scrambler.unscramble_logits(logits)
        return np.bincount(self._slot, weights=logical, minlength=self.codeword_bits)

    def decode(self, logits: np.ndarray, expected: str | int | None = None,
               fpr: float = 1e-6) -> ReadResult:
        """Read one image's logits (float ``[raw_bits]``; ``logit > 0`` reads as 1), blind or
        against ``expected``, judged at ``fpr`` in (0, 1] (see `ReadResult` for what the
        fields promise). Raises ValueError for a bad shape, non-finite logits or ``fpr``, and
        `PayloadError` for an expected payload that does not fit."""
        if not 0.0 < fpr <= 1.0:
            raise ValueError(f"fpr must be in (0, 1], got {fpr}")
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != (self.raw_bits,):
            raise ValueError(f"expected logits of shape ({self.raw_bits},), got {logits.shape}")
        if not np.all(np.isfinite(logits)):
            raise ValueError("logits contain NaN or infinity")
        folded = self.fold(logits)
        tie = self.scrambler.tiebreak[:self.codeword_bits].astype(bool)
        hard = (folded > 0) | ((folded == 0) & tie)
        value, corrected = bch_decode(self.ecc, hard)
        decoded = None if value is None else format_payload(value, self.data_bits)
        if expected is None:
            p_value = 1.0 if corrected is None else acceptance_probability(self.ecc, corrected)
            return ReadResult(decoded, corrected, False, p_value).judged(fpr)
        want = self.parse(expected)
        matches = int(np.count_nonzero((logits > 0) == self._raw_bits(want)))
        p_value = min(1.0, self.informed_p_scale * binomial_tail(self.raw_bits, matches)) \
            if value in (None, want) else 1.0
        return ReadResult(decoded, corrected, False, p_value, ber=1.0 - matches / self.raw_bits,
                          match=value == want).judged(fpr)

    def decode_best(self, logits: np.ndarray, expected: str | int | None = None,
                    fpr: float = 1e-6, tried: int | None = None) -> tuple[int, ReadResult]:
        """Read a batch of hypotheses about one image (logits ``[N, raw_bits]``) and keep the
        one with the smallest p-value; that p-value is multiplied by the number of hypotheses
        tried (Bonferroni; ``tried``, default N, counts reads made elsewhere too), so trying
        them all keeps the false-positive rate at ``fpr``. Returns (index, result); a result
        that is not detected carries no decoded payload."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.ndim != 2 or len(logits) == 0:
            raise ValueError(f"expected logits of shape (N, {self.raw_bits}), got {logits.shape}")
        tried = len(logits) if tried is None else tried
        if tried < len(logits):
            raise ValueError(f"tried ({tried}) must count at least the {len(logits)} hypotheses given")
        reads = [self.decode(row, expected=expected, fpr=1.0) for row in logits]
        best = min(range(len(reads)), key=lambda i: reads[i].p_value)
        return best, reads[best].judged(fpr, reads[best].p_value * tried)
