"""Where the images are, and which payload goes into which image.

Pure functions on strings, plus the few reads that `pipeline.planning.ReadManifest` makes through
Beam's FileSystems (`scan_block`, `read_block_rows`) and the launcher's header check
(`check_manifests`). A manifest is one file or a glob of shards (`gs://b/manifests/day-*.csv`),
each either CSV with a header naming at least `image` and `payload` (extra columns ignored;
UTF-8 with or without BOM; LF or CRLF line breaks) or JSON Lines (`.jsonl`, `.ndjson`, `.json`)
with objects holding those keys; a compression suffix (`.gz`, ...) is read through. Blank lines
are ignored. Image paths are full paths/URIs or paths relative to `--input`'s root.

Shards are read in parallel, in blocks of bytes (`Block`): a block holds the lines that start in
its byte range, so no worker holds a whole shard. A row's `line` is its line number in its shard
(1-based, counting every line: header and blank lines too). A CSV record whose quoted field holds
a line break spans lines and cannot be read line by line; a CSV shard with such a record is read
from start to end by one worker instead (with the line number of the record's last line, as
Python's csv module counts), the other shards still in parallel. Compressed shards are one block.

Duplicate rows for one image (after normalising the path, so `a.jpg` and `./a.jpg` are one
image): the first row in (shard path, line) order is used (shards in the byte order of their
full paths, so `part-00002` before `part-00010`), whatever its payload (a bad payload there makes
that image's record a `bad_payload` error); every other row gets a `skipped` record
(`duplicate_row`) naming the shard and line that won. The rule depends only on the rows, not on
how the runner splits or orders the work.

Paths: a relative path that leaves `--input`'s root (`../x.jpg`, `a/../../x.jpg`) or looks like
a Windows drive path is a `bad_path` error row; absolute paths and URIs are allowed and read as
given (their marked copies go under `OUTPUT/marked/_external/...`, see pipeline.planning).
Rows with no payload or a payload of the wrong JSON type are `bad_payload` errors; undecodable
JSON lines, lines that are not UTF-8 and rows without an image are `bad_manifest_row` errors. A
manifest pattern that matches no file, or a CSV shard whose header lacks `image`/`payload`
columns or whose start is not UTF-8, fails the whole job (the launcher checks every shard's
header before starting, `check_manifests`). Nothing in a manifest is evaluated or passed to a
shell.
"""

from __future__ import annotations

