"""Job planning: read the manifest's payload assignments (in parallel, `ReadManifest`), list the
inputs when the run needs a listing (`ListInputs`), group both by image path and turn each image
into a `Job` (or a skipped/error record); where each marked output goes.

The work of a run is its manifest's rows when a manifest names the images (embed mode without
`--payload`): then nothing is listed, and a row whose file does not exist becomes a `not_found`
record when it is read. Runs without a manifest, runs with `--payload` (a default for images
that no row names) and extract mode (which reads every image under `--input`, with or without an
expected payload) list `--input` as well (`fileio.MatchAll`: a comma-separated list of folders,
globs or prefixes is listed in parallel, one listing per entry)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from filigree.imaging import decode
from pipeline import storage
from pipeline.manifest import (BLOCK_BYTES, InputSpec, ManifestRow, has_scheme, is_image_name, is_plain, join_plain,
                               normalize, plan_shards, read_block_rows, relative_to, relative_to_normal, scan_block,
                               shard_blocks)
from pipeline.options import RunConfig
from pipeline.records import Record, StepFailure, error_record, ignored_record, skipped_record

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
    """With --reframe: per view, a small copy of its image for the deeper search: RGB for a
    re-framing search (`filigree.reframe.search_source`), the analysis luma for a periodic
    bundle's window search (`filigree.periodic.search_luma`)."""
    grid: int | None = None
    """Verification of a marked image: the grid it was marked with, the only one its views
    hold (see `filigree.tiling.decode_grid`); None: every grid a reader tries."""
    encoded: bytes | None = None
    """Verification of a marked image: the encoded file, written by the read-back step only
    once it reads back its payload."""
    target: str | None = None
    """Where `encoded` goes (OUTPUT/marked/...)."""
    contexts: dict[str, tuple] = field(default_factory=dict)
    """Periodic bundles: per view name, the sync template index of each aligned tile in the
    view's stack (what `PeriodicMarker.decode_views` needs); empty for tiled bundles."""
    salt: int | None = None
    """Periodic bundles, embedding: the image's salt (`SaltedCodec.salt_for`)."""
    lattice_score: float | None = None
    """Periodic bundles, embedding: the source's best lattice score (key-less presence test)."""


RowRef = tuple[int, int, str]
"""A good manifest row as it travels to planning: (shard ordinal, line, payload); the ordinal is
the shard's place in path order (`pipeline.manifest.ShardPlan`)."""


def group_key(root: str, path: str, normalized: bool = False) -> str:
    """The key that listing hits and manifest rows of `path` are grouped by: its path below
    `root` when that leads back to exactly `path` (shorter to shuffle), else `path` itself.
    `normalized`: `path` is already `normalize`d (a manifest row's)."""
    relative = relative_to_normal(root, path) if normalized else relative_to(root, path)
    return relative if relative and key_path(root, relative) == path else path


def key_path(root: str, key: str) -> str:
    """The path that a `group_key` stands for: `normalize(root + "/" + key)`, which for a key
    without `.`, `..` or empty segments is the normalised root's folder prefix plus the key."""
    if has_scheme(key) or key.startswith("/"):
        return key
    if is_plain(key):
        return join_plain(root, key)
    return normalize(root.rstrip("/") + "/" + key)


def plan_jobs(key: str, entries: Iterable[RowRef | None], cfg: RunConfig, root: str,
              shards: Sequence[str] = ()) -> Iterator[Job | dict]:
    """Jobs and skipped/error records for one group (`key`: a `group_key`): a None for its
    listing hit, a `RowRef` per manifest row naming it; `shards`: the manifest's shard paths by
    ordinal. The first row in (shard path, line) order wins."""
    rows = sorted(entry for entry in entries if entry is not None)
    key = key_path(root, key)
    relative = output_relative(root, key)
    if not rows:
        if cfg.mode == "extract":
            yield Job(key, None, None, relative)
        elif cfg.payload is not None:
            yield Job(key, cfg.payload, None, relative)
        else:
            yield skipped_record(key, cfg.mode, "no_payload", "no manifest row and no --payload for this image")
        return
    (shard, line, payload), *duplicates = rows
    yield Job(key, payload, line, relative)
    for other_shard, other_line, other_payload in duplicates:
        yield skipped_record(key, cfg.mode, "duplicate_row",
                             f"manifest {shard_name(shards, other_shard)} line {other_line} repeats this image; "
                             f"{shard_name(shards, shard)} line {line} is used", line=other_line, payload=other_payload)


def shard_name(shards: Sequence[str], ordinal: int) -> str:
    return shards[ordinal] if 0 <= ordinal < len(shards) else f"shard {ordinal}"


def output_relative(root: str, path: str) -> str:
    """Relative output path of `path`: its path below `root`, else `_external/<scheme>/<full path>`
    (never absolute, never with `..`; see `storage.safe_relative_output`). `path` is
    `normalize`d (a `key_path`)."""
    relative = relative_to_normal(root, path)
    if relative and ".." not in relative.split("/") and not relative.startswith("/"):
        return relative
    try:
        return storage.safe_relative_output(root, path)
    except ValueError:
        return "_external/unnamed"


def lists_input(cfg: RunConfig) -> bool:
    """Whether the run lists `--input`: without a manifest, with `--payload` (a default for
    images no row names) and in extract mode (every image under `--input` is read)."""
    return not cfg.assignments or cfg.payload is not None or cfg.mode == "extract"


