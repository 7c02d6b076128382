"""Image decoding, encoding, resizing and file I/O for the watermarking pipeline.

Pixels travel in their native integer type (``DecodedImage.pixels``: uint8 RGB, or uint8 /
uint16 grey); everything needed to write the marked pixels back in the source's format and mode
family travels alongside in the same record. ``DecodedImage.rgb`` still gives float32 RGB in
[0, 1], computed on demand (12 bytes a pixel: meant for small images and tests).

Memory and speed
----------------
Colour pixels are a read-only numpy view of Pillow's own image memory (Pillow keeps RGB as 4
bytes a pixel; the view is ``[H, W, 3]`` with a 4-byte pixel stride), reached through Pillow's
Arrow export, so decoding makes no second copy; marked pixels go back to Pillow the same way
(``pil_image``). That needs the image in one Pillow memory block: importing this module raises
Pillow's block size (``Image.core.set_block_size``, a process-wide allocation setting that does
not change any pixel) to cover images up to ``_SINGLE_BLOCK_BYTES``; larger ones, or a Pillow
or pyarrow without Arrow support, fall back to copies. ``add_residual`` marks in row tiles that
stay in the CPU cache, with 8-bit saturating arithmetic, writing straight into the output
buffer: no full-size float arrays.

Policies
--------
* Supported inputs (detected from content, never from the file name): JPEG (including MPO,
  whose first frame is used), PNG, WEBP, BMP, TIFF, GIF.
* Animated or multi-frame images (GIF, APNG, WEBP, multi-page TIFF) are refused with code
  ``"animated"``.
* Grayscale inputs (``1``, ``L``, ``LA``, ``I;16*``, ``I``) stay grayscale: the marked RGB is
  reduced to BT.601 luma on output. Bilevel (``1``) images are written as 8-bit ``L``.
* Palette images (``P``, ``PA``) are expanded to RGB, or RGBA when they carry transparency.
  GIF input is written as PNG; palette PNG/BMP/TIFF are written as truecolor in their own format.
* BMP with alpha is written as PNG (Pillow's BMP writer cannot store alpha).
* CMYK is converted to sRGB (through its embedded ICC profile when it has one) and written as
  RGB in its own format; the CMYK ICC profile is dropped.
* 16-bit grayscale stays 16-bit for PNG and TIFF. Pillow decodes 16-bit colour PNG/TIFF at
  8 bits; such images are written at 8 bits and the record notes it.
* Arrays in a ``DecodedImage`` are read-only; marking produces new arrays. A marked pixel is
  ``clip(pixel + floor(strength * maxval * upsampled_residual + 0.5))`` (round half up, maxval
  255 or 65535); grey images get the BT.601 luma of an RGB residual.
* JPEG output keeps the source's chroma subsampling unless told otherwise. On a 12 MP photo,
  4:4:4 at quality 95 doubled the file size and encode time against 4:2:0 for +1.9 dB PSNR,
  while a low-frequency watermark residual survived 4:2:0 as well as 4:4:4.
"""

from __future__ import annotations

import functools
import io
import math
import mimetypes
import os
import posixpath
import re
import struct
import uuid
import zlib
from collections.abc import Iterator
import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

__all__ = [
    "ERROR_CODES",
    "SUPPORTED_FORMATS",
    "DecodedImage",
    "ImageDecodeError",
    "add_residual",
    "decode_image",
    "encode_image",
    "pil_image",
    "pixel_view",
    "psnr",
    "read_bytes",
    "safe_relative_output",
    "ssim",
    "to_working_size",
    "upsample_residual",
    "working_view",
    "write_atomically",
]

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"})
_PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")  # JPEG also opens MPO
ERROR_CODES = frozenset(
    {"empty", "not_an_image", "unsupported", "too_large", "animated", "truncated", "corrupt"}
)

_ORIENTATION = 0x0112
_XMP_TAG = 700
_EXIF_PREFIX = b"Exif\x00\x00"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_BLOCK_ELEMENTS = 1 << 18
_SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
_LOSSLESS_TIFF = frozenset({"raw", "tiff_lzw", "tiff_adobe_deflate", "packbits"})
# TIFF tags that describe the image rather than its layout; only these travel as EXIF.
_TIFF_DESCRIPTIVE_TAGS = frozenset(
    {269, 270, 271, 272, 274, 285, 305, 306, 315, 316, 33432, 34665, 34853,
     40091, 40092, 40093, 40094, 40095}
)
_IJG_LUMA_TABLE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)


