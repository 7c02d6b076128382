"""Report thumbnails: the sampled images, their marked copies and the amplified residual between
them, computed on reduced copies and embedded in the HTML page as PNG data, with each sampled
image's SSIMULACRA2 on its screen view (the metric costs seconds of CPU per image, so only the
sampled images get it)."""

from __future__ import annotations

import base64
import io
import logging
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from filigree.imaging.metrics import SCREEN_SIDE, screen_view, ssimulacra2
from pipeline.storage import read_bytes

__all__ = ["ANALYSIS_SIDE", "RESIDUAL_GAIN", "make_thumbnails", "sample_thumbnails",
           "screen_ssimulacra2"]

_LOG = logging.getLogger(__name__)
ANALYSIS_SIDE = 1024
"""Thumbnails and the residual are computed on images reduced to at most this many pixels on
the long side (JPEGs are decoded at reduced scale directly), so a report never holds a
full-resolution copy of a large photo: the watermark residual is smooth at this scale (it is
upsampled from the model's working size), and the thumbnails are smaller still."""
RESIDUAL_GAIN = 20.0


def _open_rgb(data: bytes, max_side: int = ANALYSIS_SIDE) -> tuple[Image.Image, tuple[int, int]]:
    """Decodes the first frame, applies EXIF orientation, returns 8-bit RGB reduced (by an
    integer factor, with JPEG's DCT scaling when possible) to at most ``max_side`` pixels on
    the long side, and the full size (after orientation)."""
    with Image.open(io.BytesIO(data)) as opened:
        width, height = opened.size
        longest = max(width, height)
        if longest > max_side and opened.format in ("JPEG", "MPO"):
            factor = longest / max_side
            opened.draft(opened.mode if opened.mode in ("RGB", "L") else None,
                         (math.ceil(width / factor), math.ceil(height / factor)))
        opened.load()
        if opened.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            width, height = height, width
        image = ImageOps.exif_transpose(opened)
    image = _reduce_to(image, max_side)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if array.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB"), (width, height)


def _reduce_to(image: Image.Image, max_side: int) -> Image.Image:
    factor = math.ceil(max(image.size) / max_side)
    if factor <= 1:
        return image
    if image.mode not in ("1", "L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                          "I", "F", "I;16", "I;16L", "I;16B", "I;16N"):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    return image.reduce(factor)


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumbnail(image: Image.Image, size: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return copy


def _residual(original: Image.Image, marked: Image.Image, gain: float) -> tuple[Image.Image, int]:
    """``|marked - original| * gain`` (clipped to 8 bits) and the largest absolute difference
    in 8-bit levels, at the images' (analysis) resolution."""
    if marked.size != original.size:
        marked = marked.resize(original.size, Image.Resampling.BILINEAR)
    a = np.asarray(original, dtype=np.int16)
    b = np.asarray(marked, dtype=np.int16)
    diff = np.abs(b - a)
    amplified = np.clip(diff.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return Image.fromarray(amplified, "RGB"), int(diff.max(initial=0))


def screen_ssimulacra2(original: bytes, marked: bytes) -> float | None:
    """SSIMULACRA2 of the marked file against the original file on their screen views
    (`filigree.imaging.metrics.screen_view`: long side 1600 px), 8-bit RGB as decoded (EXIF
    orientation applied, transparency over white). To bound memory, both are first reduced by an
    integer factor to at most twice the screen side (JPEGs decoded reduced). None when either
    cannot be decoded or their sizes differ. About 4-5 s of one CPU core per image."""
    try:
        source, _ = _open_rgb(original, 2 * SCREEN_SIDE)
        result, _ = _open_rgb(marked, 2 * SCREEN_SIDE)
        if source.size != result.size or min(source.size) < 8:
            return None
        return ssimulacra2(screen_view(np.asarray(source)), screen_view(np.asarray(result)))
    except Exception as exc:  # noqa: BLE001 - a sample without a score still gets its thumbnail
        _LOG.warning("no SSIMULACRA2 for a sampled image: %s", exc)
        return None


def make_thumbnails(image_path: str, original: bytes, marked: bytes, size: int = 256,
                    *, gain: float = RESIDUAL_GAIN) -> dict[str, Any] | None:
    """Base64 PNG thumbnails (longest side ``size``) of the original, the marked image and the
    amplified residual ``|marked - original| * gain``, and ``ssimulacra2`` (`screen_ssimulacra2`,
    None when it cannot be computed); None when either image cannot be decoded.

    The residual is computed before the final reduction, on the images at up to
    ``max(ANALYSIS_SIDE, 4 * size)`` pixels on the long side (full resolution for images that
    small), so fine patterns stay visible; ``residual_max`` is measured at that resolution.
    Large images are never held at full resolution twice (JPEGs are decoded reduced).
    """
    try:
        side = max(ANALYSIS_SIDE, 4 * size)
        source, (width, height) = _open_rgb(original, side)
        result, _ = _open_rgb(marked, side)
        residual, max_diff = _residual(source, result, gain)
        thumbs = {key: _thumbnail(image, size)
                  for key, image in (("original", source), ("marked", result),
                                     ("residual", residual))}
    except Exception as exc:  # noqa: BLE001 - any undecodable input just has no thumbnail
        _LOG.warning("no thumbnail for %r: %s", image_path, exc)
        return None
    name = re.split(r"[/\\]", str(image_path).rstrip("/\\"))[-1] or str(image_path)
    return {
        "image": str(image_path),
        "name": name,
        "width": width,
        "height": height,
        "gain": gain,
        "residual_max": max_diff,
        "thumb_width": thumbs["original"].width,
        "thumb_height": thumbs["original"].height,
        "ssimulacra2": screen_ssimulacra2(original, marked),
        **{key: _png_base64(image) for key, image in thumbs.items()},
    }


def sample_thumbnails(summary: Mapping[str, Any], size: int = 256,
                      read: Callable[[str], bytes] = read_bytes) -> list[dict[str, Any]]:
    """Thumbnails for the summary's sample, read through ``read``; unreadable ones are left out."""
    out = []
    for record in summary.get("sample") or []:
        image, output = record.get("image"), record.get("output")
        if not image or not output:
            continue
        try:
            original, marked = read(image), read(output)
        except Exception as exc:  # noqa: BLE001 - a missing file only loses a thumbnail
            _LOG.warning("cannot read %r or %r for a thumbnail: %s", image, output, exc)
            continue
        thumb = make_thumbnails(image, original, marked, size)
        if thumb is not None:
            thumb["psnr"] = record.get("psnr")
            out.append(thumb)
    return out
