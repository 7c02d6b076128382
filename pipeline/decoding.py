"""Decoding in a child process, so that a time limit stops the work itself.

Pillow's decoders are C code that a Python thread cannot interrupt: a decode abandoned after a
timeout in a thread keeps its CPU and memory until it finishes. `DecodeWorker` keeps one child
process (a fresh interpreter: it never inherits TensorFlow's threads or the job's memory) that
decodes one image at a time; when an image takes longer than the limit, the child is killed
(the work stops there) and a fresh one is started for the next image. A decoder that crashes
the child (a segfault on hostile input) costs that image only.

The decoded image comes back pickled through a pipe (`DecodedImage.__reduce__` sends colour
pixels as one contiguous buffer).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

from filigree.imaging import decode

DEFAULT_DECODER = "filigree.imaging.decode:decode_image"
"""`module:function` the child decodes with (`decode_image`'s signature)."""


def _serve(connection: Connection, decode_fn, max_pixels: int) -> None:
    """The child's loop: bytes in, ("ok", image) or ("error", exception) out, until EOF."""
    while True:
        try:
            data = connection.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", decode_fn(data, max_pixels=max_pixels))
        except (decode.ImageDecodeError, MemoryError) as exc:
            reply = ("error", exc)
        except BaseException as exc:  # noqa: BLE001 - any decoder failure goes back as text
            reply = ("error", RuntimeError(f"{type(exc).__name__}: {exc}"))
        try:
            connection.send(reply)
        except Exception as exc:  # noqa: BLE001 - e.g. an image too large to send back
            connection.send(("error", RuntimeError(f"cannot return the decoded image: {exc}")))


def _load(name: str):
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


class DecodeWorker:
    """A child process that decodes images under a time limit (see the module docstring).

    `decoder` names the decode function as `module:function` (the child imports it; its
    `sys.path` is this process's)."""

    def __init__(self, max_pixels: int, decoder: str = DEFAULT_DECODER):
        self.max_pixels, self.decoder = max_pixels, decoder
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._lock = threading.Lock()

    def decode(self, data: bytes, timeout_s: float) -> decode.DecodedImage:
        """Decode `data` (see `decode.decode_image`); raises its errors, and ImageDecodeError
        'timeout' (the child is killed) or 'corrupt' (the child died) on its own."""
        with self._lock:
            connection = self._ensure_started()
            try:
                connection.send_bytes(data)
                ready = connection.poll(timeout_s)
            except OSError:  # the child died before reading
                self._stop(kill=True)
                raise decode.ImageDecodeError("corrupt", "the decoder process died") from None
            if not ready:
                self._stop(kill=True)
                raise decode.ImageDecodeError("timeout", f"decoding took longer than {timeout_s:g} s")
            try:
                status, value = connection.recv()
            except (EOFError, OSError):
                self._stop(kill=True)
                raise decode.ImageDecodeError("corrupt", "the decoder crashed on this image") from None
        if status == "error":
            raise value
        return value

    def close(self) -> None:
        """Stop the child (a later `decode` starts another)."""
        with self._lock:
            self._stop(kill=False)

    @property
    def pid(self) -> int | None:
        """The child's process id while one runs."""
        return None if self._process is None else self._process.pid

    def _ensure_started(self) -> Connection:
        if self._process is not None and self._process.poll() is None:
            return self._connection
        self._stop(kill=True)
        parent, child = os.pipe(), os.pipe()  # parent -> child, child -> parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.decoding", str(parent[0]), str(child[1]), str(self.max_pixels),
             self.decoder], pass_fds=(parent[0], child[1]), stdin=subprocess.DEVNULL, env=env)
        os.close(parent[0])
        os.close(child[1])
        self._connection = _Duplex(child[0], parent[1])
        return self._connection

    def _stop(self, kill: bool) -> None:
        process, connection = self._process, self._connection
        self._process = self._connection = None
        if connection is not None:
            connection.close()  # the child sees EOF and returns
        if process is None:
            return
        if kill:
            process.kill()
        try:
            process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5.0)


class _Duplex:
    """A reading and a writing `Connection` used as one."""

    def __init__(self, read_fd: int, write_fd: int):
        self.reader = Connection(read_fd, writable=False)
        self.writer = Connection(write_fd, readable=False)

    def send_bytes(self, data: bytes) -> None:
        self.writer.send_bytes(data)

    def send(self, value) -> None:
        self.writer.send(value)

    def recv_bytes(self) -> bytes:
        return self.reader.recv_bytes()

    def recv(self):
        return self.reader.recv()

    def poll(self, timeout: float) -> bool:
        return self.reader.poll(timeout)

    def close(self) -> None:
        self.writer.close()
        self.reader.close()


def main(argv: list[str]) -> None:
    """Child entry point: `python -m pipeline.decoding READ_FD WRITE_FD MAX_PIXELS DECODER`."""
    read_fd, write_fd, max_pixels, decoder = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    sys.stdout = sys.stderr  # nothing may write into the protocol
    _serve(_Duplex(read_fd, write_fd), _load(decoder), max_pixels)


if __name__ == "__main__":
    main(sys.argv[1:])