import codecs
import csv
import functools
import json
import posixpath
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO, Iterable, Iterator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                    ".heic", ".heif", ".hif", ".avif")
"""Names taken as images without a look at their content (any other file is sniffed, see
`pipeline.planning.PlanJobs`)."""
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputSpec:
    """How `--input` is listed: match patterns (one listing each, in parallel), the root that
    relative paths start from, and the files it names exactly (listed whatever their extension)."""

    pattern: str
    root: str
    single_file: bool = False
    patterns: tuple[str, ...] = ()
    """Every pattern to list (default: `pattern` alone)."""
    files: tuple[str, ...] = ()
    """Files named exactly (default: `pattern` when `single_file`)."""

    def __post_init__(self):
        if not self.patterns:
            object.__setattr__(self, "patterns", (self.pattern,))
        if self.single_file and not self.files:
            object.__setattr__(self, "files", (self.pattern,))


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row: its line in its shard, `image` as written, the resolved `path`, the `payload`
    text (or an error)."""

    line: int
    image: str
    path: str | None
    payload: str | None
    error: str | None = None
    error_code: str | None = None
    shard: str = ""
    """The manifest file the row is in."""


def has_scheme(path: str) -> bool:
    return "://" in path


def split_scheme(path: str) -> tuple[str, str]:
    """('gs://', 'bucket/a/b') or ('', '/a/b')."""
    if has_scheme(path):
        scheme, rest = path.split("://", 1)
        return scheme + "://", rest
    return "", path


def normalize(path: str) -> str:
    """Collapse `.`/`..`/double slashes in the path part, keeping any scheme."""
    scheme, rest = split_scheme(path)
    absolute = rest.startswith("/")
    norm = posixpath.normpath(rest) if rest else rest
    if absolute and not norm.startswith("/"):
        norm = "/" + norm
    return scheme + norm


def describe_input(path: str, is_dir: bool, is_file: bool) -> InputSpec:
    """The listing plan for `--input`, given whether it names a directory or a file."""
    if any(ch in path for ch in GLOB_CHARS):
        root = path
        while any(ch in root for ch in GLOB_CHARS):
            root = posixpath.dirname(root.rstrip("/")) if not has_scheme(root) else _parent(root)
        return InputSpec(pattern=path, root=root.rstrip("/") or "/")
    if is_file:
        return InputSpec(pattern=path, root=_parent(path), single_file=True)
    if is_dir or path.endswith("/"):
        return InputSpec(pattern=path.rstrip("/") + "/**", root=path.rstrip("/"))
    return InputSpec(pattern=path + "*", root=_parent(path))


INPUT_SEPARATOR = ","


def split_inputs(text: str) -> list[str]:
    """The entries of a comma-separated `--input` list (`gs://b/in/a/,gs://b/in/b/`)."""
    return [part.strip() for part in text.split(INPUT_SEPARATOR) if part.strip()]


def combine_inputs(specs: list[InputSpec]) -> InputSpec:
    """One listing plan for several inputs: all their patterns, rooted at the deepest folder
    that holds all their roots (so outputs keep the folders that tell them apart). Raises
    ValueError for inputs on different filesystems or buckets."""
    if len(specs) == 1:
        return specs[0]
    splits = [split_scheme(spec.root) for spec in specs]
    schemes = {scheme for scheme, _ in splits}
    rests = [rest.rstrip("/") or "/" for _, rest in splits]
    if len(schemes) > 1 or len({rest.startswith("/") for rest in rests}) > 1:
        raise ValueError("--input: a list of inputs must all be local or all on one filesystem")
    common = posixpath.commonpath(rests)
    scheme = schemes.pop()
    if scheme and not common:
        raise ValueError("--input: a list of inputs must lie in one bucket")
    return InputSpec(pattern=specs[0].pattern, root=scheme + common,
                     patterns=tuple(p for spec in specs for p in spec.patterns),
                     files=tuple(f for spec in specs for f in spec.files))


def _parent(path: str) -> str:
    scheme, rest = split_scheme(path)
    parent = posixpath.dirname(rest.rstrip("/"))
    return scheme + (parent or ("" if scheme else "."))


def is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def relative_to(root: str, path: str) -> str | None:
    """`path` relative to `root`, or None when it lies outside."""
    return relative_to_normal(root, normalize(path))


def relative_to_normal(root: str, path: str) -> str | None:
    """`relative_to` for a `path` that is already `normalize`d (one normalisation less per row).
    Below the current folder (a root of `.`) lies every relative path that does not climb out."""
    prefix = folder_prefix(root)
    if prefix == "./":
        inside = path and not has_scheme(path) and not path.startswith("/") and path != ".." \
            and not path.startswith("../")
        return path if inside else None
    return path[len(prefix):] if path.startswith(prefix) else None


@functools.lru_cache(maxsize=64)
def folder_prefix(root: str) -> str:
    """`root` normalised, with one trailing slash: how every path below it starts. Cached: a job
    has a few roots (the input's, the output's) and asks about them once per row."""
    return normalize(root).rstrip("/") + "/"


def is_plain(relative: str) -> bool:
    """Whether a path has no `.`, `..` or empty segment (so no leading, doubled or trailing
    slash, and no scheme): normalising it changes nothing, and joined below a folder it stays
    there."""
    return bool(relative) and not any(segment in ("", ".", "..") for segment in relative.split("/"))


def join_plain(root: str, relative: str) -> str:
    """`normalize(root + "/" + relative)` for an `is_plain` `relative` path, without
    normalising it again: the normalised root's folder prefix plus the path."""
    prefix = folder_prefix(root)
    return relative if prefix == "./" else prefix + relative


def resolve_image(root: str, image: str) -> tuple[str | None, str | None]:
    """(resolved path, error) for a manifest `image` value."""
    image = image.strip()
    if not image:
        return None, "empty image path"
    if "\x00" in image:
        return None, "image path contains a NUL byte"
    if has_scheme(image) or image.startswith("/"):
        return normalize(image), None
    if not has_scheme(root) and ":" in image.split("/")[0] and len(image) > 1 and image[1] == ":":
        return None, f"image path {image!r} looks like a Windows drive path"
    if is_plain(image):
        return join_plain(root, image), None
    joined = normalize(root.rstrip("/") + "/" + image)
    if relative_to_normal(root, joined) is None:
        return None, f"image path {image!r} leaves the --input folder"
    return joined, None


# -- rows of one line ---------------------------------------------------------------------------

