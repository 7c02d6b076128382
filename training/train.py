"""`python -m training.train`: train a preset, checkpoint, resume, export a model bundle.

    python -m training.train --list-presets
    python -m training.train --preset tiny --steps 200 --out /tmp/bundle
    python -m training.train --preset default --workdir runs/default --out runs/default/bundle

Checkpoints (step, networks, optimiser) go to WORKDIR/ckpt every `checkpoint_every_s` seconds,
on SIGINT/SIGTERM and at the end; batches and attack randomness are pure functions of the step,
so a resumed run continues exactly. Validation metrics go to WORKDIR/metrics.jsonl, metrics.csv
and TensorBoard (WORKDIR/tb).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import sys
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from training.config import PRESETS, TrainConfig, get_preset, override  # noqa: E402
from training.export import model_card, save_bundle  # noqa: E402


@dataclass(frozen=True)
class RunPaths:
    workdir: str
    out: str

    @property
    def checkpoints(self) -> str:
        return os.path.join(self.workdir, "ckpt")


def build_task(cfg: TrainConfig):
    """The task object for the preset's architecture (data loaded here, at the edge)."""
    if cfg.model.architecture == "seed":
        from training.seed import SeedTask, load_fashion_mnist
        return SeedTask(cfg, *load_fashion_mnist(cfg.data))
    from training.data import list_images, load_photos, split_paths
    from training.residual import ResidualTask
    from training.fold_channel import FoldChannelTask
    from training.periodic import PeriodicTask
    task_class = {"periodic": PeriodicTask, "fold": FoldChannelTask}.get(cfg.model.architecture, ResidualTask)
    train_paths, val_paths = split_paths(list_images(cfg.data), cfg.validation_fraction)
    print(f"data: {len(train_paths)} training and {len(val_paths)} validation photos from {cfg.data}", flush=True)
    return task_class(cfg, load_photos(train_paths, cfg.max_photo_side), load_photos(val_paths, cfg.max_photo_side))


def pick_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs, else the default (one device)."""
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def example_dataset(task, cfg: TrainConfig, start_step: int) -> tf.data.Dataset:
    """Examples of steps start_step, start_step + 1, ... batched to the global batch size;
    built in a background thread (prefetch) while the previous step trains."""
    def examples():
        step = start_step
        while True:
            inputs = task.example(step, cfg.batch_size)
            for i in range(cfg.batch_size):
                yield tuple(x[i] for x in inputs)
            step += 1

    ds = tf.data.Dataset.from_generator(examples, output_signature=task.signature())
    return ds.batch(cfg.batch_size, drop_remainder=True).prefetch(2)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of `step`: `learning_rate`, times `lr_drop_factor` from `lr_drop_step`."""
    if cfg.lr_drop_step and step >= cfg.lr_drop_step:
        return cfg.learning_rate * cfg.lr_drop_factor
    return cfg.learning_rate


