"""Image encoding: marked pixels written like their source was stored (format, mode, alpha,
ICC profile, EXIF, XMP, resolution, JPEG quality and chroma subsampling).

JPEG output keeps the source's chroma subsampling unless told otherwise. On a 12 MP photo,
4:4:4 at quality 95 doubled the file size and encode time against 4:2:0 for +1.9 dB PSNR,
while a low-frequency watermark residual survived 4:2:0 as well as 4:4:4.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, PngImagePlugin

from filigree.imaging.decode import EXIF_PREFIX, LOSSY_FORMATS, DecodedImage
from filigree.imaging.pixels import pil_image, quantize

MIN_MARK_QUALITY = 70
"""The lowest JPEG quality a marked image is written at by default: below it the mark stops
reading back reliably (measured with `benchmarks/jpeg_floor.py`, see docs/formats.md)."""
MIN_WEBP_MARK_QUALITY = 60
"""The same floor for lossy WebP (libwebp's quality scale), measured the same way
(`benchmarks/jpeg_floor.py --format WEBP`, see docs/formats.md)."""
UNKNOWN_SOURCE_QUALITY = 95
"""Output quality when the source's cannot be estimated (HEIF, AVIF, JPEG-compressed TIFF,
lossy WebP without a readable VP8 header)."""

_XMP_TAG = 700
_LOSSLESS_TIFF = frozenset({"raw", "tiff_lzw", "tiff_adobe_deflate", "packbits"})


def output_quality(decoded: DecodedImage, requested: int | None = None, margin: int = 0) -> int | None:
    """The quality a marked image is written at: `requested` when given; else the source's
    estimated quality (`DecodedImage.quality`: JPEG and lossy WebP) plus `margin` points (at
    most 100), raised to the format's floor (`MIN_WEBP_MARK_QUALITY` for WebP, else
    `MIN_MARK_QUALITY`) when lower, or `UNKNOWN_SOURCE_QUALITY` when unknown. None for outputs
    without a quality setting (PNG, BMP, lossless WebP, TIFF without JPEG compression).
    A faint mark needs the margin: re-quantised with its source's own tables, most of it
    falls back into the source's quantisation bins (`filigree.periodic.QUALITY_MARGIN`)."""
    fmt = decoded.output_format
    lossy = (fmt in LOSSY_FORMATS or (fmt == "WEBP" and not decoded.lossless)
             or (fmt == "TIFF" and decoded.compression == "jpeg" and decoded.output_mode in ("L", "RGB")))
    if not lossy:
        return None
    if requested is not None:
        return int(requested)
    if decoded.quality is None:
        return UNKNOWN_SOURCE_QUALITY
    floor = MIN_WEBP_MARK_QUALITY if fmt == "WEBP" else MIN_MARK_QUALITY
    return max(min(int(decoded.quality) + int(margin), 100), floor)


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
        image = Image.fromarray(quantize(pixels, 65535, np.uint16, luma=True))
    elif mode in ("L", "LA"):
        image = Image.fromarray(quantize(pixels, 255, np.uint8, luma=True))
    else:
        image = Image.fromarray(quantize(pixels, 255, np.uint8))
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
        if decoded.depth is not None and decoded.depth.sbit is not None and decoded.output_mode == "I;16":
            info.add(b"sBIT", bytes([decoded.depth.sbit]))
        if decoded.text or decoded.xmp or len(info.chunks):
            opts["pnginfo"] = info
    elif fmt == "WEBP":
        if decoded.lossless:
            opts.update(lossless=True, exact=True)
        else:
            opts.update(quality=quality, alpha_quality=100)
        if exif:
            opts["exif"] = exif[len(EXIF_PREFIX) :] if exif.startswith(EXIF_PREFIX) else exif
        if decoded.xmp:
            opts["xmp"] = decoded.xmp
    elif fmt in ("HEIF", "AVIF"):
        opts["quality"] = quality
        if exif:
            opts["exif"] = exif
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