class ImageDecodeError(ValueError):
    """An input that cannot be watermarked; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """Decoded pixels (read-only arrays) plus what is needed to re-encode them faithfully.

    ``pixels`` holds the pixels in their native type with EXIF orientation applied: uint8
    ``[H, W, 3]`` RGB for colour images (usually a view with a 4-byte pixel stride into
    Pillow's memory), uint8 ``[H, W]`` for 8-bit grey, uint16 ``[H, W]`` for 16-bit grey.
    ``alpha`` is the source's 8-bit alpha, exactly as stored (Pillow has no 16-bit alpha;
    16-bit gray+alpha PNGs arrive as 8-bit RGBA). ``exif`` starts with ``b"Exif\\0\\0"`` and
    has its orientation reset to 1. ``notes`` lists lossy or non-obvious conversions made while
    decoding.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    format: str
    mode: str
    bit_depth: int
    grayscale: bool
    icc_profile: bytes | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    dpi: tuple[float, float] | None = None
    quality: int | None = None
    subsampling: str | None = None
    progressive: bool = False
    lossless: bool | None = None
    compression: str | None = None
    comment: bytes | None = None
    text: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def maxval(self) -> int:
        """Largest sample value: 255, or 65535 for 16-bit grey."""
        return 65535 if self.pixels.dtype == np.uint16 else 255

    @property
    def nbytes(self) -> int:
        """Memory held by the pixels (Pillow keeps RGB at 4 bytes a pixel) and alpha."""
        per_pixel = 4 if self.pixels.ndim == 3 else self.pixels.dtype.itemsize
        alpha = 0 if self.alpha is None else self.alpha.size
        return self.height * self.width * per_pixel + alpha

    @property
    def rgb(self) -> np.ndarray:
        """float32 RGB ``[H, W, 3]`` in [0, 1] (grey as three equal channels), read-only.

        Computed on each access (12 bytes a pixel); the pipeline itself never needs it."""
        return _readonly(to_float_rgb(self.pixels))

    def __reduce__(self):
        # Colour pixels travel as their contiguous 4-byte-pixel buffer (a plain copy rather
        # than a strided gather) and come back as the same kind of view.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        base = _rgbx_base(self.pixels)
        if base is not None:
            fields["pixels"] = np.ascontiguousarray(base)
            return _rebuild_decoded, (fields, True)
        return _rebuild_decoded, (fields, False)


    @property
    def output_format(self) -> str:
        """Format that ``encode_image`` writes (differs from ``format`` for GIF and BMP+alpha)."""
        if self.format == "GIF" or (self.format == "BMP" and self.alpha is not None):
            return "PNG"
        return self.format

    @property
    def output_extension(self) -> str:
        """Conventional file extension for ``output_format``, with the dot."""
        return {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif"}[
            self.output_format
        ]

    @property
    def output_mode(self) -> str:
        """Pillow mode that ``encode_image`` writes."""
        if self.grayscale:
            if self.bit_depth == 16 and self.output_format in ("PNG", "TIFF"):
                return "I;16"
            return "LA" if self.alpha is not None else "L"
        return "RGBA" if self.alpha is not None else "RGB"


def _rebuild_decoded(fields: dict, rgbx: bool) -> DecodedImage:
    if rgbx:
        fields["pixels"] = fields["pixels"][..., :3]
    for name in ("pixels", "alpha"):
        if fields[name] is not None:
            fields[name] = _readonly(fields[name])
    return DecodedImage(**fields)


# ---------------------------------------------------------------------------------------------
# decoding


