"""A decoder that only sleeps (imported by name in a decode worker's child process: kept free of
heavy imports so the child starts at once)."""

from __future__ import annotations

import time


def sleepy_decode(data: bytes, max_pixels: int):
    """Work for the seconds given in `data` (`"SECONDS|MARKER"`), then create the file MARKER."""
    seconds, marker = data.decode().split("|")
    time.sleep(float(seconds))
    open(marker, "w").close()
    raise ValueError("not a real decoder")
