"""Export trained networks as a model bundle (see docs/bundle.md): two SavedModels with explicit
`serving_default` signatures and a `model.json` model card."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time

import tensorflow as tf

BUNDLE_FORMAT = "filigree-bundle/1"
BUNDLE_VERSION = "0.1.0"


class EmbedderServing(tf.Module):
    """`serving_default(image [N,S,S,3], bits [N,L]) -> {"residual": [N,S,S,C]}`."""

    def __init__(self, residual_fn, working_size: int, payload_bits: int, networks: list,
                 target_psnr: float | None = None):
        super().__init__(name="embedder_serving")
        self.target_psnr = target_psnr
        self.residual_fn = residual_fn
        self.networks = networks  # tracked, so their variables are saved
        self.serve = tf.function(
            self._serve,
            input_signature=[
                tf.TensorSpec([None, working_size, working_size, 3], tf.float32, name="image"),
                tf.TensorSpec([None, payload_bits], tf.float32, name="bits"),
            ],
        )

    def _serve(self, image, bits):
        return {"residual": tf.cast(self.residual_fn(image, bits), tf.float32)}


class ExtractorServing(tf.Module):
    """`serving_default(image [N,S,S,3]) -> {"logits": [N,L]}`."""

    def __init__(self, logits_fn, working_size: int, networks: list):
        super().__init__(name="extractor_serving")
        self.logits_fn = logits_fn
        self.networks = networks  # tracked, so their variables are saved
        self.serve = tf.function(
            self._serve,
            input_signature=[tf.TensorSpec([None, working_size, working_size, 3], tf.float32, name="image")],
        )

    def _serve(self, image):
        return {"logits": tf.cast(self.logits_fn(image), tf.float32)}


class GeneratorServing(tf.Module):
    """`serving_default(bits [N,L]) -> {"tile": [N,T,T]}`: the periodic layout's payload tile
    (zero mean, unit RMS, circular)."""

    def __init__(self, tile_fn, tile: int, payload_bits: int, networks: list, target_psnr: float | None = None):
        super().__init__(name="generator_serving")
        self.target_psnr = target_psnr
        self.tile_fn = tile_fn
        self.networks = networks
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, payload_bits], tf.float32, name="bits")])

    def _serve(self, bits):
        return {"tile": tf.cast(self.tile_fn(bits), tf.float32)}


class TileExtractorServing(tf.Module):
    """`serving_default(tile [N,T,T]) -> {"logits": [N,L]}`: reads an aligned folded tile."""

    def __init__(self, logits_fn, tile: int, networks: list):
        super().__init__(name="tile_extractor_serving")
        self.logits_fn = logits_fn
        self.networks = networks
        self.serve = tf.function(
            self._serve, input_signature=[tf.TensorSpec([None, tile, tile], tf.float32, name="tile")])

    def _serve(self, tile):
        return {"logits": tf.cast(self.logits_fn(tile), tf.float32)}


def model_card(cfg, *, steps: int, wall_time_s: float, metrics: dict, data: str, notes: str = "",
               target_psnr: float | None = None) -> dict:
    """The `model.json` contents for a model trained with `cfg` (a TrainConfig)."""
    from filigree.payload import choose_ecc  # the payload layer owns the bits <-> payload mapping

    layout = periodic_layout(cfg)
    carried = 0 if layout is None else layout["salt_bits"] * layout["salt_repeats"]
    ecc = choose_ecc(cfg.model.payload_bits - carried)
    extra = {} if layout is None else {"layout": layout}
    return {**extra,
        "format": BUNDLE_FORMAT,
        "name": f"filigree-{cfg.name}",
        "version": BUNDLE_VERSION,
        "preset": cfg.name,
        "working_size": cfg.model.working_size,
        "payload_bits": cfg.model.payload_bits,
        "color_mode": cfg.model.color_mode,
        "default_strength": 1.0,
        "target_psnr": None if target_psnr is None else round(float(target_psnr), 2),
        "tiling": {"max_grid": cfg.model.tile_grid, "min_tile": cfg.model.min_tile},
        "ecc": dataclasses.asdict(ecc),
        "training": {
            "data": data,
            "steps": int(steps),
            "wall_time_s": round(float(wall_time_s), 1),
            "hardware": hardware_summary(),
            "seed": cfg.seed,
            "config": dataclasses.asdict(cfg),
            "notes": notes,
        },
        "metrics": metrics,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def periodic_layout(cfg) -> dict | None:
    """The card's `layout` entry for the periodic architectures (filigree/periodic.py), None
    for the others."""
    if cfg.model.architecture not in ("periodic", "fold"):
        return None
    from filigree.periodic import PeriodicLayout
    return PeriodicLayout(tile_size=cfg.model.working_size, template_weight=cfg.model.template_weight).to_dict()


def hardware_summary() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return f"{len(gpus)} GPU(s): " + ", ".join(g.name for g in gpus)
    return f"CPU only, {os.cpu_count()} cores"


def save_bundle(out_dir: str, embedder: EmbedderServing, extractor: ExtractorServing, card: dict) -> str:
    """Write the bundle. Local bundles are written beside the target and swapped in whole, so a
    reader never sees a half-written bundle."""
    local = "://" not in out_dir
    target = out_dir.rstrip("/")
    staging = f"{target}.partial-{os.getpid()}" if local else target
    if local and os.path.exists(staging):
        shutil.rmtree(staging)
    tf.io.gfile.makedirs(staging)
    tf.saved_model.save(embedder, os.path.join(staging, "embedder"), signatures={"serving_default": embedder.serve})
    tf.saved_model.save(extractor, os.path.join(staging, "extractor"), signatures={"serving_default": extractor.serve})
    with tf.io.gfile.GFile(os.path.join(staging, "model.json"), "w") as f:
        f.write(json.dumps(card, indent=2, sort_keys=True) + "\n")
    if local:
        previous = f"{target}.previous-{os.getpid()}"
        if os.path.exists(target):
            os.replace(target, previous)
        os.replace(staging, target)
        shutil.rmtree(previous, ignore_errors=True)
    return target
