"""Helpers the benchmark scripts share: robust averages of timings, timing a call, JSON-safe
floats and a description of the machine a run measured."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import numpy as np

def median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def finite(value: float) -> float | None:
    """JSON-safe float (inf PSNR of identical images becomes None)."""
    return float(value) if math.isfinite(value) else None


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_state() -> dict:
    """CPU count and model, load average, library versions and local time of the run."""
    import PIL
    model = ""
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "numpy": np.__version__, "pillow": PIL.__version__}
    with contextlib.suppress(Exception):
        import tensorflow as tf
        versions["tensorflow"] = tf.__version__
    return {"cpus": os.cpu_count(), "cpu_model": model, "loadavg": os.getloadavg(), "versions": versions,
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
