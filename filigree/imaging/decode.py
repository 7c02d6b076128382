"""Image decoding with the metadata needed to write the marked pixels back faithfully.

``decode_image`` gives a ``DecodedImage``: pixels in their native integer type (uint8 RGB, or
uint8 / uint16 grey, see `filigree.imaging.pixels`) and everything needed to re-encode them in
the source's format and mode family (`filigree.imaging.encode`). ``DecodedImage.rgb`` still
gives float32 RGB in [0, 1], computed on demand (12 bytes a pixel: meant for small images and
tests).

Policies
--------
* Supported inputs (detected from content, never from the file name): JPEG (including MPO,
  whose first frame is used), PNG, WEBP, BMP, TIFF, GIF, HEIF/HEIC (through pillow-heif) and
  AVIF (Pillow's own plugin); HEIF and AVIF are written back as HEIF and AVIF, at 8 bits.
* Animated or multi-frame images (GIF, APNG, WEBP, multi-page TIFF) are refused with code
  ``"animated"``.
* Grayscale inputs (``1``, ``L``, ``LA``, ``I;16*``, ``I``) stay grayscale: the marked RGB is
  reduced to BT.601 luma on output. Bilevel (``1``) images are written as 8-bit ``L``.
* Palette images (``P``, ``PA``) are expanded to RGB, or RGBA when they carry transparency.
  GIF input is written as PNG; palette PNG/BMP/TIFF are written as truecolor in their own format.
* BMP with alpha is written as PNG (Pillow's BMP writer cannot store alpha).
* CMYK is converted to sRGB (through its embedded ICC profile when it has one) and written as
  RGB in its own format; the CMYK ICC profile is dropped.
* 16-bit grayscale stays 16-bit for PNG and TIFF; its true depth (PNG ``sBIT``, else the
  values' range, see `filigree.imaging.depth`) is in ``DecodedImage.depth``. Pillow decodes 16-bit colour PNG/TIFF at
  8 bits; such images are written at 8 bits and the record notes it.
* Arrays in a ``DecodedImage`` are read-only; marking produces new arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageCms, ImageOps, JpegImagePlugin, UnidentifiedImageError

from filigree.imaging.depth import SampleDepth, sample_depth
from filigree.imaging.pixels import pixel_view, raise_block_size, rgbx_base, to_float_rgb
from filigree.imaging.vp8 import estimate_webp_quality

pillow_heif.register_heif_opener()  # HEIF/HEIC through libheif (Pillow has AVIF itself)

SUPPORTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF"})
_PILLOW_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF")  # JPEG also opens MPO
LOSSY_FORMATS = frozenset({"JPEG", "HEIF", "AVIF"})
"""Formats always written lossily (WEBP is lossy or lossless, like its source)."""
_SIGNATURES = (
    (0, b"\xff\xd8\xff", "JPEG"), (0, b"\x89PNG\r\n\x1a\n", "PNG"), (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"), (0, b"BM", "BMP"), (0, b"II*\x00", "TIFF"), (0, b"MM\x00*", "TIFF"),
    (0, b"II+\x00", "TIFF"), (0, b"MM\x00+", "TIFF"),
)
_HEIF_BRANDS = {b"heic": "HEIF", b"heix": "HEIF", b"heim": "HEIF", b"heis": "HEIF", b"hevc": "HEIF",
                b"hevx": "HEIF", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF", b"avis": "AVIF"}
SNIFF_BYTES = 32
"""Bytes from the start of a file that `sniff_format` needs."""
ERROR_CODES = frozenset(
    {"empty", "not_an_image", "unsupported", "too_large", "animated", "truncated", "corrupt"}
)
_ORIENTATION = 0x0112
EXIF_PREFIX = b"Exif\x00\x00"
_SUBSAMPLING_NAMES = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}
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


def sniff_format(head: bytes) -> str | None:
    """The image format that the first `SNIFF_BYTES` of a file announce (magic numbers of the
    supported formats), or None: content that is not a supported image."""
    for offset, magic, name in _SIGNATURES:
        if head[offset:offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(head[8:12])
    return None


class ImageDecodeError(ValueError):
    """An input that cannot be watermarked; ``code`` is one of ``ERROR_CODES``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message

    def __reduce__(self):
        return type(self), (self.code, self.message)


