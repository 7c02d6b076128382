"""Resampling and residual-adding kernels: the working-size view of an image, the bilinear
upsampling of a residual, and `add_residual`, which marks native pixels.

``add_residual`` marks in row tiles that stay in the CPU cache, with 8-bit saturating
arithmetic, writing straight into the output buffer: no full-size float arrays. A marked pixel
is ``clip(pixel + floor(strength * maxval * upsampled_residual + 0.5))`` (round half up, maxval
255 or 65535); grey images get the BT.601 luma of an RGB residual.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from filigree.imaging.pixels import LUMA, pil_image, quantize, rgbx_base, tile_rows, to_uint8

def to_working_size(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize RGB (uint8, or float in [0, 1]) to float32 ``[size, size, 3]`` in [0, 1].

    Uses Pillow on an 8-bit image: BOX (area) when shrinking both axes, bilinear otherwise.
    The result is quantised to 1/255 steps, as for any 8-bit source. A uint8 view with a
    4-byte pixel stride (``DecodedImage.pixels``) is resized without a copy.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected [H, W, 3], got {rgb.shape}")
    if size < 1:
        raise ValueError("size must be positive")
    pixels = rgb if rgb.dtype == np.uint8 else quantize(rgb, 255, np.uint8)
    small = resize_to(pil_image(pixels), size)
    return np.divide(np.asarray(small), np.float32(255), dtype=np.float32)


def working_view(pixels: np.ndarray, size: int) -> np.ndarray:
    """``to_working_size`` for native pixels (``DecodedImage.pixels``): float32
    ``[size, size, 3]`` in [0, 1], grey as three equal channels, 16-bit grey rounded to 8 bits
    first. Equal to ``to_working_size(to_float_rgb(pixels), size)``, without the float copy."""
    if size < 1:
        raise ValueError("size must be positive")
    if pixels.ndim == 3:
        return to_working_size(pixels, size)
    small = np.asarray(resize_to(pil_image(to_uint8(pixels)), size))
    out = np.empty((size, size, 3), dtype=np.float32)
    np.divide(small[..., None], np.float32(255), out=out, dtype=np.float32)
    return out


def resize_to(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    resample = Image.BOX if height >= size and width >= size else Image.BILINEAR
    return image.resize((size, size), resample)


def upsample_residual(residual: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinearly resize a ``[S0, S1, C]`` residual to float32 ``[height, width, C]``.

    Pixel-centre aligned with edge clamping, identical (to float rounding) to Pillow's
    ``Image.BILINEAR`` on mode ``F``. Upscaling runs as a separable numpy lerp; any axis that
    shrinks goes through Pillow, whose bilinear filter widens to antialias.
    """
    if residual.ndim != 3:
        raise ValueError(f"expected [S, S, C], got {residual.shape}")
    if height < 1 or width < 1:
        raise ValueError("height and width must be positive")
    residual = np.asarray(residual, dtype=np.float32)
    src_h, src_w, _ = residual.shape
    if height < src_h or width < src_w:
        return _upsample_pillow(residual, height, width)
    x0, x1, wx = _lerp_coords(src_w, width)
    rows = residual[:, x0]
    rows += (residual[:, x1] - rows) * wx[None, :, None]
    rows = rows.reshape(src_h, -1)
    y0, y1, wy = _lerp_coords(src_h, height)
    out = np.empty((height, rows.shape[1]), dtype=np.float32)
    starts = np.flatnonzero(np.diff(y0 * (src_h + 1) + y1)) + 1
    for start, stop in zip(np.r_[0, starts], np.r_[starts, height]):
        top, bottom = rows[y0[start]], rows[y1[start]]
        dest = out[start:stop]
        if y0[start] == y1[start]:
            dest[...] = top
        else:
            np.multiply.outer(wy[start:stop], bottom - top, out=dest)
            dest += top
    return out.reshape(height, width, residual.shape[2])


