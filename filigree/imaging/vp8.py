"""The quantiser of a lossy WebP image, read from its VP8 key-frame header.

A lossy WebP holds one VP8 key frame (RFC 6386) in a RIFF container, alone (``VP8 `` chunk) or
after a ``VP8X`` header and its optional chunks. Its first partition starts with the frame header,
boolean-coded (RFC 6386 §7); its fields are read in the order of §9.2-9.6 / §19.2 up to the
quantiser indices: segmentation (§9.3, per-segment quantiser updates), loop filter (§9.4, skipped),
partition count (§9.5, skipped) and the dequantisation indices (§9.6). Nothing past the header is
decoded. Every reader here returns None for input it cannot read (truncated, hostile, lossless
``VP8L``, not WebP) and never raises.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

_KEY_FRAME_START = b"\x9d\x01\x2a"
_FRAME_TAG_BYTES = 10  # 3-byte frame tag, 3-byte start code, 2+2 bytes of width and height
MAX_Q_INDEX = 127
"""Largest VP8 quantiser index (RFC 6386 §9.6: 7 bits)."""


@dataclass(frozen=True)
class VP8Quantizer:
    """Quantiser indices of a VP8 key frame (RFC 6386 §9.3 and §9.6), each in 0..127.

    ``y_ac_qi`` is the frame's base luma AC index; ``segment_y_ac_qi`` the luma AC index each of
    the four segments uses (segmentation on: absolute values, or deltas added to ``y_ac_qi`` and
    clamped; off: ``y_ac_qi`` once). ``deltas`` are the §9.6 deltas (y_dc, y2_dc, y2_ac, uv_dc,
    uv_ac), each in -15..15."""

    y_ac_qi: int
    segment_y_ac_qi: tuple[int, ...]
    deltas: tuple[int, int, int, int, int]


class _Exhausted(Exception):
    """The boolean decoder ran past the end of its partition."""


class _BoolDecoder:
    """RFC 6386 §7.3 boolean entropy decoder over one partition; raises `_Exhausted` when a
    read needs bytes the partition does not have."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 2:
            raise _Exhausted
        self.data, self.pos = data, 2
        self.value = (data[0] << 8) | data[1]
        self.range, self.bit_count = 255, 0

    def bool(self, probability: int) -> int:
        split = 1 + (((self.range - 1) * probability) >> 8)
        big_split = split << 8
        if self.value >= big_split:
            bit, self.range, self.value = 1, self.range - split, self.value - big_split
        else:
            bit, self.range = 0, split
        while self.range < 128:
            self.value, self.range = self.value << 1, self.range << 1
            self.bit_count += 1
            if self.bit_count == 8:
                if self.pos >= len(self.data):
                    raise _Exhausted
                self.bit_count = 0
                self.value |= self.data[self.pos]
                self.pos += 1
        return bit

    def literal(self, bits: int) -> int:
        """L(n): an n-bit unsigned value, most significant bit first, each at probability 128."""
        value = 0
        for _ in range(bits):
            value = (value << 1) | self.bool(128)
        return value

    def optional_signed(self, bits: int) -> int:
        """A flag, then (when set) an n-bit magnitude and a sign bit; 0 when the flag is clear."""
        if not self.literal(1):
            return 0
        magnitude = self.literal(bits)
        return -magnitude if self.literal(1) else magnitude


