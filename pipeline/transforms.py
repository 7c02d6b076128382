"""The Beam graph: list images, join payload assignments, decode, batched embedding through
RunInference, write marked images, verify (after attacks), and build one record per input.

Every matched image and every manifest row ends in exactly one record (`ok`, `error` or
`skipped`); failures are records, never only log lines.
"""

from __future__ import annotations

import hashlib
import logging
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

from pipeline import imageio
from pipeline.attacks import parse_suite
from pipeline.bundle import ModelCard
from pipeline.manifest import InputSpec, ManifestRow, is_image_name, read_manifest, relative_to
from pipeline.options import RunConfig
from pipeline.payload import PayloadCodec, PayloadError, ReadResult, format_payload
from pipeline.watermarker import apply_residual, stack_views

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


def plan_jobs(key: str, grouped: dict, cfg: RunConfig, root: str) -> Iterator[Job | dict]:
    """Jobs and skipped/error records for one path: its listing hits and manifest rows."""
    rows: list[ManifestRow] = sorted(grouped.get("rows", []), key=lambda r: r.line)
    relative = relative_to(root, key) or _external_relative(key)
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


def _external_relative(path: str) -> str:
    return imageio.safe_relative_output("", path) if path else "_external/unnamed"


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
    extension when it differs from the input's."""
    relative = job.relative
    if extension and not relative.lower().endswith(_extension_aliases(extension)):
        relative = relative.rsplit(".", 1)[0] + extension if "." in relative.rsplit("/", 1)[-1] else relative + extension
    return FileSystems.join(cfg.output.rstrip("/"), "marked", relative)


def _extension_aliases(extension: str) -> tuple[str, ...]:
    return {".jpg": (".jpg", ".jpeg", ".jpe"), ".tif": (".tif", ".tiff")}.get(extension, (extension,))


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

    def __init__(self, cfg: RunConfig, codec: PayloadCodec, working_size: int):
        self.cfg, self.codec, self.working_size = cfg, codec, working_size
        self.read_counter = Metrics.counter(NAMESPACE, "read")
        self.failed_counter = Metrics.counter(NAMESPACE, "failed")

    def process(self, job: Job):
        cfg = self.cfg
        base = {"line": job.line}
        if cfg.mode == "embed" and cfg.skip_existing and FileSystems.exists(output_path(cfg, job)):
            yield beam.pvalue.TaggedOutput("records", skipped_record(
                job.path, cfg.mode, "exists", "marked output already exists (--skip_existing)",
                output=output_path(cfg, job), **base))
            return
        record = new_record(job.path, cfg.mode, **base)
        try:
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
        view = stack_views([decoded.rgb], self.working_size)[0]
        yield job.path, Item(job, record, decoded, bits, {"clean": view})

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
            return imageio.read_bytes(path)
        except FileNotFoundError:
            raise _Failure("not_found", "image file not found") from None
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

class _BundleHandler(ModelHandler):
    """Loads the bundle once per worker process (RunInference shares it across threads)."""

    def __init__(self, model_dir: str, batch_size: int):
        super().__init__()
        self.model_dir, self.batch_size = model_dir, batch_size

    def load_model(self):
        from pipeline.bundle import load_bundle
        return load_bundle(self.model_dir)

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.batch_size}

    def share_model_across_processes(self) -> bool:
        return False


class EmbedderHandler(_BundleHandler):
    """Items with a clean view and bits -> PredictionResult(item, residual [S, S, C])."""

    def run_inference(self, batch: Sequence[Item], model, inference_args=None) -> Iterable[PredictionResult]:
        views = np.stack([item.views["clean"] for item in batch])
        bits = np.stack([item.bits for item in batch])
        residuals = model.embed_fn(views, bits)
        return [PredictionResult(item, residual) for item, residual in zip(batch, residuals)]

    def get_metrics_namespace(self) -> str:
        return "filigree_embedder"


class ExtractorHandler(_BundleHandler):
    """Items with named views -> PredictionResult(item, {view name: logits [L]})."""

    def run_inference(self, batch: Sequence[Item], model, inference_args=None) -> Iterable[PredictionResult]:
        names = [list(item.views) for item in batch]
        stacked = np.stack([item.views[name] for item, item_names in zip(batch, names) for name in item_names])
        logits = model.extract_fn(stacked)
        results, at = [], 0
        for item, item_names in zip(batch, names):
            results.append(PredictionResult(item, dict(zip(item_names, logits[at:at + len(item_names)]))))
            at += len(item_names)
        return results

    def get_metrics_namespace(self) -> str:
        return "filigree_extractor"


# -- marking and verification -----------------------------------------------------------------

