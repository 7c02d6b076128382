"""Differentiable (or straight-through) attack layers used during training.

Every layer maps a batch of RGB images in [0, 1], shape [B, H, W, 3], to the same shape. Each
call takes `strength` in [0, 1] (the curriculum ramp: 0 = no attack, 1 = the configured maximum)
and a stateless `seed` ([2] int32), so a training step is a pure function of its step number and
a resumed run repeats exactly. Per-sample parameters are drawn inside the layer.

Arithmetic is written with `keras.ops`; random draws, real JPEG and dynamic resizes use
TensorFlow ops (the training job's backend).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from training.config import AttackConfig


def uniform(seed, shape, low, high):
    """Stateless uniform draw in [low, high)."""
    return tf.random.stateless_uniform(shape, seed=seed, minval=low, maxval=high)


def sub_seed(seed, index: int):
    """A distinct stateless seed derived from `seed`."""
    return tf.random.experimental.stateless_fold_in(seed, index)


def straight_through(images, attacked):
    """Forward: `attacked`; backward: identity (for non-differentiable attacks)."""
    return images + tf.stop_gradient(attacked - images)


def clip01(images):
    """Clip to [0, 1] with a straight-through gradient, so clipping never blocks learning."""
    return straight_through(images, ops.clip(images, 0.0, 1.0))


class Attack(keras.layers.Layer):
    """Base class: `call(images, strength, seed)`."""

    def __init__(self, cfg: AttackConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg

    def batch_size(self, images):
        return tf.shape(images)[0]


class Identity(Attack):
    def call(self, images, strength, seed):
        return images


class GaussianNoise(Attack):
    """Additive Gaussian noise, sigma ~ U(0, strength * noise_max_sigma) per sample."""

    def call(self, images, strength, seed):
        sigma = uniform(sub_seed(seed, 0), [self.batch_size(images), 1, 1, 1], 0.0, 1.0)
        sigma = sigma * strength * self.cfg.noise_max_sigma
        noise = tf.random.stateless_normal(tf.shape(images), seed=sub_seed(seed, 1))
        return clip01(images + sigma * noise)


def gaussian_kernel_1d(sigma, radius: int):
    """Normalised 1-D Gaussian taps for a (traced) sigma."""
    x = ops.cast(ops.arange(-radius, radius + 1), "float32")
    taps = ops.exp(-0.5 * ops.square(x / ops.maximum(sigma, 1e-3)))
    return taps / ops.sum(taps)


class GaussianBlur(Attack):
    """Separable Gaussian blur; one sigma ~ U(0, strength * blur_max_sigma) per call."""

    radius = 4

    def call(self, images, strength, seed):
        sigma = uniform(seed, [], 0.0, 1.0) * strength * self.cfg.blur_max_sigma
        taps = gaussian_kernel_1d(sigma, self.radius)
        size = 2 * self.radius + 1
        horizontal = ops.tile(ops.reshape(taps, (1, size, 1, 1)), (1, 1, 3, 1))
        vertical = ops.tile(ops.reshape(taps, (size, 1, 1, 1)), (1, 1, 3, 1))
        padded = tf.pad(images, [[0, 0], [self.radius] * 2, [self.radius] * 2, [0, 0]], mode="SYMMETRIC")
        out = ops.depthwise_conv(padded, horizontal, padding="valid")
        out = ops.depthwise_conv(out, vertical, padding="valid")
        return out


class Resize(Attack):
    """Downscale to s ~ U(1 - strength * (1 - resize_min_scale), 1) with antialiasing and back."""

    def call(self, images, strength, seed):
        shape = tf.shape(images)
        lowest = 1.0 - strength * (1.0 - self.cfg.resize_min_scale)
        scale = uniform(seed, [], 0.0, 1.0) * (1.0 - lowest) + lowest
        small = tf.cast(tf.math.round(tf.cast(shape[1:3], tf.float32) * scale), tf.int32)
        small = tf.maximum(small, 8)
        down = tf.image.resize(images, small, method="bilinear", antialias=True)
        up = tf.image.resize(down, shape[1:3], method="bilinear")
        return ops.reshape(up, ops.shape(images))


class ColorJitter(Attack):
    """Brightness (multiplicative), contrast, saturation and hue, per sample."""

    def call(self, images, strength, seed):
        cfg, b = self.cfg, self.batch_size(images)

        def factor(index, max_delta):
            return 1.0 + uniform(sub_seed(seed, index), [b, 1, 1, 1], -1.0, 1.0) * strength * max_delta

        x = images * factor(0, cfg.brightness_max_delta)
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        x = (x - mean) * factor(1, cfg.contrast_max_delta) + mean
        grey = ops.mean(x, axis=-1, keepdims=True)
        x = (x - grey) * factor(2, cfg.saturation_max_delta) + grey
        x = rotate_hue(x, uniform(sub_seed(seed, 3), [b], -1.0, 1.0) * strength * cfg.hue_max_delta)
        return clip01(x)


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                       dtype=np.float32)


def rotate_hue(images, turns):
    """Rotate the chroma plane (YIQ) by `turns` of a full circle per sample."""
    to_yiq = ops.convert_to_tensor(_RGB_TO_YIQ.T)
    to_rgb = ops.convert_to_tensor(np.linalg.inv(_RGB_TO_YIQ).T.astype(np.float32))
    yiq = ops.matmul(images, to_yiq)
    angle = turns * 2.0 * math.pi
    cos, sin = ops.reshape(ops.cos(angle), (-1, 1, 1)), ops.reshape(ops.sin(angle), (-1, 1, 1))
    i, q = yiq[..., 1], yiq[..., 2]
    yiq = ops.stack([yiq[..., 0], i * cos - q * sin, i * sin + q * cos], axis=-1)
    return ops.matmul(yiq, to_rgb)


class RealJpeg(Attack):
    """libjpeg forward pass, identity gradient; quality ~ U(q_min', 100) per sample, where the
    lowest quality ramps from 100 down to `jpeg_min_quality` with strength."""

    def call(self, images, strength, seed):
        qualities = jpeg_qualities(seed, self.batch_size(images), strength, self.cfg.jpeg_min_quality)

        def compress(args):
            image, quality = args
            return tf.image.adjust_jpeg_quality(image, quality)

        compressed = tf.map_fn(compress, (images, qualities), fn_output_signature=tf.float32)
        return straight_through(images, ops.reshape(compressed, ops.shape(images)))


def jpeg_qualities(seed, batch, strength, min_quality: int):
    lowest = 100.0 - strength * (100.0 - min_quality)
    return tf.cast(uniform(seed, [batch], 0.0, 1.0) * (100.0 - lowest) + lowest, tf.int32)


_LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float32).reshape(8, 8)
_CHROMA_TABLE = np.full((8, 8), 99.0, np.float32)
_CHROMA_TABLE[:4, :4] = np.array([17, 18, 24, 47, 18, 21, 26, 66, 24, 26, 56, 99, 47, 66, 99, 99],
                                 np.float32).reshape(4, 4)


def dct_matrix() -> np.ndarray:
    """Orthonormal 8x8 DCT-II matrix (JPEG's transform)."""
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    m = np.cos((2 * n + 1) * k * np.pi / 16) * np.sqrt(2 / 8)
    m[0] /= np.sqrt(2)
    return m.astype(np.float32)


def quality_scale(quality):
    """libjpeg's quality -> table scale factor (percent)."""
    quality = ops.clip(ops.cast(quality, "float32"), 1.0, 100.0)
    return ops.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality)


def soft_round(x):
    """Rounding with a usable gradient: round(x) + (x - round(x))^3."""
    return ops.round(x) + ops.power(x - ops.round(x), 3)


def _blocks(plane):
    """[B, H, W] -> [B, H/8, W/8, 8, 8]."""
    b, h, w = ops.shape(plane)[0], plane.shape[1], plane.shape[2]
    x = ops.reshape(plane, (b, h // 8, 8, w // 8, 8))
    return ops.transpose(x, (0, 1, 3, 2, 4))


def _unblocks(blocks):
    b, hb, wb = ops.shape(blocks)[0], blocks.shape[1], blocks.shape[2]
    x = ops.transpose(blocks, (0, 1, 3, 2, 4))
    return ops.reshape(x, (b, hb * 8, wb * 8))


def _quantise_plane(plane, table, scale):
    """DCT, (soft) quantisation with per-sample tables, inverse DCT of a [B, H, W] plane."""
    d = ops.convert_to_tensor(dct_matrix())
    q = ops.floor((table * ops.reshape(scale, (-1, 1, 1, 1, 1)) + 50.0) / 100.0)
    q = ops.clip(q, 1.0, 255.0)
    coeffs = ops.matmul(ops.matmul(d, _blocks(plane)), ops.transpose(d))
    coeffs = soft_round(coeffs / q) * q
    return _unblocks(ops.matmul(ops.matmul(ops.transpose(d), coeffs), d))


def simulated_jpeg(images, quality):
    """Differentiable JPEG: YCbCr, 4:2:0 chroma, 8x8 DCT, quantisation with libjpeg's tables.
    H and W must be multiples of 16."""
    scale = quality_scale(quality)
    x = images * 255.0
    r, g, bl = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl - 128.0
    cb = -0.168736 * r - 0.331264 * g + 0.5 * bl
    cr = 0.5 * r - 0.418688 * g - 0.081312 * bl
    y = _quantise_plane(y, ops.convert_to_tensor(_LUMA_TABLE), scale)
    chroma = ops.average_pool(ops.stack([cb, cr], axis=-1), 2, strides=2, padding="valid")
    cb = _quantise_plane(chroma[..., 0], ops.convert_to_tensor(_CHROMA_TABLE), scale)
    cr = _quantise_plane(chroma[..., 1], ops.convert_to_tensor(_CHROMA_TABLE), scale)
    chroma = ops.image.resize(ops.stack([cb, cr], axis=-1), (images.shape[1], images.shape[2]),
                              interpolation="bilinear")
    cb, cr = chroma[..., 0], chroma[..., 1]
    y = y + 128.0
    rgb = ops.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return rgb / 255.0


class SimulatedJpeg(Attack):
    """Differentiable JPEG with per-sample quality (same ramp as `RealJpeg`)."""

    def call(self, images, strength, seed):
        qualities = jpeg_qualities(seed, self.batch_size(images), strength, self.cfg.jpeg_min_quality)
        return clip01(simulated_jpeg(images, qualities))


class Combination(Attack):
    """Colour jitter, then resize, then real JPEG: what a web upload typically does."""

    def __init__(self, cfg: AttackConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.steps = [ColorJitter(cfg), Resize(cfg), RealJpeg(cfg)]

    def call(self, images, strength, seed):
        for index, attack in enumerate(self.steps):
            images = attack(images, strength, sub_seed(seed, 10 + index))
        return images


ATTACKS: dict[str, type[Attack]] = {
    "identity": Identity,
    "noise": GaussianNoise,
    "blur": GaussianBlur,
    "resize": Resize,
    "color": ColorJitter,
    "jpeg_real": RealJpeg,
    "jpeg_sim": SimulatedJpeg,
    "combo": Combination,
}


def build_attacks(cfg: AttackConfig) -> list[Attack]:
    """One layer per configured kind, in order."""
    unknown = [k for k in cfg.kinds if k not in ATTACKS]
    if unknown:
        raise ValueError(f"unknown attack kinds {unknown}; known: {sorted(ATTACKS)}")
    return [ATTACKS[kind](cfg, name=f"attack_{kind}") for kind in cfg.kinds]


def apply_sliced(attacks: list[Attack], images, strength, seed):
    """Split the batch into len(attacks) equal slices and attack slice i with attacks[i]."""
    slices = ops.split(images, len(attacks), axis=0)
    out = [attack(part, strength, sub_seed(seed, 100 + i)) for i, (attack, part) in enumerate(zip(attacks, slices))]
    return ops.concatenate(out, axis=0)


def random_crop_boxes(seed, batch, strength, cfg: AttackConfig):
    """Normalised [y0, x0, y1, x1] boxes: with probability `crop_probability` a random crop of
    area in [1 - strength * (1 - crop_min_area), 1] (aspect jitter up to 10%), else the full frame."""
    min_area = 1.0 - strength * (1.0 - cfg.crop_min_area)
    area = uniform(sub_seed(seed, 0), [batch], 0.0, 1.0) * (1.0 - min_area) + min_area
    aspect = tf.exp(uniform(sub_seed(seed, 1), [batch], -0.1, 0.1))
    height = tf.minimum(tf.sqrt(area * aspect), 1.0)
    width = tf.minimum(area / height, 1.0)
    height = tf.minimum(area / width, 1.0)  # keeps the drawn area when the width was clipped
    y0 = uniform(sub_seed(seed, 2), [batch], 0.0, 1.0) * (1.0 - height)
    x0 = uniform(sub_seed(seed, 3), [batch], 0.0, 1.0) * (1.0 - width)
    cropped = uniform(sub_seed(seed, 4), [batch], 0.0, 1.0) < cfg.crop_probability
    full = tf.constant([0.0, 0.0, 1.0, 1.0])
    boxes = tf.stack([y0, x0, y0 + height, x0 + width], axis=1)
    return tf.where(cropped[:, None], boxes, full[None, :])


def crop_view(images, boxes, out_size: int, pool: int):
    """Crop each image to its box, resample to out_size*pool, then average-pool by `pool`
    (an area downscale, as the pipeline's resize to the working size does)."""
    batch = tf.shape(images)[0]
    crops = tf.image.crop_and_resize(images, boxes, tf.range(batch), [out_size * pool] * 2)
    if pool > 1:
        crops = ops.average_pool(crops, pool, strides=pool, padding="valid")
    return crops
