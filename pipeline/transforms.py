"""The Beam graph: list images, join payload assignments, decode, batched embedding through
RunInference, write marked images, verify (after attacks), and build one record per input.

Reliability contract
--------------------
* Every matched image and every manifest row ends in exactly one record (`ok`, `error` or
  `skipped`, each `error`/`skipped` with an `error_code` and a message); failures are records,
  never only log lines. Expected failures (unreadable or undecodable files, bad payloads, write
  errors) are turned into records by the step that meets them; anything unexpected that escapes
  a step (a bug, an inference failure) is caught by Beam's `with_exception_handling` and its
  dead letter becomes an `error` record for each image it carried (`dead_letter_records`; a
  failed inference batch becomes one record per image of the batch). Codes of those records:
  `internal_error` (planning, decoding), `inference_failed` (embedding or read-back batch),
  `mark_failed`, `readback_failed`.
  An `error` record with a non-null `output` means the marked file was written but its
  read-back failed.
* Outputs never leave `OUTPUT/marked/`: images under `--input` keep their relative path,
  absolute or URI paths from a manifest go to `OUTPUT/marked/_external/<full path>`, and every
  target is checked to lie under `OUTPUT/marked/` before writing (`bad_path` otherwise). When
  the output format differs from the input's extension (GIF, BMP with alpha, or content that
  does not match its extension), the output extension is appended (`a.gif` -> `a.gif.png`), so
  two inputs never share an output. A marked file never replaces its own input
  (`overwrites_input`). Files this job writes (`OUTPUT/marked/`, `OUTPUT/report/`) are never
  listed as inputs, unless `--input` itself lies in one of them (`--mode extract --input
  OUT/marked`), so a re-run with `--output` inside `--input` does not mark its own outputs.
* Writes are atomic (temp file + rename) to a deterministic name, so a retried element or a
  re-run writes the same file again and leaves no partial file. Transient I/O errors (anything
  but not-found/permission/is-a-directory errors) are retried in place a bounded number of times
  (`IO_ATTEMPTS`, with `RETRY_DELAYS_S`) when reading an image and when writing a marked file;
  Beam's DirectRunner does not retry failed bundles (Dataflow does, and the writes are
  idempotent).
* Decoding runs under `--decode_timeout_s` (`timeout`); sizes above `--max_pixels` are refused
  from the header (`too_large`) before any pixel is allocated.
* Records hold no timestamps and nothing random, so re-running over the same inputs and output
  gives the same records (in any order: shards and line order depend on the runner) and an
  identical `summary.json`. With `--skip_existing`, images whose marked output exists are
  `skipped` (`exists`); the check looks at the same-extension name and at the appended `.png`
  name (the converting formats' output); other content/extension mismatches are simply redone.
* Nothing here runs a shell or evaluates input data; the key only lives inside the payload
  codec (whose repr hides it) and never enters a record, a log line or a file name.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, RunInference
from apache_beam.metrics import Metrics
from apache_beam.utils import shared
from PIL import Image

from pipeline import imageio
from pipeline.attacks import parse_suite
from pipeline.bundle import ModelCard
from pipeline.manifest import InputSpec, ManifestRow, has_scheme, is_image_name, normalize, read_manifest, relative_to
from pipeline.options import RunConfig
from pipeline.payload import PayloadCodec, PayloadError, ReadResult, format_payload
from pipeline.reframe import SearchConfig, search_source
from pipeline.tiling import Tiling, decode_grid, decode_tiles, read_views, tile_views, tiled_residual
from pipeline.watermarker import Watermarker, mark_pixels

NAMESPACE = "filigree"
LOG = logging.getLogger("filigree")


class _NoMemoryProbeWarning(logging.Filter):
    """Beam's RunInference warns on every batch that it cannot read process memory when torch
    is absent (its `resource` import is tied to a torch import); the warning says nothing
    about this job."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Resource module is not available" not in record.getMessage()


logging.getLogger().addFilter(_NoMemoryProbeWarning())


# -- records ---------------------------------------------------------------------------------

def new_record(image: str, mode: str, **fields: Any) -> dict:
    """A report record with every key present."""
    record = {
        "image": image, "status": "ok", "error": None, "error_code": None, "output": None,
        "payload": None, "decoded": None, "detected": None, "p_value": None, "ber": None,
        "corrected": None, "match": None, "psnr": None, "attacks": {}, "width": None,
        "height": None, "format": None, "line": None, "notes": [], "mode": mode,
    }
    record.update(fields)
    return record


