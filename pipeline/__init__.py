"""Filigree's batch watermarking pipeline (`python -m pipeline.run`) and its Python API."""

from pipeline.watermarker import Watermarker

__all__ = ["Watermarker"]