REQUIRED_COLUMNS = ("image", "payload")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".deflate", ".zst", ".zstd", ".lzma", ".xz")
BOM = "\ufeff"


@dataclass(frozen=True)
class CsvHeader:
    """A CSV shard's header: its line number and the columns of `image` and `payload`."""

    line: int
    image_at: int
    payload_at: int


def manifest_kind(path: str) -> str:
    """'jsonl' or 'csv', from the file name (a compression suffix is looked through)."""
    name = path.lower()
    for suffix in COMPRESSION_SUFFIXES:
        if name.endswith(suffix):
            name = name[:-len(suffix)]
            break
    return "jsonl" if name.endswith(JSONL_SUFFIXES) else "csv"


def csv_line_fields(text: str) -> list[str] | None:
    """The fields of one CSV line (with or without its line break), as Python's csv module reads
    them; None when a quoted field goes on past the line break (a record that spans lines).
    Raises csv.Error for a line the csv module rejects."""
    if '"' not in text:
        return text.rstrip("\r\n").split(",")
    reader = csv.reader(iter((text, "")))  # the reader asks for the "" only to finish a record
    fields = next(reader, [])
    return None if reader.line_num > 1 else fields


def spans_lines(text: str) -> bool:
    """Whether this CSV line opens a quoted field that it does not close."""
    try:
        return '"' in text and csv_line_fields(text) is None
    except csv.Error:
        return False


def csv_header(fields: list[str], line: int) -> CsvHeader:
    """The header of a CSV shard from its first non-blank line; ValueError without the columns."""
    names = [f.strip().lower() for f in fields]
    missing = set(REQUIRED_COLUMNS) - set(names)
    if missing:
        raise ValueError(f"manifest header must name columns image,payload; missing {sorted(missing)} "
                         f"(got {fields})")
    return CsvHeader(line, names.index("image"), names.index("payload"))


def find_csv_header(lines: Iterable[str]) -> CsvHeader | None:
    """The header among a CSV shard's first lines (None: no non-blank line)."""
    for number, text in enumerate(lines, start=1):
        if number == 1:
            text = text.lstrip(BOM)
        if text.strip():
            return csv_header(next(csv.reader([text])), number)
    return None


def line_row(text: str, line: int, kind: str, root: str, header: CsvHeader | None,
             shard: str = "") -> ManifestRow | None:
    """The row of one manifest line (`line`: its number in the shard; `header`: the CSV shard's,
    None for JSON Lines); None for a blank line and for the CSV header."""
    if line == 1:
        text = text.lstrip(BOM)
    if not text.strip():
        return None
    if kind == "jsonl":
        return _jsonl_row(text, line, root, shard)
    if header is None or line <= header.line:
        return None
    try:
        fields = csv_line_fields(text)
    except csv.Error as exc:
        return ManifestRow(line, text.strip()[:200], None, None, f"unreadable CSV line: {exc}",
                           "bad_manifest_row", shard)
    if fields is None:
        return ManifestRow(line, text.strip()[:200], None, None, "a quoted field spans lines here",
                           "bad_manifest_row", shard)
    return _csv_row(fields, line, header, root, shard)


def undecodable_row(raw: bytes, line: int, shard: str = "") -> ManifestRow:
    """The error row of a line that is not UTF-8."""
    return ManifestRow(line, raw.decode("utf-8", "replace").strip()[:200], None, None, "line is not UTF-8",
                       "bad_manifest_row", shard)


def _csv_row(fields: list[str], line: int, header: CsvHeader, root: str, shard: str) -> ManifestRow:
    image = fields[header.image_at] if header.image_at < len(fields) else None
    payload = fields[header.payload_at] if header.payload_at < len(fields) else None
    return _row(line, image, payload, root, shard)


def _jsonl_row(text: str, line: int, root: str, shard: str) -> ManifestRow:
    raw = text.strip()
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return ManifestRow(line, raw[:200], None, None, f"invalid JSON: {exc.msg}", "bad_manifest_row", shard)
    if not isinstance(obj, dict):
        return ManifestRow(line, raw[:200], None, None, "line is not a JSON object", "bad_manifest_row", shard)
    return _row(line, obj.get("image"), obj.get("payload"), root, shard)


