"""Tests for filigree.imaging.vp8: the VP8 key-frame header reader (checked against headers
written here with the RFC 6386 §7.2 boolean encoder) and the libwebp quality estimate (on photos
written by Pillow's libwebp), including truncated and random input."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from PIL import Image

from filigree.imaging import vp8
from filigree.imaging.decode import decode_image
from filigree.resources import bundled_samples_dir
from imagefiles import encoded


class BoolEncoder:
    """RFC 6386 §7.2 boolean entropy encoder (the reference the reader is checked against)."""

    def __init__(self) -> None:
        self.out, self.range, self.bottom, self.bit_count = bytearray(), 255, 0, 24

    def _carry(self) -> None:
        i = len(self.out) - 1
        while self.out[i] == 255:
            self.out[i] = 0
            i -= 1
        self.out[i] += 1

    def bool(self, value: int, probability: int = 128) -> None:
        split = 1 + (((self.range - 1) * probability) >> 8)
        if value:
            self.bottom, self.range = self.bottom + split, self.range - split
        else:
            self.range = split
        while self.range < 128:
            self.range <<= 1
            if self.bottom & (1 << 31):
                self._carry()
            self.bottom = (self.bottom << 1) & 0xFFFFFFFF
            self.bit_count -= 1
            if not self.bit_count:
                self.out.append(self.bottom >> 24)
                self.bottom &= (1 << 24) - 1
                self.bit_count = 8

    def literal(self, value: int, bits: int) -> None:
        for shift in range(bits - 1, -1, -1):
            self.bool((value >> shift) & 1)

    def optional_signed(self, value: int | None, bits: int) -> None:
        self.literal(value is not None, 1)
        if value is not None:
            self.literal(abs(value), bits)
            self.literal(value < 0, 1)

    def flush(self) -> bytes:
        c, v = self.bit_count, self.bottom
        if v & (1 << (32 - c)):
            self._carry()
        v = (v << (c & 7)) & 0xFFFFFFFF
        for _ in range(c >> 3):
            v = (v << 8) & 0xFFFFFFFF
        for _ in range(4):
            self.out.append(v >> 24)
            v = (v << 8) & 0xFFFFFFFF
        return bytes(self.out)


def vp8_header(y_ac_qi: int, deltas: tuple, segments: tuple | None = None, absolute: bool = False,
               lf_deltas: bool = False) -> bytes:
    """A key frame's §19.2 header up to quant_indices(), boolean-coded; `deltas` and `segments`
    hold a value or None (not sent) each."""
    e = BoolEncoder()
    e.literal(0, 2)  # color_space, clamping_type
    e.literal(segments is not None, 1)
    if segments is not None:
        e.literal(1, 1), e.literal(1, 1), e.literal(absolute, 1)  # update map, update data, mode
        for value in segments:
            e.optional_signed(value, 7)
        for value in (3, None, -2, None):
            e.optional_signed(value, 6)
        for probability in (200, None, 17):
            e.literal(probability is not None, 1)
            if probability is not None:
                e.literal(probability, 8)
    e.literal(0, 1), e.literal(33, 6), e.literal(5, 3)
    e.literal(lf_deltas, 1)
    if lf_deltas:
        e.literal(1, 1)
        for value in (2, None, -2, -2, 4, None, 0, -63):
            e.optional_signed(value, 6)
    e.literal(2, 2)
    e.literal(y_ac_qi, 7)
    for value in deltas:
        e.optional_signed(value, 4)
    for _ in range(64):  # the rest of a first partition: per-macroblock data
        e.bool(1, 3)
    return e.flush()


def webp_of(partition: bytes, width: int = 64, height: int = 48) -> bytes:
    """A simple-format RIFF/WEBP file around a key frame whose first partition is `partition`."""
    tag = (len(partition) << 5) | (1 << 4)  # key frame, version 0, shown
    frame = struct.pack("<I", tag)[:3] + b"\x9d\x01\x2a" + struct.pack("<HH", width, height) + partition
    chunk = b"VP8 " + struct.pack("<I", len(frame)) + frame + b"\x00" * (len(frame) & 1)
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


@pytest.mark.parametrize("header, expected", [
    (dict(y_ac_qi=57, deltas=(None,) * 5), vp8.VP8Quantizer(57, (57,), (0, 0, 0, 0, 0))),
    (dict(y_ac_qi=0, deltas=(-15, 3, None, -2, 15), lf_deltas=True),
     vp8.VP8Quantizer(0, (0,), (-15, 3, 0, -2, 15))),
    (dict(y_ac_qi=40, deltas=(None, None, None, -4, -7), segments=(5, -3, None, 100)),
     vp8.VP8Quantizer(40, (45, 37, 40, 127), (0, 0, 0, -4, -7))),  # deltas, clamped to 0..127
    (dict(y_ac_qi=40, deltas=(1,) * 5, segments=(90, 61, None, -5), absolute=True, lf_deltas=True),
     vp8.VP8Quantizer(40, (90, 61, 0, 0), (1, 1, 1, 1, 1))),  # absolute values
])
def test_header_fields_are_read_as_rfc6386_writes_them(header, expected):
    assert vp8.webp_quantizer(webp_of(vp8_header(**header))) == expected


def _photo(side: int = 512, name: str = "opencv_fruits.jpg") -> Image.Image:
    image = Image.open(os.path.join(bundled_samples_dir(), name)).convert("RGB")
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    return image


@pytest.mark.parametrize("quality", [5, 30, 60, 75, 80, 90, 100])
def test_libwebp_quality_is_read_back(quality):
    """A photo whose coarsest segment is clipped at libwebp's strongest (most photos, 48 of 56 in
    the calibration) reads back its exact quality, in every container layout."""
    photo = _photo()
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    for data in (encoded(photo, "WEBP", quality=quality),  # simple format
                 encoded(rgba, "WEBP", quality=quality),  # VP8X + ALPH + VP8
                 encoded(photo, "WEBP", quality=quality, exif=b"II*\x00\x08\x00\x00\x00\x00\x00")):
        assert vp8.estimate_webp_quality(data) == quality
    assert decode_image(encoded(photo, "WEBP", quality=quality)).quality == quality


def test_textured_photos_are_read_at_or_above_their_quality():
    """Photos whose segments clip at the finest end read an upper bound: within the largest
    error measured on held-out photos of this size (+12 at 384 px, docs/formats.md)."""
    for name in ("opencv_aloeL.jpg", "opencv_building.jpg", "opencv_squirrel_cls.jpg"):
        for quality in (20, 60, 85):
            estimate = vp8.estimate_webp_quality(encoded(_photo(384, name), "WEBP", quality=quality))
            assert quality <= estimate <= quality + 12, (name, quality, estimate)


def test_lossless_webp_has_no_quality():
    data = encoded(_photo(64), "WEBP", lossless=True)
    assert vp8.webp_vp8_frame(data) is None and vp8.estimate_webp_quality(data) is None
    decoded = decode_image(data)
    assert decoded.lossless is True and decoded.quality is None


def test_truncated_files_give_none_or_the_full_answer():
    data = encoded(_photo(128), "WEBP", quality=60)
    full = vp8.webp_quantizer(data)
    answers = [vp8.webp_quantizer(data[:n]) for n in range(len(data) + 1)]
    assert all(answer in (None, full) for answer in answers)
    assert answers[30] is None and answers[-1] == full
    first_readable = next(n for n, answer in enumerate(answers) if answer is not None)
    assert first_readable < 60  # the header needs only the frame's first bytes
    assert all(answer == full for answer in answers[first_readable:])


def test_hostile_bytes_never_raise():
    rng = np.random.default_rng(0)
    valid = encoded(_photo(64), "WEBP", quality=60)
    prefix = valid[:30]  # RIFF, VP8 chunk header, frame tag and start code
    results = []
    for size in list(range(40)) + [100, 1000] * 100:
        noise = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        empty_chunk = b"RIFF\xff\xff\xff\xffWEBPVP8 \x00\x00\x00\x00" + noise
        for data in (noise, b"RIFF" + noise, prefix + noise, empty_chunk):
            results.append(vp8.estimate_webp_quality(data))
    assert all(result is None or 0 <= result <= 100 for result in results)
    assert any(result is not None for result in results)  # random headers after a valid start do parse
    bad_chunk = b"RIFF" + struct.pack("<I", 40) + b"WEBPJUNK" + struct.pack("<I", 2 ** 32 - 1) + bytes(20)
    assert vp8.estimate_webp_quality(bad_chunk) is None
    inter_frame = bytearray(valid)
    inter_frame[20] |= 1  # the frame tag's inter-frame bit
    assert vp8.estimate_webp_quality(bytes(inter_frame)) is None
