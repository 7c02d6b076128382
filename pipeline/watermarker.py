"""`Watermarker`: embed payloads into images and read them back, at native resolution.

    from pipeline import Watermarker
    wm = Watermarker.load()                     # the bundled model, the default key
    marked = wm.embed(image, "0123456789abc")   # PIL image in, PIL image out (same size)
    result = wm.extract(marked)                 # result.payload, .detected, .p_value, .ber

The residual trick: the image is resized to the model's working size, the embedder predicts a
residual there, and only the residual is upsampled to the image's own size and added. The
Beam pipeline uses the same pure functions below, with batched inference.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from pipeline.bundle import LoadedBundle, load_bundle
from pipeline.imageio import to_working_size, upsample_residual
from pipeline.payload import PayloadCodec, ReadResult

LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def apply_residual(rgb: np.ndarray, residual: np.ndarray, strength: float) -> np.ndarray:
    """Marked float32 RGB in [0, 1]: `rgb + strength * upsampled(residual)`, clipped.

    `residual` is the embedder's [S, S, C] output (C = 1 adds the same value to R, G and B)."""
    height, width = rgb.shape[:2]
    upsampled = upsample_residual(residual, height, width)
    if strength != 1.0:
        upsampled *= np.float32(strength)
    marked = np.add(rgb, upsampled, dtype=np.float32)
    np.clip(marked, 0.0, 1.0, out=marked)
    return marked


def stack_views(rgbs: Sequence[np.ndarray], size: int) -> np.ndarray:
    """float32 [N, size, size, 3]: each image resized to the working size."""
    return np.stack([to_working_size(rgb, size) for rgb in rgbs]).astype(np.float32, copy=False)


# -- PIL images <-> float RGB ------------------------------------------------------------------

def pil_to_rgb(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """(float32 RGB [H, W, 3] in [0, 1], alpha uint8 [H, W] or None) of any PIL image."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(values, 0, 1)[..., None], 3, axis=2), None
    alpha = None
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = np.asarray(rgba)[..., 3].copy()
        image = rgba
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return rgb, alpha


def rgb_to_pil(rgb: np.ndarray, alpha: np.ndarray | None, like_mode: str) -> Image.Image:
    """A PIL image in `like_mode`'s family: grey stays grey (8 or 16 bit), alpha is re-attached;
    palette, CMYK and other modes come back as RGB or RGBA (re-quantising a palette would
    destroy the mark)."""
    if like_mode in ("I;16", "I;16B", "I;16L", "I"):
        grey = np.rint(np.clip(rgb @ LUMA_WEIGHTS, 0, 1) * 65535.0).astype(np.uint16)
        return Image.fromarray(grey, "I;16")
    if like_mode in ("L", "LA", "1"):
        grey = Image.fromarray(np.rint(np.clip(rgb @ LUMA_WEIGHTS, 0, 1) * 255.0).astype(np.uint8), "L")
        if alpha is not None:
            grey.putalpha(Image.fromarray(alpha, "L"))
        return grey
    out = Image.fromarray(np.rint(np.clip(rgb, 0, 1) * 255.0).astype(np.uint8), "RGB")
    if alpha is not None:
        out.putalpha(Image.fromarray(alpha, "L"))
    return out


class Watermarker:
    """A loaded model bundle plus a payload codec (error correction and key)."""

    def __init__(self, bundle: LoadedBundle, codec: PayloadCodec, strength: float | None = None,
                 fpr: float = 1e-6):
        self.bundle = bundle
        self.codec = codec
        self.strength = bundle.card.default_strength if strength is None else float(strength)
        self.fpr = fpr

    @classmethod
    def load(cls, model_dir: str | None = None, key: bytes | str | None = None, *,
             strength: float | None = None, fpr: float = 1e-6) -> "Watermarker":
        """Load a bundle (default: the one shipped with the package) with an optional key."""
        if model_dir is None:
            from pipeline.resources import bundled_model_dir
            model_dir = bundled_model_dir()
        bundle = load_bundle(model_dir)
        return cls(bundle, PayloadCodec.from_card(bundle.card.raw, key=key), strength, fpr)

    @property
    def working_size(self) -> int:
        return self.bundle.card.working_size

    @property
    def data_bits(self) -> int:
        return self.codec.data_bits

    # -- batched model calls ---------------------------------------------------------------
    def residuals(self, views: np.ndarray, bits: np.ndarray) -> np.ndarray:
        """Embedder on a batch: views [N, S, S, 3], raw bits [N, L] -> residuals [N, S, S, C]."""
        return self.bundle.embed_fn(views, bits)

    def logits(self, views: np.ndarray) -> np.ndarray:
        """Extractor on a batch: views [N, S, S, 3] -> logits [N, L]."""
        return self.bundle.extract_fn(views)

    # -- one image, as arrays --------------------------------------------------------------
    def embed_rgb(self, rgb: np.ndarray, payload: str | int) -> np.ndarray:
        """Marked float32 RGB of the same shape."""
        bits = self.codec.encode(payload)[None]
        residual = self.residuals(stack_views([rgb], self.working_size), bits)[0]
        return apply_residual(rgb, residual, self.strength)

    def extract_rgb(self, rgb: np.ndarray, expected: str | int | None = None) -> ReadResult:
        logits = self.logits(stack_views([rgb], self.working_size))[0]
        return self.codec.decode(logits, expected=expected, fpr=self.fpr)

    # -- one PIL image ---------------------------------------------------------------------
    def embed(self, image: Image.Image, payload: str | int) -> Image.Image:
        """The image with `payload` embedded: same size; grey stays grey, alpha is kept."""
        rgb, alpha = pil_to_rgb(image)
        return rgb_to_pil(self.embed_rgb(rgb, payload), alpha, image.mode)

    def extract(self, image: Image.Image, expected: str | int | None = None) -> ReadResult:
        """Read the payload: `payload` (None if unreadable), `detected`, `p_value`, and `ber`
        against `expected` when given."""
        rgb, _ = pil_to_rgb(image)
        return self.extract_rgb(rgb, expected)
