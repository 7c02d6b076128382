"""RunInference model handlers: the bundle loaded once per worker, batches weighed by their pixels,
and model calls of one fixed shape (byte-identical re-runs)."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Iterable, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from filigree.tiling import tiled_residual
from pipeline.console import quiet_native_logs
from pipeline.planning import Item

class _NoMemoryProbeWarning(logging.Filter):
    """Beam's RunInference warns on every batch that it cannot read process memory when torch
    is absent (its `resource` import is tied to a torch import); the warning says nothing
    about this job."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Resource module is not available" not in record.getMessage()


logging.getLogger().addFilter(_NoMemoryProbeWarning())


def _same_dir(a: str, b: str) -> bool:
    """Whether two local paths name one directory (a URI never equals a local path)."""
    return "://" not in a and os.path.realpath(a) == os.path.realpath(b)


def fixed_shape_calls(fn, arrays: tuple[np.ndarray, ...], rows: int) -> np.ndarray:
    """`fn(*arrays)` computed in calls of exactly `rows` rows (the last one zero-padded).

    TensorFlow's CPU kernels give results that differ in the last float bits with the batch
    size (measured: 4e-8 on residuals between batches of 3 and 4), which flips rounding in some
    written pixels (always visible in 16-bit outputs). How a runner cuts batches varies from run
    to run; with every call the same shape, and rows independent of their neighbours (checked
    for the bundled model: zero difference), each image's result no longer depends on it, so
    re-runs write byte-identical files. Costs some compute on short batches."""
    count = arrays[0].shape[0]
    outputs = []
    for start in range(0, count, rows):
        chunk = [a[start:start + rows] for a in arrays]
        short = rows - chunk[0].shape[0]
        if short:
            chunk = [np.concatenate([c, np.zeros((short, *c.shape[1:]), c.dtype)]) for c in chunk]
        outputs.append(np.asarray(fn(*chunk))[:rows - short])
    return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]


INFERENCE_ROWS = 32
"""Working views per model call: every call has this shape (see `fixed_shape_calls`), whatever
the batch's images and tile counts."""
MAX_BATCH_BYTES = 256 << 20
"""Decoded pixel bytes that one inference batch may carry (embedding batches carry whole
images to the marking step; read-back batches carry only working-size views)."""