def error_record(image: str, mode: str, code: str, message: str, **fields: Any) -> dict:
    return new_record(image, mode, status="error", error_code=code, error=message, **fields)


def skipped_record(image: str, mode: str, code: str, message: str, **fields: Any) -> dict:
    return new_record(image, mode, status="skipped", error_code=code, error=message, **fields)


# -- jobs: one image to process ----------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """An image to process, with its expected payload (embed: required) and manifest line."""

    path: str
    payload: str | None
    line: int | None
    relative: str


@dataclass
class Item:
    """A decoded image travelling through inference (the image rides along, see GUIDE §2)."""

    job: Job
    record: dict
    decoded: imageio.DecodedImage | None = None
    bits: np.ndarray | None = None
    views: dict[str, np.ndarray] = field(default_factory=dict)
    """Per view name, its working-size tiles [N, S, S, 3] (see `pipeline.tiling`): the tiles of
    the image's grid for the embedder, every tile of every grid a reader tries for the extractor."""
    sources: dict[str, np.ndarray] = field(default_factory=dict)
    """With --reframe: per view, a small RGB copy of its image for a re-framing search."""
    grid: int | None = None
    """Verification of a marked image: the grid it was marked with, the only one its views
    hold (see `pipeline.tiling.decode_grid`); None: every grid a reader tries."""


def plan_jobs(key: str, grouped: dict, cfg: RunConfig, root: str) -> Iterator[Job | dict]:
    """Jobs and skipped/error records for one path: its listing hits and manifest rows."""
    rows: list[ManifestRow] = sorted(grouped.get("rows", []), key=lambda r: r.line)
    relative = output_relative(root, key)
    if not rows:
        if cfg.mode == "extract":
            yield Job(key, None, None, relative)
        elif cfg.payload is not None:
            yield Job(key, cfg.payload, None, relative)
        else:
            yield skipped_record(key, cfg.mode, "no_payload", "no manifest row and no --payload for this image")
        return
    first, *duplicates = rows
    yield Job(key, first.payload, first.line, relative)
    for row in duplicates:
        yield skipped_record(key, cfg.mode, "duplicate_row",
                             f"manifest line {row.line} repeats this image; line {first.line} is used",
                             line=row.line, payload=row.payload)


def output_relative(root: str, path: str) -> str:
    """Relative output path of `path`: its path below `root`, else `_external/<full path>`
    (never absolute, never with `..`; see `imageio.safe_relative_output`)."""
    relative = relative_to(root, path)
    if relative and ".." not in relative.split("/") and not relative.startswith("/"):
        return relative
    try:
        return imageio.safe_relative_output(root, path)
    except ValueError:
        return "_external/unnamed"


