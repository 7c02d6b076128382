"""The Beam graph (`Watermark`): read the payload assignments and list images where needed, grouped
by image path (`pipeline.planning`),
decode (`pipeline.prepare`), batched embedding through RunInference (`pipeline.handlers`), mark
and encode (`pipeline.marking`), verify after attacks and write (`pipeline.verify`), and build one
record per input (`pipeline.records`; what escapes a step becomes a record here, from its dead
letter).

Reliability contract
--------------------
* Every matched file and every manifest row ends in exactly one record (`ok`, `error`, `skipped`
  or `ignored`, each but `ok` with an `error_code` and a message); failures are records, never
  only log lines. `ignored`: a listed file that is not an image by name or content
  (`not_an_image`). In embed mode `ok` means the marked file was written and, when verification
  runs, read back with exactly its payload: a mark below `--min_psnr` is a `too_small` error, a
  file that does not read back is `unreadable`, and neither is written. Images that already carry
  a mark are `skipped` (`already_marked`) unless `--overwrite_marks`. Expected failures (unreadable or undecodable files, bad payloads, write
  errors) are turned into records by the step that meets them; anything unexpected that escapes
  a step (a bug, an inference failure) is caught by Beam's `with_exception_handling` and its
  dead letter becomes an `error` record for each image it carried (`dead_letter_records`; a
  failed inference batch becomes one record per image of the batch). Codes of those records:
  `internal_error` (planning, decoding), `inference_failed` (embedding or read-back batch),
  `mark_failed`, `readback_failed`.
  With verification the file is written only after its read-back, so an `error` record never
  has an `output`.
* Outputs never leave `OUTPUT/marked/`: images under `--input` keep their relative path,
  absolute or URI paths from a manifest go to `OUTPUT/marked/_external/<scheme or local>/<full
  path>`, and every
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
* Decoding runs in a child process killed after `--decode_timeout_s` (`timeout`); sizes above `--max_pixels` are refused
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

import logging
from typing import Any, Iterable

import apache_beam as beam
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference

from filigree.bundle import ModelCard
from filigree.payload import PayloadCodec
from pipeline.blocks import ToBlocks
from pipeline.handlers import EmbedderHandler, ExtractorHandler
from pipeline.manifest import InputSpec
from pipeline.marking import MarkAndWrite
from pipeline.options import RunConfig
from pipeline.planning import Item, Job, ListInputs, PlanJobs, key_path
from pipeline.prepare import PlanAndPrepare, Prepare
from pipeline.records import Record, new_record
from pipeline.verify import ReadBack

LOG = logging.getLogger("filigree")

DEAD_LETTER_CODES = {"plan": "internal_error", "prepare": "internal_error", "embed": "inference_failed",
                     "mark": "mark_failed", "extract": "inference_failed", "read": "readback_failed"}
_STAGE_TEXT = {"plan": "planning", "prepare": "planning, reading or decoding", "embed": "embedding inference",
               "mark": "marking", "extract": "read-back inference", "read": "read-back"}


def dead_letter_records(dead_letter: tuple, stage: str, mode: str, root: str = "") -> list[dict]:
    """Error records for a dead letter `(element, (exception type, repr, traceback lines))` of
    `stage`: one per image the element carried (a whole inference batch fails together; a
    planning group's key is a `group_key` below `root`)."""
    element, (exc_type, exc_repr, trace) = dead_letter
    name = getattr(exc_type, "__name__", str(exc_type))
    message = f"{_STAGE_TEXT.get(stage, stage)} failed unexpectedly: {exc_repr}"[:500]
    code = DEAD_LETTER_CODES.get(stage, "internal_error")
    records = [{**record, "status": "error", "error_code": code, "error": message}
               for record in _carried_records(element, mode, root)]
    LOG.warning("%s failed for %d image(s) (%s); they are reported as %r", _STAGE_TEXT.get(stage, stage),
                len(records), name, code)
    LOG.debug("".join(trace or ()))
    return records


def _carried_records(element: Any, mode: str, root: str = "") -> list[dict]:
    """The records (as far as built) of the images that a failed element carried."""
    if isinstance(element, Job):
        return [new_record(element.path, mode, line=element.line, payload=element.payload)]
    if isinstance(element, list):  # an inference batch of (path, Item)
        return [record for part in element for record in _carried_records(part, mode, root)]
    if isinstance(element, tuple) and len(element) == 2:
        key, value = element
        if isinstance(value, PredictionResult):
            value = value.example
        if isinstance(value, Item):
            return [dict(value.record)]
        entries = list(value) if isinstance(value, Iterable) and not isinstance(value, (str, bytes, dict)) else None
        if entries is not None and all(e is None or isinstance(e, tuple) for e in entries):
            rows = sorted(e for e in entries if e is not None)  # a planning group: RowRefs, None if listed
            path = key_path(root, str(key)) if root else str(key)
            if not rows:
                return [new_record(path, mode)]
            return [new_record(path, mode, line=line, payload=payload) for _, line, payload in rows]
    return [new_record(f"<unidentified input: {type(element).__name__}>", mode)]


def _side_dead_letters(dlq, stage: str, mode: str, label: str) -> list:
    """Records for RunInference's pre/postprocessing dead letters (none with our handlers;
    kept so that adding such functions can never drop images)."""
    sets = []
    for kind, collections in (("Pre", dlq.failed_preprocessing), ("Post", dlq.failed_postprocessing)):
        for index, pcoll in enumerate(collections or ()):
            sets.append(to_records(pcoll, stage, mode, f"{label}{kind}processFailures{index}"))
    return sets


def guarded(dofn: beam.DoFn, main: str, *side_inputs):
    """ParDo of `dofn` with outputs `main`, 'records' and the dead letters 'bad' (exceptions
    that escape `dofn.process`; its outputs for that element are dropped, not half-emitted)."""
    return (beam.ParDo(dofn, *side_inputs).with_output_types(Any, records=Record)
            .with_outputs("records", main=main).with_exception_handling())


def to_records(dead_letters, stage: str, mode: str, label: str, root: str = ""):
    """Dead letters of `stage` as a PCollection of error records (`root`: the input root that
    planning groups' keys are relative to)."""
    return dead_letters | label >> beam.FlatMap(dead_letter_records, stage, mode, root).with_output_types(Record)


def plan_inputs(pbegin, cfg: RunConfig, spec: InputSpec, prepare: Prepare | None = None) -> tuple[Any, list]:
    """The job's input stage: the manifest's rows and the listing (`ListInputs`) grouped by
    image into Jobs (`PlanJobs`). Returns (PCollection of `Job`, list of record PCollections:
    bad rows, skipped/duplicate rows, planning failures). With `prepare`, each Job goes on into
    it within the same step (`PlanAndDecode`: one step less per image) and the first element is
    the PCollection of its (path, Item)s; its records and failures join the list."""
    listed = pbegin | "ListInputs" >> ListInputs(cfg, spec)
    shards = beam.pvalue.AsSingleton(listed["shards"])
    if prepare is None:
        planned = listed["groups"] | "PlanJobs" >> guarded(PlanJobs(cfg, spec.root), "out", shards)
        stage, label = "plan", "PlanFailures"
    else:
        planned = (listed["groups"]
                   | "PlanAndDecode" >> guarded(PlanAndPrepare(PlanJobs(cfg, spec.root), prepare), "out", shards))
        stage, label = "prepare", "PlanAndDecodeFailures"
    return planned.out, [listed["records"], planned.records,
                         to_records(planned.bad, stage, cfg.mode, label, spec.root)]


class Watermark(beam.PTransform):
    """pbegin -> PCollection of `RecordBlock`s (`pipeline.blocks`) holding one record per
    matched image and manifest row."""

    def __init__(self, cfg: RunConfig, spec: InputSpec, card: ModelCard, codec: PayloadCodec, model_dir: str):
        super().__init__()
        self.cfg, self.spec, self.card, self.codec, self.model_dir = cfg, spec, card, codec, model_dir

    def expand(self, pbegin):
        cfg, size, mode = self.cfg, self.card.working_size, self.cfg.mode
        tiling = self.card.tiling
        # Planning and decoding in one step, with no reshuffle between: every Job comes out of
        # `GroupByPath`, one key per image, which already spreads them over the workers (a runner
        # splits a grouping's output by key ranges).
        items, record_sets = plan_inputs(pbegin, cfg, self.spec, Prepare(cfg, self.codec, size, tiling))
        extractor = KeyedModelHandler(ExtractorHandler(self.model_dir, cfg.batch_size, cfg.verbose))
        if mode == "embed":
            embedder = KeyedModelHandler(EmbedderHandler(self.model_dir, cfg.batch_size, cfg.verbose))
            residuals, embed_dlq = items | "Embed" >> RunInference(embedder).with_exception_handling()
            marked = residuals | "MarkAndWrite" >> guarded(MarkAndWrite(cfg, self.card, size, self.codec), "items")
            record_sets += [marked.records, to_records(embed_dlq.failed_inferences, "embed", mode, "EmbedFailures"),
                            to_records(marked.bad, "mark", mode, "MarkFailures")]
            to_read = marked.items
        else:
            to_read = items
        logits, extract_dlq = to_read | "Extract" >> RunInference(extractor).with_exception_handling()
        read, read_bad = (logits
                          | "ReadBack" >> beam.ParDo(ReadBack(self.codec, cfg.fpr, self.model_dir, cfg.reframe, tiling, cfg.verbose))
                          .with_output_types(Record).with_exception_handling())
        record_sets += [read, to_records(extract_dlq.failed_inferences, "extract", mode, "ExtractFailures"),
                        to_records(read_bad, "read", mode, "ReadBackFailures")]
        if mode == "embed":
            record_sets += _side_dead_letters(embed_dlq, "embed", mode, "Embed")
        record_sets += _side_dead_letters(extract_dlq, "extract", mode, "Extract")
        # Each record set is folded into report blocks in the step that makes it, so that the
        # Flatten gathers blocks (a few bytes a record), not records: a runner holds it whole.
        blocks = [records | f"RecordBlocks{i}" >> beam.ParDo(ToBlocks()) for i, records in enumerate(record_sets)]
        return tuple(blocks) | "AllBlocks" >> beam.Flatten()
