"""A just-noticeable-difference (JND) map: how much a pixel's luma may change before the change
shows, in grey levels (0..255 scale), from the image itself at its own resolution.

The pixel-domain model of Yang, Ling, Lu, Ong & Yao, "Just noticeable distortion model and its
applications in video coding" (Signal Processing: Image Communication 20(7), 2005):

* luminance adaptation (Chou & Li, "A perceptually tuned subband image coder based on the
  measure of just-noticeable-distortion profile", IEEE TCSVT 5(6), 1995): on the local
  background luma B (5 x 5 mean), LA = 17 (1 - sqrt(B / 127)) + 3 for B <= 127, else
  3 / 128 (B - 127) + 3: dark and bright backgrounds hide more than mid-grey;
* contrast (texture) masking: CM = 0.117 G, with G the local (5 x 5) mean of the luma
  gradient's magnitude (Sobel, in grey levels per pixel): edges and texture hide changes;
* the nonlinear additivity model for masking (NAMM): JND = LA + CM - 0.3 min(LA, CM).

`mark_weights` turns the map into the per-pixel amplitude of a mark: a flat region keeps only
`flat_share` of its luminance-adaptation threshold, so the mark goes where texture hides it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKGROUND_WINDOW = 5
"""Side of the box (pixels) over which the background luma and the gradient are averaged."""


@dataclass(frozen=True)
class JndConfig:
    """How the JND map becomes a mark's amplitude map (`mark_weights`)."""

    flat_share: float = 0.1
    """Share of the luminance-adaptation threshold kept where there is no texture, in [0, 1]."""
    contrast_gain: float = 0.117
    """Contrast-masking slope on the mean gradient magnitude (Yang et al. 2005)."""
    overlap: float = 0.3
    """NAMM overlap between the two masking effects (Yang et al. 2005)."""
    ceiling: float = 12.0
    """Largest amplitude weight (grey levels): strong edges do not take unbounded marks."""

    def to_dict(self) -> dict:
        return {"flat_share": self.flat_share, "contrast_gain": self.contrast_gain,
                "overlap": self.overlap, "ceiling": self.ceiling}

    @classmethod
    def from_dict(cls, entry: dict | None) -> "JndConfig":
        """Parse a model card's `jnd` entry (missing fields keep their defaults). Raises
        ValueError for a value out of range."""
        values = {k: float(v) for k, v in (entry or {}).items() if k in cls.__dataclass_fields__}
        config = cls(**values)
        if not 0.0 <= config.flat_share <= 1.0 or config.contrast_gain < 0 or not 0 <= config.overlap <= 1 \
                or config.ceiling <= 0:
            raise ValueError(f"bad jnd entry: {entry!r}")
        return config


def luminance_adaptation(background: np.ndarray) -> np.ndarray:
    """LA(B) of Chou & Li 1995, float32 like `background` (grey levels 0..255)."""
    b = np.asarray(background, dtype=np.float32)
    dark = 17.0 * (1.0 - np.sqrt(np.clip(b, 0.0, 127.0) / 127.0)) + 3.0
    bright = 3.0 / 128.0 * (b - 127.0) + 3.0
    return np.where(b <= 127.0, dark, bright).astype(np.float32)


def box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """float32 mean of x [H, W] over a size x size box (odd size; edges replicated):
    `scipy.ndimage.uniform_filter`."""
    from scipy.ndimage import uniform_filter

    return uniform_filter(np.asarray(x, dtype=np.float32), size=size, mode="nearest")


def gradient_magnitude(luma: np.ndarray) -> np.ndarray:
    """float32 [H, W]: |Sobel gradient| / 8 (grey levels per pixel; edges replicated)."""
    p = np.pad(np.asarray(luma, dtype=np.float32), 1, mode="edge")
    gx = (p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])
    gy = (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:])
    return (np.hypot(gx, gy) / 8.0).astype(np.float32)


def jnd_components(luma: np.ndarray, config: JndConfig = JndConfig()) -> tuple[np.ndarray, np.ndarray]:
    """(LA, CM), each float32 [H, W] in grey levels, for luma [H, W] in grey levels 0..255.
    Raises ValueError for an array that is not 2-D or is empty."""
    y = np.asarray(luma, dtype=np.float32)
    if y.ndim != 2 or y.size == 0:
        raise ValueError(f"luma must be a non-empty [H, W] array, got shape {y.shape}")
    background = box_mean(y, BACKGROUND_WINDOW)
    gradient = box_mean(gradient_magnitude(y), BACKGROUND_WINDOW)
    return luminance_adaptation(background), config.contrast_gain * gradient


def jnd_map(luma: np.ndarray, config: JndConfig = JndConfig()) -> np.ndarray:
    """The NAMM JND of luma [H, W] (grey levels 0..255): float32 [H, W], grey levels."""
    la, cm = jnd_components(luma, config)
    return la + cm - config.overlap * np.minimum(la, cm)


def mark_weights(luma: np.ndarray, config: JndConfig = JndConfig()) -> np.ndarray:
    """Per-pixel mark amplitude, float32 [H, W] in grey levels: the NAMM combination of
    `flat_share` x LA and CM, capped at `ceiling`. Multiply a unit-RMS pattern by it (and a
    global strength) to get a residual that is weakest in flat mid-grey areas, where the eye
    sees a pattern best, and strongest in texture."""
    la, cm = jnd_components(luma, config)
    la *= np.float32(config.flat_share)
    weights = la + cm - np.float32(config.overlap) * np.minimum(la, cm)
    np.minimum(weights, np.float32(config.ceiling), out=weights)
    return weights
