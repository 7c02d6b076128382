"""Filigree's watermarking library: the bundle contract, payload codec, tiling, re-framing search,
attacks, image codec and `Watermarker`, shared by the Beam job (`pipeline`) and the training job."""

from filigree.watermarker import Watermarker

__all__ = ["Watermarker"]