class ListInputs(beam.PTransform):
    """(path, {"found": [...], "rows": [...]}) groups plus records for bad manifest rows."""

    def __init__(self, cfg: RunConfig, spec: InputSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec

    def expand(self, pbegin):
        found = (pbegin
                 | "MatchFiles" >> fileio.MatchFiles(self.spec.pattern, empty_match_treatment=
                                                             fileio.EmptyMatchTreatment.ALLOW)
                 | "Paths" >> beam.Map(lambda meta: meta.path)
                 | "OnlyImages" >> beam.Filter(lambda p, single: single or is_image_name(p), self.spec.single_file)
                 | "NotOutputs" >> beam.Filter(lambda p, excluded: not any(relative_to(e, p) for e in excluded),
                                               excluded_prefixes(self.cfg.output, self.spec.root))
                 | "KeyFound" >> beam.Map(lambda p: (p, p)))
        if not self.cfg.assignments:
            return {"groups": found | "AsGroups" >> beam.Map(lambda kv: (kv[0], {"found": [kv[1]], "rows": []})),
                    "records": pbegin | "NoManifestErrors" >> beam.Create([])}
        rows = (pbegin
                | "Manifest" >> beam.Create([self.cfg.assignments])
                | "ReadManifest" >> beam.FlatMap(read_manifest, root=self.spec.root)
                | "SpreadRows" >> beam.Reshuffle())
        good, bad = rows | "CheckRows" >> beam.Partition(lambda row, _: int(row.error is not None), 2)
        bad_records = bad | "BadRowRecords" >> beam.Map(
            lambda row, mode: error_record(row.image, mode, row.error_code, row.error, line=row.line),
            self.cfg.mode)
        keyed_rows = good | "KeyRows" >> beam.Map(lambda row: (row.path, row))
        groups = ({"found": found, "rows": keyed_rows}
                  | "JoinManifest" >> beam.CoGroupByKey())
        return {"groups": groups, "records": bad_records}


def absolute_prefix(path: str) -> str:
    """`path` made absolute when local (outputs are compared with absolute listing paths)."""
    return path if has_scheme(path) else os.path.abspath(path)


def excluded_prefixes(output: str, root: str) -> tuple[str, ...]:
    """Folders this job writes (OUTPUT/marked, OUTPUT/report) that listing must skip: all but
    those holding the input root itself."""
    root = normalize(absolute_prefix(root)).rstrip("/")
    prefixes = []
    for sub in ("marked", "report"):
        prefix = normalize(absolute_prefix(FileSystems.join(output.rstrip("/"), sub))).rstrip("/")
        if root != prefix and relative_to(prefix, root) is None:
            prefixes.append(prefix)
    return tuple(prefixes)


class PlanJobs(beam.DoFn):
    """Joined groups -> Job (main output) or records (tag 'records')."""

    def __init__(self, cfg: RunConfig, root: str):
        self.cfg, self.root = cfg, root

    def process(self, element):
        key, grouped = element
        for out in plan_jobs(key, grouped, self.cfg, self.root):
            if isinstance(out, Job):
                yield out
            else:
                yield beam.pvalue.TaggedOutput("records", out)


# -- decoding ----------------------------------------------------------------------------------

def output_path(cfg: RunConfig, job: Job, extension: str | None = None) -> str:
    """Where the marked image goes: OUTPUT/marked/<relative path>, with the output format's
    extension appended when the input's extension is not one of its names (`a.gif` ->
    `a.gif.png`), so that no two inputs share an output. Raises `_Failure('bad_path')` when
    the target would not lie under OUTPUT/marked/ (it cannot, by construction of `relative`)."""
    relative = job.relative
    if extension and not relative.lower().endswith(_extension_aliases(extension)):
        relative = relative + extension
    marked = FileSystems.join(cfg.output.rstrip("/"), "marked")
    target = FileSystems.join(marked, relative)
    if relative_to(normalize(marked), normalize(target)) is None or relative.startswith("/"):
        raise _Failure("bad_path", f"output path for {job.relative!r} would leave the output folder")
    return target


def existing_output(cfg: RunConfig, job: Job) -> str | None:
    """The marked output of `job` when it already exists (for --skip_existing): the same name,
    or the name with `.png` appended (GIF and BMP-with-alpha inputs are written as PNG)."""
    for extension in (None, ".png"):
        target = output_path(cfg, job, extension)
        if FileSystems.exists(target):
            return target
    return None


def _extension_aliases(extension: str) -> tuple[str, ...]:
    return {".jpg": (".jpg", ".jpeg", ".jpe"), ".tif": (".tif", ".tiff")}.get(extension, (extension,))


IO_ATTEMPTS = 3
"""Tries of one read or write before the image gets an error record."""
RETRY_DELAYS_S = (0.5, 2.0)
"""Pause before the 2nd, 3rd... try."""
PERMANENT_IO_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                       ValueError, TypeError, MemoryError)


def is_permanent(exc: BaseException) -> bool:
    """Errors that a retry cannot cure: missing files, permissions, bad arguments (including
    storage clients' not-found/forbidden errors, recognised by name, HTTP code or message)."""
    if isinstance(exc, PERMANENT_IO_ERRORS):
        return True
    if type(exc).__name__ in ("NotFound", "Forbidden", "Unauthorized", "BadRequest"):
        return True
    if getattr(exc, "code", None) in (400, 401, 403, 404):
        return True
    message = str(exc).lower()
    return "not found" in message or "no such file" in message or "not exist" in message


