"""Training throughput per preset: images per second of the Trainer's real step function.

    PYTHONPATH=. .venv/bin/python benchmarks/train_throughput.py [--presets tiny,default,gpu,seed]
        [--steps 10] [--warmup 2] [--data filigree/data/samples]

For each preset a `training.train.Trainer` is built in a temporary workdir (residual presets on
the photos in --data, the bundled samples by default; `seed` on Fashion-MNIST when installed,
else on random 28x28 images written as idx files). A few of the preset's own batches are made
with the task's `example`, then `Trainer._distributed_step` (forward, attacks, backward, Adam
update; the step the training loop runs) is called `--warmup` times (graph tracing) and timed
over `--steps` more calls. Printed per preset: batch size, working size / canvas, trainable
parameters, seconds per step, training images per second, and how fast `example` alone makes
batches (the loop builds them in a background thread, so on a small CPU they compete).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from training import train  # noqa: E402
from training.config import TrainConfig, get_preset  # noqa: E402
from training.seed import find_idx  # noqa: E402

DEFAULT_PRESETS = ("tiny", "default", "gpu", "seed")
FIRST_STEP = 10_000
"""Timed steps are numbered from here: past every preset's attack and PSNR ramps."""


@dataclass(frozen=True)
class Result:
    preset: str
    batch: int
    size: str
    params: int
    step_s: float
    img_per_s: float
    data_img_per_s: float


def write_idx(path: Path, images: np.ndarray) -> None:
    """A gzipped unsigned-byte IDX file."""
    header = bytes([0, 0, 8, images.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


def synthetic_fashion_mnist(folder: Path, train_n: int = 2048, val_n: int = 512) -> str:
    """Random 28x28 images in Fashion-MNIST's file layout; returns the folder."""
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (train_n, 28, 28)))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (val_n, 28, 28)))
    return str(folder)


def has_idx_data(folder: str) -> bool:
    try:
        find_idx(folder, "train-images-idx3-ubyte")
        find_idx(folder, "t10k-images-idx3-ubyte")
    except FileNotFoundError:
        return False
    return True


def bench_config(name: str, photos: str, scratch: Path) -> tuple[TrainConfig, str]:
    """The preset with its data pointed at something present; also says which data."""
    cfg = get_preset(name)
    if cfg.model.architecture == "seed":
        if has_idx_data(cfg.data):
            return cfg, "Fashion-MNIST"
        return cfg.replace(data=synthetic_fashion_mnist(scratch)), "synthetic 28x28"
    return cfg.replace(data=photos), os.path.relpath(photos, ROOT) if photos.startswith(str(ROOT)) else photos


def size_label(cfg: TrainConfig) -> str:
    size = cfg.model.working_size
    if cfg.model.architecture == "seed":
        return f"{size}"
    return f"{size} / {size * cfg.attacks.canvas_scale}"


def time_examples(task, batch_size: int, count: int) -> float:
    """Images per second of `task.example` alone."""
    start = time.perf_counter()
    for i in range(count):
        task.example(FIRST_STEP + i, batch_size)
    return count * batch_size / (time.perf_counter() - start)


def measure(name: str, photos: str, steps: int, warmup: int) -> tuple[Result, str]:
    """Build a Trainer for the preset and time its step function."""
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    with tempfile.TemporaryDirectory(prefix=f"throughput-{name}-") as tmp:
        scratch = Path(tmp)
        cfg, data_label = bench_config(name, photos, scratch)
        keras.utils.set_random_seed(cfg.seed)
        trainer = train.Trainer(cfg, train.RunPaths(str(scratch / "work"), str(scratch / "bundle")), resume=False)
        task, batch = trainer.task, cfg.batch_size
        distinct = min(4, warmup + steps)
        batches = [tuple(tf.constant(x) for x in task.example(FIRST_STEP + i, batch)) for i in range(distinct)]

        def step(i: int) -> dict:
            return trainer._distributed_step(batches[i % distinct], tf.constant(FIRST_STEP + i, tf.int64))

        for i in range(warmup):
            float(step(i)["loss"])
        start = time.perf_counter()
        for i in range(warmup, warmup + steps):
            metrics = step(i)
        float(metrics["loss"])
        elapsed = time.perf_counter() - start
        params = int(sum(np.prod(v.shape) for v in task.trainable_variables()))
        data_rate = time_examples(task, batch, max(2, steps // 2))
    return Result(name, batch, size_label(cfg), params, elapsed / steps, steps * batch / elapsed, data_rate), data_label


def format_table(rows: list[tuple[Result, str]]) -> str:
    header = ("| preset | batch | working / canvas px | params | s/step | train img/s | "
              "example() img/s | data |\n|---|---:|---:|---:|---:|---:|---:|---|")
    lines = [f"| {r.preset} | {r.batch} | {r.size} | {r.params:,} | {r.step_s:.3f} | {r.img_per_s:.1f} | "
             f"{r.data_img_per_s:.0f} | {data} |" for r, data in rows]
    return "\n".join([header, *lines])


def machine_summary() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    devices = f"{len(gpus)} GPU(s)" if gpus else "CPU only"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{devices}, {os.cpu_count()} cores, load average {load:.1f} at start, TF {tf.__version__}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(DEFAULT_PRESETS), help="comma-separated preset names")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per preset")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (tracing)")
    parser.add_argument("--data", default=str(ROOT / "filigree" / "data" / "samples"),
                        help="photos for the residual presets")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.presets.split(",") if n.strip()]
    for name in names:
        get_preset(name)  # fail early on a typo
    print(machine_summary(), flush=True)
    rows = []
    for name in names:
        result, data = measure(name, args.data, args.steps, args.warmup)
        print(f"{name}: {result.img_per_s:.1f} img/s ({result.step_s:.3f} s/step)", flush=True)
        rows.append((result, data))
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