def _lerp_coords(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    centres = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    low = np.floor(centres).astype(np.intp)
    weight = (centres - low).astype(np.float32)
    high = np.clip(low + 1, 0, n_in - 1)
    return np.clip(low, 0, n_in - 1), high, weight


def _upsample_pillow(residual: np.ndarray, height: int, width: int) -> np.ndarray:
    out = np.empty((height, width, residual.shape[2]), dtype=np.float32)
    for c in range(residual.shape[2]):
        plane = Image.fromarray(np.ascontiguousarray(residual[..., c]), mode="F")
        out[..., c] = np.asarray(plane.resize((width, height), Image.BILINEAR))
    return out


_REPLICATE = np.uint32(0x01010101)


def add_residual(pixels: np.ndarray, residual: np.ndarray, scale: float, peak: int | None = None) -> np.ndarray:
    """Marked copy of native ``pixels``: ``clip(p + floor(scale * up(residual) + 0.5))``.

    ``pixels`` is uint8 ``[H, W, 3]``, uint8 ``[H, W]`` or uint16 ``[H, W]`` (as in
    ``DecodedImage.pixels``); ``residual`` is ``[S0, S1, C]``, bilinearly upsampled as by
    ``upsample_residual`` (C = 1 adds the same value to R, G and B; grey pixels take the BT.601
    luma of a C = 3 residual); ``scale`` is strength × the largest sample value (255 or
    65535). The result has the same type and shape (colour as a view with a 4-byte pixel
    stride, which ``pil_image`` wraps without a copy). Works in row tiles: 8-bit images with
    saturating uint8 arithmetic, others in int32; the only full-size array is the result.
    ``peak`` (16-bit pixels only) clips to a lower top than 65535: the data's own (see
    `filigree.imaging.depth`).
    """
    residual = np.asarray(residual, dtype=np.float32)
    if residual.ndim != 3 or residual.shape[2] not in (1, 3):
        raise ValueError(f"residual must be [S, S, 1] or [S, S, 3], got {residual.shape}")
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim not in (2, 3):
        raise ValueError(f"pixels must be uint8/uint16 [H, W(, 3)], got {pixels.dtype}{pixels.shape}")
    if pixels.ndim == 3 and (pixels.shape[2] != 3 or pixels.dtype != np.uint8):
        raise ValueError(f"colour pixels must be uint8 [H, W, 3], got {pixels.dtype}{pixels.shape}")
    if not np.isfinite(scale) or not np.all(np.isfinite(residual)):
        raise ValueError("residual and scale must be finite")
    grey = pixels.ndim == 2
    if grey and residual.shape[2] == 3:
        residual = (residual @ LUMA)[..., None]
    height, width = pixels.shape[:2]
    maxval = 65535 if pixels.dtype == np.uint16 else 255
    if peak is not None:
        if pixels.dtype != np.uint16 or not 1 <= peak <= 65535:
            raise ValueError(f"peak {peak} needs uint16 pixels and a value in [1, 65535]")
        maxval = int(peak)
    small = float(np.abs(residual).max(initial=0.0)) * abs(scale) < 127.0
    offset = 128.5 if pixels.dtype == np.uint8 and small else 0.5
    planes = [_Lerp(residual[..., c], height, width, float(scale), offset)
              for c in range(residual.shape[2])]
    if offset > 1:
        return _add_u8(pixels, planes)
    return _add_wide(pixels, planes, maxval)


class _Lerp:
    """``scale * upsample_residual(plane) + offset`` (float32), produced in row tiles."""

    def __init__(self, plane: np.ndarray, height: int, width: int, scale: float, offset: float):
        src_h, src_w = plane.shape
        self.full = None
        if height < src_h or width < src_w:  # shrinking: Pillow's antialiasing filter, once
            full = _upsample_pillow(np.ascontiguousarray(plane)[..., None], height, width)[..., 0]
            full *= np.float32(scale)
            full += np.float32(offset)
            self.full = full
            return
        x0, x1, wx = _lerp_coords(src_w, width)
        plane = np.ascontiguousarray(plane, dtype=np.float32)
        # plane[:, x1] - plane[:, x0] is a source column step (zero where the edge clamps):
        # one gather of the steps instead of two gathers and a full-width subtraction
        steps = np.zeros((src_h, src_w + 1), np.float32)
        np.subtract(plane[:, 1:], plane[:, :-1], out=steps[:, :src_w - 1])
        rows = np.take(plane, x0, axis=1)
        step = np.take(steps, np.where(x1 == x0, src_w, x0), axis=1)
        step *= wx
        rows += step
        del step
        rows *= np.float32(scale)
        self.rows, self.offset = rows, np.float32(offset)
        y0, y1, self.wy = _lerp_coords(src_h, height)
        # runs of output rows that share their two source rows: (first row, source row, lerp?)
        starts = np.r_[0, np.flatnonzero(np.diff(y0 * (src_h + 1) + y1)) + 1]
        self.runs = [(int(r), int(y0[r]), bool(y0[r] != y1[r])) for r in starts] + [(height, 0, False)]
        self.source = -1
        self.row_diff = np.empty(width, np.float32)
        self.row_base = np.empty(width, np.float32)
        self.cursor = 0

    def fill(self, start: int, stop: int, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
        """Rows ``start:stop`` into ``out[:stop - start]`` (tiles are asked for in order); an
        integer ``out`` receives the values truncated (``scratch``: float32, as large)."""
        out = out[: stop - start]
        if self.full is not None:
            np.copyto(out, self.full[start:stop], casting="unsafe")
            return out
        runs = self.runs
        if runs[self.cursor][0] > start:
            self.cursor = 0
        while runs[self.cursor + 1][0] <= start:
            self.cursor += 1
        index, row = self.cursor, start
        while row < stop:
            first, source, lerp = runs[index]
            end = min(stop, runs[index + 1][0])
            dest = out[row - start:end - start]
            diff, base = self._source_row(source, lerp)
            if lerp:
                tmp = scratch[row - start:end - start]
                np.multiply.outer(self.wy[row:end], diff, out=tmp)
                np.add(tmp, base, out=dest, casting="unsafe")
            else:
                np.copyto(dest, base, casting="unsafe")
            row = end
            if row == runs[index + 1][0]:
                index += 1
        self.cursor = index
        return out

    def _source_row(self, source: int, lerp: bool) -> tuple[np.ndarray, np.ndarray]:
        """(next row - this row, this row + offset) of scaled source row ``source``: made per
        run of output rows (a run that spans two tiles reuses them) rather than kept for all."""
        if source != self.source:
            rows = self.rows
            if lerp:
                np.subtract(rows[source + 1], rows[source], out=self.row_diff)
            np.add(rows[source], self.offset, out=self.row_base)
            self.source = source if lerp else -1
        return self.row_diff, self.row_base


def _add_u8(pixels: np.ndarray, planes: list[_Lerp]) -> np.ndarray:
    """8-bit marking, exact and saturating, in uint8 row tiles. With ``d`` the rounded delta
    (``|d| <= 127``), ``clip(p + d, 0, 255) == clip(p, max(-d, 0), 255 - max(d, 0)) + d``
    where the last add may wrap harmlessly; the bounds and ``d`` are computed once per pixel
    and replicated to the R, G, B (and pad) bytes with one uint32 multiply each."""
    height, width = pixels.shape[:2]
    colour = pixels.ndim == 3
    rows = tile_rows(width)
    lanes = 4 if colour else 1
    source = rgbx_base(pixels) if colour else pixels
    out = np.empty((height, width, 4) if colour else (height, width), dtype=np.uint8)
    delta = np.empty((rows, width), np.float32)
    biased = np.empty((rows, width), np.uint8)
    c128 = np.full((rows, width), 128, np.uint8)
    single = [np.empty((rows, width), np.uint8) for _ in range(3)]  # low, high, d (one lane)
    lanes_out = [np.empty((rows, width, lanes), np.uint8) for _ in range(3)]
    staged = np.empty((rows, width, 4), np.uint8) if colour and source is None else None
    replicate = colour and len(planes) == 1
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        n = stop - start
        for c, plane in enumerate(planes):
            e = plane.fill(start, stop, biased, delta)  # e = floor(d + 0.5) + 128, in [1, 255]
            low, high, d = (a[:n] for a in single)
            np.minimum(e, c128[:n], out=low)
            np.subtract(c128[:n], low, out=low)      # max(-d, 0)
            np.maximum(e, c128[:n], out=high)
            np.subtract(127, high, out=high)         # 255 - max(d, 0)  (mod 256)
            np.subtract(e, 128, out=d)               # d as a wrapping byte
            for one, many in zip((low, high, d), lanes_out):
                if replicate:  # one delta for R, G, B and the pad byte: 4 lanes at once
                    np.multiply(one, _REPLICATE, dtype=np.uint32,
                                out=many[:n].reshape(n, width * 4).view(np.uint32))
                else:
                    many[:n, :, c] = one
        if colour and len(planes) == 3:
            for many in lanes_out:
                many[:n, :, 3] = 0
        if colour:
            if source is not None:
                src = source[start:stop]
            else:
                src = staged[:n]
                src[..., :3] = pixels[start:stop]
            src = src.reshape(n, width * 4)
            dst = out[start:stop].reshape(n, width * 4)
        else:
            src, dst = pixels[start:stop], out[start:stop]
        low, high, d = (many[:n].reshape(dst.shape) for many in lanes_out)
        np.maximum(src, low, out=dst)
        np.minimum(dst, high, out=dst)
        dst += d
    return out[..., :3] if colour else out


def _add_wide(pixels: np.ndarray, planes: list[_Lerp], maxval: int) -> np.ndarray:
    """Marking in int32 row tiles (16-bit pixels, or deltas beyond ±127)."""
    height, width = pixels.shape[:2]
    colour = pixels.ndim == 3
    rows = tile_rows(width)
    out = np.empty((height, width, 4) if colour else (height, width), dtype=pixels.dtype)
    delta = np.empty((rows, width), np.float32)
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        n = stop - start
        block = np.asarray(pixels[start:stop], dtype=np.int32)
        for c, plane in enumerate(planes):
            d = np.floor(plane.fill(start, stop, delta, delta)).astype(np.int32)
            if not colour:
                block += d
            elif len(planes) == 1:
                block += d[..., None]
            else:
                block[..., c] += d
        np.clip(block, 0, maxval, out=block)
        if colour:
            out[start:stop, :, :3] = block
        else:
            out[start:stop] = block
        del n
    return out[..., :3] if colour else out
