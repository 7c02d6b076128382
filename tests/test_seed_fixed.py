"""Tests for the `seed-fixed` recipe: the payload spread over blocks of the watermark plane, the
bit losses, and a few training steps exported through the bundle contract.

The training test writes its own stand-in Fashion-MNIST (random idx files), so it needs no
dataset; the measured figures of the full run are in docs/seed.md.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from filigree.bundle import load_bundle  # noqa: E402
from training import seed as seed_lib  # noqa: E402
from training import train  # noqa: E402
from training.config import get_preset  # noqa: E402


def write_idx(path: Path, images: np.ndarray) -> None:
    """uint8 images [N, 28, 28] as a gzipped IDX file."""
    header = bytes([0, 0, 8, images.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes()))


@pytest.mark.parametrize("bits", [1, 4, 16, 49, 196, 784])
def test_spread_and_despread_round_trip(bits):
    payload = np.random.default_rng(bits).integers(0, 2, (3, bits)).astype(np.float32)
    plane = np.asarray(seed_lib.to_plane(tf.constant(payload)))
    assert plane.shape == (3, 28, 28, 1)
    np.testing.assert_array_equal(np.asarray(seed_lib.from_plane(tf.constant(plane), bits)), payload)


def test_sixteen_bits_fill_seven_by_seven_blocks():
    payload = np.zeros((1, 16), np.float32)
    payload[0, 6] = 1.0  # block row 1, column 2
    plane = np.asarray(seed_lib.to_plane(tf.constant(payload)))[0, ..., 0]
    assert plane.sum() == 49 and plane[7:14, 14:21].all()


@pytest.mark.parametrize("bits", [0, 15, 36, 100])
def test_payloads_that_do_not_tile_the_plane_are_refused(bits):
    with pytest.raises(ValueError, match="k x k blocks"):
        seed_lib.blocks_per_side(bits)


def test_bit_losses():
    bits = tf.constant([[1.0, 0.0, 1.0, 0.0]])
    plane = seed_lib.to_plane(bits)
    right = 0.9 * plane + 0.05
    wrong = 0.9 * (1.0 - plane) + 0.05
    for kind in ("mse", "bce"):
        assert float(seed_lib.watermark_loss(right, bits, kind)) < float(seed_lib.watermark_loss(wrong, bits, kind))
    assert float(seed_lib.watermark_loss(right, bits, "bce")) == pytest.approx(-np.log(0.95), rel=1e-3)
    with pytest.raises(ValueError, match="bit_loss"):
        seed_lib.watermark_loss(right, bits, "hinge")


def test_seed_fixed_preset_is_the_seed_family():
    seed, fixed = get_preset("seed"), get_preset("seed-fixed")
    assert fixed.model.architecture == seed.model.architecture == "seed"
    assert fixed.model.working_size == seed.model.working_size == 28
    assert fixed.data == seed.data and fixed.model.payload_bits == 16
    assert seed.loss.bit_loss == "mse" and fixed.loss.bit_loss == "bce"


def test_seed_fixed_trains_and_exports_through_the_bundle_contract(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "fashion"
    data.mkdir()
    write_idx(data / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (64, 28, 28)))
    write_idx(data / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (16, 28, 28)))
    bundle = tmp_path / "bundle"
    args = ["--preset", "seed-fixed", "--data", str(data), "--steps", "3", "--set", "eval_every=3",
            "--workdir", str(tmp_path / "work"), "--out", str(bundle)]
    assert train.main(args) == 0

    card = json.loads((bundle / "model.json").read_text())
    assert card["preset"] == "seed-fixed" and card["training"]["steps"] == 3
    assert card["working_size"] == 28 and card["payload_bits"] == 16
    assert {"psnr", "acc_clean", "acc_noise"} <= set(card["metrics"])
    assert 0.0 <= card["metrics"]["acc_noise"] <= 1.0

    loaded = load_bundle(str(bundle))  # checks both signatures against the card
    assert loaded.card.payload_bits == 16
    gray = rng.random((2, 28, 28, 1), dtype=np.float32)
    bits = rng.integers(0, 2, (2, 16)).astype(np.float32)
    residual = loaded.embed_fn(np.repeat(gray, 3, axis=-1), bits)
    assert residual.shape == (2, 28, 28, 1) and np.all(np.isfinite(residual))
    logits = loaded.extract_fn(np.repeat(gray + residual, 3, axis=-1))
    assert logits.shape == (2, 16) and np.all(np.isfinite(logits))