class ReadManifest(beam.PTransform):
    """pbegin -> {"rows": `RowRef`s keyed by `group_key`, "records": error records of bad rows,
    "shards": one element, the shard paths by ordinal}. `pattern` is one file or a glob of
    shards; each shard is cut into blocks of `block_bytes` (`pipeline.manifest.Block`) that are
    read in parallel, twice: a first pass counts each block's lines (and finds the CSV header and
    records that span lines), a second reads the rows, numbered from the first pass's counts."""

    def __init__(self, pattern: str, root: str, mode: str, block_bytes: int = BLOCK_BYTES):
        super().__init__()
        self.pattern, self.root, self.mode, self.block_bytes = pattern, root, mode, block_bytes

    def expand(self, pbegin):
        blocks = (pbegin
                  | "Pattern" >> beam.Create([self.pattern])
                  | "MatchShards" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
                  | "Blocks" >> beam.FlatMap(lambda meta, size: shard_blocks(meta.path, meta.size_in_bytes, size),
                                             self.block_bytes)
                  | "SpreadBlocks" >> beam.Reshuffle())
        plans = (blocks
                 | "ScanBlocks" >> beam.Map(scan_block)
                 | "AllScans" >> beam.combiners.ToList()
                 | "PlanShards" >> beam.Map(plan_shards))
        read = beam.ParDo(ReadRows(self.root, self.mode), beam.pvalue.AsSingleton(plans))
        rows = blocks | "ReadRows" >> read.with_output_types(Any, records=Record).with_outputs("records", main="rows")
        shards = plans | "ShardNames" >> beam.Map(lambda by_path: tuple(sorted(by_path)))
        return {"rows": rows.rows, "records": rows.records, "shards": shards}


class ReadRows(beam.DoFn):
    """A block and the shards' plans -> (`group_key`, `RowRef`) per good row; error records (tag
    'records') per bad row, naming the shard and line."""

    def __init__(self, root: str, mode: str):
        self.root, self.mode = root, mode

    def process(self, block, plans):
        plan = plans[block.shard]
        for row in read_block_rows(block, plan, self.root):
            if row.error is None:
                yield group_key(self.root, row.path, normalized=True), (plan.ordinal, row.line, row.payload)
            else:
                yield beam.pvalue.TaggedOutput("records", bad_row_record(row, self.mode))


def bad_row_record(row: ManifestRow, mode: str) -> dict:
    return error_record(row.image, mode, row.error_code, f"manifest {row.shard} line {row.line}: {row.error}",
                        line=row.line)


class ListInputs(beam.PTransform):
    """pbegin -> {"groups": (`group_key`, [None per listing hit, `RowRef` per manifest row]),
    "records": error records of bad manifest rows, "shards": one element, the manifest's shard
    paths by ordinal (empty without a manifest)}."""

    def __init__(self, cfg: RunConfig, spec: InputSpec, block_bytes: int = BLOCK_BYTES):
        super().__init__()
        self.cfg, self.spec, self.block_bytes = cfg, spec, block_bytes

    def expand(self, pbegin):
        keyed, records, shards = [], [], None
        if lists_input(self.cfg):
            keyed.append(pbegin
                         | "Patterns" >> beam.Create(list(self.spec.patterns))
                         | "MatchFiles" >> fileio.MatchAll(fileio.EmptyMatchTreatment.ALLOW)
                         | "Paths" >> beam.Map(lambda meta: meta.path)
                         | "NotOutputs" >> beam.Filter(lambda p, excluded: not any(relative_to(e, p) for e in excluded),
                                                       excluded_prefixes(self.cfg.output, self.spec.root))
                         | "KeyFound" >> beam.Map(lambda p, root: (group_key(root, p), None), self.spec.root))
        if self.cfg.assignments:
            rows = pbegin | "ReadManifest" >> ReadManifest(self.cfg.assignments, self.spec.root, self.cfg.mode,
                                                           self.block_bytes)
            keyed.append(rows["rows"])
            records.append(rows["records"])
            shards = rows["shards"]
        groups = (keyed[0] if len(keyed) == 1 else tuple(keyed) | "Inputs" >> beam.Flatten()) \
            | "GroupByPath" >> beam.GroupByKey()
        if not records:
            records.append(pbegin | "NoManifestErrors" >> beam.Create([]).with_output_types(Record))
            shards = pbegin | "NoManifest" >> beam.Create([()])
        return {"groups": groups, "records": records[0], "shards": shards}


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

    def process(self, element, shards=()):
        key, entries = element
        if all(entry is None for entry in entries):
            path = key_path(self.root, key)
            if not is_image_name(path) and not looks_like_image(path):
                yield beam.pvalue.TaggedOutput("records", ignored_record(
                    path, self.cfg.mode, "not_an_image", "not an image (by name and content); left alone"))
                return
        for out in plan_jobs(key, entries, self.cfg, self.root, shards):
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
    marked = marked_folder(cfg.output)
    target = storage.join(marked, relative)
    plain = is_plain(relative) and "\\" not in relative and ":" not in relative
    if not plain and (relative_to(marked, target) is None or relative.startswith("/")):
        raise StepFailure("bad_path", f"output path for {job.relative!r} would leave the output folder")
    return target


@functools.lru_cache(maxsize=16)
def marked_folder(output: str) -> str:
    """OUTPUT/marked (asked once per image; a job has one output)."""
    return storage.join(output.rstrip("/"), "marked")


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