def decode_image(data: bytes, *, max_pixels: int = 100_000_000) -> DecodedImage:
    """Decode image bytes into a ``DecodedImage``.

    The pixel count is checked against ``max_pixels`` from the header, before any pixel data
    is decoded (Pillow's ``Image.MAX_IMAGE_PIXELS`` is raised to ``max_pixels`` when lower, so
    that this check is the one that applies). Only the supported formats' parsers see the
    bytes. Raises ``ImageDecodeError`` with codes: ``empty`` (no bytes), ``not_an_image``,
    ``unsupported`` (format or mode), ``too_large``, ``animated`` (more than one frame),
    ``truncated`` and ``corrupt``.
    """
    if not data:
        raise ImageDecodeError("empty", "zero-byte input")
    if max_pixels < 1:
        raise ValueError("max_pixels must be positive")
    _raise_pillow_pixel_limit(max_pixels)
    try:
        im = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageDecodeError("too_large", f"header size refused by Pillow ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise _load_error(exc, data) from exc
    with im:
        fmt = "JPEG" if im.format == "MPO" else im.format
        notes: list[str] = ["mpo_first_frame"] if im.format == "MPO" else []
        width, height = im.size
        if width * height > max_pixels:
            raise ImageDecodeError(
                "too_large", f"{width}x{height} = {width * height} pixels > {max_pixels}"
            )
        if width < 1 or height < 1:
            raise ImageDecodeError("empty", f"image has no pixels ({width}x{height})")
        _refuse_animated(im, fmt, data)
        tiff_orientation = im.tag_v2.get(_ORIENTATION) if fmt == "TIFF" else None
        _raise_block_size(width * height * 4)
        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError("too_large", str(exc)) from exc
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
            raise _load_error(exc, data) from exc
        return _build_record(im, fmt, data, notes, tiff_orientation)


def _unidentified(data: bytes) -> ImageDecodeError:
    """Tell formats Pillow knows but we refuse from bytes that are no image at all.

    Only the header is parsed here; nothing is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            name = other.format
    except Exception:  # noqa: BLE001 - any failure means "not an image" here
        return ImageDecodeError("not_an_image", "content is not a recognised image")
    return ImageDecodeError("unsupported", f"format {name} is not supported")


def _raise_pillow_pixel_limit(max_pixels: int) -> None:
    """Let Pillow's own bomb check admit what ``max_pixels`` admits (it never lowers it)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and limit < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _load_error(exc: BaseException, data: bytes = b"") -> ImageDecodeError:
    message = str(exc) or type(exc).__name__
    if isinstance(exc, EOFError) or "truncat" in message.lower() or _riff_truncated(data):
        return ImageDecodeError("truncated", message)
    return ImageDecodeError("corrupt", message)


def _riff_truncated(data: bytes) -> bool:
    """True for a RIFF (WEBP) stream shorter than its header declares."""
    if len(data) < 12 or data[:4] != b"RIFF":
        return False
    return len(data) < 8 + struct.unpack("<I", data[4:8])[0]


def _refuse_animated(im: Image.Image, fmt: str, data: bytes) -> None:
    if fmt == "JPEG":
        return
    try:
        animated = bool(getattr(im, "is_animated", False)) or getattr(im, "n_frames", 1) > 1
        if not animated:
            im.seek(0)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise _load_error(exc, data) from exc
    if animated:
        raise ImageDecodeError("animated", f"{fmt} has more than one frame")


def _build_record(
    im: Image.Image, fmt: str, data: bytes, notes: list[str], tiff_orientation: object
) -> DecodedImage:
    """Assemble the record; Pillow may already have applied a TIFF's orientation on load."""
    icc = im.info.get("icc_profile") or None
    exif_obj = im.getexif()
    orientation = exif_obj.get(_ORIENTATION, 1)
    exif = _exif_bytes(im, fmt, exif_obj, orientation, tiff_orientation is not None)
    if isinstance(orientation, int) and 2 <= orientation <= 8:
        im = ImageOps.exif_transpose(im)
    pixels, alpha, grayscale, bit_depth, icc = _to_pixels(im, icc, notes)
    _note_reduced_depth(im, fmt, data, bit_depth, notes)
    return DecodedImage(
        pixels=_readonly(pixels),
        alpha=None if alpha is None else _readonly(alpha),
        format=fmt,
        mode=im.mode,
        bit_depth=bit_depth,
        grayscale=grayscale,
        icc_profile=icc,
        exif=exif,
        xmp=_xmp_bytes(im.info.get("xmp")),
        dpi=_dpi(im.info.get("dpi")),
        quality=_estimate_jpeg_quality(im) if fmt == "JPEG" else None,
        subsampling=_jpeg_subsampling(im) if fmt == "JPEG" else None,
        progressive=bool(im.info.get("progressive") or im.info.get("progression")),
        lossless=_webp_is_lossless(data) if fmt == "WEBP" else None,
        compression=im.info.get("compression") if fmt == "TIFF" else None,
        comment=_comment(im.info.get("comment")) if fmt == "JPEG" else None,
        text=_png_text(im) if fmt == "PNG" else (),
        notes=tuple(notes),
    )


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _to_pixels(
    im: Image.Image, icc: bytes | None, notes: list[str]
) -> tuple[np.ndarray, np.ndarray | None, bool, int, bytes | None]:
    """Return (native pixels, alpha, grayscale, bit_depth, icc) for any supported mode."""
    mode = im.mode
    has_trns = "transparency" in im.info
    if mode == "1":
        notes.append("bilevel_as_gray")
        return _plane(im.convert("L")), None, True, 8, icc
    if mode == "L" and not has_trns:
        return _plane(im), None, True, 8, icc
    if mode in ("LA", "La", "L"):
        la = im.convert("LA")
        return _plane(la.getchannel("L")), _plane(la.getchannel("A")), True, 8, icc
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16), None, True, 16, icc
    if mode == "I":
        values = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
        return values, None, True, 16, icc
    if mode in ("P", "PA"):
        notes.append("palette_expanded")
        if mode == "PA" or has_trns or im.palette is not None and im.palette.mode == "RGBA":
            return (*_rgba(im.convert("RGBA")), False, 8, icc)
        return _color(im.convert("RGB")), None, False, 8, icc
    if mode in ("RGBA", "RGBa") or (mode == "RGB" and has_trns):
        rgba = im if mode == "RGBA" else im.convert("RGBA")
        return (*_rgba(rgba), False, 8, icc)
    if mode == "RGB":
        return _color(im), None, False, 8, icc
    if mode == "CMYK":
        rgb_im, icc = _cmyk_to_rgb(im, icc, notes)
        return _color(rgb_im), None, False, 8, icc
    if mode in ("RGBX", "YCbCr", "LAB", "HSV"):
        if mode != "RGBX":
            notes.append(f"{mode.lower()}_to_rgb")
        return _color(im.convert("RGB")), None, False, 8, icc
    raise ImageDecodeError("unsupported", f"image mode {mode} is not supported")


