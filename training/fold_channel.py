"""The fold-channel training task: the periodic layout's generator and tile extractor trained on
what the reader sees after re-synchronisation, without rendering whole canvases.

A reader folds the whitened image over the layout's lattice (`filigree.sync`): the folded tile
is the embedded tile seen through the whitening's prediction-error filter, the fold's one-sample
box, the attacks' blur and a small lattice-estimate error, plus the fold of the whitened photo
itself, which is close to white noise. This task simulates exactly that on 64 x 64 tiles:

  bits -> generator -> unit-RMS tile mixed with a random sync template -> misaligned by a small
  rotation, scale error and sub-sample phase -> filtered (whitening response at a random
  pixels-per-sample spacing, fold box, Gaussian blur, anti-alias below one pixel per sample) ->
  unit RMS, times an amplitude SNR s -> plus a real folded photo's noise tile -> extractor.

Noise tiles are the reader's own folds (`filigree.sync.fold` of `filigree.sync.whiten`) of the
training photos over random lattices, so the extractor learns the real background; each use
draws a random dihedral transform, cyclic shift and sign. A step costs a few tile-sized
convolutions instead of whole-canvas attacks, so the payload code is learnt in minutes on a CPU;
the canvas task (`training/periodic.py`) fine-tunes it end to end.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from keras import ops

from training import attacks as attack_lib
from training.config import TrainConfig
from training.periodic import PeriodicTask, spectral_low_share, unit_rms


def fold_noise_tiles(photos: list[np.ndarray], per_photo: int, seed: int, tile: int = 64) -> np.ndarray:
    """Folds of whitened photos over random lattices: float32 [len(photos) * per_photo, n, n],
    each zero mean and unit RMS. Lattices: period 0.7..2.0 analysis pixels per sample, any
    angle, random origin (photos are uint8 RGB [H, W, 3])."""
    from filigree.sync.analysis import analysis_luma, whiten
    from filigree.sync.fold import fold

    rng = np.random.default_rng([seed, 17])
    tiles = []
    for photo in photos:
        luma, _ = analysis_luma(photo)
        if min(luma.shape) < 2 * tile:
            continue
        w = whiten(luma).astype(np.float64)
        for _ in range(per_photo):
            spacing = float(rng.uniform(0.7, 2.0))
            angle = float(rng.uniform(0.0, math.pi / 2))
            c, s = math.cos(angle) * spacing * tile, math.sin(angle) * spacing * tile
            basis = np.array([[c, s], [-s, c]])
            origin = tuple(float(v) for v in rng.uniform(0, tile, 2))
            folded = fold(w, basis, tile, origin).astype(np.float64)
            folded -= folded.mean()
            rms = float(np.sqrt(np.mean(folded**2)))
            if rms > 0:
                tiles.append(folded / rms)
    if not tiles:
        raise ValueError("no photo is large enough to fold a noise tile from")
    return np.stack(tiles).astype(np.float32)


def augment_tiles(bank: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` tiles drawn from `bank` [K, n, n], each under a random dihedral transform, cyclic
    shift and sign: float32 [count, n, n, 1]."""
    out = np.empty((count,) + bank.shape[1:], np.float32)
    n = bank.shape[-1]
    for i in range(count):
        t = bank[rng.integers(len(bank))]
        t = np.rot90(t, int(rng.integers(4)))
        if rng.random() < 0.5:
            t = t[:, ::-1]
        t = np.roll(t, tuple(int(v) for v in rng.integers(0, n, 2)), axis=(0, 1))
        out[i] = t if rng.random() < 0.5 else -t
    return out[..., None]


