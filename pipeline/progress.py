"""Beam metrics namespace and the progress line of local runs."""

from __future__ import annotations

import logging
import threading
import time

NAMESPACE = "filigree"
LOG = logging.getLogger("filigree")


class Progress:
    """Prints `<what> N images so far (R img/s)` at most every `every_s` seconds.

    The count is the process's: every DoFn instance of one step shares it (a runner may build
    several instances, or rebuild one, during a run; a count per instance restarted at each and
    under-counted). The clock starts at the first image, not when the step is set up (which
    includes loading the model), so the rate is the step's own and a short run prints nothing."""

    _counts: dict[str, list[float]] = {}
    _lock = threading.Lock()

    def __init__(self, what: str, every_s: float = 5.0):
        self.what, self.every_s = what, every_s

    def tick(self) -> int:
        """Count one image; returns the process's count so far."""
        now = time.monotonic()
        with self._lock:
            state = self._counts.setdefault(self.what, [0, now, now])  # count, first, last print
            state[0] += 1
            count, first, last = state
            due = now - last >= self.every_s
            if due:
                state[2] = now
        if due:
            rate = (count - 1) / max(now - first, 1e-9)
            LOG.warning("%s %d image%s so far (%.1f img/s)", self.what, count, "" if count == 1 else "s", rate)
        return int(count)

    @classmethod
    def reset(cls) -> None:
        """Forget the counts (a new run in the same process starts from zero)."""
        with cls._lock:
            cls._counts.clear()