class Trainer:
    """The training loop around a task: steps, logging, checkpoints, evaluation, export."""

    def __init__(self, cfg: TrainConfig, paths: RunPaths, resume: bool = True, init_from: str | None = None):
        self.cfg, self.paths = cfg, paths
        if cfg.mixed_precision and tf.config.list_physical_devices("GPU"):
            keras.mixed_precision.set_global_policy("mixed_float16")
        self.strategy = pick_strategy()
        with self.strategy.scope():
            self.task = build_task(cfg)
            optimizer = keras.optimizers.Adam(cfg.learning_rate)
            if keras.mixed_precision.global_policy().name == "mixed_float16":
                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
            self.optimizer = optimizer
            self.optimizer.build(self.task.trainable_variables())
            self.step = tf.Variable(0, dtype=tf.int64, name="step", trainable=False)
            self.wall_time = tf.Variable(0.0, dtype=tf.float64, name="wall_time", trainable=False)
        self.checkpoint = tf.train.Checkpoint(step=self.step, wall_time=self.wall_time,
                                              optimizer=self.optimizer, **self.task.trackables())
        self.manager = tf.train.CheckpointManager(self.checkpoint, paths.checkpoints, max_to_keep=3)
        if resume and self.manager.latest_checkpoint:
            self.checkpoint.restore(self.manager.latest_checkpoint).expect_partial()
            print(f"resumed from {self.manager.latest_checkpoint} at step {int(self.step)}", flush=True)
        elif init_from:
            self.init_networks(init_from)
        self.optimizer.learning_rate = learning_rate(cfg, int(self.step))  # the config sets it, not the checkpoint
        self.last_eval: dict = {}
        self.stop_requested = False
        tf.io.gfile.makedirs(paths.workdir)
        self.summary_writer = tf.summary.create_file_writer(os.path.join(paths.workdir, "tb"))

    def init_networks(self, workdir: str) -> None:
        """Start from the networks (not the step or optimiser) of another run's latest
        checkpoint, e.g. a `fold` run before its `periodic` fine-tuning. Raises
        FileNotFoundError when that run has no checkpoint."""
        latest = tf.train.latest_checkpoint(os.path.join(workdir, "ckpt"))
        if not latest:
            raise FileNotFoundError(f"no checkpoint under {workdir}/ckpt to initialise from")
        networks = {k: v for k, v in self.task.trackables().items() if isinstance(v, keras.Model)}
        tf.train.Checkpoint(**networks).restore(latest).expect_partial()
        print(f"networks initialised from {latest}", flush=True)

    # -- compiled steps --------------------------------------------------------------------
    @tf.function
    def _replica_step(self, canvas, bits, step):
        seed = tf.stack([tf.constant(self.cfg.seed, tf.int32), tf.cast(step, tf.int32)])
        with tf.GradientTape() as tape:
            loss, metrics = self.task.losses(canvas, bits, step, seed)
            scaled = loss / self.strategy.num_replicas_in_sync
            if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
                scaled = self.optimizer.scale_loss(scaled)
        variables = self.task.trainable_variables()
        grads = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(grads, variables))
        return metrics

    @tf.function
    def _distributed_step(self, batch, step):
        per_replica = self.strategy.run(self._replica_step, args=(*batch, step))
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None) for k, v in per_replica.items()}

    @tf.function
    def _evaluate(self, canvas, bits, step, psnr):
        return self.task.evaluate(canvas, bits, step, psnr)

    # -- loop ------------------------------------------------------------------------------
    def run(self, total_steps: int) -> dict:
        cfg = self.cfg
        start = int(self.step)
        if start >= total_steps:
            print(f"already at step {start} >= {total_steps}; nothing to train", flush=True)
            return self.evaluate()
        self._install_signal_handlers()
        dataset = self.strategy.experimental_distribute_dataset(example_dataset(self.task, cfg, start))
        last_save = last_log = time.time()
        session_start = time.time()
        wall_base = float(self.wall_time.numpy())
        log_every = max(1, min(50, cfg.eval_every // 2))
        print(f"training {cfg.name} from step {start} to {total_steps} (batch {cfg.batch_size}, "
              f"{self.strategy.num_replicas_in_sync} replica(s))", flush=True)
        for batch in dataset:
            step = int(self.step)
            if step == cfg.lr_drop_step:
                self.optimizer.learning_rate = learning_rate(cfg, step)
            metrics = self._distributed_step(batch, tf.constant(step, tf.int64))
            self.step.assign_add(1)
            self.wall_time.assign(wall_base + time.time() - session_start)
            step += 1
            if hasattr(self.task, "after_step"):
                self.task.after_step(step, metrics)
            if step % log_every == 0 or step == total_steps:
                now = time.time()
                rate = log_every * cfg.batch_size / max(now - last_log, 1e-9)
                last_log = now
                self._log_progress(step, total_steps, rate, metrics)
            if step % cfg.eval_every == 0 or step == total_steps:
                self.evaluate()
            if cfg.export_every and step % cfg.export_every == 0:
                self.export()
            if time.time() - last_save > cfg.checkpoint_every_s:
                self.save()
                last_save = time.time()
            if step >= total_steps or self.stop_requested:
                break
        self.save()
        if self.stop_requested:
            print(f"stopped at step {int(self.step)}; resume with the same --workdir", flush=True)
        return self.last_eval

    def _log_progress(self, step, total, rate, metrics):
        values = {k: float(v) for k, v in metrics.items()}
        eta = (total - step) * self.cfg.batch_size / max(rate, 1e-9)
        print(f"step {step}/{total}  {rate:6.1f} img/s  loss {values['loss']:.4f}  "
              f"bit_acc {values['bit_acc']:.3f}  psnr {values['psnr']:.1f}  "
              f"attack {values['attack_strength']:.2f}  target {values.get('psnr_target', values['psnr']):.2f}  eta {format_duration(eta)}", flush=True)
        with self.summary_writer.as_default(step=step):
            for k, v in values.items():
                tf.summary.scalar(f"train/{k}", v)
            tf.summary.scalar("train/img_per_s", rate)

    def evaluate(self, psnr: float | None = None) -> dict:
        """Validation metrics (at `psnr`, default the schedule's), appended to metrics.jsonl /
        metrics.csv / TensorBoard."""
        from training.residual import as_floats, describe_eval
        canvas, bits = self.task.eval_example()
        step = int(self.step)
        results = as_floats(self._evaluate(tf.constant(canvas), tf.constant(bits), tf.constant(step, tf.int64),
                                           tf.constant(-1.0 if psnr is None else psnr, tf.float32)))
        print(f"eval @ {step}: {describe_eval(results)}", flush=True)
        record = {"step": step, "wall_time_s": round(float(self.wall_time.numpy()), 1), **results}
        append_metrics(self.paths.workdir, record)
        with self.summary_writer.as_default(step=step):
            for k, v in results.items():
                tf.summary.scalar(f"val/{k}", v)
        self.last_eval = results
        return results

    def save(self):
        path = self.manager.save(checkpoint_number=int(self.step))
        print(f"checkpoint {path}", flush=True)

    def export(self, notes: str = "", psnr: float | None = None) -> str:
        """Write the bundle; `psnr` overrides the residual's PSNR (default: the schedule's)."""
        if psnr is not None or not self.last_eval:
            self.evaluate(psnr)
        embedder, extractor = self.task.serving(int(self.step), psnr)
        card = model_card(self.cfg, steps=int(self.step), wall_time_s=float(self.wall_time.numpy()),
                          metrics={k: round(v, 4) for k, v in self.last_eval.items()},
                          data=self.cfg.data, notes=notes, target_psnr=embedder.target_psnr)
        path = save_bundle(self.paths.out, embedder, extractor, card)
        print(f"exported bundle to {path}", flush=True)
        return path

    def _install_signal_handlers(self):
        def request_stop(signum, _frame):
            print(f"signal {signum}: checkpointing and stopping after this step", flush=True)
            self.stop_requested = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, request_stop)


def append_metrics(workdir: str, record: dict) -> None:
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")
    csv_path = os.path.join(workdir, "metrics.csv")
    new = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(record))
        if new:
            writer.writeheader()
        writer.writerow(record)


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default", help="preset name (see --list-presets)")
    parser.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    parser.add_argument("--data", help="folder, glob or gs:// prefix of training images")
    parser.add_argument("--steps", type=int, help="total training steps (default: the preset's)")
    parser.add_argument("--out", help="bundle directory to export (default: WORKDIR/bundle)")
    parser.add_argument("--workdir", help="checkpoints and logs (default: runs/PRESET)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="continue from the workdir's latest checkpoint (default: on)")
    parser.add_argument("--init-from", metavar="WORKDIR",
                        help="start a new run from another run's networks (its latest checkpoint)")
    parser.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    parser.add_argument("--export-every", type=int, help="also export every N steps")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override a preset field, e.g. attacks.crop_probability=0.2 (repeatable)")
    parser.add_argument("--notes", default="", help="free text recorded in the model card")
    parser.add_argument("--export-only", action="store_true",
                        help="export the workdir's latest checkpoint without training")
    parser.add_argument("--export-psnr", type=float,
                        help="normalise the exported residual to this PSNR instead of the schedule's")
    return parser.parse_args(argv)


def configure(args: argparse.Namespace) -> tuple[TrainConfig, RunPaths]:
    cfg = get_preset(args.preset)
    overrides = {k: v for k, v in {"data": args.data, "steps": args.steps, "seed": args.seed,
                                   "export_every": args.export_every}.items() if v is not None}
    cfg = cfg.replace(**overrides)
    for assignment in args.set:
        cfg = override(cfg, assignment)
    workdir = args.workdir or os.path.join("runs", cfg.name)
    return cfg, RunPaths(workdir=workdir, out=args.out or os.path.join(workdir, "bundle"))


def list_presets() -> str:
    return "\n".join(f"{name:8s} {cfg.description}" for name, cfg in PRESETS.items())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_presets:
        print(list_presets())
        return 0
    try:
        cfg, paths = configure(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    tf.keras.utils.set_random_seed(cfg.seed)
    try:
        trainer = Trainer(cfg, paths, resume=args.resume, init_from=args.init_from)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.export_only:
        if not trainer.manager.latest_checkpoint:
            print(f"error: no checkpoint in {paths.checkpoints}", file=sys.stderr)
            return 2
        trainer.export(notes=args.notes, psnr=args.export_psnr)
        return 0
    trainer.run(cfg.steps)
    if trainer.stop_requested:
        return 0
    trainer.export(notes=args.notes, psnr=args.export_psnr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