def _plane(im: Image.Image) -> np.ndarray:
    """uint8 ``[H, W]`` of an ``L`` image (a view of Pillow's memory when possible)."""
    view = pixel_view(im)
    return view if view is not None else np.asarray(im)


def _color(im: Image.Image) -> np.ndarray:
    """uint8 ``[H, W, 3]`` of an ``RGB`` image: a view of Pillow's memory when possible."""
    view = pixel_view(im)
    return view[..., :3] if view is not None else np.asarray(im)


def _rgba(im: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    view = pixel_view(im)
    if view is None:
        values = np.asarray(im)
        return values[..., :3].copy(), values[..., 3].copy()
    return view[..., :3], np.ascontiguousarray(view[..., 3])


def _cmyk_to_rgb(
    im: Image.Image, icc: bytes | None, notes: list[str]
) -> tuple[Image.Image, bytes | None]:
    if icc:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            converted = ImageCms.profileToProfile(
                im, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
            )
            notes.append("cmyk_to_srgb_icc")
            return converted, None
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
            pass
    notes.append("cmyk_to_rgb_naive")
    return im.convert("RGB"), None


def _note_reduced_depth(
    im: Image.Image, fmt: str, data: bytes, bit_depth: int, notes: list[str]
) -> None:
    """Note 16-bit sources that Pillow decoded at 8 bits."""
    if bit_depth == 16:
        return
    if fmt == "PNG" and len(data) > 24 and data[12:16] == b"IHDR" and data[24] == 16:
        notes.append("16bit_decoded_as_8bit")
    elif fmt == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        if isinstance(bits, tuple) and bits and max(bits) > 8:
            notes.append("16bit_decoded_as_8bit")


def _exif_bytes(
    im: Image.Image, fmt: str, source: Image.Exif, orientation: object, had_orientation: bool
) -> bytes | None:
    """EXIF to write back: raw bytes when untouched, else re-serialised with orientation 1.

    Never mutates ``source`` (the image's cached EXIF). TIFF keeps only descriptive tags
    (layout tags belong to the writer)."""
    exif = Image.Exif()
    if fmt == "TIFF":
        for tag in source:
            if tag in _TIFF_DESCRIPTIVE_TAGS:
                exif[tag] = source.get_ifd(tag) if tag in (34665, 34853) else source[tag]
        if had_orientation or _ORIENTATION in exif:
            exif[_ORIENTATION] = 1
        return exif.tobytes() if len(exif) else None
    raw = im.info.get("exif")
    if isinstance(raw, bytes) and raw:
        raw = raw if raw.startswith(_EXIF_PREFIX) else _EXIF_PREFIX + raw
        if orientation == 1:
            return raw
        exif.load(raw)
    elif len(source):
        exif.load(source.tobytes())
    else:
        return None
    if _ORIENTATION in exif:
        exif[_ORIENTATION] = 1
    return exif.tobytes()


def _xmp_bytes(value: object) -> bytes | None:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes) and value:
        return value
    return None


def _comment(value: object) -> bytes | None:
    if isinstance(value, str):
        return value.encode("utf-8")
    return value if isinstance(value, bytes) and value else None


def _dpi(value: object) -> tuple[float, float] | None:
    if isinstance(value, tuple) and len(value) == 2:
        try:
            return float(value[0]), float(value[1])
        except (TypeError, ValueError):
            return None
    return None


def _png_text(im: Image.Image) -> tuple[tuple[str, str], ...]:
    skip = {"XML:com.adobe.xmp", "Raw profile type exif", "exif", "icc_profile"}
    text = getattr(im, "text", {}) or {}
    return tuple((str(k), str(v)) for k, v in text.items() if k not in skip)


def _jpeg_subsampling(im: Image.Image) -> str | None:
    return _SUBSAMPLING_NAMES.get(JpegImagePlugin.get_sampling(im))


def _estimate_jpeg_quality(im: Image.Image) -> int | None:
    """IJG quality whose luminance table is closest to the file's (approximate for tables
    that other encoders chose)."""
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    table = sorted(int(v) for v in tables[0])
    errors = [sum(abs(a - b) for a, b in zip(table, ref)) for ref in _ijg_tables()]
    return 1 + errors.index(min(errors))