def _row(line: int, image: object, payload: object, root: str, shard: str) -> ManifestRow:
    if not isinstance(image, str):
        return ManifestRow(line, str(image), None, None, "row has no image path", "bad_manifest_row", shard)
    path, error = resolve_image(root, image)
    if error:
        return ManifestRow(line, image, None, None, error, "bad_path", shard)
    if payload is None or (isinstance(payload, str) and not payload.strip()):
        return ManifestRow(line, image, path, None, "row has no payload", "bad_payload", shard)
    if not isinstance(payload, (str, int)) or isinstance(payload, bool):
        return ManifestRow(line, image, path, None, f"payload must be a string, got {type(payload).__name__}",
                           "bad_payload", shard)
    return ManifestRow(line, image, path, str(payload).strip(), shard=shard)


# -- rows of a whole text -----------------------------------------------------------------------

def split_lines(text: str) -> list[str]:
    """`text` cut after each LF, as the block reader cuts a shard (a CR before the LF stays)."""
    parts = text.split("\n")
    return [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def parse_manifest_text(text: str, root: str, kind: str, shard: str = "") -> Iterator[ManifestRow]:
    """Rows of one whole shard's text; `kind` is 'csv' or 'jsonl'. The same rows, line numbers
    and errors as `pipeline.planning.ReadManifest` gives for that shard. Raises ValueError for a
    CSV header without `image`/`payload`."""
    lines = split_lines(text)
    if kind == "csv" and any(spans_lines(line) for line in lines):
        yield from read_csv_stream(lines, root, shard)
        return
    header = find_csv_header(lines) if kind == "csv" else None
    for number, line in enumerate(lines, start=1):
        row = line_row(line, number, kind, root, header, shard)
        if row is not None:
            yield row


def read_csv_stream(lines: Iterable[str], root: str, shard: str = "") -> Iterator[ManifestRow]:
    """Rows of a CSV shard's lines (each ending in its LF) read from start to end with the csv
    module (records may span lines; a record's `line` is that of its last line). Raises
    ValueError for a bad header."""
    reader = csv.reader(lines)
    header = None
    for fields in reader:
        line = reader.line_num
        if line == 1 and fields:
            fields[0] = fields[0].lstrip(BOM)
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = csv_header(fields, line)
            continue
        yield _csv_row(fields, line, header, root, shard)


# -- blocks of shards ---------------------------------------------------------------------------

BLOCK_BYTES = 64 << 20
"""Bytes per block of a manifest shard (Beam's text sources split at the same size)."""


@dataclass(frozen=True)
class Block:
    """The lines of `shard` that start in bytes [start, end) (`end` None: to the end; compressed
    shards are one such block). `index` counts the shard's blocks from 0."""

    shard: str
    index: int
    start: int
    end: int | None


@dataclass(frozen=True)
class BlockScan:
    """What the first pass learns of a block: its number of lines, its first non-blank line (the
    CSV header when no earlier block has one) and whether a CSV record spans lines in it."""

    shard: str
    index: int
    lines: int
    first_text: tuple[int, str] | None = None
    """(line's position in the block, from 1; its text)."""
    spans: bool = False


@dataclass(frozen=True)
class ShardPlan:
    """How the second pass reads one shard: its `ordinal` (its place among the shards in path
    order, which rows carry instead of the path), the line number of each block's first line,
    the CSV header, and whether the shard is read from start to end by one worker
    (`sequential`)."""

    ordinal: int
    kind: str
    first_lines: tuple[int, ...]
    header: CsvHeader | None
    sequential: bool


def is_compressed(path: str) -> bool:
    from apache_beam.io.filesystem import CompressionTypes
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def shard_blocks(shard: str, size: int, block_bytes: int = BLOCK_BYTES) -> list[Block]:
    """The blocks of a shard of `size` bytes (always at least one)."""
    if is_compressed(shard) or size <= block_bytes:
        return [Block(shard, 0, 0, None if is_compressed(shard) else size)]
    return [Block(shard, index, start, min(start + block_bytes, size))
            for index, start in enumerate(range(0, size, block_bytes))]


def block_lines(f: BinaryIO, block: Block) -> Iterator[bytes]:
    """The lines (with their LF) that start in `block`, from a binary file open on its shard: a
    block after the first starts after the first LF at or after `start - 1`."""
    position = block.start
    if block.start > 0:
        f.seek(block.start - 1)
        position += len(f.readline()) - 1
    for raw in iter(f.readline, b""):
        if block.end is not None and position >= block.end:
            return
        yield raw
        position += len(raw)


def open_shard(shard: str) -> BinaryIO:
    from apache_beam.io.filesystems import CompressionTypes, FileSystems
    compression = CompressionTypes.AUTO if is_compressed(shard) else CompressionTypes.UNCOMPRESSED
    return FileSystems.open(shard, compression_type=compression)


def scan_block(block: Block) -> BlockScan:
    """First pass over a block: count its lines; for CSV, its first non-blank line and whether a
    record spans lines."""
    csv_kind = manifest_kind(block.shard) == "csv"
    lines, first, spans = 0, None, False
    with open_shard(block.shard) as f:
        for raw in block_lines(f, block):
            lines += 1
            if not csv_kind:
                continue
            if first is None:
                text = raw.decode("utf-8", "replace")
                text = text.lstrip(BOM) if block.index == 0 and lines == 1 else text
                first = (lines, text) if text.strip() else None
            if not spans and b'"' in raw:
                spans = spans_lines(raw.decode("utf-8", "replace"))
    return BlockScan(block.shard, block.index, lines, first, spans)


def plan_shards(scans: Iterable[BlockScan]) -> dict[str, ShardPlan]:
    """Per shard, how to read it, from all of its blocks' scans. Raises ValueError for a CSV
    shard whose header lacks `image`/`payload`."""
    by_shard: dict[str, list[BlockScan]] = {}
    for scan in scans:
        by_shard.setdefault(scan.shard, []).append(scan)
    plans = {}
    for ordinal, shard in enumerate(sorted(by_shard)):
        blocks = by_shard[shard]
        blocks.sort(key=lambda scan: scan.index)
        kind = manifest_kind(shard)
        first_lines, header, line = [], None, 1
        for scan in blocks:
            first_lines.append(line)
            if kind == "csv" and header is None and scan.first_text is not None:
                at, text = scan.first_text
                header = csv_header(next(csv.reader([text])), line + at - 1)
            line += scan.lines
        plans[shard] = ShardPlan(ordinal, kind, tuple(first_lines), header, any(scan.spans for scan in blocks))
    return plans


def read_block_rows(block: Block, plan: ShardPlan, root: str) -> Iterator[ManifestRow]:
    """Second pass: the rows of one block (of a sequential shard: all its rows, from block 0)."""
    if plan.sequential:
        if block.index == 0:
            with open_shard(block.shard) as f:
                yield from read_csv_stream(_utf8_lines(f, block.shard), root, block.shard)
        return
    line = plan.first_lines[block.index]
    with open_shard(block.shard) as f:
        for raw in block_lines(f, block):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield undecodable_row(raw, line, block.shard)
            else:
                row = line_row(text, line, plan.kind, root, plan.header, block.shard)
                if row is not None:
                    yield row
            line += 1


def _utf8_lines(f: BinaryIO, shard: str) -> Iterator[str]:
    for raw in iter(f.readline, b""):
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"manifest {shard} is not UTF-8: {exc}") from None


