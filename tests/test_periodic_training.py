"""Tests for the periodic layout's training task (training/periodic.py): the in-graph layout,
whitening and fold agree with the reader's (filigree.sync), circular convolutions see a tile as
periodic, and a step trains and exports through the serving signatures."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")

from filigree.sync import sync_template, tile_pattern  # noqa: E402
from filigree.sync.analysis import whiten as reader_whiten  # noqa: E402
from training import periodic  # noqa: E402
from training.config import get_preset  # noqa: E402


def textured(seed: int, size: int = 192) -> np.ndarray:
    """A smooth random texture in [0.2, 0.8], float32 [size, size]."""
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((size // 8, size // 8)).astype(np.float32)
    big = tf.image.resize(noise[None, :, :, None], [size, size], method="bicubic")[0, :, :, 0].numpy()
    fine = rng.standard_normal((size, size)).astype(np.float32) * 0.05
    x = big / (np.abs(big).max() + 1e-6) * 0.25 + 0.5 + fine
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def test_layout_matches_the_reader_layout_and_is_periodic():
    tile = sync_template(b"k", 3)
    period = 48
    graph = periodic.periodic_layout(tf.constant(tile[None, :, :, None]), tf.constant(float(period)), 200, 170)
    graph = graph.numpy()[0, :, :, 0]
    reader = tile_pattern(tile, 200, 170, period)
    assert graph.shape == reader.shape == (200, 170)
    np.testing.assert_allclose(graph[:period * 2, :period * 2], graph[period:period * 3, period:period * 3], atol=1e-4)
    np.testing.assert_allclose(graph, reader, atol=1e-4)


def test_whitening_matches_the_reader():
    y = textured(1)
    graph = periodic.whiten(tf.constant(y[None, :, :, None])).numpy()[0, :, :, 0]
    reader = reader_whiten(y * 255.0)
    inner = (slice(16, -16), slice(16, -16))
    assert np.corrcoef(graph[inner].ravel(), reader[inner].ravel())[0, 1] > 0.95


def test_box_mean_is_a_box_filter():
    x = np.random.default_rng(2).random((1, 30, 40, 1)).astype(np.float32)
    got = periodic.box_mean(tf.constant(x), 5).numpy()
    assert got.shape == x.shape
    np.testing.assert_allclose(got[0, 10, 20, 0], x[0, 8:13, 18:23, 0].mean(), rtol=1e-4)


def smooth_tile(seed: int) -> np.ndarray:
    """A circular tile with energy only below 6 cycles per tile (interpolation barely blurs it)."""
    rng = np.random.default_rng(seed)
    f = np.fft.fftfreq(64) * 64
    band = np.hypot(f[:, None], f[None, :]) <= 6
    tile = np.real(np.fft.ifft2((rng.standard_normal((64, 64)) + 1j * rng.standard_normal((64, 64))) * band))
    return (tile / tile.std()).astype(np.float32)


def test_fold_with_the_true_period_returns_the_tile():
    tile = smooth_tile(5)
    period = 50.0
    pattern = periodic.periodic_layout(tf.constant(tile[None, :, :, None]), tf.constant(period), 192, 192)
    transform = periodic.fold_transform(tf.constant([period]), tf.constant([0.0]), tf.constant([0.0]),
                                        tf.constant([64.0]), tf.constant([0.0]), 64)
    folded = periodic.fold_periods(pattern, transform, 64, 3).numpy()[0, :, :, 0]
    assert np.corrcoef(folded.ravel(), tile.ravel())[0, 1] > 0.99


def test_fold_with_a_wrong_angle_loses_the_tile():
    tile = sync_template(b"k", 5)
    pattern = periodic.periodic_layout(tf.constant(tile[None, :, :, None]), tf.constant(50.0), 192, 192)
    wrong = periodic.fold_transform(tf.constant([50.0]), tf.constant([np.radians(3.0)], tf.float32),
                                    tf.constant([0.0]), tf.constant([0.0]), tf.constant([0.0]), 64)
    folded = periodic.fold_periods(pattern, wrong, 64, 3).numpy()[0, :, :, 0]
    assert abs(np.corrcoef(folded.ravel(), tile.ravel())[0, 1]) < 0.6


def test_circular_pad_commutes_with_a_cyclic_shift():
    x = np.random.default_rng(3).random((1, 16, 16, 2)).astype(np.float32)
    conv = tf.keras.layers.Conv2D(3, 3, padding="valid")
    pad = periodic.CircularPad(1)
    shifted_first = conv(pad(np.roll(x, (5, -3), axis=(1, 2)))).numpy()
    shifted_after = np.roll(conv(pad(x)).numpy(), (5, -3), axis=(1, 2))
    np.testing.assert_allclose(shifted_first, shifted_after, atol=1e-5)


def test_low_frequency_share():
    tile = sync_template(b"k", 1)
    smooth = np.cos(2 * np.pi * np.arange(64) / 64)[None, :] * np.ones((64, 1))
    shares = periodic.spectral_low_share(tf.constant(np.stack([tile, smooth])[..., None], tf.float32), 4.0).numpy()
    assert shares[0] < 0.05 and shares[1] > 0.99


@pytest.fixture(scope="module")
def small_task():
    cfg = get_preset("periodic")
    cfg = cfg.replace(batch_size=8, model=cfg.model.__class__(**{**cfg.model.__dict__, "payload_bits": 32}))
    photos = [(textured(s, 256)[..., None].repeat(3, axis=2) * 255).astype(np.uint8) for s in range(3)]
    return periodic.PeriodicTask(cfg.replace(attacks=cfg.attacks.__class__(
        **{**cfg.attacks.__dict__, "kinds": ("identity", "jpeg_real", "noise", "combo")})), photos, photos)


def training_step(task, step: int):
    """(gradients of both networks, metrics) of one training step on a batch of 8."""
    inputs, bits = task.example(0, 8)
    with tf.GradientTape() as tape:
        loss, metrics = task.losses(tf.constant(inputs), tf.constant(bits), tf.constant(step, tf.int64),
                                    tf.constant([1, 2], tf.int32))
    grads = tape.gradient(loss, task.trainable_variables())
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)
    return grads, metrics


def test_a_training_step_has_finite_gradients_for_both_networks(small_task):
    grads, metrics = training_step(small_task, 4000)
    assert 30.0 < float(metrics["psnr"]) < 42.0
    moved = [np.abs(g.numpy()).sum() > 0 for g in grads]
    generator_count = len(small_task.generator.trainable_variables)
    assert any(moved[:generator_count]) and any(moved[generator_count:])


def test_serving_signatures(small_task, tmp_path):
    generator, extractor = small_task.serving(0, psnr=44.0)
    tile = generator.serve(bits=tf.zeros([2, 32]))["tile"].numpy()
    assert tile.shape == (2, 64, 64)
    np.testing.assert_allclose(np.sqrt((tile ** 2).mean(axis=(1, 2))), 1.0, rtol=1e-3)
    logits = extractor.serve(tile=tf.constant(tile))["logits"].numpy()
    assert logits.shape == (2, 32)
    assert generator.target_psnr == 44.0


def test_export_writes_a_loadable_bundle(small_task, tmp_path):
    from training.export import save_bundle
    generator, extractor = small_task.serving(0, psnr=44.0)
    out = save_bundle(str(tmp_path / "bundle"), generator, extractor, {"format": "filigree-bundle/1"})
    loaded_generator = tf.saved_model.load(os.path.join(out, "embedder")).signatures["serving_default"]
    loaded_extractor = tf.saved_model.load(os.path.join(out, "extractor")).signatures["serving_default"]
    bits = tf.constant(np.random.default_rng(0).integers(0, 2, (3, 32)).astype(np.float32))
    tile = loaded_generator(bits=bits)["tile"]
    np.testing.assert_allclose(tile.numpy(), generator.serve(bits=bits)["tile"].numpy(), atol=1e-5)
    assert loaded_extractor(tile=tile)["logits"].shape == (3, 32)


def test_fold_channel_task_trains_and_evaluates_without_an_image_psnr():
    """The fold-channel task (training/fold_channel.py) on small textured photos: a step has
    finite gradients, and its evaluation reports accuracy per channel SNR and no PSNR (it
    renders no image, so a bundle card from it carries none)."""
    from training.fold_channel import EVAL_SNRS, FoldChannelTask
    cfg = get_preset("periodic-fold")
    cfg = cfg.replace(batch_size=8, eval_samples=8,
                      model=cfg.model.__class__(**{**cfg.model.__dict__, "payload_bits": 32}))
    photos = [(textured(s, 256)[..., None].repeat(3, axis=2) * 255).astype(np.uint8) for s in range(2)]
    task = FoldChannelTask(cfg, photos, photos)
    training_step(task, 3000)
    noise, bits = task.eval_example()
    results = task.evaluate(tf.constant(noise), tf.constant(bits), 0)
    assert "psnr" not in results
    assert {f"acc_snr{s:g}" for s in EVAL_SNRS} <= set(results)
    accuracies = [float(results[f"acc_snr{s:g}"]) for s in EVAL_SNRS]
    assert accuracies[-1] > 0.9  # the spread-spectrum start reads at the highest SNR
