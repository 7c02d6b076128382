"""Filigree's batch watermarking job (`python -m pipeline.run`); `Watermarker`, the library's API, is
re-exported from `filigree`."""

from filigree.watermarker import Watermarker

__all__ = ["Watermarker"]