# -- the launcher's check -----------------------------------------------------------------------

def check_csv_header(text: str) -> None:
    """Raise ValueError unless the first non-blank CSV line names `image` and `payload` (an
    empty manifest has no rows and passes)."""
    find_csv_header(split_lines(text))


def check_manifest_header(path: str, head_bytes: int = 1 << 16) -> None:
    """Fail fast, before a job starts, on a manifest shard whose start is not UTF-8 or whose CSV
    header lacks `image`/`payload` (reads at most `head_bytes`)."""
    with open_shard(path) as f:
        head = f.read(head_bytes)
    complete = len(head) < head_bytes
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError as exc:
        raise ValueError(f"manifest {path} is not UTF-8: {exc}") from None
    if manifest_kind(path) == "csv":
        if not complete:
            text = text.rsplit("\n", 1)[0] if "\n" in text else text
        check_csv_header(text)


def check_manifests(pattern: str, threads: int = 16) -> list[str]:
    """The shards that `pattern` (a file or a glob) names, each one's header checked
    (`check_manifest_header`, `threads` at a time). Raises ValueError when it names no file."""
    from apache_beam.io.filesystems import FileSystems
    try:
        shards = sorted(meta.path for meta in FileSystems.match([pattern])[0].metadata_list)
    except Exception as exc:  # noqa: BLE001 - Beam raises BeamIOError or OSError per filesystem
        raise ValueError(f"--assignments {pattern}: {exc}") from None
    if not shards:
        raise ValueError(f"--assignments {pattern} does not exist" if not any(c in pattern for c in GLOB_CHARS)
                         else f"--assignments {pattern} matches no file")
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(shards)))) as pool:
        list(pool.map(check_manifest_header, shards))
    return shards
