"""True sample depth of 16-bit grey images: how many bits the data really has, and where they sit.

Scanners, microscopes and raw converters write 10-, 12- or 14-bit data in 16-bit containers,
and 8-bit data is often stored at 16 bits. A mark sized for 65535 is then sized for a range the
data never uses: a 12-bit image (values up to 4095) marked at 16-bit scale gets a change about
16 times too large relative to its own range, and values beyond its top. `SampleDepth` says
how the samples sit in the container, so that the mark is sized to the data's own peak, the
marked values stay on the data's grid, and PSNR is measured against that peak:

* ``low``: values are the samples themselves, in ``[0, 2**bits - 1]`` (the usual layout of
  10/12/14-bit data in 16-bit TIFF and PNG files written by scientific software).
* ``shifted``: samples stored in the top bits, low bits zero (``v = x << (16 - bits)``).
* ``scaled``: samples scaled to the full range (``v = round(x * 65535 / (2**bits - 1))``, the
  PNG specification's recommended bit replication; 8-bit data stored as ``x * 257``).

`sample_depth` decides from the PNG ``sBIT`` chunk when there is one (its layout from where
the values sit), else from the values observed: the bits the largest value needs (``low``),
zero low bits in every value (``shifted``), or every value a multiple of 257 (``scaled``,
8 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from filigree.imaging.kernels import add_residual

LAYOUTS = ("low", "shifted", "scaled")


@dataclass(frozen=True)
class SampleDepth:
    """How `bits`-bit samples sit in a 16-bit container (see the module docstring)."""

    bits: int = 16
    layout: str = "low"
    sbit: int | None = None
    """The source's PNG sBIT value, when it had one (written back with the marked file)."""

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 16 or self.layout not in LAYOUTS:
            raise ValueError(f"bad sample depth {self.bits} bits, layout {self.layout!r}")

    @property
    def peak(self) -> int:
        """The largest sample value: ``2**bits - 1``."""
        return (1 << self.bits) - 1

    def to_samples(self, pixels: np.ndarray) -> np.ndarray:
        """uint16 samples in ``[0, peak]`` of container pixels (uint16 ``[H, W]``)."""
        if self.layout == "low":
            return pixels
        if self.layout == "shifted":
            return np.right_shift(pixels, 16 - self.bits)
        return np.rint(pixels.astype(np.float32) * np.float32(self.peak / 65535.0)).astype(np.uint16)

    def to_container(self, samples: np.ndarray) -> np.ndarray:
        """Container pixels (uint16) of samples in ``[0, peak]``."""
        if self.layout == "low":
            return samples
        if self.layout == "shifted":
            return np.left_shift(samples, 16 - self.bits).astype(np.uint16)
        return np.rint(samples.astype(np.float32) * np.float32(65535.0 / self.peak)).astype(np.uint16)

    def full_range(self, pixels: np.ndarray) -> np.ndarray:
        """The image as the models see it: samples stretched to ``[0, 65535]`` (uint16), so that
        a 12-bit image looks like the same picture at 16 bits, not a dark one."""
        if self.peak == 65535:
            return pixels
        samples = self.to_samples(pixels).astype(np.float32)
        return np.rint(samples * np.float32(65535.0 / self.peak)).astype(np.uint16)


def sample_depth(pixels: np.ndarray, sbit: int | None = None) -> SampleDepth:
    """The `SampleDepth` of 16-bit grey pixels (uint16 ``[H, W]``); `sbit`: the PNG sBIT value."""
    top = int(pixels.max()) if pixels.size else 0
    needed = max(1, top.bit_length())
    if sbit is not None and 1 <= sbit <= 16:
        if top <= (1 << sbit) - 1:
            return SampleDepth(sbit, "low", sbit)
        if _trailing_zero_bits(pixels) >= 16 - sbit:
            return SampleDepth(sbit, "shifted", sbit)
        return SampleDepth(sbit, "scaled", sbit)
    if needed < 16:
        return SampleDepth(needed, "low")
    zeros = _trailing_zero_bits(pixels)
    if zeros > 0:
        return SampleDepth(16 - zeros, "shifted")
    if not np.any(pixels % 257):
        return SampleDepth(8, "scaled")
    return SampleDepth(16, "low")


def _trailing_zero_bits(pixels: np.ndarray) -> int:
    """Low bits that are zero in every value (16 when all values are zero)."""
    combined = int(np.bitwise_or.reduce(pixels, axis=None)) if pixels.size else 0
    if combined == 0:
        return 16
    return (combined & -combined).bit_length() - 1


def mark_samples(pixels: np.ndarray, residual: np.ndarray, strength: float, depth: SampleDepth) -> np.ndarray:
    """Marked copy of 16-bit grey pixels within their true depth: the residual scaled by
    ``strength * depth.peak``, added to the samples, clipped to ``[0, peak]``, stored back in
    the container's layout."""
    samples = depth.to_samples(pixels)
    marked = add_residual(samples, residual, float(strength) * depth.peak, peak=depth.peak)
    return depth.to_container(marked)