def with_retries(action, what: str, attempts: int | None = None):
    """`action()`, retried on transient errors (anything `is_permanent` does not name) up to
    `IO_ATTEMPTS` tries; the last error is raised. Only what was being done is logged."""
    attempts = IO_ATTEMPTS if attempts is None else attempts
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - a transient failure of storage is retried
            if attempt >= attempts or is_permanent(exc):
                raise
            delay = RETRY_DELAYS_S[min(attempt - 1, len(RETRY_DELAYS_S) - 1)] if RETRY_DELAYS_S else 0.0
            LOG.warning("%s failed (%s), try %d of %d in %.1f s", what, type(exc).__name__,
                        attempt + 1, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def decode_with_timeout(data: bytes, max_pixels: int, timeout_s: float) -> imageio.DecodedImage:
    """Decode in a worker thread; give up (ImageDecodeError 'timeout') after `timeout_s`."""
    result: dict[str, Any] = {}

    def work():
        try:
            result["image"] = imageio.decode_image(data, max_pixels=max_pixels)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller below
            result["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise imageio.ImageDecodeError("timeout", f"decoding took longer than {timeout_s:g} s")
    if "error" in result:
        raise result["error"]
    return result["image"]


class Prepare(beam.DoFn):
    """Job -> (path, Item) ready for inference, or an error/skipped record (tag 'records')."""

    def __init__(self, cfg: RunConfig, codec: PayloadCodec, working_size: int, tiling: Tiling):
        self.cfg, self.codec, self.working_size, self.tiling = cfg, codec, working_size, tiling
        self.read_counter = Metrics.counter(NAMESPACE, "read")
        self.failed_counter = Metrics.counter(NAMESPACE, "failed")

    def process(self, job: Job):
        cfg = self.cfg
        base = {"line": job.line}
        record = new_record(job.path, cfg.mode, **base)
        try:
            if cfg.mode == "embed":
                output_path(cfg, job)  # refuses, early, a target outside the output folder
                existing = existing_output(cfg, job) if cfg.skip_existing else None
                if existing is not None:
                    yield beam.pvalue.TaggedOutput("records", skipped_record(
                        job.path, cfg.mode, "exists", "marked output already exists (--skip_existing)",
                        output=existing, **base))
                    return
            bits, payload = self._payload_bits(job)
            record["payload"] = payload
            decoded = self._decode(self._read(job.path))
        except _Failure as failure:
            self.failed_counter.inc()
            yield beam.pvalue.TaggedOutput("records", {**record, "status": "error",
                                                       "error_code": failure.code, "error": failure.message})
            return
        self.read_counter.inc()
        record.update(width=decoded.width, height=decoded.height, format=decoded.format,
                      notes=list(decoded.notes))
        if cfg.mode == "embed":
            grid = self.tiling.grid_for(decoded.height, decoded.width, cfg.max_grid)
            view = tile_views(decoded.pixels, grid, self.working_size)
        else:
            view = read_views(decoded.pixels, self.tiling, self.working_size)
        sources = {"clean": search_copy(decoded.pixels, self.working_size, self.tiling)} if cfg.reframe else {}
        yield job.path, Item(job, record, decoded, bits, {"clean": view}, sources)

    def _payload_bits(self, job: Job) -> tuple[np.ndarray | None, str | None]:
        if job.payload is None:
            return None, None
        try:
            value = self.codec.parse(job.payload)
            return self.codec.encode(value), format_payload(value, self.codec.data_bits)
        except PayloadError as exc:
            raise _Failure("bad_payload", str(exc)) from None

    @staticmethod
    def _read(path: str) -> bytes:
        try:
            return with_retries(lambda: imageio.read_bytes(path), "reading an image")
        except FileNotFoundError:
            raise _Failure("not_found", "image file not found") from None
        except IsADirectoryError:
            raise _Failure("read_error", "cannot read image: it is a directory") from None
        except Exception as exc:  # noqa: BLE001 - any I/O failure is this image's error
            message = str(exc)
            code = "not_found" if "not found" in message.lower() or "no such file" in message.lower() else "read_error"
            raise _Failure(code, f"cannot read image: {message[:300]}") from None

    def _decode(self, data: bytes) -> imageio.DecodedImage:
        try:
            return decode_with_timeout(data, self.cfg.max_pixels, self.cfg.decode_timeout_s)
        except imageio.ImageDecodeError as exc:
            raise _Failure(exc.code, str(exc)) from None
        except MemoryError:
            raise _Failure("too_large", "not enough memory to decode this image") from None
        except Exception as exc:  # noqa: BLE001 - a decoder bug on hostile input is this image's error
            raise _Failure("corrupt", f"cannot decode image: {type(exc).__name__}: {exc}"[:300]) from None


class _Failure(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


# -- inference ---------------------------------------------------------------------------------

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


def _travelling_model_dir(model_dir: str | None) -> str | None:
    """The model directory as it travels to workers: the bundled model as None, not as the
    launching machine's path (a venv or a checkout that workers do not have), so each worker
    finds its own installed copy."""
    from pipeline.resources import bundled_model_dir
    bundled = model_dir is not None and _same_dir(model_dir, bundled_model_dir())
    return None if bundled else model_dir


def load_worker_bundle(model_dir: str | None):
    """Load a bundle on a worker (None: the bundled model)."""
    from pipeline.bundle import load_bundle
    from pipeline.resources import bundled_model_dir
    return load_bundle(model_dir or bundled_model_dir())


class _SharedBundle:
    """A loaded bundle as a `Shared` object (those must be weak-referenceable)."""

    def __init__(self, bundle):
        self.bundle = bundle


class _BundleHandler(ModelHandler):
    """Loads the bundle once per worker process (RunInference shares it across threads)."""

    def __init__(self, model_dir: str, batch_size: int):
        super().__init__()
        self.model_dir = _travelling_model_dir(model_dir)
        self.batch_size = batch_size

    def load_model(self):
        return load_worker_bundle(self.model_dir)

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


class EmbedderHandler(_BundleHandler):
    """Items with clean tiles and bits -> PredictionResult(item, residual [g*S, g*S, C])."""

    def run_inference(self, batch: Sequence[Item], model, inference_args=None) -> Iterable[PredictionResult]:
        tiling = model.card.tiling
        counts = [len(item.views["clean"]) for item in batch]
        views = np.concatenate([item.views["clean"] for item in batch])
        bits = np.concatenate([np.repeat(item.bits[None], n, axis=0) for item, n in zip(batch, counts)])
        residuals = fixed_shape_calls(model.embed_fn, (views, bits), INFERENCE_ROWS)
        ends = np.cumsum(counts)
        return [PredictionResult(item, tiled_residual(residuals[end - n:end], tiling))
                for item, n, end in zip(batch, counts, ends)]

    def get_metrics_namespace(self) -> str:
        return "filigree_embedder"


class ExtractorHandler(_BundleHandler):
    """Items with named tile stacks -> PredictionResult(item, {view name: logits [N, L]})."""

    def run_inference(self, batch: Sequence[Item], model, inference_args=None) -> Iterable[PredictionResult]:
        stacks = [(item, name, item.views[name]) for item in batch for name in item.views]
        logits = fixed_shape_calls(model.extract_fn, (np.concatenate([view for _, _, view in stacks]),),
                                   INFERENCE_ROWS)
        per_item: dict[int, dict[str, np.ndarray]] = {id(item): {} for item in batch}
        at = 0
        for item, name, view in stacks:
            per_item[id(item)][name] = logits[at:at + len(view)]
            at += len(view)
        return [PredictionResult(item, per_item[id(item)]) for item in batch]

    def get_metrics_namespace(self) -> str:
        return "filigree_extractor"


# -- marking and verification -----------------------------------------------------------------

UNCHANGED_NOTE = ("unchanged: the marked image equals the input (its pixels are saturated where the "
                  "mark would go), so it carries no mark")


class MarkAndWrite(beam.DoFn):
    """(path, PredictionResult(item, residual)) -> marked file written; the item goes on with
    verification views (or straight to a record when --verify none)."""

    def __init__(self, cfg: RunConfig, card: ModelCard, working_size: int):
        self.cfg, self.card, self.working_size = cfg, card, working_size
        self.tiling = card.tiling
        self.strength = card.default_strength if cfg.strength is None else cfg.strength
        self.marked_counter = Metrics.counter(NAMESPACE, "marked")
        self.failed_counter = Metrics.counter(NAMESPACE, "failed")

    def setup(self):
        self.suite = parse_suite(self.cfg.attacks) if self.cfg.verify == "attacks" else ()
        self.progress = Progress("marked")

    def process(self, element):
        path, result = element
        item: Item = result.example
        decoded, cfg = item.decoded, self.cfg
        record = dict(item.record)
        try:
            target = output_path(cfg, item.job, decoded.output_extension)
            if normalize(absolute_prefix(target)) == normalize(absolute_prefix(item.job.path)):
                raise _Failure("overwrites_input", "the marked file would replace its own input")
            # Everything that can fail runs before the write, so an image either gets its file
            # and an `ok`/verification record, or an error record and no file.
            try:
                grid = self.tiling.grid_for(decoded.height, decoded.width, cfg.max_grid)
                data, psnr, views, sources = self._mark(decoded, result.inference, path, grid)
            except Exception as exc:  # noqa: BLE001 - this image's failure, reported in its record
                raise _Failure("encode_failed", f"cannot mark or encode: {type(exc).__name__}: {exc}"[:500]) from None
            try:
                with_retries(lambda: imageio.write_atomically(target, data), "writing a marked image")
            except Exception as exc:  # noqa: BLE001 - this image's failure, reported in its record
                message = f"cannot write the marked image: {type(exc).__name__}: {exc}"
                raise _Failure("write_failed", message[:500]) from None
        except _Failure as failure:
            self.failed_counter.inc()
            yield beam.pvalue.TaggedOutput("records", {**record, "status": "error", "psnr": None,
                                                       "error_code": failure.code, "error": failure.message})
            return
        self.marked_counter.inc()
        self.progress.tick()
        record["output"] = target
        record["psnr"] = psnr if math.isfinite(psnr) else None
        if record["psnr"] is None:
            record["notes"] = [*record.get("notes", []), UNCHANGED_NOTE]
        if cfg.verify == "none":
            yield beam.pvalue.TaggedOutput("records", record)
            return
        yield path, Item(item.job, record, None, None, views, sources, grid=grid)

    def _mark(self, decoded: imageio.DecodedImage, residual: np.ndarray, path: str, grid: int):
        """(encoded bytes, PSNR, read-back views, their search copies). Works on the native pixels: the marked
        copy is the only other full-size array, and it is dropped once encoded; the written
        bytes are decoded again (the file is what gets verified) and compared row tile by row
        tile with the source."""
        cfg = self.cfg
        marked = mark_pixels(decoded.pixels, residual, self.strength)
        data = imageio.encode_image(decoded, marked, jpeg_quality=cfg.jpeg_quality)
        del marked
        written = imageio.decode_image(data, max_pixels=max(cfg.max_pixels, decoded.width * decoded.height))
        psnr = round(float(imageio.psnr(decoded.pixels, written.pixels, data_range=decoded.maxval)), 3)
        views: dict[str, np.ndarray] = {}
        sources: dict[str, np.ndarray] | None = {} if cfg.reframe else None
        if cfg.verify != "none":
            views["clean"] = tile_views(written.pixels, grid, self.working_size)
            if sources is not None:
                sources["clean"] = search_copy(written.pixels, self.working_size, self.tiling)
            views.update(attacked_views(written.pixels, self.suite, self.working_size,
                                        seed_for(path, cfg.seed), sources, self.tiling, grid))
        return data, psnr, views, sources or {}


def seed_for(path: str, seed: int) -> int:
    """A per-image attack seed independent of processing order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{path}".encode()).digest()[:4], "big")


def search_copy(pixels: np.ndarray, working_size: int, tiling: Tiling = Tiling()) -> np.ndarray:
    """The small RGB copy a re-framing search reads (see `pipeline.reframe.search_source`)."""
    return np.asarray(search_source(imageio.pil_image(imageio.to_uint8(pixels)), working_size, tiling))


def attacked_views(pixels: np.ndarray, suite, working_size: int, seed: int,
                   sources: dict[str, np.ndarray] | None = None,
                   tiling: Tiling = Tiling(), grid: int | None = None) -> dict[str, np.ndarray]:
    """Per attack of the suite, the views of the image (native pixels, or float RGB) after it:
    the tiles of `grid`, or every read view (`tiling.read_views`) when None; with `sources`,
    also each attacked image's search copy, added there."""
    if not suite:
        return {}
    if np.issubdtype(pixels.dtype, np.floating):
        image = Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255.0).astype(np.uint8), "RGB")
    else:
        image = imageio.pil_image(imageio.to_uint8(pixels))
        if image.mode != "RGB":
            image = image.convert("RGB")
    views = {}
    for attack in suite:
        attacked_image = attack(image, seed).convert("RGB")
        attacked = np.asarray(attacked_image)
        views[attack.name] = (read_views(attacked, tiling, working_size) if grid is None
                              else tile_views(attacked, grid, working_size))
        if sources is not None:
            sources[attack.name] = np.asarray(search_source(attacked_image, working_size, tiling))
    return views


class ReadBack(beam.DoFn):
    """(path, PredictionResult(item, {view: logits})) -> the finished record."""

    def __init__(self, codec: PayloadCodec, fpr: float, reframe_model: str | None = None,
                 reframe: bool = False, tiling: Tiling = Tiling()):
        self.codec, self.fpr, self.tiling = codec, fpr, tiling
        self.reframe, self.reframe_model = reframe, _travelling_model_dir(reframe_model)
        self.verified_counter = Metrics.counter(NAMESPACE, "verified")
        self.searched_counter = Metrics.counter(NAMESPACE, "searched")
        self._shared_bundle = shared.Shared()

    def setup(self):
        self.progress = Progress("read back")
        self.watermarker = None
        if self.reframe:
            bundle = self._shared_bundle.acquire(lambda: _SharedBundle(load_worker_bundle(self.reframe_model)))
            self.watermarker = Watermarker(bundle.bundle, self.codec, fpr=self.fpr)

    def _read(self, item: Item, name: str, logits: np.ndarray, expected: str | None) -> ReadResult:
        if item.grid is None:
            read = decode_tiles(self.codec, logits, self.tiling, expected, self.fpr)
        else:
            read = decode_grid(self.codec, logits, item.grid, self.tiling, expected, self.fpr)
        source = item.sources.get(name)
        if self.watermarker is None or read.conclusive or source is None:
            return read
        self.searched_counter.inc()
        return self.watermarker.search(Image.fromarray(source), read, expected, SearchConfig())

    def process(self, element):
        _, result = element
        item: Item = result.example
        record = dict(item.record)
        expected = record.get("payload")
        reads = {name: self._read(item, name, logits, expected) for name, logits in result.inference.items()}
        clean = reads.pop("clean")
        record.update(read_fields(clean))
        record["attacks"] = {name: attack_fields(read) for name, read in reads.items()}
        self.verified_counter.inc()
        self.progress.tick()
        yield record


def read_fields(read: ReadResult) -> dict:
    fields = {"decoded": read.decoded, "detected": bool(read.detected), "p_value": _round_p(read.p_value),
              "ber": None if read.ber is None else round(read.ber, 6), "corrected": read.corrected,
              "match": read.match}
    return _with_framing(fields, read)


def attack_fields(read: ReadResult) -> dict:
    fields = {"ber": None if read.ber is None else round(read.ber, 6), "decoded": read.decoded,
              "detected": bool(read.detected), "p_value": _round_p(read.p_value), "match": read.match}
    return _with_framing(fields, read)


def _with_framing(fields: dict, read: ReadResult) -> dict:
    """`fields` plus, for a mark that was found, the tile grid (tiled bundles) and the framing
    (a re-framing search) that read it."""
    if read.grid is not None and read.detected:
        fields["grid"] = read.grid
    if read.framing is not None:
        fields["framing"] = read.framing
    return fields


def _round_p(p: float) -> float:
    return float(f"{p:.6g}")


class Progress:
    """Prints a progress line at most every few seconds (visible on local runs)."""

    def __init__(self, what: str, every_s: float = 5.0):
        self.what, self.every_s = what, every_s
        self.count, self.start, self.last = 0, time.time(), time.time()

    def tick(self):
        self.count += 1
        now = time.time()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.count / max(now - self.start, 1e-9)
            LOG.warning("%s %d images (%.1f img/s)", self.what, self.count, rate)


# -- dead letters -------------------------------------------------------------------------------

DEAD_LETTER_CODES = {"plan": "internal_error", "decode": "internal_error", "embed": "inference_failed",
                     "mark": "mark_failed", "extract": "inference_failed", "read": "readback_failed"}
_STAGE_TEXT = {"plan": "planning", "decode": "reading or decoding", "embed": "embedding inference",
               "mark": "marking", "extract": "read-back inference", "read": "read-back"}


def dead_letter_records(dead_letter: tuple, stage: str, mode: str) -> list[dict]:
    """Error records for a dead letter `(element, (exception type, repr, traceback lines))` of
    `stage`: one per image the element carried (a whole inference batch fails together)."""
    element, (exc_type, exc_repr, trace) = dead_letter
    name = getattr(exc_type, "__name__", str(exc_type))
    message = f"{_STAGE_TEXT.get(stage, stage)} failed unexpectedly: {exc_repr}"[:500]
    code = DEAD_LETTER_CODES.get(stage, "internal_error")
    records = [{**record, "status": "error", "error_code": code, "error": message}
               for record in _carried_records(element, mode)]
    LOG.warning("%s failed for %d image(s) (%s); they are reported as %r", _STAGE_TEXT.get(stage, stage),
                len(records), name, code)
    LOG.debug("".join(trace or ()))
    return records


def _carried_records(element: Any, mode: str) -> list[dict]:
    """The records (as far as built) of the images that a failed element carried."""
    if isinstance(element, Job):
        return [new_record(element.path, mode, line=element.line, payload=element.payload)]
    if isinstance(element, list):  # an inference batch of (path, Item)
        return [record for part in element for record in _carried_records(part, mode)]
    if isinstance(element, tuple) and len(element) == 2:
        key, value = element
        if isinstance(value, PredictionResult):
            value = value.example
        if isinstance(value, Item):
            return [dict(value.record)]
        if isinstance(value, dict) and "rows" in value:  # a planning group
            rows = sorted(value.get("rows") or [], key=lambda r: r.line)
            if not rows:
                return [new_record(str(key), mode)]
            return [new_record(str(key), mode, line=row.line, payload=row.payload) for row in rows]
    return [new_record(f"<unidentified input: {type(element).__name__}>", mode)]


def _side_dead_letters(dlq, stage: str, mode: str, label: str) -> list:
    """Records for RunInference's pre/postprocessing dead letters (none with our handlers;
    kept so that adding such functions can never drop images)."""
    sets = []
    for kind, collections in (("Pre", dlq.failed_preprocessing), ("Post", dlq.failed_postprocessing)):
        for index, pcoll in enumerate(collections or ()):
            sets.append(to_records(pcoll, stage, mode, f"{label}{kind}processFailures{index}"))
    return sets


def guarded(dofn: beam.DoFn, main: str):
    """ParDo of `dofn` with outputs `main`, 'records' and the dead letters 'bad' (exceptions
    that escape `dofn.process`; its outputs for that element are dropped, not half-emitted)."""
    return (beam.ParDo(dofn).with_output_types(Any, records=dict)
            .with_outputs("records", main=main).with_exception_handling())


def to_records(dead_letters, stage: str, mode: str, label: str):
    """Dead letters of `stage` as a PCollection of error records."""
    return dead_letters | label >> beam.FlatMap(dead_letter_records, stage, mode)


# -- the whole graph ---------------------------------------------------------------------------

class Watermark(beam.PTransform):
    """pbegin -> PCollection of records (one per matched image and manifest row)."""

    def __init__(self, cfg: RunConfig, spec: InputSpec, card: ModelCard, codec: PayloadCodec, model_dir: str):
        super().__init__()
        self.cfg, self.spec, self.card, self.codec, self.model_dir = cfg, spec, card, codec, model_dir

    def expand(self, pbegin):
        cfg, size, mode = self.cfg, self.card.working_size, self.cfg.mode
        tiling = self.card.tiling
        listed = pbegin | "ListInputs" >> ListInputs(cfg, self.spec)
        planned = (listed["groups"]
                   | "PlanJobs" >> guarded(PlanJobs(cfg, self.spec.root), "jobs"))
        prepared = (planned.jobs
                    | "Spread" >> beam.Reshuffle()
                    | "Decode" >> guarded(Prepare(cfg, self.codec, size, tiling), "items"))
        record_sets = [listed["records"], planned.records, prepared.records,
                       to_records(planned.bad, "plan", mode, "PlanFailures"),
                       to_records(prepared.bad, "decode", mode, "DecodeFailures")]
        extractor = KeyedModelHandler(ExtractorHandler(self.model_dir, cfg.batch_size))
        if mode == "embed":
            embedder = KeyedModelHandler(EmbedderHandler(self.model_dir, cfg.batch_size))
            residuals, embed_dlq = prepared.items | "Embed" >> RunInference(embedder).with_exception_handling()
            marked = residuals | "MarkAndWrite" >> guarded(MarkAndWrite(cfg, self.card, size), "items")
            record_sets += [marked.records, to_records(embed_dlq.failed_inferences, "embed", mode, "EmbedFailures"),
                            to_records(marked.bad, "mark", mode, "MarkFailures")]
            to_read = marked.items
        else:
            to_read = prepared.items
        logits, extract_dlq = to_read | "Extract" >> RunInference(extractor).with_exception_handling()
        read, read_bad = (logits
                          | "ReadBack" >> beam.ParDo(ReadBack(self.codec, cfg.fpr, self.model_dir, cfg.reframe, tiling))
                          .with_exception_handling())
        record_sets += [read, to_records(extract_dlq.failed_inferences, "extract", mode, "ExtractFailures"),
                        to_records(read_bad, "read", mode, "ReadBackFailures")]
        if mode == "embed":
            record_sets += _side_dead_letters(embed_dlq, "embed", mode, "Embed")
        record_sets += _side_dead_letters(extract_dlq, "extract", mode, "Extract")
        return tuple(record_sets) | "AllRecords" >> beam.Flatten()