class MarkAndWrite(beam.DoFn):
    """(path, PredictionResult(item, residual)) -> marked file written; the item goes on with
    verification views (or straight to a record when --verify none)."""

    def __init__(self, cfg: RunConfig, card: ModelCard, working_size: int):
        self.cfg, self.card, self.working_size = cfg, card, working_size
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
        target = output_path(cfg, item.job, decoded.output_extension)
        try:
            marked = apply_residual(decoded.rgb, result.inference, self.strength)
            data = imageio.encode_image(decoded, marked, jpeg_quality=cfg.jpeg_quality)
            imageio.write_atomically(target, data)
        except Exception as exc:  # noqa: BLE001 - this image's failure, reported in its record
            self.failed_counter.inc()
            yield beam.pvalue.TaggedOutput("records", {**item.record, "status": "error", "error_code": "write_failed",
                                                       "error": f"cannot mark or write: {exc}"[:500]})
            return
        self.marked_counter.inc()
        self.progress.tick()
        record = {**item.record, "output": target}
        written = imageio.decode_image(data, max_pixels=max(cfg.max_pixels, decoded.width * decoded.height))
        record["psnr"] = round(float(imageio.psnr(decoded.rgb, written.rgb, data_range=1.0)), 3)
        if cfg.verify == "none":
            yield beam.pvalue.TaggedOutput("records", record)
            return
        views = {"clean": stack_views([written.rgb], self.working_size)[0]}
        views.update(attacked_views(written.rgb, self.suite, self.working_size, seed_for(path, cfg.seed)))
        yield path, Item(item.job, record, None, None, views)


def seed_for(path: str, seed: int) -> int:
    """A per-image attack seed independent of processing order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{path}".encode()).digest()[:4], "big")


def attacked_views(rgb: np.ndarray, suite, working_size: int, seed: int) -> dict[str, np.ndarray]:
    """Working-size views of the image after each attack of the suite."""
    if not suite:
        return {}
    from PIL import Image
    image = Image.fromarray(np.rint(rgb * 255.0).astype(np.uint8), "RGB")
    views = {}
    for attack in suite:
        attacked = np.asarray(attack(image, seed).convert("RGB"))
        views[attack.name] = stack_views([attacked], working_size)[0]
    return views


class ReadBack(beam.DoFn):
    """(path, PredictionResult(item, {view: logits})) -> the finished record."""

    def __init__(self, codec: PayloadCodec, fpr: float):
        self.codec, self.fpr = codec, fpr
        self.verified_counter = Metrics.counter(NAMESPACE, "verified")

    def setup(self):
        self.progress = Progress("read back")

    def process(self, element):
        _, result = element
        item: Item = result.example
        record = dict(item.record)
        expected = record.get("payload")
        reads = {name: self.codec.decode(logits, expected=expected, fpr=self.fpr)
                 for name, logits in result.inference.items()}
        clean = reads.pop("clean")
        record.update(read_fields(clean))
        record["attacks"] = {name: attack_fields(read) for name, read in reads.items()}
        self.verified_counter.inc()
        self.progress.tick()
        yield record


def read_fields(read: ReadResult) -> dict:
    return {"decoded": read.decoded, "detected": bool(read.detected), "p_value": _round_p(read.p_value),
            "ber": None if read.ber is None else round(read.ber, 6), "corrected": read.corrected,
            "match": read.match}


def attack_fields(read: ReadResult) -> dict:
    return {"ber": None if read.ber is None else round(read.ber, 6), "decoded": read.decoded,
            "detected": bool(read.detected), "p_value": _round_p(read.p_value), "match": read.match}


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


# -- the whole graph ---------------------------------------------------------------------------

class Watermark(beam.PTransform):
    """pbegin -> PCollection of records (one per matched image and manifest row)."""

    def __init__(self, cfg: RunConfig, spec: InputSpec, card: ModelCard, codec: PayloadCodec, model_dir: str):
        super().__init__()
        self.cfg, self.spec, self.card, self.codec, self.model_dir = cfg, spec, card, codec, model_dir

    def expand(self, pbegin):
        cfg, size = self.cfg, self.card.working_size
        listed = pbegin | "ListInputs" >> ListInputs(cfg, self.spec)
        planned = (listed["groups"]
                   | "PlanJobs" >> beam.ParDo(PlanJobs(cfg, self.spec.root)).with_outputs("records", main="jobs"))
        prepared = (planned.jobs
                    | "Spread" >> beam.Reshuffle()
                    | "Decode" >> beam.ParDo(Prepare(cfg, self.codec, size)).with_outputs("records", main="items"))
        record_sets = [listed["records"], planned.records, prepared.records]
        extractor = KeyedModelHandler(ExtractorHandler(self.model_dir, cfg.batch_size))
        if cfg.mode == "embed":
            embedder = KeyedModelHandler(EmbedderHandler(self.model_dir, cfg.batch_size))
            residuals = prepared.items | "Embed" >> RunInference(embedder)
            marked = residuals | "MarkAndWrite" >> beam.ParDo(MarkAndWrite(cfg, self.card, size)).with_outputs(
                "records", main="items")
            record_sets.append(marked.records)
            to_read = marked.items
        else:
            to_read = prepared.items
        read = (to_read
                | "Extract" >> RunInference(extractor)
                | "ReadBack" >> beam.ParDo(ReadBack(self.codec, cfg.fpr)))
        record_sets.append(read)
        return tuple(record_sets) | "AllRecords" >> beam.Flatten()