def slot_bytes(batch_size: int) -> int:
    return max(1, MAX_BATCH_BYTES // max(1, batch_size))


def batch_slots(element: Any, slot_bytes: int) -> int:
    """Batch slots an element fills: 1, or more for an image larger than one slot's share."""
    item = element[1] if isinstance(element, tuple) and len(element) == 2 else element
    decoded = getattr(item, "decoded", None)
    if decoded is None:
        return 1
    return max(1, -(-decoded.nbytes // slot_bytes))


def travelling_model_dir(model_dir: str | None) -> str | None:
    """The model directory as it travels to workers: a bundled model by its name (None for the
    default), not as the launching machine's path (a venv or a checkout that workers do not
    have), so each worker finds its own installed copy."""
    from filigree.resources import BUNDLED_MODELS, bundled_model_dir
    if model_dir is None:
        return None
    for name in BUNDLED_MODELS:
        if _same_dir(model_dir, bundled_model_dir(name)):
            return None if name == "default" else name
    return model_dir


def load_worker_bundle(model_dir: str | None, verbose: bool = False):
    """Load a bundle on a worker (None: the default bundled model; a bundled model's name:
    that one); TensorFlow's start-up lines stay off the console unless `verbose` (see
    `pipeline.console`)."""
    quiet_native_logs(verbose)
    from filigree.bundle import load_bundle
    from filigree.resources import model_dir_of
    return load_bundle(model_dir_of(model_dir))


class SharedBundle:
    """A loaded bundle as a `Shared` object (those must be weak-referenceable)."""

    def __init__(self, bundle):
        self.bundle = bundle


class BundleHandler(ModelHandler):
    """Loads the bundle once per worker process (RunInference shares it across threads)."""

    def __init__(self, model_dir: str, batch_size: int, verbose: bool = False):
        super().__init__()
        self.model_dir = travelling_model_dir(model_dir)
        self.batch_size = batch_size
        self.verbose = verbose

    def load_model(self):
        return load_worker_bundle(self.model_dir, self.verbose)

    def batch_elements_kwargs(self):
        # Batch weight in slots: an image counts as the number of slots its pixels fill, so
        # a batch holds `batch_size` small images or a few large ones, never more than about
        # MAX_BATCH_BYTES of decoded pixels (an embedding batch carries its images).
        return {"min_batch_size": 1, "max_batch_size": self.batch_size,
                "element_size_fn": functools.partial(batch_slots, slot_bytes=slot_bytes(self.batch_size))}

    def share_model_across_processes(self) -> bool:
        return False

    def get_num_bytes(self, batch: Sequence[Item]) -> int:
        """Bytes of pixels and views a batch carries, for RunInference's metrics (its default
        pickles the whole batch, decoded images included, just to measure it)."""
        total = 0
        for item in batch:
            decoded = getattr(item, "decoded", None)
            total += decoded.nbytes if decoded is not None else 0
            total += sum(int(view.nbytes) for view in getattr(item, "views", {}).values())
        return total


def stack_logits(fn, stacks: list[np.ndarray], bits: int) -> list[np.ndarray]:
    """The extractor's logits [len(stack), L] for each stack of views (some may be empty), in
    calls of `INFERENCE_ROWS` rows."""
    counts = [len(stack) for stack in stacks]
    if sum(counts) == 0:
        return [np.zeros((0, bits), np.float32) for _ in stacks]
    logits = fixed_shape_calls(fn, (np.concatenate([s for s in stacks if len(s)]),), INFERENCE_ROWS)
    ends = np.cumsum(counts)
    return [logits[end - n:end] for n, end in zip(counts, ends)]


class EmbedderHandler(BundleHandler):
    """Items with clean tiles and bits -> PredictionResult(item, {"residual": [g*S, g*S, C],
    "source_logits": [g*g, L]}): the residual to add, and the extractor's logits on the same
    tiles of the unmarked source (whether it carries a mark already, see `filigree.presence`)."""

    def run_inference(self, batch: Sequence[Item], model, inference_args=None) -> Iterable[PredictionResult]:
        if model.card.layout is not None:
            return self._periodic(batch, model)
        tiling = model.card.tiling
        counts = [len(item.views["clean"]) for item in batch]
        views = np.concatenate([item.views["clean"] for item in batch])
        bits = np.concatenate([np.repeat(item.bits[None], n, axis=0) for item, n in zip(batch, counts)])
        residuals = fixed_shape_calls(model.embed_fn, (views, bits), INFERENCE_ROWS)
        source_logits = fixed_shape_calls(model.extract_fn, (views,), INFERENCE_ROWS)
        ends = np.cumsum(counts)
        return [PredictionResult(item, {"residual": tiled_residual(residuals[end - n:end], tiling),
                                        "source_logits": source_logits[end - n:end]})
                for item, n, end in zip(batch, counts, ends)]

    @staticmethod
    def _periodic(batch: Sequence[Item], model) -> list[PredictionResult]:
        """Periodic bundles: PredictionResult(item, {"tile": the generator's payload tile
        [n, n], "source_logits": logits [K, L] of the source's sync hypotheses})."""
        tiles = fixed_shape_calls(model.embed_fn, (np.stack([item.bits for item in batch]),), INFERENCE_ROWS)
        sources = stack_logits(model.extract_fn, [item.views["clean"] for item in batch], model.card.payload_bits)
        return [PredictionResult(item, {"tile": tile, "source_logits": logits})
                for item, tile, logits in zip(batch, tiles, sources)]

    def get_metrics_namespace(self) -> str:
        return "filigree_embedder"


class ExtractorHandler(BundleHandler):
    """Items with named tile stacks -> PredictionResult(item, {view name: logits [N, L]})."""

    def run_inference(self, batch: Sequence[Item], model, inference_args=None) -> Iterable[PredictionResult]:
        stacks = [(item, name, item.views[name]) for item in batch for name in item.views]
        logits = stack_logits(model.extract_fn, [view for _, _, view in stacks], model.card.payload_bits)
        per_item: dict[int, dict[str, np.ndarray]] = {id(item): {} for item in batch}
        for (item, name, _), stack in zip(stacks, logits):
            per_item[id(item)][name] = stack
        return [PredictionResult(item, per_item[id(item)]) for item in batch]

    def get_metrics_namespace(self) -> str:
        return "filigree_extractor"
