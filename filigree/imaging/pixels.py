"""Pixel memory: numpy views of Pillow's own image memory and back, dtype conversions, and the
row-block / row-tile sizes the other image modules work in.

Pixels travel in their native integer type (``DecodedImage.pixels``: uint8 RGB, or uint8 /
uint16 grey). Colour pixels are a read-only numpy view of Pillow's own image memory (Pillow
keeps RGB as 4 bytes a pixel; the view is ``[H, W, 3]`` with a 4-byte pixel stride), reached
through Pillow's Arrow export, so decoding makes no second copy; marked pixels go back to Pillow
the same way (``pil_image``). That needs the image in one Pillow memory block: importing this
module raises Pillow's block size (``Image.core.set_block_size``, a process-wide allocation
setting that does not change any pixel) to cover images up to ``_SINGLE_BLOCK_BYTES``; larger
ones, or a Pillow or pyarrow without Arrow support, fall back to copies.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_BLOCK_ELEMENTS = 1 << 18
_SINGLE_BLOCK_BYTES = 1 << 30
"""Images up to this many bytes of Pillow memory (4 bytes a pixel for RGB: 268 MP) are
allocated in one block, so that numpy can view them (see the module docstring)."""
_TILE_PIXELS = 1 << 17
"""Pixels per row tile of ``add_residual`` (512 KiB of RGBX: tiles stay in the CPU cache)."""


def raise_block_size(nbytes: int) -> None:
    """Make Pillow allocate images of up to ``nbytes`` (capped) in a single memory block."""
    try:
        wanted = min(_SINGLE_BLOCK_BYTES, (int(nbytes) + 4095) // 4096 * 4096)
        if Image.core.get_block_size() < wanted:
            Image.core.set_block_size(wanted)
    except (AttributeError, ValueError, TypeError):  # an old Pillow: copies are made instead
        pass


raise_block_size(512 << 20)


def pixel_view(image: Image.Image) -> np.ndarray | None:
    """Read-only numpy view of a Pillow image's own memory, or None when there is none.

    ``RGB``/``RGBA``/``RGBX`` give uint8 ``[H, W, 4]`` (Pillow's 4-byte pixels: take
    ``[..., :3]`` for RGB), ``L`` gives uint8 ``[H, W]``. The view keeps the memory alive after
    the image is closed. None for other modes, images held in several memory blocks, images
    over memory they do not own (``pil_image``'s read-only images: Pillow cannot export those
    again), or a Pillow/pyarrow without the Arrow interface: callers then copy (``np.asarray``)."""
    if image.mode not in ("RGB", "RGBA", "RGBX", "L") or image.readonly:
        return None
    try:
        import pyarrow

        exported = pyarrow.array(image)
        if image.mode != "L":
            exported = exported.flatten()
        flat = exported.to_numpy(zero_copy_only=True)
    except Exception:  # noqa: BLE001 - no zero-copy export here: the caller copies instead
        return None
    width, height = image.size
    shape = (height, width) if image.mode == "L" else (height, width, 4)
    if flat.dtype != np.uint8 or flat.size != int(np.prod(shape)):
        return None
    return flat.reshape(shape)


_byte_bounds = getattr(getattr(np.lib, "array_utils", None), "byte_bounds", None) or np.byte_bounds


def rgbx_base(pixels: np.ndarray) -> np.ndarray | None:
    """The contiguous uint8 ``[H, W, 4]`` array that an ``[H, W, 3]`` view was cut from."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        return None
    height, width = pixels.shape[:2]
    if pixels.strides != (width * 4, 4, 1):
        return None
    owner = pixels
    while isinstance(owner.base, np.ndarray):
        owner = owner.base
    low, high = _byte_bounds(owner)
    start = pixels.__array_interface__["data"][0]
    if start < low or start + height * width * 4 > high:
        return None
    return np.lib.stride_tricks.as_strided(
        pixels, (height, width, 4), (width * 4, 4, 1), writeable=False)


def pil_image(pixels: np.ndarray) -> Image.Image:
    """A Pillow image of uint8 ``[H, W, 3]`` (RGB), uint8 ``[H, W]`` (L) or uint16 ``[H, W]``
    (I;16) pixels, sharing their memory where the layout allows (an ``[H, W, 3]`` view with a
    4-byte pixel stride, as ``DecodedImage.pixels`` and ``add_residual`` give); else a copy.
    Treat the image as read-only."""
    if pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3:
        base = rgbx_base(pixels)
        if base is not None:
            try:
                import pyarrow

                flat = pyarrow.array(base.reshape(-1))  # zero-copy over numpy memory
                arrow = pyarrow.FixedSizeListArray.from_arrays(flat, 4)
                return Image.fromarrow(arrow, "RGB", (pixels.shape[1], pixels.shape[0]))
            except Exception:  # noqa: BLE001 - no Arrow import here: copy instead
                pass
        return Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    if pixels.dtype == np.uint8 and pixels.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(pixels), "L")
    if pixels.dtype == np.uint16 and pixels.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(pixels))
    raise ValueError(f"no Pillow mode for pixels {pixels.dtype}{pixels.shape}")


def to_float_rgb(pixels: np.ndarray) -> np.ndarray:
    """float32 RGB ``[H, W, 3]`` in [0, 1] of native pixels (grey becomes three channels)."""
    maxval = np.float32(65535 if pixels.dtype == np.uint16 else 255)
    if pixels.ndim == 2:
        out = np.empty((*pixels.shape, 3), dtype=np.float32)
        np.divide(pixels[..., None], maxval, out=out, dtype=np.float32)
        return out
    return np.divide(pixels[..., :3], maxval, dtype=np.float32)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit pixels: uint8 unchanged; 16-bit grey rounded as ``rint(v / 65535 * 255)``."""
    if pixels.dtype == np.uint8:
        return pixels
    plane = np.empty(pixels.shape, dtype=np.uint8)
    for rows in row_blocks(pixels.shape[0], int(np.prod(pixels.shape[1:]))):
        block = np.divide(pixels[rows], np.float32(65535), dtype=np.float32)
        block *= np.float32(255)
        np.rint(block, out=block)
        plane[rows] = block
    return plane


def row_blocks(height: int, row_elements: int) -> Iterator[slice]:
    rows = max(1, _BLOCK_ELEMENTS // max(1, row_elements))
    for start in range(0, height, rows):
        yield slice(start, min(height, start + rows))


def tile_rows(width: int) -> int:
    return max(1, _TILE_PIXELS // max(1, width))


def quantize(values: np.ndarray, maxval: int, dtype: type, *, luma: bool = False) -> np.ndarray:
    """Round ``clip(values, 0, 1) * maxval`` to ``dtype`` in row blocks (no full-size float copy).

    With ``luma``, ``values`` is ``[H, W, 3]`` and its BT.601 luma ``[H, W]`` is quantised.
    NaN raises ValueError; infinities clip.
    """
    shape = values.shape[:2] if luma else values.shape
    out = np.empty(shape, dtype=dtype)
    weights = LUMA * np.float32(maxval)
    for rows in row_blocks(values.shape[0], int(np.prod(values.shape[1:]))):
        if luma:
            block = np.asarray(values[rows], dtype=np.float32) @ weights
        else:
            block = np.multiply(values[rows], np.float32(maxval), dtype=np.float32)
        np.rint(block, out=block)
        np.clip(block, 0, maxval, out=block)
        if block.size and np.isnan(block.min()):
            raise ValueError("pixel values must not be NaN")
        out[rows] = block
    return out