@functools.cache
def _ijg_tables() -> tuple[tuple[int, ...], ...]:
    """Sorted IJG luminance tables for qualities 1..100."""
    tables = []
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        scaled = (min(255, max(1, (q * scale + 50) // 100)) for q in _IJG_LUMA_TABLE)
        tables.append(tuple(sorted(scaled)))
    return tuple(tables)


def _webp_is_lossless(data: bytes) -> bool:
    """True when the first image chunk of a RIFF/WEBP stream is VP8L."""
    pos = 12
    while pos + 8 <= len(data):
        fourcc = data[pos : pos + 4]
        size = struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if fourcc == b"VP8L":
            return True
        if fourcc == b"VP8 ":
            return False
        pos += 8 + size + (size & 1)
    return False


# ---------------------------------------------------------------------------------------------
# encoding


def encode_image(
    decoded: DecodedImage,
    pixels: np.ndarray,
    *,
    jpeg_quality: int = 95,
    jpeg_subsampling: str | None = None,
    png_compress_level: int = 6,
) -> bytes:
    """Encode marked pixels like ``decoded`` was stored.

    ``pixels`` is either in ``decoded.pixels``' own layout and type (what ``add_residual``
    returns; written as they are, without a copy where Pillow allows) or float RGB
    ``[H, W, 3]`` in [0, 1] (clipped and rounded to nearest with ``np.rint``, grey outputs
    taking the BT.601 luma; NaN raises ValueError).

    Writes ``decoded.output_format`` in ``decoded.output_mode`` with the source's alpha, ICC
    profile, EXIF, XMP and resolution. JPEG uses ``jpeg_quality`` and the source's chroma
    subsampling unless ``jpeg_subsampling`` ("4:4:4", "4:2:2", "4:2:0") is given; lossy WEBP
    uses ``jpeg_quality`` too, lossless WEBP stays lossless; PNG, BMP and TIFF are lossless
    (TIFF keeps the source's compression; JPEG-compressed TIFF uses ``jpeg_quality``).
    """
    if np.issubdtype(pixels.dtype, np.floating):
        if pixels.shape != (decoded.height, decoded.width, 3):
            raise ValueError(f"rgb shape {pixels.shape} != {(decoded.height, decoded.width, 3)}")
    elif pixels.shape != decoded.pixels.shape or pixels.dtype != decoded.pixels.dtype:
        raise ValueError(f"pixels {pixels.dtype}{pixels.shape} do not match the decoded "
                         f"{decoded.pixels.dtype}{decoded.pixels.shape}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    if jpeg_subsampling not in (None, "4:4:4", "4:2:2", "4:2:0"):
        raise ValueError(f"unknown jpeg_subsampling {jpeg_subsampling!r}")
    image = _to_pil(decoded, pixels)
    fmt = decoded.output_format
    options = _save_options(decoded, fmt, jpeg_quality, jpeg_subsampling, png_compress_level)
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _to_pil(decoded: DecodedImage, pixels: np.ndarray) -> Image.Image:
    mode = decoded.output_mode
    if not np.issubdtype(pixels.dtype, np.floating):
        image = pil_image(pixels)
    elif mode == "I;16":
        image = Image.fromarray(_quantize(pixels, 65535, np.uint16, luma=True))
    elif mode in ("L", "LA"):
        image = Image.fromarray(_quantize(pixels, 255, np.uint8, luma=True))
    else:
        image = Image.fromarray(_quantize(pixels, 255, np.uint8))
    if decoded.alpha is not None and mode in ("LA", "RGBA"):
        image = image.convert(mode)  # a new image: the pixels may be views of other memory
        image.putalpha(Image.fromarray(np.ascontiguousarray(decoded.alpha, dtype=np.uint8)))
    return image


def _save_options(
    decoded: DecodedImage, fmt: str, quality: int, subsampling: str | None, compress_level: int
) -> dict:
    opts: dict = {}
    if decoded.icc_profile:
        opts["icc_profile"] = decoded.icc_profile
    if decoded.dpi and fmt in ("JPEG", "PNG", "TIFF", "BMP"):
        opts["dpi"] = decoded.dpi
    exif = decoded.exif
    if fmt == "JPEG":
        opts.update(quality=quality, optimize=False, progressive=decoded.progressive)
        opts["subsampling"] = subsampling or decoded.subsampling or "4:2:0"
        if exif:
            opts["exif"] = exif
        if decoded.xmp:
            opts["xmp"] = decoded.xmp
        if decoded.comment:
            opts["comment"] = decoded.comment
    elif fmt == "PNG":
        opts["compress_level"] = compress_level
        if exif:
            opts["exif"] = exif
        info = PngImagePlugin.PngInfo()
        for key, value in decoded.text:
            info.add_itxt(key, value)
        if decoded.xmp:
            info.add_itxt("XML:com.adobe.xmp", decoded.xmp.decode("utf-8", "replace"))
        if decoded.text or decoded.xmp:
            opts["pnginfo"] = info
    elif fmt == "WEBP":
        if decoded.lossless:
            opts.update(lossless=True, exact=True)
        else:
            opts.update(quality=quality, alpha_quality=100)
        if exif:
            opts["exif"] = exif[len(_EXIF_PREFIX) :] if exif.startswith(_EXIF_PREFIX) else exif
        if decoded.xmp:
            opts["xmp"] = decoded.xmp
    elif fmt == "TIFF":
        opts.update(_tiff_compression(decoded, quality))
        tags = Image.Exif()
        if exif:
            tags.load(exif)
        if decoded.xmp:
            tags[_XMP_TAG] = decoded.xmp
        if len(tags):
            opts["exif"] = tags
    return opts


def _tiff_compression(decoded: DecodedImage, quality: int) -> dict:
    compression = decoded.compression or "raw"
    if compression == "tiff_deflate":
        compression = "tiff_adobe_deflate"
    if compression in _LOSSLESS_TIFF:
        return {"compression": compression}
    if compression == "jpeg" and decoded.output_mode in ("L", "RGB"):
        return {"compression": "jpeg", "quality": quality}
    return {"compression": "tiff_adobe_deflate"}


def _row_blocks(height: int, row_elements: int) -> Iterator[slice]:
    rows = max(1, _BLOCK_ELEMENTS // max(1, row_elements))
    for start in range(0, height, rows):
        yield slice(start, min(height, start + rows))


def _quantize(values: np.ndarray, maxval: int, dtype: type, *, luma: bool = False) -> np.ndarray:
    """Round ``clip(values, 0, 1) * maxval`` to ``dtype`` in row blocks (no full-size float copy).

    With ``luma``, ``values`` is ``[H, W, 3]`` and its BT.601 luma ``[H, W]`` is quantised.
    NaN raises ValueError; infinities clip.
    """
    shape = values.shape[:2] if luma else values.shape
    out = np.empty(shape, dtype=dtype)
    weights = _LUMA * np.float32(maxval)
    for rows in _row_blocks(values.shape[0], int(np.prod(values.shape[1:]))):
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


# ---------------------------------------------------------------------------------------------
# resizing


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
    pixels = rgb if rgb.dtype == np.uint8 else _quantize(rgb, 255, np.uint8)
    small = _resize_to(pil_image(pixels), size)
    return np.divide(np.asarray(small), np.float32(255), dtype=np.float32)


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


# ---------------------------------------------------------------------------------------------
# Pillow memory <-> numpy, without copies

_SINGLE_BLOCK_BYTES = 1 << 30
"""Images up to this many bytes of Pillow memory (4 bytes a pixel for RGB: 268 MP) are
allocated in one block, so that numpy can view them (see the module docstring)."""


def _raise_block_size(nbytes: int) -> None:
    """Make Pillow allocate images of up to ``nbytes`` (capped) in a single memory block."""
    try:
        wanted = min(_SINGLE_BLOCK_BYTES, (int(nbytes) + 4095) // 4096 * 4096)
        if Image.core.get_block_size() < wanted:
            Image.core.set_block_size(wanted)
    except (AttributeError, ValueError, TypeError):  # an old Pillow: copies are made instead
        pass


_raise_block_size(512 << 20)


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


def _rgbx_base(pixels: np.ndarray) -> np.ndarray | None:
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
        base = _rgbx_base(pixels)
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
    for rows in _row_blocks(pixels.shape[0], int(np.prod(pixels.shape[1:]))):
        block = np.divide(pixels[rows], np.float32(65535), dtype=np.float32)
        block *= np.float32(255)
        np.rint(block, out=block)
        plane[rows] = block
    return plane


def working_view(pixels: np.ndarray, size: int) -> np.ndarray:
    """``to_working_size`` for native pixels (``DecodedImage.pixels``): float32
    ``[size, size, 3]`` in [0, 1], grey as three equal channels, 16-bit grey rounded to 8 bits
    first. Equal to ``to_working_size(to_float_rgb(pixels), size)``, without the float copy."""
    if size < 1:
        raise ValueError("size must be positive")
    if pixels.ndim == 3:
        return to_working_size(pixels, size)
    small = np.asarray(_resize_to(pil_image(to_uint8(pixels)), size))
    out = np.empty((size, size, 3), dtype=np.float32)
    np.divide(small[..., None], np.float32(255), out=out, dtype=np.float32)
    return out


def _resize_to(image: Image.Image, size: int) -> Image.Image:
    width, height = image.size
    resample = Image.BOX if height >= size and width >= size else Image.BILINEAR
    return image.resize((size, size), resample)


# ---------------------------------------------------------------------------------------------
# marking

_TILE_PIXELS = 1 << 17
"""Pixels per row tile of ``add_residual`` (512 KiB of RGBX: tiles stay in the CPU cache)."""
_REPLICATE = np.uint32(0x01010101)


def add_residual(pixels: np.ndarray, residual: np.ndarray, scale: float) -> np.ndarray:
    """Marked copy of native ``pixels``: ``clip(p + floor(scale * up(residual) + 0.5))``.

    ``pixels`` is uint8 ``[H, W, 3]``, uint8 ``[H, W]`` or uint16 ``[H, W]`` (as in
    ``DecodedImage.pixels``); ``residual`` is ``[S0, S1, C]``, bilinearly upsampled as by
    ``upsample_residual`` (C = 1 adds the same value to R, G and B; grey pixels take the BT.601
    luma of a C = 3 residual); ``scale`` is strength × the largest sample value (255 or
    65535). The result has the same type and shape (colour as a view with a 4-byte pixel
    stride, which ``pil_image`` wraps without a copy). Works in row tiles: 8-bit images with
    saturating uint8 arithmetic, others in int32; the only full-size array is the result.
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
        residual = (residual @ _LUMA)[..., None]
    height, width = pixels.shape[:2]
    maxval = 65535 if pixels.dtype == np.uint16 else 255
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
        rows = np.ascontiguousarray(plane[:, x0], dtype=np.float32)
        rows += (plane[:, x1] - rows) * wx
        rows *= np.float32(scale)
        self.diffs = np.concatenate([rows[1:] - rows[:-1], np.zeros((1, width), np.float32)])
        rows += np.float32(offset)
        self.rows = rows
        y0, y1, self.wy = _lerp_coords(src_h, height)
        # runs of output rows that share their two source rows: (first row, source row, lerp?)
        starts = np.r_[0, np.flatnonzero(np.diff(y0 * (src_h + 1) + y1)) + 1]
        self.runs = [(int(r), int(y0[r]), bool(y0[r] != y1[r])) for r in starts] + [(height, 0, False)]
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
            if lerp:
                tmp = scratch[row - start:end - start]
                np.multiply.outer(self.wy[row:end], self.diffs[source], out=tmp)
                np.add(tmp, self.rows[source], out=dest, casting="unsafe")
            else:
                np.copyto(dest, self.rows[source], casting="unsafe")
            row = end
            if row == runs[index + 1][0]:
                index += 1
        self.cursor = index
        return out


def _tile_rows(width: int) -> int:
    return max(1, _TILE_PIXELS // max(1, width))


def _add_u8(pixels: np.ndarray, planes: list[_Lerp]) -> np.ndarray:
    """8-bit marking, exact and saturating, in uint8 row tiles. With ``d`` the rounded delta
    (``|d| <= 127``), ``clip(p + d, 0, 255) == clip(p, max(-d, 0), 255 - max(d, 0)) + d``
    where the last add may wrap harmlessly; the bounds and ``d`` are computed once per pixel
    and replicated to the R, G, B (and pad) bytes with one uint32 multiply each."""
    height, width = pixels.shape[:2]
    colour = pixels.ndim == 3
    rows = _tile_rows(width)
    lanes = 4 if colour else 1
    source = _rgbx_base(pixels) if colour else pixels
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
    rows = _tile_rows(width)
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


# ---------------------------------------------------------------------------------------------
# file I/O


def read_bytes(path: str) -> bytes:
    """Read a whole file through Beam's ``FileSystems`` (no decompression by extension)."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a uniquely named hidden temp file in the same
    directory, then rename it over ``path`` (overwriting). Local parents are created."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    directory, name = FileSystems.split(path)
    if not name:
        raise ValueError(f"not a file path: {path!r}")
    if FileSystems.get_scheme(path) in (None, "file"):
        _mkdirs_local(directory)
    temp = FileSystems.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    try:
        with FileSystems.create(
            temp, mime_type=mime, compression_type=CompressionTypes.UNCOMPRESSED
        ) as handle:
            handle.write(data)
        FileSystems.rename([temp], [path])
    except BaseException:
        try:
            if FileSystems.exists(temp):
                FileSystems.delete([temp])
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise


def _mkdirs_local(directory: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    if os.path.isdir(directory):
        return
    try:
        FileSystems.mkdirs(directory)
    except IOError:
        if not os.path.isdir(directory):
            raise


_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def safe_relative_output(input_root: str, image_path: str) -> str:
    """Relative '/'-separated output path for ``image_path`` that can never escape its parent.

    Paths under ``input_root`` (same scheme, whole components, after resolving ``.`` and
    ``..`` lexically) map to their path below it; ``image_path == input_root`` maps to its
    file name. Anything else maps to ``_external/`` followed by its sanitised full path
    (scheme dropped, bucket or host kept). Backslashes count as separators, control characters
    become ``_`` and drive colons are dropped. Raises ValueError when no file name remains.
    """
    root_scheme, root_abs, root_parts = _path_parts(input_root)
    scheme, is_abs, parts = _path_parts(image_path)
    if not parts:
        raise ValueError(f"no file name in {image_path!r}")
    if root_scheme is None and scheme is None and root_abs != is_abs:
        root_scheme, root_abs, root_parts = _path_parts(os.path.abspath(input_root or "."))
        scheme, is_abs, parts = _path_parts(os.path.abspath(image_path))
    under = (
        scheme == root_scheme
        and is_abs == root_abs
        and parts[: len(root_parts)] == root_parts
    )
    if under:
        relative = parts[len(root_parts) :] or parts[-1:]
    else:
        relative = ["_external", *parts]
    return posixpath.join(*relative)


def _path_parts(path: str) -> tuple[str | None, bool, list[str]]:
    """(scheme, absolute, components) with '.'/'..' resolved lexically and never above top."""
    match = _SCHEME_RE.match(path)
    scheme = match.group(1).lower() if match else None
    rest = path[match.end() :] if match else path
    if scheme == "file":
        scheme = None
    rest = rest.replace("\\", "/")
    absolute = scheme is None and (rest.startswith("/") or bool(re.match(r"^[A-Za-z]:/", rest)))
    parts: list[str] = []
    for index, part in enumerate(rest.split("/")):
        if index == 0 and re.fullmatch(r"[A-Za-z]:", part) and scheme is None:
            part = part[0]
        part = _CONTROL_RE.sub("_", part)
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return scheme, absolute, parts


# ---------------------------------------------------------------------------------------------
# metrics


def psnr(a: np.ndarray, b: np.ndarray, *, data_range: float | None = None) -> float:
    """PSNR in dB between two images of the same shape; ``inf`` when identical.

    ``data_range`` defaults to 255 for uint8, 65535 for uint16 and 1.0 for floats in [0, 1],
    so PSNR of [0, 1] floats equals PSNR of the same pixels at 8-bit scale. Accumulates in row
    blocks of float32 differences.
    """
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} != {b.shape}")
    if data_range is None:
        data_range = _default_range(a.dtype, b.dtype)
    base_a, base_b = _rgbx_base(a), _rgbx_base(b)
    if base_a is not None and base_b is not None:
        total = _squared_error_rgbx(base_a, base_b)
    else:
        total = 0.0
        row_elements = int(np.prod(a.shape[1:])) if a.ndim > 1 else 1
        for rows in _row_blocks(a.shape[0], row_elements):
            diff = np.subtract(a[rows], b[rows], dtype=np.float32).ravel()
            total += float(np.dot(diff, diff))
    if total == 0.0:
        return math.inf
    mse = total / max(1, a.size)
    return 10.0 * math.log10(data_range * data_range / mse)


def _squared_error_rgbx(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of squared R, G, B differences of two ``[H, W, 4]`` arrays (pad bytes ignored),
    over contiguous row tiles."""
    height, width = a.shape[:2]
    rows = _tile_rows(width)
    diff = np.empty((rows, width * 4), np.float32)
    total = 0.0
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        n = stop - start
        d = np.subtract(a[start:stop].reshape(n, -1), b[start:stop].reshape(n, -1), out=diff[:n],
                        dtype=np.float32)
        d.reshape(n, width, 4)[..., 3] = 0
        flat = d.ravel()
        total += float(np.dot(flat, flat))
    return total


def _default_range(*dtypes: np.dtype) -> float:
    if all(d == np.uint8 for d in dtypes):
        return 255.0
    if all(np.issubdtype(d, np.integer) for d in dtypes):
        return 65535.0 if any(d == np.uint16 for d in dtypes) else 255.0
    if any(np.issubdtype(d, np.integer) for d in dtypes):
        raise ValueError("mixing integer and float images needs an explicit data_range")
    return 1.0


def ssim(
    a: np.ndarray, b: np.ndarray, *, data_range: float | None = None, window: int = 7
) -> float:
    """Mean SSIM of the BT.601 luma of two images (uniform ``window``, sample covariance).

    Matches the usual definition with K1=0.01, K2=0.03. Meant for evaluation-sized images:
    it works in float64 on ``[H, W]`` planes.
    """
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch {a.shape} != {b.shape}")
    if data_range is None:
        data_range = _default_range(a.dtype, b.dtype)
    x, y = (_luma64(v) / data_range for v in (a, b))
    if min(x.shape) < window:
        raise ValueError(f"images must be at least {window} pixels on each side")
    n = window * window
    cov_norm = n / (n - 1)
    mx, my = _box_mean(x, window), _box_mean(y, window)
    vx = cov_norm * (_box_mean(x * x, window) - mx * mx)
    vy = cov_norm * (_box_mean(y * y, window) - my * my)
    cxy = cov_norm * (_box_mean(x * y, window) - mx * my)
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(s.mean())


def _luma64(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 3 and values.shape[2] >= 3:
        return values[..., :3] @ _LUMA.astype(np.float64)
    if values.ndim == 3:
        return values[..., 0]
    return values


def _box_mean(x: np.ndarray, k: int) -> np.ndarray:
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)