@dataclass(frozen=True, eq=False)
class DecodedImage:
    """Decoded pixels (read-only arrays) plus what is needed to re-encode them faithfully.

    ``pixels`` holds the pixels in their native type with EXIF orientation applied: uint8
    ``[H, W, 3]`` RGB for colour images (usually a view with a 4-byte pixel stride into
    Pillow's memory), uint8 ``[H, W]`` for 8-bit grey, uint16 ``[H, W]`` for 16-bit grey.
    ``alpha`` is the source's 8-bit alpha, exactly as stored (Pillow has no 16-bit alpha;
    16-bit gray+alpha PNGs arrive as 8-bit RGBA). ``exif`` starts with ``b"Exif\\0\\0"`` and
    has its orientation reset to 1. ``quality`` is the source's estimated quality: JPEG on the
    IJG scale, lossy WebP on libwebp's (`filigree.imaging.vp8`), None for other formats.
    ``notes`` lists lossy or non-obvious conversions made while decoding.
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
    depth: SampleDepth | None = None
    """16-bit grey: the data's true depth (`filigree.imaging.depth`); None for 8-bit pixels."""

    @property
    def peak(self) -> int:
        """The data's largest possible sample value: 255 for 8-bit pixels, else the true
        depth's (4095 for 12-bit data in a 16-bit file)."""
        return self.depth.peak if self.depth is not None else self.maxval

    @property
    def model_pixels(self) -> np.ndarray:
        """The pixels as the models see them: 16-bit grey stretched from its true depth to the
        full range (`SampleDepth.full_range`), else the pixels themselves."""
        return self.pixels if self.depth is None else self.depth.full_range(self.pixels)

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
        base = rgbx_base(self.pixels)
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
        return {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif",
                "HEIF": ".heic", "AVIF": ".avif"}[
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
        raise_block_size(width * height * 4)
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
        quality=_estimate_quality(im, fmt, data),
        subsampling=_jpeg_subsampling(im) if fmt == "JPEG" else None,
        progressive=bool(im.info.get("progressive") or im.info.get("progression")),
        lossless=_webp_is_lossless(data) if fmt == "WEBP" else None,
        compression=im.info.get("compression") if fmt == "TIFF" else None,
        comment=_comment(im.info.get("comment")) if fmt == "JPEG" else None,
        text=_png_text(im) if fmt == "PNG" else (),
        notes=tuple(notes),
        depth=sample_depth(pixels, _png_sbit(data, 1) if fmt == "PNG" else None)
        if pixels.dtype == np.uint16 else None,
    )


def _png_sbit(data: bytes, channels: int) -> int | None:
    """The PNG ``sBIT`` chunk's significant bits (the largest over `channels`), if present.

    Walks the chunk headers before the first IDAT (Pillow does not expose sBIT)."""
    pos = 8
    while pos + 8 <= len(data):
        length = struct.unpack(">I", data[pos:pos + 4])[0]
        kind = data[pos + 4:pos + 8]
        if kind in (b"IDAT", b"IEND"):
            return None
        if kind == b"sBIT" and length >= channels and pos + 8 + channels <= len(data):
            return max(data[pos + 8:pos + 8 + channels])
        pos += 12 + length
    return None


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
        raw = raw if raw.startswith(EXIF_PREFIX) else EXIF_PREFIX + raw
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


def _estimate_quality(im: Image.Image, fmt: str, data: bytes) -> int | None:
    """The source's estimated quality: JPEG from its quantisation tables, lossy WebP from its VP8
    quantiser (`filigree.imaging.vp8`); None for other formats and lossless WebP."""
    if fmt == "JPEG":
        return _estimate_jpeg_quality(im)
    if fmt == "WEBP":
        return estimate_webp_quality(data)
    return None


def _estimate_jpeg_quality(im: Image.Image) -> int | None:
    """IJG quality whose luminance table is closest to the file's (approximate for tables
    that other encoders chose)."""
    tables = getattr(im, "quantization", None)
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    table = np.sort(np.asarray([int(v) for v in tables[0]], dtype=np.int64))
    errors = np.abs(_ijg_tables() - table).sum(axis=1)
    return 1 + int(np.argmin(errors))  # the lowest quality among equally close ones


@functools.cache
def _ijg_tables() -> np.ndarray:
    """int64 [100, 64]: the sorted IJG luminance tables of qualities 1..100, row by row."""
    tables = []
    for quality in range(1, 101):
        scale = 5000 // quality if quality < 50 else 200 - 2 * quality
        scaled = (min(255, max(1, (q * scale + 50) // 100)) for q in _IJG_LUMA_TABLE)
        tables.append(sorted(scaled))
    out = np.asarray(tables, dtype=np.int64)
    out.flags.writeable = False
    return out


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
