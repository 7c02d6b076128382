"""The job's console: only Filigree's own lines unless `--verbose`.

TensorFlow's C++ runtime writes start-up lines straight to file descriptor 2, before and
regardless of Python's logging: on a machine without a GPU, `cudart_stub.cc ... Could not find
cuda drivers`, `cuda_platform.cc ... failed call to cuInit: INTERNAL: CUDA error`, and absl's
`WARNING: All log messages before absl::InitializeLog() is called are written to STDERR`.
`TF_CPP_MIN_LOG_LEVEL` (read once, when TensorFlow is imported) silences most of its logging but
not these early lines (measured with TensorFlow 2.21: `TF_CPP_MIN_LOG_LEVEL=3` still printed
the cudart_stub line). So `quiet_native_logs` also puts a line filter on descriptor 2 that drops
lines in the C++ log format (`[IWEF]mmdd hh:mm:ss.uuuuuu thread file:line] ...`) and absl's
notice, and passes everything else through unchanged. The launcher calls it before anything
imports TensorFlow; the model handlers call it again on each worker before loading the bundle
(idempotent), so Beam workers are quiet too. Python-side TensorFlow and absl logging go to
ERROR.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d+:\d+:\d+\.\d+\s+\d+ [^\s:\]]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)")
"""A line written by TensorFlow's (absl's) C++ logging."""

_installed: dict[str, object] = {}
_lock = threading.Lock()


def is_native_log_line(line: bytes) -> bool:
    """Whether one raw stderr line is TensorFlow/absl C++ log output."""
    return NATIVE_LOG_LINE.match(line) is not None


def verbose_requested(argv: list[str]) -> bool:
    """Whether command-line arguments ask for `--verbose` (also as `--verbose=true`, the Flex
    Template launcher's form), read before the options are parsed."""
    return any(arg == "--verbose" or arg.lower() == "--verbose=true" for arg in argv)


def quiet_native_logs(verbose: bool = False) -> None:
    """Keep TensorFlow's C++ and Python log lines off the console unless `verbose` (call before
    TensorFlow is imported; later calls are no-ops)."""
    if verbose:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    for name in ("tensorflow", "absl", "h5py", "keras"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with _lock:
        if "thread" in _installed:
            return
        _install_filter()


def _install_filter() -> None:
    """Route descriptor 2 through a pipe whose reader drops native log lines."""
    try:
        sys.stderr.flush()
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:  # no usable descriptor 2 (some embedded hosts): nothing to filter
        return
    thread = threading.Thread(target=_forward, args=(read_end, original), name="filigree-stderr-filter",
                              daemon=True)
    thread.start()
    _installed.update(thread=thread, original=original)
    atexit.register(_restore)


def _forward(read_end: int, original: int) -> None:
    """Copy lines from the pipe to the original stderr, except native log lines."""
    pending = b""
    with os.fdopen(read_end, "rb", buffering=0) as source:
        while True:
            try:
                chunk = source.read(65536)
            except OSError:
                break
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            kept = b"".join(line + b"\n" for line in lines if not is_native_log_line(line))
            if kept:
                _write_all(original, kept)
    if pending and not is_native_log_line(pending):
        _write_all(original, pending)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            written = os.write(fd, data)
        except OSError:
            return
        data = data[written:]


def _restore() -> None:
    """At exit: put the original stderr back and let the filter drain what is left."""
    thread, original = _installed.get("thread"), _installed.get("original")
    if thread is None:
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(original, 2)  # closes the pipe's write end held by descriptor 2
    thread.join(timeout=2.0)  # child processes still holding the pipe keep it open: bounded
