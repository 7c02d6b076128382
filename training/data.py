"""Training data: photos read through `tf.io.gfile` (local or gs://), held in memory, and
random square crops at random scales drawn deterministically from (seed, step).

A batch is a pure function of the step number, so a resumed run sees exactly the batches an
uninterrupted one would have seen.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def list_images(data: str) -> list[str]:
    """Image files under a folder, a glob, or a gs:// prefix, sorted."""
    if any(ch in data for ch in "*?["):
        paths = tf.io.gfile.glob(data)
    elif tf.io.gfile.isdir(data):
        paths = [os.path.join(data, name) for name in tf.io.gfile.listdir(data)]
    else:
        paths = tf.io.gfile.glob(data.rstrip("/") + "*")
    images = sorted(p for p in paths if p.lower().endswith(IMAGE_SUFFIXES))
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found at {data!r}")
    return images


def load_photo(path: str, max_side: int) -> np.ndarray:
    """Decode one photo (EXIF-rotated, RGB uint8), downscaled so its longer side <= max_side."""
    with tf.io.gfile.GFile(path, "rb") as f:
        image = Image.open(io.BytesIO(f.read()))
        image = ImageOps.exif_transpose(image).convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return np.asarray(image)


def is_validation(path: str, fraction: float) -> bool:
    """Deterministic split by a hash of the file name."""
    digest = hashlib.sha256(os.path.basename(path).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def split_paths(paths: list[str], fraction: float) -> tuple[list[str], list[str]]:
    """(train, validation) paths; both non-empty when there are at least two photos."""
    val = [p for p in paths if is_validation(p, fraction)]
    train = [p for p in paths if p not in val]
    if len(paths) >= 2 and not val:
        val, train = train[-1:], train[:-1]
    if not train:
        train, val = val[:-1] or val, val[-1:]
    return train, val


@dataclass
class CropSampler:
    """Random crops of in-memory photos, squashed to `size` x `size` like the pipeline squashes
    whole photos to the working size: crop side between `size` and the photo's shorter side
    (log-uniform), aspect ratio up to 2:1, random position, random horizontal flip."""

    photos: list[np.ndarray]
    size: int
    seed: int

    def batch(self, step: int, batch_size: int) -> np.ndarray:
        """float32 [batch, size, size, 3] in [0, 1], a pure function of (seed, step)."""
        rng = np.random.default_rng([self.seed, step])
        return np.stack([self.crop(rng) for _ in range(batch_size)])

    def crop(self, rng: np.random.Generator) -> np.ndarray:
        photo = self.photos[rng.integers(len(self.photos))]
        h, w = photo.shape[:2]
        short = min(h, w)
        lo = min(self.size, short)
        side = float(np.exp(rng.uniform(np.log(lo), np.log(short)))) if short > lo else float(short)
        aspect = float(np.exp(rng.uniform(-np.log(2), np.log(2))))
        ch = int(min(h, max(1, round(side * np.sqrt(aspect)))))
        cw = int(min(w, max(1, round(side / np.sqrt(aspect)))))
        y0, x0 = rng.integers(h - ch + 1), rng.integers(w - cw + 1)
        crop = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw])
        crop = crop.resize((self.size, self.size), Image.Resampling.BOX if ch >= self.size else Image.Resampling.BILINEAR)
        out = np.asarray(crop, dtype=np.float32) / 255.0
        return out[:, ::-1] if rng.random() < 0.5 else out


def random_bits(seed: int, step: int, batch_size: int, bits: int) -> np.ndarray:
    """float32 {0, 1} payloads, a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step, 1])
    return rng.integers(0, 2, size=(batch_size, bits)).astype(np.float32)


def load_photos(paths: list[str], max_side: int) -> list[np.ndarray]:
    """Decode all photos; unreadable ones are reported and skipped (the run needs at least one)."""
    photos = []
    for path in paths:
        try:
            photos.append(load_photo(path, max_side))
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this photo"
            print(f"skipping unreadable training photo {path}: {exc}", flush=True)
    if not photos:
        raise ValueError("none of the training photos could be decoded")
    return photos
