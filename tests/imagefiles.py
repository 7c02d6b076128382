"""Image-file helpers shared by the tests (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import io

from PIL import Image, ImageCms


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    """The bytes of `image` saved in `fmt` with Pillow's `options`."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def srgb_icc() -> bytes:
    """An sRGB ICC profile, as embedded in image files."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