def webp_vp8_frame(data: bytes) -> bytes | None:
    """The ``VP8 `` chunk's payload (a VP8 key frame) of a RIFF/WEBP file, or None when the file
    is lossless (``VP8L``), not WebP, or has no complete VP8 chunk header. The payload is cut at
    the end of the data when the file is truncated."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    pos = 12
    while pos + 8 <= len(data):
        fourcc = data[pos:pos + 4]
        size = struct.unpack("<I", data[pos + 4:pos + 8])[0]
        if fourcc == b"VP8 ":
            return data[pos + 8:pos + 8 + size]
        if fourcc == b"VP8L":
            return None
        pos += 8 + size + (size & 1)
    return None


def read_vp8_quantizer(frame: bytes) -> VP8Quantizer | None:
    """The quantiser indices of a VP8 key frame (the ``VP8 `` chunk payload), or None for an
    inter frame, a bad start code, or a first partition that ends before the indices."""
    if len(frame) < _FRAME_TAG_BYTES:
        return None
    tag = frame[0] | (frame[1] << 8) | (frame[2] << 16)
    key_frame, first_partition_size = not tag & 1, tag >> 5  # §9.1
    if not key_frame or frame[3:6] != _KEY_FRAME_START:
        return None
    partition = frame[_FRAME_TAG_BYTES:_FRAME_TAG_BYTES + first_partition_size]
    try:
        return _read_header(_BoolDecoder(partition))
    except _Exhausted:
        return None


def _read_header(d: _BoolDecoder) -> VP8Quantizer:
    """§19.2 frame header of a key frame, read up to and including quant_indices()."""
    d.literal(2)  # color_space, clamping_type
    segment_q, absolute = [0, 0, 0, 0], False
    segmentation = d.literal(1)
    if segmentation:  # §9.3 update_segmentation()
        update_map, update_data = d.literal(1), d.literal(1)
        if update_data:
            absolute = bool(d.literal(1))  # segment_feature_mode: 1 absolute, 0 delta
            segment_q = [d.optional_signed(7) for _ in range(4)]
            for _ in range(4):
                d.optional_signed(6)  # loop filter level updates
        if update_map:
            for _ in range(3):
                if d.literal(1):
                    d.literal(8)  # segment tree probabilities
    d.literal(1 + 6 + 3)  # filter_type, loop_filter_level, sharpness_level (§9.4)
    if d.literal(1) and d.literal(1):  # loop_filter_adj_enable, mode_ref_lf_delta_update
        for _ in range(8):
            d.optional_signed(6)  # ref_frame and mb_mode loop filter deltas
    d.literal(2)  # log2_nbr_of_dct_partitions (§9.5)
    y_ac_qi = d.literal(7)  # §9.6
    deltas = tuple(d.optional_signed(4) for _ in range(5))
    if not segmentation:
        segments: tuple[int, ...] = (y_ac_qi,)
    elif absolute:
        segments = tuple(_clamp_q(q) for q in segment_q)
    else:
        segments = tuple(_clamp_q(y_ac_qi + q) for q in segment_q)
    return VP8Quantizer(y_ac_qi, segments, deltas)  # type: ignore[arg-type]


def _clamp_q(index: int) -> int:
    return min(MAX_Q_INDEX, max(0, index))


def webp_quantizer(data: bytes) -> VP8Quantizer | None:
    """`read_vp8_quantizer` of a RIFF/WEBP file's VP8 frame; None for lossless or unreadable
    files."""
    frame = webp_vp8_frame(data)
    return None if frame is None else read_vp8_quantizer(frame)


LIBWEBP_Y_AC_INDEX = (
    127, 115, 111, 107, 104, 102, 100, 98, 96, 94, 92, 90, 89, 87, 86, 85, 83, 82, 81, 80, 78,
    77, 76, 75, 74, 73, 72, 71, 70, 69, 68, 67, 66, 65, 64, 64, 63, 62, 61, 60, 59, 59, 58, 57,
    56, 55, 55, 54, 53, 52, 52, 51, 50, 50, 49, 48, 48, 47, 46, 46, 45, 44, 44, 43, 42, 42, 41,
    40, 40, 39, 39, 38, 37, 37, 36, 36, 34, 32, 30, 29, 27, 26, 24, 23, 21, 20, 18, 17, 15, 14,
    12, 11, 10, 8, 7, 6, 5, 3, 2, 1, 0,
)
"""The coarsest segment's luma AC index that libwebp (Pillow's encoder, default settings) writes
at each quality 0..100: the most common value over photos, measured with
`benchmarks/webp_quality.py --calibrate` (docs/formats.md)."""


def libwebp_quality(quantizer: VP8Quantizer) -> int:
    """The highest libwebp quality (0..100) whose coarsest segment uses ``quantizer``'s coarsest
    luma AC index (`LIBWEBP_Y_AC_INDEX`; the nearest tabulated index when it is not listed).

    For files written with libwebp's defaults this is an upper bound of the true quality, exact
    for most photos (its error is measured in docs/formats.md); other encoders' settings are read
    as the libwebp quality that quantises as coarsely."""
    index = max(quantizer.segment_y_ac_qi)
    distance = min(abs(listed - index) for listed in LIBWEBP_Y_AC_INDEX)
    return max(q for q, listed in enumerate(LIBWEBP_Y_AC_INDEX) if abs(listed - index) == distance)


def estimate_webp_quality(data: bytes) -> int | None:
    """The libwebp quality (0..100) a lossy RIFF/WEBP file was most likely written at
    (`libwebp_quality` of its VP8 key-frame quantiser); None for lossless or unreadable files."""
    quantizer = webp_quantizer(data)
    return None if quantizer is None else libwebp_quality(quantizer)
