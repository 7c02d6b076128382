"""A periodic-layout bundle without training, for tests: real SavedModels that honour the bundle
contract (docs/bundle.md), with a linear spread-spectrum code in place of the trained networks.

The generator maps raw bits b to sum_i (2 b_i - 1) B_i over L orthonormal, band-limited (8..24
cycles per tile) random patterns B_i (`training.periodic.spread_spectrum_basis`), scaled to
unit RMS; the extractor correlates an aligned
tile with each B_i (a matched filter). That is the textbook code the trained networks replace,
so every test of the layout, the codec and the reader runs against real model files.
"""

from __future__ import annotations

import dataclasses
import time

import tensorflow as tf

from filigree.payload import choose_ecc
from filigree.periodic import PeriodicLayout
from training.export import BUNDLE_FORMAT, BUNDLE_VERSION, GeneratorServing, TileExtractorServing, save_bundle
from training.periodic import spread_spectrum_basis


def build_linear_periodic_bundle(out_dir: str, bits: int = 128, strength: float = 1.0) -> str:
    """Write the bundle to `out_dir` and return its path."""
    basis = tf.constant(spread_spectrum_basis(bits, 64, (8.0, 24.0), seed=0))
    layout = PeriodicLayout()

    def tile_fn(raw):
        tile = tf.einsum("nl,lyx->nyx", 2.0 * raw - 1.0, basis)
        return tile / tf.sqrt(tf.reduce_mean(tf.square(tile), axis=[1, 2], keepdims=True) + 1e-12)

    def logits_fn(tile):
        tile = tile - tf.reduce_mean(tile, axis=[1, 2], keepdims=True)
        tile = tile / tf.sqrt(tf.reduce_mean(tf.square(tile), axis=[1, 2], keepdims=True) + 1e-12)
        return 4.0 * tf.einsum("nyx,lyx->nl", tile, basis)

    card = {
        "format": BUNDLE_FORMAT,
        "name": "filigree-linear-periodic-test",
        "version": BUNDLE_VERSION,
        "working_size": layout.tile_size,
        "payload_bits": bits,
        "color_mode": "luma",
        "default_strength": strength,
        "layout": layout.to_dict(),
        "ecc": dataclasses.asdict(choose_ecc(bits - layout.carried_bits)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return save_bundle(out_dir, GeneratorServing(tile_fn, layout.tile_size, bits, []),
                       TileExtractorServing(logits_fn, layout.tile_size, []), card)
