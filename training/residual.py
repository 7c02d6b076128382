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
from training.data import CropSampler, random_bits
from training.export import EmbedderServing, ExtractorServing
from training.models import (build_embedder, build_extractor, normalise_residual, psnr_to_rms,
                             texture_mask)


def ramp(step, start: int, length: int):
    """0 before `start`, then linear to 1 over `length` steps."""
    progress = (tf.cast(step, tf.float32) - start) / max(length, 1)
    return tf.clip_by_value(progress, 0.0, 1.0)


class ResidualTask:
    """Networks, schedules and the step functions of the residual recipe."""

    def __init__(self, cfg: TrainConfig, train_photos, val_photos):
        self.cfg = cfg
        size, pool = cfg.model.working_size, cfg.attacks.canvas_scale
        self.canvas = size * pool
        if cfg.batch_size % len(cfg.attacks.kinds):
            raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the "
                             f"{len(cfg.attacks.kinds)} attack kinds")
        self.embedder = build_embedder(cfg.model)
        self.extractor = build_extractor(cfg.model)
        self.attacks = attack_lib.build_attacks(cfg.attacks)
        self.train_sampler = CropSampler(train_photos, self.canvas, cfg.seed)
        self.val_sampler = CropSampler(val_photos, self.canvas, cfg.seed + 1_000_003)
        self.psnr_state = tf.Variable(cfg.loss.psnr_start, dtype=tf.float32, trainable=False, name="psnr_target")
        self.accuracy_ema = tf.Variable(0.5, dtype=tf.float32, trainable=False, name="accuracy_ema")
        self.eval_attacks = {
            name: layer(cfg.attacks) for name, layer in attack_lib.ATTACKS.items()
        }

    # -- schedules -------------------------------------------------------------------------
    def attack_strength(self, step):
        return ramp(step, self.cfg.attacks.start_step, self.cfg.attacks.ramp_steps)

    def psnr_target(self, step):
        loss = self.cfg.loss
        if loss.psnr_schedule == "adaptive":
            return self.psnr_state.read_value()
        progress = ramp(step, loss.psnr_ramp_start, loss.psnr_ramp_steps)
        return loss.psnr_start + (loss.psnr_final - loss.psnr_start) * progress

    def after_step(self, step: int, metrics: dict) -> None:
        """Adaptive PSNR schedule: follow the running training bit accuracy."""
        loss = self.cfg.loss
        if loss.psnr_schedule != "adaptive":
            return
        ema = 0.98 * float(self.accuracy_ema.numpy()) + 0.02 * float(metrics["bit_acc"])
        self.accuracy_ema.assign(ema)
        if step < loss.psnr_ramp_start:
            return
        target = float(self.psnr_state.numpy())
        if ema > loss.psnr_up_accuracy:
            target += loss.psnr_step_db
        elif ema < loss.psnr_down_accuracy:
            target -= loss.psnr_step_db
        self.psnr_state.assign(min(max(target, loss.psnr_start), loss.psnr_final))

    # -- data ------------------------------------------------------------------------------
    def example(self, step: int, batch_size: int):
        """(canvases, bits) for one step, a pure function of the step."""
        return (self.train_sampler.batch(step, batch_size),
                random_bits(self.cfg.seed, step, batch_size, self.cfg.model.payload_bits))

    def eval_example(self):
        n = self.cfg.eval_samples
        return (self.val_sampler.batch(0, n), random_bits(self.cfg.seed + 7, 0, n, self.cfg.model.payload_bits))

    def signature(self):
        c, bits = self.canvas, self.cfg.model.payload_bits
        return (tf.TensorSpec([c, c, 3], tf.float32), tf.TensorSpec([bits], tf.float32))

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

    def sample_psnr(self, step, seed, batch):
        """The scheduled PSNR, or with `psnr_spread_db` one PSNR per sample ([B, 1, 1, 1]) drawn
        uniformly from [target - spread, target]."""
        target = self.psnr_target(step)
        spread = self.cfg.loss.psnr_spread_db
        if spread <= 0:
            return target
        draw = tf.random.stateless_uniform([batch, 1, 1, 1], seed=attack_lib.sub_seed(seed, 7))
        return target - spread * draw

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
    """One line: PSNR and per-attack accuracies."""
    parts = [f"psnr {results['psnr']:.1f}"]
    parts += [f"{k[4:]} {v:.3f}" for k, v in results.items() if k.startswith("acc_")]
    return ", ".join(parts)


def as_floats(values: dict) -> dict:
    return {k: float(np.asarray(v)) for k, v in values.items()}
