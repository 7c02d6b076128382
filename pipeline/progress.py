"""Beam metrics namespace and the progress line of local runs."""

from __future__ import annotations

import logging
import time

NAMESPACE = "filigree"
LOG = logging.getLogger("filigree")


class Progress:
    """Prints a progress line at most every few seconds (visible on local runs)."""

    def __init__(self, what: str, every_s: float = 5.0):
        self.what, self.every_s = what, every_s
        self.count, self.start, self.last = 0, time.time(), time.time()

    def tick(self):
        self.count += 1
        now = time.time()
        if now - self.last >= self.every_s:
            self.last = now
            rate = self.count / max(now - self.start, 1e-9)
            LOG.warning("%s %d images (%.1f img/s)", self.what, self.count, rate)
