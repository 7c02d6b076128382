"""Where the images are, and which payload goes into which image.

Pure functions on strings, plus `read_manifest` which streams a manifest file through Beam's
FileSystems. A manifest is either CSV with a header naming at least `image` and `payload`
(extra columns ignored; UTF-8 with or without BOM; CRLF or LF) or JSON Lines with objects
holding those keys. Blank lines are ignored. Image paths are full paths/URIs or paths relative
to `--input`'s root.

Duplicate rows for one image (after normalising the path, so `a.jpg` and `./a.jpg` are one
image): the first row (lowest line number) is used, whatever its payload (a bad payload there
makes that image's record a `bad_payload` error); every later row gets a `skipped` record
(`duplicate_row`) naming the line that won.

Paths: a relative path that leaves `--input`'s root (`../x.jpg`, `a/../../x.jpg`) or looks like
a Windows drive path is a `bad_path` error row; absolute paths and URIs are allowed and read as
given (their marked copies go under `OUTPUT/marked/_external/...`, see pipeline.planning).
Rows with no payload or a payload of the wrong JSON type are `bad_payload` errors; undecodable
JSON lines or rows without an image are `bad_manifest_row` errors. A CSV header without
`image`/`payload` columns, or a manifest that is not UTF-8, fails the whole job (the launcher
checks the header before starting, `check_manifest_header`). Nothing in a manifest is evaluated
or passed to a shell.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import posixpath
from dataclasses import dataclass
from typing import Iterator

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                    ".heic", ".heif", ".hif", ".avif")
"""Names taken as images without a look at their content (any other file is sniffed, see
`pipeline.planning.PlanJobs`)."""
GLOB_CHARS = "*?["


@dataclass(frozen=True)
class InputSpec:
    """How `--input` is listed: a match pattern and the root that relative paths start from."""

    pattern: str
    root: str
    single_file: bool = False


@dataclass(frozen=True)
class ManifestRow:
    """One manifest line: `image` as written, resolved `path`, `payload` text (or an error)."""

    line: int
    image: str
    path: str | None
    payload: str | None
    error: str | None = None
    error_code: str | None = None


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


def _parent(path: str) -> str:
    scheme, rest = split_scheme(path)
    parent = posixpath.dirname(rest.rstrip("/"))
    return scheme + (parent or ("" if scheme else "."))


def is_image_name(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


def relative_to(root: str, path: str) -> str | None:
    """`path` relative to `root`, or None when it lies outside."""
    root_n, path_n = normalize(root).rstrip("/") + "/", normalize(path)
    if path_n.startswith(root_n):
        return path_n[len(root_n):]
    return None


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
    joined = normalize(root.rstrip("/") + "/" + image)
    if relative_to(root, joined) is None:
        return None, f"image path {image!r} leaves the --input folder"
    return joined, None


def parse_manifest_text(text: str, root: str, kind: str) -> Iterator[ManifestRow]:
    """Rows of a whole manifest's text; `kind` is 'csv' or 'jsonl'."""
    text = text.lstrip("\ufeff")
    if kind == "jsonl":
        yield from _jsonl_rows(text, root)
    else:
        yield from _csv_rows(text, root)


def manifest_kind(path: str) -> str:
    return "jsonl" if path.lower().endswith((".jsonl", ".ndjson", ".json")) else "csv"


def _row(line: int, image: object, payload: object, root: str) -> ManifestRow:
    if not isinstance(image, str):
        return ManifestRow(line, str(image), None, None, "row has no image path", "bad_manifest_row")
    path, error = resolve_image(root, image)
    if error:
        return ManifestRow(line, image, None, None, error, "bad_path")
    if payload is None or (isinstance(payload, str) and not payload.strip()):
        return ManifestRow(line, image, path, None, "row has no payload", "bad_payload")
    if not isinstance(payload, (str, int)) or isinstance(payload, bool):
        return ManifestRow(line, image, path, None, f"payload must be a string, got {type(payload).__name__}",
                           "bad_payload")
    return ManifestRow(line, image, path, str(payload).strip())


def _csv_rows(text: str, root: str) -> Iterator[ManifestRow]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    for fields in reader:
        line = reader.line_num
        if not any(f.strip() for f in fields):
            continue
        if header is None:
            header = [f.strip().lower() for f in fields]
            missing = {"image", "payload"} - set(header)
            if missing:
                raise ValueError(f"manifest header must name columns image,payload; missing {sorted(missing)} "
                                 f"(got {fields})")
            image_at, payload_at = header.index("image"), header.index("payload")
            continue
        image = fields[image_at] if image_at < len(fields) else None
        payload = fields[payload_at] if payload_at < len(fields) else None
        yield _row(line, image, payload, root)


def _jsonl_rows(text: str, root: str) -> Iterator[ManifestRow]:
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield ManifestRow(line, raw[:200], None, None, f"invalid JSON: {exc.msg}", "bad_manifest_row")
            continue
        if not isinstance(obj, dict):
            yield ManifestRow(line, raw[:200], None, None, "line is not a JSON object", "bad_manifest_row")
            continue
        yield _row(line, obj.get("image"), obj.get("payload"), root)


def check_csv_header(text: str) -> None:
    """Raise ValueError unless the first non-blank CSV line names `image` and `payload` (an
    empty manifest has no rows and passes)."""
    for fields in csv.reader(io.StringIO(text.lstrip("\ufeff"), newline="")):
        if not any(f.strip() for f in fields):
            continue
        header = {f.strip().lower() for f in fields}
        missing = {"image", "payload"} - header
        if missing:
            raise ValueError(f"manifest header must name columns image,payload; missing {sorted(missing)} "
                             f"(got {fields})")
        return


def check_manifest_header(path: str, head_bytes: int = 1 << 16) -> None:
    """Fail fast, before a job starts, on a manifest whose start is not UTF-8 or whose CSV
    header lacks `image`/`payload` (reads at most `head_bytes`)."""
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path) as f:
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


def read_manifest(path: str, root: str) -> list[ManifestRow]:
    """All rows of the manifest at `path` (local or remote)."""
    from apache_beam.io.filesystems import FileSystems
    with FileSystems.open(path) as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"manifest {path} is not UTF-8: {exc}") from None
    return list(parse_manifest_text(text, root, manifest_kind(path)))
