"""Filigree's batch watermarking pipeline (`python -m pipeline.run`) and its Python API."""

from filigree.watermarker import Watermarker

__all__ = ["Watermarker"]
