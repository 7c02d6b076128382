"""What every photo-based training task shares: crops of the training photos as canvases, random
payloads, the attack curriculum and the imperceptibility (PSNR) schedule.

`ResidualTask` (training/residual.py) and `PeriodicTask` (training/periodic.py) add their
networks and step functions on top; `training.train.Trainer` drives either.
"""

from __future__ import annotations

import tensorflow as tf

from training import attacks as attack_lib
from training.config import TrainConfig
from training.data import CropSampler, random_bits


def ramp(step, start: int, length: int):
    """0 before `start`, then linear to 1 over `length` steps."""
    progress = (tf.cast(step, tf.float32) - start) / max(length, 1)
    return tf.clip_by_value(progress, 0.0, 1.0)


class PhotoTask:
    """Canvases of `canvas` x `canvas` px cropped from the photos, one attack kind per batch
    slice, and the schedules (attack strength, target PSNR) as functions of the step."""

    def __init__(self, cfg: TrainConfig, train_photos, val_photos, canvas: int):
        self.cfg = cfg
        self.canvas = canvas
        if cfg.batch_size % len(cfg.attacks.kinds):
            raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the "
                             f"{len(cfg.attacks.kinds)} attack kinds")
        self.attacks = attack_lib.build_attacks(cfg.attacks)
        self.train_sampler = CropSampler(train_photos, canvas, cfg.seed)
        self.val_sampler = CropSampler(val_photos, canvas, cfg.seed + 1_000_003)
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

    def sample_psnr(self, step, seed, batch):
        """The scheduled PSNR, or with `psnr_spread_db` one PSNR per sample ([B, 1, 1, 1]) drawn
        uniformly from [target - spread, target]."""
        target = self.psnr_target(step)
        spread = self.cfg.loss.psnr_spread_db
        if spread <= 0:
            return target
        draw = tf.random.stateless_uniform([batch, 1, 1, 1], seed=attack_lib.sub_seed(seed, 7))
        return target - spread * draw

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