def misalign(tiles, seed, angle_deg: float, scale_error: float, jitter: float):
    """Circular tiles [B, n, n, 1] resampled (bilinear) on a grid rotated by up to `angle_deg`,
    scaled by up to 1 +- `scale_error` and shifted by up to `jitter` samples: the fold of a
    lattice estimated with those errors, aligned to within `jitter`."""
    n = tiles.shape[1]
    batch = tf.shape(tiles)[0]
    big = tf.tile(tiles, [1, 3, 3, 1])
    angle = attack_lib.uniform(attack_lib.sub_seed(seed, 1), [batch], -1.0, 1.0) * angle_deg * math.pi / 180
    scale = 1.0 + attack_lib.uniform(attack_lib.sub_seed(seed, 2), [batch], -1.0, 1.0) * scale_error
    offset = attack_lib.uniform(attack_lib.sub_seed(seed, 3), [batch, 2], -1.0, 1.0) * jitter
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    centre = n / 2.0
    a2 = n + centre - (cos - sin) * centre + offset[:, 1]
    b2 = n + centre - (sin + cos) * centre + offset[:, 0]
    zeros = tf.zeros_like(cos)
    transform = tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=big, transforms=transform, output_shape=tf.constant([n, n]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="WRAP")


def fold_response(spacing, blur, n: int):
    """Per-sample frequency response on a tile's rfft2 bins, complex64 [B, n, n // 2 + 1]:
    the whitening's 4-neighbour prediction error and a Gaussian blur of `blur` pixels at
    `spacing` pixels per tile sample [B], the fold's one-sample box, and no energy above the
    pixel grid's Nyquist frequency when a sample spans less than a pixel."""
    fy = tf.constant(np.fft.fftfreq(n)[:, None], tf.float32)[None]
    fx = tf.constant(np.fft.rfftfreq(n)[None, :], tf.float32)[None]
    r = tf.reshape(spacing, [-1, 1, 1])
    py, px = fy / r, fx / r  # cycles per pixel
    whitening = 1.0 - 0.5 * (tf.cos(2 * math.pi * py) + tf.cos(2 * math.pi * px))
    sigma = tf.reshape(blur, [-1, 1, 1])
    gaussian = tf.exp(-2.0 * math.pi ** 2 * tf.square(sigma) * (py ** 2 + px ** 2))
    box = tf.constant(np.sinc(np.fft.fftfreq(n))[:, None] * np.sinc(np.fft.rfftfreq(n))[None, :], tf.float32)[None]
    nyquist = tf.cast((tf.abs(py) <= 0.5) & (tf.abs(px) <= 0.5), tf.float32)
    return tf.cast(whitening * gaussian * box * nyquist, tf.complex64)


def filter_tiles(tiles, response):
    """Tiles [B, n, n, 1] through a frequency response [B, n, n // 2 + 1] (circular)."""
    n = tiles.shape[1]
    spectrum = tf.signal.rfft2d(tiles[..., 0]) * response
    return tf.signal.irfft2d(spectrum, fft_length=[n, n])[..., None]


