"""Embedder and extractor networks (Keras 3, written with `keras.ops`).

The embedder sees the cover image at the working size S plus the payload bits and predicts a
raw residual in [-1, 1]; training normalises its energy to a target PSNR (see `train.py`) and the
export wraps that normalisation into the SavedModel. The extractor sees any image resized to S
and returns one logit per bit.

Both are small on purpose: strided convolutions downsample early, the heavy work happens at
S/8, full-resolution layers are thin (a 2-core CPU trains them at hundreds of images/s).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from training.config import ModelConfig


def _conv(filters: int, strides: int = 1, kernel: int = 3, name: str | None = None) -> layers.Layer:
    return layers.Conv2D(filters, kernel, strides=strides, padding="same", activation="relu", name=name)


def luma(images):
    """ITU-R BT.601 luma of RGB images in [0, 1], keeping a channel axis."""
    weights = ops.convert_to_tensor([0.299, 0.587, 0.114], dtype=images.dtype)
    return ops.sum(images * weights, axis=-1, keepdims=True)


def build_embedder(cfg: ModelConfig) -> keras.Model:
    """U-Net-like residual predictor: (image [S,S,3], bits [L]) -> raw residual [S,S,C] in [-1, 1].

    The decoder stops at S/2 and the residual is upsampled bilinearly to S: the pipeline
    upsamples it further to the photo's resolution anyway, and full-resolution convolutions
    cost most of a CPU training step (their filter gradients above all)."""
    size, bits_n = cfg.working_size, cfg.payload_bits
    widths = cfg.embedder_channels
    out_channels = 1 if cfg.color_mode == "luma" else 3
    image = keras.Input((size, size, 3), name="image")
    bits = keras.Input((bits_n,), name="bits")
    signed_bits = layers.Rescaling(2.0, offset=-1.0, name="signed_bits")(bits)

    centred = layers.Rescaling(2.0, offset=-1.0, name="centre")(image)
    x = centred
    skips = []
    for i, width in enumerate(widths):
        x = _conv(width, strides=2, name=f"down{i}")(x)
        skips.append(x)
    bottleneck = size // 2 ** len(widths)

    message = layers.Dense(bottleneck * bottleneck * 8, activation="relu", name="message_dense")(signed_bits)
    message = layers.Reshape((bottleneck, bottleneck, 8), name="message_plane")(message)
    x = layers.Concatenate(name="join_message")([skips.pop(), message])
    x = _conv(widths[-1], name="bottleneck")(x)
    for i, width in enumerate(reversed(widths[:-1])):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{i}")(x)
        x = layers.Concatenate(name=f"skip{i}")([x, skips.pop()])
        x = _conv(max(width // 2, 8), name=f"fuse{i}")(x)
    if cfg.full_size_decoder:
        x = layers.UpSampling2D(2, interpolation="bilinear", name="up_full")(x)
        x = layers.Concatenate(name="skip_image")([x, centred])
        x = _conv(max(widths[0] // 2, 8), name="fuse_full")(x)
    residual = layers.Conv2D(out_channels, 1, name="to_residual")(x)

    if cfg.message_pattern:
        # A direct linear path from the bits to a coarse pattern: it carries the message from
        # step 0, so the residual never learns to shrink to nothing (the 50%-accuracy stall).
        coarse = size // 4
        pattern = layers.Dense(coarse * coarse * out_channels, name="pattern_dense")(signed_bits)
        pattern = layers.Reshape((coarse, coarse, out_channels), name="pattern_plane")(pattern)
        scale = 4 if cfg.full_size_decoder else 2
        pattern = layers.UpSampling2D(scale, interpolation="bilinear", name="pattern_up")(pattern)
        residual = layers.Add(name="add_pattern")([residual, pattern])
    if not cfg.full_size_decoder:
        residual = layers.UpSampling2D(2, interpolation="bilinear", name="to_working_size")(residual)
    residual = layers.Activation("tanh", name="residual")(residual)
    return keras.Model({"image": image, "bits": bits}, residual, name="embedder")


def build_extractor(cfg: ModelConfig) -> keras.Model:
    """Strided conv-BN-ReLU stack and a dense head: image [S,S,3] -> logits [L]."""
    size = cfg.working_size
    image = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(2.0, offset=-1.0, name="centre")(image)
    for i, width in enumerate(cfg.extractor_channels):
        x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=cfg.bn_momentum, name=f"bn{i}")(x)
        x = layers.ReLU(name=f"relu{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    logits = layers.Dense(cfg.payload_bits, name="logits")(x)
    return keras.Model(image, logits, name="extractor")


def texture_mask(images, floor: float):
    """Per-pixel weight in about [floor, 1 + floor]: local luma contrast (3x3 mean absolute
    deviation, normalised per image) plus a floor, so flat regions get less of the mark."""
    y = luma(images)
    local_mean = ops.average_pool(y, 3, strides=1, padding="same")
    contrast = ops.average_pool(ops.abs(y - local_mean), 5, strides=1, padding="same")
    contrast = contrast / (ops.mean(contrast, axis=(1, 2, 3), keepdims=True) + 1e-6)
    return ops.minimum(contrast, 2.0) * 0.5 + floor


def normalise_residual(residual, target_rms, mask=None):
    """Scale each residual so its root-mean-square (after the optional mask) equals `target_rms`."""
    if mask is not None:
        residual = residual * mask
    rms = ops.sqrt(ops.mean(ops.square(residual), axis=(1, 2, 3), keepdims=True) + 1e-12)
    return residual * (target_rms / rms)


def psnr_to_rms(psnr_db):
    """Residual RMS (on [0, 1] pixels) that gives this PSNR."""
    return 10.0 ** (-psnr_db / 20.0)
