"""Job planning: list the inputs, join them with the manifest's payload assignments, and turn each
image into a `Job` (or a skipped/error record); where each marked output goes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from filigree.imaging import decode
from pipeline import storage
from pipeline.manifest import InputSpec, ManifestRow, has_scheme, is_image_name, normalize, read_manifest, relative_to
from pipeline.options import RunConfig
from pipeline.records import StepFailure, error_record, ignored_record, skipped_record

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
    decoded: decode.DecodedImage | None = None
    bits: np.ndarray | None = None
    views: dict[str, np.ndarray] = field(default_factory=dict)
    """Per view name, its working-size tiles [N, S, S, 3] (see `filigree.tiling`): the tiles of
    the image's grid for the embedder, every tile of every grid a reader tries for the extractor."""
    sources: dict[str, np.ndarray] = field(default_factory=dict)
    """With --reframe: per view, a small RGB copy of its image for a re-framing search."""
    grid: int | None = None
    """Verification of a marked image: the grid it was marked with, the only one its views
    hold (see `filigree.tiling.decode_grid`); None: every grid a reader tries."""
    encoded: bytes | None = None
    """Verification of a marked image: the encoded file, written by the read-back step only
    once it reads back its payload."""
    target: str | None = None
    """Where `encoded` goes (OUTPUT/marked/...)."""


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
    """Relative output path of `path`: its path below `root`, else `_external/<scheme>/<full path>`
    (never absolute, never with `..`; see `storage.safe_relative_output`)."""
    relative = relative_to(root, path)
    if relative and ".." not in relative.split("/") and not relative.startswith("/"):
        return relative
    try:
        return storage.safe_relative_output(root, path)
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
        if not grouped.get("rows") and not is_image_name(key) and not looks_like_image(key):
            yield beam.pvalue.TaggedOutput("records", ignored_record(
                key, self.cfg.mode, "not_an_image", "not an image (by name and content); left alone"))
            return
        for out in plan_jobs(key, grouped, self.cfg, self.root):
            if isinstance(out, Job):
                yield out
            else:
                yield beam.pvalue.TaggedOutput("records", out)


def looks_like_image(path: str) -> bool:
    """Whether a file whose name is no image name starts like a supported image; a file that
    cannot be read counts as one (its read error is then reported like any image's)."""
    try:
        head = storage.with_retries(lambda: storage.read_head(path, decode.SNIFF_BYTES), "reading a file's start")
    except Exception:  # noqa: BLE001 - reported by the decode step's own read
        return True
    return decode.sniff_format(head) is not None


def output_path(cfg: RunConfig, job: Job, extension: str | None = None) -> str:
    """Where the marked image goes: OUTPUT/marked/<relative path>, with the output format's
    extension appended when the input's extension is not one of its names (`a.gif` ->
    `a.gif.png`), so that no two inputs share an output. Raises `StepFailure('bad_path')` when
    the target would not lie under OUTPUT/marked/ (it cannot, by construction of `relative`)."""
    relative = job.relative
    if extension and not relative.lower().endswith(_extension_aliases(extension)):
        relative = relative + extension
    marked = FileSystems.join(cfg.output.rstrip("/"), "marked")
    target = FileSystems.join(marked, relative)
    if relative_to(normalize(marked), normalize(target)) is None or relative.startswith("/"):
        raise StepFailure("bad_path", f"output path for {job.relative!r} would leave the output folder")
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
    return {".jpg": (".jpg", ".jpeg", ".jpe", ".jfif", ".jif"), ".tif": (".tif", ".tiff"),
            ".heic": (".heic", ".heif", ".hif")}.get(extension, (extension,))