class FoldChannelTask(PeriodicTask):
    """`PeriodicTask`'s networks trained through the simulated fold channel (module docstring).
    Batches are (noise tiles [B, n, n, 1], bits [B, L]); the checkpoint keys are the canvas
    task's, so a canvas run can start from a fold-channel checkpoint."""

    noise_per_photo = 8

    def __init__(self, cfg: TrainConfig, train_photos, val_photos):
        super().__init__(cfg, train_photos, val_photos)
        self.train_noise = fold_noise_tiles(train_photos, self.noise_per_photo, cfg.seed, self.tile)
        self.val_noise = fold_noise_tiles(val_photos, self.noise_per_photo, cfg.seed + 1, self.tile)
        print(f"fold channel: {len(self.train_noise)} training and {len(self.val_noise)} validation "
              f"noise tiles", flush=True)

    def example(self, step: int, batch_size: int):
        rng = np.random.default_rng([self.cfg.seed, step, 5])
        bits = rng.integers(0, 2, size=(batch_size, self.cfg.model.payload_bits)).astype(np.float32)
        return augment_tiles(self.train_noise, rng, batch_size), bits

    def eval_example(self):
        n = self.cfg.eval_samples
        rng = np.random.default_rng([self.cfg.seed, 99])
        bits = rng.integers(0, 2, size=(n, self.cfg.model.payload_bits)).astype(np.float32)
        return augment_tiles(self.val_noise, rng, n), bits

    def signature(self):
        n, bits = self.tile, self.cfg.model.payload_bits
        return (tf.TensorSpec([n, n, 1], tf.float32), tf.TensorSpec([bits], tf.float32))

    def snr_range(self, strength):
        """(lowest, highest) amplitude SNR of the curriculum: the floor falls from the config's
        start to its end as the attack strength ramps up."""
        a = self.cfg.attacks
        lo = math.log(a.fold_snr_start) + (math.log(a.fold_snr_min) - math.log(a.fold_snr_start)) * strength
        return tf.exp(lo), a.fold_snr_max

    def channel(self, tiles, noise, seed, snr, blur_max):
        """What the reader's aligned fold holds: [B, n, n, 1] (module docstring)."""
        a = self.cfg.attacks
        batch = tf.shape(tiles)[0]
        moved = misalign(tiles, attack_lib.sub_seed(seed, 51), a.fold_angle_error, a.fold_scale_error, a.phase_jitter)
        spacing = attack_lib.uniform(attack_lib.sub_seed(seed, 52), [batch], *a.fold_spacing_range)
        blur = attack_lib.uniform(attack_lib.sub_seed(seed, 53), [batch], 0.0, 1.0) * blur_max
        seen = unit_rms(filter_tiles(moved, fold_response(spacing, blur, self.tile)))
        return tf.reshape(snr, [-1, 1, 1, 1]) * seen + noise

    def losses(self, noise, bits, step, seed):
        a = self.cfg.attacks
        strength = self.attack_strength(step)
        batch = tf.shape(bits)[0]
        tiles, payload = self.tiles(bits, attack_lib.sub_seed(seed, 31), training=True)
        lo, hi = self.snr_range(strength)
        u = attack_lib.uniform(attack_lib.sub_seed(seed, 61), [batch], 0.0, 1.0)
        snr = tf.exp(tf.math.log(lo) + (math.log(hi) - tf.math.log(lo)) * u)
        seen = self.channel(tiles, noise, seed, snr, a.fold_blur_max * strength)
        logits = ops.cast(self.extractor(seen, training=True), "float32")
        bit_loss = ops.mean(ops.binary_crossentropy(bits, logits, from_logits=True))
        low_share = ops.mean(spectral_low_share(payload, self.cfg.loss.low_frequency_cutoff))
        total = self.cfg.loss.bit_weight * bit_loss + self.cfg.loss.low_frequency_weight * low_share
        return total, {
            "loss": total,
            "bit_loss": bit_loss,
            "bit_acc": ops.mean(ops.cast(ops.equal(ops.cast(logits > 0, "float32"), bits), "float32")),
            "psnr": 20.0 * ops.log10(ops.mean(snr)),
            "low_share": low_share,
            "attack_strength": strength,
            "psnr_target": 20.0 * ops.log10(lo),
        }

    def after_step(self, step: int, metrics: dict) -> None:
        """No PSNR schedule here: the channel's SNR curriculum follows the attack strength."""

    def evaluate(self, noise, bits, step, psnr=None) -> dict:
        """Validation bit accuracy at fixed amplitude SNRs (blur at half the maximum), and the
        generator's low-frequency share; no PSNR (the channel has no image)."""
        a = self.cfg.attacks
        seed = tf.constant([self.cfg.seed, 12345], tf.int32)
        tiles, payload = self.tiles(bits, attack_lib.sub_seed(seed, 31), training=False)
        results = {"low_share": ops.mean(spectral_low_share(payload, self.cfg.loss.low_frequency_cutoff))}
        batch = tf.shape(bits)[0]
        for snr in EVAL_SNRS:
            seen = self.channel(tiles, noise, seed, tf.fill([batch], snr), 0.5 * a.fold_blur_max)
            logits = self.extractor(seen, training=False)
            hits = ops.cast(ops.equal(ops.cast(logits > 0, "float32"), bits), "float32")
            results[f"acc_snr{snr:g}"] = ops.mean(hits)
        return results


EVAL_SNRS = (0.15, 0.25, 0.4, 0.7)
"""Amplitude SNRs of the folded tile at which validation accuracy is reported."""
