"""The Filigree training task: residual embedder + extractor trained end to end through the
attack layers, on square crops of photos.

One training step, for a batch of canvases (crops at `canvas_scale * S`):
  cover (area-downscaled to S) + bits -> embedder -> raw residual -> normalised to the scheduled
  PSNR -> upsampled onto the canvas and added (the residual trick) -> one attack kind per batch
  slice -> random crop and area-downscale to S -> extractor -> BCE against the bits.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from training import attacks as attack_lib
from training.config import TrainConfig
from training.export import EmbedderServing, ExtractorServing
from training.models import (build_embedder, build_extractor, normalise_residual, psnr_to_rms,
                             texture_mask)
from training.photo_task import PhotoTask


class ResidualTask(PhotoTask):
    """Networks and the step functions of the residual recipe (schedules and data: `PhotoTask`)."""

    def __init__(self, cfg: TrainConfig, train_photos, val_photos):
        super().__init__(cfg, train_photos, val_photos, cfg.model.working_size * cfg.attacks.canvas_scale)
        self.embedder = build_embedder(cfg.model)
        self.extractor = build_extractor(cfg.model)

    # -- model pieces ----------------------------------------------------------------------
    def residual(self, cover, bits, target_psnr, training: bool):
        raw = self.embedder({"image": cover, "bits": bits}, training=training)
        raw = ops.cast(raw, "float32")
        floor = self.cfg.model.texture_mask
        mask = texture_mask(cover, floor) if floor > 0 else None
        return normalise_residual(raw, psnr_to_rms(target_psnr), mask)

    def embed(self, canvas, bits, target_psnr, training: bool):
        """Marked canvases and the working-size residual."""
        pool = self.cfg.attacks.canvas_scale
        cover = ops.average_pool(canvas, pool, strides=pool, padding="valid") if pool > 1 else canvas
        residual = self.residual(cover, bits, target_psnr, training)
        upsampled = tf.image.resize(residual, [self.canvas, self.canvas], method="bilinear")
        return attack_lib.clip01(canvas + upsampled), residual

    def view(self, attacked, boxes):
        return attack_lib.crop_view(attacked, boxes, self.cfg.model.working_size, self.cfg.attacks.canvas_scale)

    def trainable_variables(self):
        return self.embedder.trainable_variables + self.extractor.trainable_variables

    def trackables(self) -> dict:
        return {"embedder": self.embedder, "extractor": self.extractor,
                "psnr_state": self.psnr_state, "accuracy_ema": self.accuracy_ema}

    # -- steps -----------------------------------------------------------------------------
    def losses(self, canvas, bits, step, seed):
        """Forward pass of one training step: (total loss, metrics)."""
        strength = self.attack_strength(step)
        marked, residual = self.embed(canvas, bits, self.sample_psnr(step, seed, tf.shape(canvas)[0]),
                                      training=True)
        attacked = attack_lib.apply_sliced(self.attacks, marked, strength, seed)
        boxes = attack_lib.random_crop_boxes(attack_lib.sub_seed(seed, 1), tf.shape(canvas)[0], strength,
                                             self.cfg.attacks)
        logits = ops.cast(self.extractor(self.view(attacked, boxes), training=True), "float32")
        bit_loss = ops.mean(ops.binary_crossentropy(bits, logits, from_logits=True))
        total = self.cfg.loss.bit_weight * bit_loss
        if self.cfg.loss.image_weight > 0:
            total += self.cfg.loss.image_weight * ops.mean(ops.square(residual) / texture_mask(
                ops.average_pool(canvas, self.cfg.attacks.canvas_scale, strides=self.cfg.attacks.canvas_scale), 0.2))
        mse = ops.mean(ops.square(marked - canvas))
        metrics = {
            "loss": total,
            "bit_loss": bit_loss,
            "bit_acc": ops.mean(ops.cast(ops.equal(ops.cast(logits > 0, "float32"), bits), "float32")),
            "psnr": -10.0 * ops.log10(mse + 1e-12),
            "attack_strength": strength,
            "psnr_target": ops.convert_to_tensor(self.psnr_target(step)),
        }
        return total, metrics

    def evaluate(self, canvas, bits, step, psnr=None) -> dict:
        """Validation bit accuracy per attack kind at full strength, plus crops and PSNR, at
        `psnr` when it is positive, else at the PSNR scheduled for `step` (what an export at
        this step embeds at); BatchNorm in inference mode."""
        target = self.psnr_target(step)
        if psnr is not None:
            target = tf.where(psnr > 0, tf.cast(psnr, tf.float32), target)
        marked, _ = self.embed(canvas, bits, target, training=False)
        seed = tf.constant([self.cfg.seed, 12345], tf.int32)
        batch = tf.shape(canvas)[0]
        full = tf.tile(tf.constant([[0.0, 0.0, 1.0, 1.0]]), [batch, 1])
        results = {"psnr": -10.0 * ops.log10(ops.mean(ops.square(marked - canvas)) + 1e-12)}
        full_strength = tf.constant(1.0)
        for name, attack in self.eval_attacks.items():
            results[f"acc_{name}"] = self._accuracy(attack(marked, full_strength, seed), full, bits)
        crop_cfg = dataclasses.replace(self.cfg.attacks, crop_probability=1.0)
        boxes = attack_lib.random_crop_boxes(seed, batch, 1.0, crop_cfg)
        results["acc_crop"] = self._accuracy(marked, boxes, bits)
        return results

    def _accuracy(self, attacked, boxes, bits):
        logits = self.extractor(self.view(attacked, boxes), training=False)
        return ops.mean(ops.cast(ops.equal(ops.cast(logits > 0, "float32"), bits), "float32"))

    # -- export ----------------------------------------------------------------------------
    def serving(self, step: int, psnr: float | None = None):
        """Serving modules; the residual is normalised to `psnr`, by default the PSNR scheduled
        at `step` (the imperceptibility the networks were trained for so far)."""
        size, bits_n = self.cfg.model.working_size, self.cfg.model.payload_bits
        psnr = float(self.psnr_target(step)) if psnr is None else float(psnr)

        def residual_fn(image, bits):
            return self.residual(image, bits, psnr, training=False)

        def logits_fn(image):
            return self.extractor(image, training=False)

        return (EmbedderServing(residual_fn, size, bits_n, [self.embedder], target_psnr=psnr),
                ExtractorServing(logits_fn, size, [self.extractor]))


def describe_eval(results: dict) -> str:
    """One line: PSNR (when the task has one) and per-attack accuracies."""
    parts = [f"psnr {results['psnr']:.1f}"] if "psnr" in results else []
    parts += [f"{k[4:]} {v:.3f}" for k, v in results.items() if k.startswith("acc_")]
    return ", ".join(parts)


def as_floats(values: dict) -> dict:
    return {k: float(np.asarray(v)) for k, v in values.items()}
