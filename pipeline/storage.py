"""Storage for the job: whole-file reads, atomic writes, bounded retries of transient I/O errors,
and output paths that cannot escape their folder. URIs (gs:// and any other scheme) go through
Beam's ``FileSystems``; local paths are read with ``open`` and joined with ``os.path.join``, as
Beam's local filesystem does, without looking it up for every call."""

from __future__ import annotations

import logging
import mimetypes
import os
import posixpath
import re
import time
import uuid

LOG = logging.getLogger("filigree")

_FILESYSTEMS: dict[str | None, tuple[object, object]] = {}
"""Per scheme: (the pipeline options it was made with, Beam's FileSystem for it)."""


def filesystem(path: str):
    """Beam's FileSystem for `path`, made once per scheme in this process (again when the pipeline
    options change): `FileSystems.get_filesystem` searches every FileSystem subclass and makes a
    new one on each call, which is most of the cost of a per-image read that fails."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.value_provider import RuntimeValueProvider

    scheme = FileSystems.get_scheme(path) if "://" in path else None  # a scheme is written `name://`
    options = FileSystems._pipeline_options or RuntimeValueProvider.runtime_options  # as get_filesystem does
    cached = _FILESYSTEMS.get(scheme)
    if cached is None or cached[0] is not options:
        cached = _FILESYSTEMS[scheme] = (options, FileSystems.get_filesystem(path))
    return cached[1]


def join(base: str, *parts: str) -> str:
    """`FileSystems.join(base, *parts)`: `os.path.join` for a local `base` (what Beam's local
    filesystem does), else `base`'s filesystem, looked up once per scheme."""
    if "://" not in base:
        return os.path.join(base, *parts)
    return filesystem(base).join(base, *parts)


def read_bytes(path: str) -> bytes:
    """Read a whole file: a local path directly, a URI through Beam's ``FileSystems`` (no
    decompression by extension)."""
    if "://" not in path:
        with open(path, "rb") as handle:
            return handle.read()
    from apache_beam.io.filesystem import CompressionTypes

    with filesystem(path).open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")
"""Names of `write_atomically`'s temp files: `.<name>.<uuid4 hex>.tmp`."""
STALE_TEMP_AGE_S = 3600.0
"""A temp file older than this was left by an interrupted run (a write takes seconds)."""


def is_temp_name(path: str) -> bool:
    """Whether the file name of `path` is one of `write_atomically`'s temp names."""
    return TEMP_NAME.match(posixpath.basename(path.replace("\\", "/"))) is not None


def read_head(path: str, size: int) -> bytes:
    """The first `size` bytes of a file (fewer when it is shorter)."""
    from apache_beam.io.filesystem import CompressionTypes

    with filesystem(path).open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read(size)


def write_atomically(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a uniquely named hidden temp file in the same
    directory, then rename it over ``path`` (overwriting). Local parents are created."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    directory, name = FileSystems.split(path)
    if not name:
        raise ValueError(f"not a file path: {path!r}")
    if FileSystems.get_scheme(path) in (None, "file"):
        _mkdirs_local(directory)
    temp = FileSystems.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    try:
        with FileSystems.create(
            temp, mime_type=mime, compression_type=CompressionTypes.UNCOMPRESSED
        ) as handle:
            handle.write(data)
        FileSystems.rename([temp], [path])
    except BaseException:
        try:
            if FileSystems.exists(temp):
                FileSystems.delete([temp])
        except Exception:  # noqa: BLE001 - the original error matters more
            pass
        raise


def _mkdirs_local(directory: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    if os.path.isdir(directory):
        return
    try:
        FileSystems.mkdirs(directory)
    except IOError:
        if not os.path.isdir(directory):
            raise


LOCAL_SCHEME_FOLDER = "local"
"""The folder under `_external/` for local paths (URIs use their scheme's name)."""
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def safe_relative_output(input_root: str, image_path: str) -> str:
    """Relative '/'-separated output path for ``image_path`` that can never escape its parent.

    Paths under ``input_root`` (same scheme, whole components, after resolving ``.`` and
    ``..`` lexically) map to their path below it; ``image_path == input_root`` maps to its
    file name. Anything else maps to ``_external/<scheme>/`` followed by its sanitised full path
    (bucket or host kept; ``local`` stands for local paths), so ``/x/a.jpg`` and
    ``gs://x/a.jpg`` never share an output. Backslashes count as separators, control characters
    become ``_`` and drive colons are dropped. Raises ValueError when no file name remains.
    """
    root_scheme, root_abs, root_parts = _path_parts(input_root)
    scheme, is_abs, parts = _path_parts(image_path)
    if not parts:
        raise ValueError(f"no file name in {image_path!r}")
    if root_scheme is None and scheme is None and root_abs != is_abs:
        root_scheme, root_abs, root_parts = _path_parts(os.path.abspath(input_root or "."))
        scheme, is_abs, parts = _path_parts(os.path.abspath(image_path))
    under = (
        scheme == root_scheme
        and is_abs == root_abs
        and parts[: len(root_parts)] == root_parts
    )
    if under:
        relative = parts[len(root_parts) :] or parts[-1:]
    else:
        relative = ["_external", scheme or LOCAL_SCHEME_FOLDER, *parts]
    return posixpath.join(*relative)


def _path_parts(path: str) -> tuple[str | None, bool, list[str]]:
    """(scheme, absolute, components) with '.'/'..' resolved lexically and never above top."""
    match = _SCHEME_RE.match(path)
    scheme = match.group(1).lower() if match else None
    rest = path[match.end() :] if match else path
    if scheme == "file":
        scheme = None
    rest = rest.replace("\\", "/")
    absolute = scheme is None and (rest.startswith("/") or bool(re.match(r"^[A-Za-z]:/", rest)))
    parts: list[str] = []
    for index, part in enumerate(rest.split("/")):
        if index == 0 and re.fullmatch(r"[A-Za-z]:", part) and scheme is None:
            part = part[0]
        part = _CONTROL_RE.sub("_", part)
        if part in ("", "."):
            continue
        if part == "..":
            if parts:
                parts.pop()
            continue
        parts.append(part)
    return scheme, absolute, parts


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


def write_marked(target: str, data: bytes) -> None:
    """Write a marked image atomically, with retries; failures become `StepFailure('write_failed')`."""
    from pipeline.records import StepFailure

    try:
        with_retries(lambda: write_atomically(target, data), "writing a marked image")
    except Exception as exc:  # noqa: BLE001 - this image's failure, reported in its record
        raise StepFailure("write_failed", f"cannot write the marked image: {type(exc).__name__}: {exc}"[:500]) from None
