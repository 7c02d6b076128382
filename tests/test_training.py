"""Tests for the training job (training/): presets, a short tiny run and its bundle, learning,
exact resume, the attack layers, and the seed architecture.

Training runs use the bundled sample photos (filigree/data/samples) so the file needs nothing
outside the repository; the one seed training test is skipped without Fashion-MNIST.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from training import attacks as attack_lib  # noqa: E402
from training import seed as seed_lib  # noqa: E402
from training import train  # noqa: E402
from training.config import AttackConfig, TrainConfig, get_preset  # noqa: E402
from reports import read_records  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "filigree" / "data" / "samples"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

BUNDLE_STEPS = 4
TINY_PAYLOAD = "beef"
"""16 bits: the tiny model's capacity (32 raw bits, BCH t=3)."""


def tiny_args(workdir: Path, steps: int, *extra: str) -> list[str]:
    return ["--preset", "tiny", "--data", str(SAMPLES), "--steps", str(steps),
            "--workdir", str(workdir), *extra]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(workdir, bundle) of one short tiny run through `main`, exported."""
    root = tmp_path_factory.mktemp("tiny")
    workdir, bundle = root / "work", root / "bundle"
    assert train.main(tiny_args(workdir, BUNDLE_STEPS, "--out", str(bundle))) == 0
    return workdir, bundle


def tiny_config(**changes) -> TrainConfig:
    """The tiny preset on the bundled samples, with top-level fields changed."""
    return get_preset("tiny").replace(data=str(SAMPLES), **changes)


def sample_photo(size: int = 128) -> np.ndarray:
    """A centre crop of a bundled photo, float32 [1, size, size, 3] in [0, 1]."""
    image = Image.open(SAMPLES / "opencv_fruits.jpg").convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BOX)
    return (np.asarray(image, np.float32) / 255.0)[None]


def psnr(a, b) -> float:
    return float(-10.0 * np.log10(np.mean(np.square(np.asarray(a) - np.asarray(b))) + 1e-12))


SEED = tf.constant([3, 4], tf.int32)


# -- command line ------------------------------------------------------------------------------

def test_list_presets(capsys):
    assert train.main(["--list-presets"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert set(listed) >= {"seed", "tiny", "default", "gpu"}


def test_unknown_preset_is_an_error(capsys, tmp_path):
    assert train.main(["--preset", "nope", "--workdir", str(tmp_path)]) == 2
    assert "known presets" in capsys.readouterr().err


# -- the tiny run and its bundle ---------------------------------------------------------------

def _spec(structure: dict, name: str):
    spec = structure[name]
    return spec.dtype, spec.shape.as_list()


def test_bundle_signatures_and_model_card(tiny_run):
    _, bundle = tiny_run
    cfg = get_preset("tiny")
    size, bits_n = cfg.model.working_size, cfg.model.payload_bits

    embed = tf.saved_model.load(str(bundle / "embedder")).signatures["serving_default"]
    inputs = embed.structured_input_signature[1]
    assert set(inputs) == {"image", "bits"}
    assert _spec(inputs, "image") == (tf.float32, [None, size, size, 3])
    assert _spec(inputs, "bits") == (tf.float32, [None, bits_n])
    assert set(embed.structured_outputs) == {"residual"}

    extract = tf.saved_model.load(str(bundle / "extractor")).signatures["serving_default"]
    inputs = extract.structured_input_signature[1]
    assert set(inputs) == {"image"}
    assert _spec(inputs, "image") == (tf.float32, [None, size, size, 3])
    assert set(extract.structured_outputs) == {"logits"}

    image = tf.constant(sample_photo(size).repeat(2, axis=0))
    bits = tf.constant(np.random.default_rng(0).integers(0, 2, (2, bits_n)), tf.float32)
    residual = embed(image=image, bits=bits)["residual"]
    assert residual.dtype == tf.float32 and residual.shape == (2, size, size, 1)
    assert np.all(np.isfinite(residual)) and 0 < float(tf.reduce_max(tf.abs(residual))) < 1
    logits = extract(image=tf.clip_by_value(image + residual, 0.0, 1.0))["logits"]
    assert logits.dtype == tf.float32 and logits.shape == (2, bits_n)
    assert np.all(np.isfinite(logits))

    card = json.loads((bundle / "model.json").read_text())
    assert card["format"] == "filigree-bundle/1"
    assert card["preset"] == "tiny" and isinstance(card["name"], str) and isinstance(card["version"], str)
    assert card["working_size"] == size and card["payload_bits"] == bits_n
    assert card["color_mode"] == "luma" and card["default_strength"] > 0
    assert card["ecc"]["scheme"] == "bch" and {"m", "t", "data_bits"} <= set(card["ecc"])
    assert {"data", "steps", "wall_time_s", "hardware", "seed", "notes"} <= set(card["training"])
    assert card["training"]["steps"] == BUNDLE_STEPS
    assert "psnr" in card["metrics"] and "acc_identity" in card["metrics"]


def test_tiny_run_logs_metrics(tiny_run):
    workdir, _ = tiny_run
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == BUNDLE_STEPS
    assert {"psnr", "acc_identity", "acc_crop", "wall_time_s"} <= set(records[-1])
    assert (workdir / "metrics.csv").exists() and list((workdir / "ckpt").glob("ckpt-*.index"))


def test_tiny_preset_reads_payloads_back(tmp_path):
    """The issue's acceptance path: `--preset tiny --steps 200 --out DIR` trains and exports, and
    `python -m pipeline.run --model DIR` marks the samples and reads the payloads back. Measured
    on this data: every sample exact, at most 1 raw bit error of the 3 that BCH corrects; the
    assertion leaves room for one unlucky photo on other CPUs."""
    from pipeline.run import main as run_pipeline

    bundle, out = tmp_path / "bundle", tmp_path / "out"
    assert train.main(tiny_args(tmp_path / "work", 200, "--out", str(bundle))) == 0
    # a 200-step model's mark is loud: the visibility floor is off, the read-back is the point
    assert run_pipeline(["--model", str(bundle), "--payload", TINY_PAYLOAD, "--output", str(out),
                         "--min_psnr", "0"]) == 0
    records = [r for r in read_records(out) if r["status"] != "ignored"]  # assignments.csv, LICENSE.md
    assert len(records) == len(list(SAMPLES.glob("*.[jp][pn]g")))
    # `ok` means read back exactly; an unlucky photo is an `unreadable` error, with its BER
    exact = [r["status"] == "ok" and r["decoded"] == TINY_PAYLOAD for r in records]
    assert all(r["status"] == "ok" or r["error_code"] == "unreadable" for r in records), records
    assert sum(exact) >= len(records) - 1, [r.get("ber") for r in records]
    assert np.mean([r["ber"] for r in records if r.get("ber") is not None]) <= 0.05


def checkpoint_values(workdir: Path) -> dict[str, np.ndarray]:
    """Every saved tensor of the workdir's latest checkpoint (networks, optimiser, step), by key,
    without the wall-clock time and the save counter."""
    reader = tf.train.load_checkpoint(str(workdir / "ckpt"))
    skip = ("wall_time", "save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH")
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if not key.startswith(skip)}


def test_resume_is_exact(tiny_run, tmp_path, monkeypatch):
    """BUNDLE_STEPS in one go (the `tiny_run` fixture, through `main`) and half of them, then a
    fresh Trainer resuming to the end, leave the same checkpoint."""
    monkeypatch.setattr(train.Trainer, "evaluate", lambda self: {})  # weights only: skip evals
    cfg = tiny_config(steps=BUNDLE_STEPS)
    paths = train.RunPaths(workdir=str(tmp_path), out=str(tmp_path / "bundle"))
    for steps in (BUNDLE_STEPS // 2, BUNDLE_STEPS):
        keras.utils.set_random_seed(cfg.seed)
        train.Trainer(cfg, paths).run(steps)
    straight, resumed = checkpoint_values(tiny_run[0]), checkpoint_values(tmp_path)
    assert set(straight) == set(resumed) and len(straight) > 20
    assert int(resumed["step/.ATTRIBUTES/VARIABLE_VALUE"]) == BUNDLE_STEPS
    for key, expected in straight.items():
        # CPU float reductions are not bit-reproducible run to run (measured: up to 1e-6 of a
        # tensor's largest value between two straight runs); a resume bug (data, attack seeds,
        # optimiser state) moves weights by ~learning_rate and optimiser moments by O(1). Tensors of
        # tiny values (second moments near 1e-10) differ by ~1e-9 between loaded runs: the floor.
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        np.testing.assert_allclose(resumed[key], expected, rtol=0, atol=1e-4 * scale + 1e-7, err_msg=key)


# -- attack layers -----------------------------------------------------------------------------

@pytest.mark.parametrize("quality", [30, 50, 75])
def test_simulated_jpeg_matches_libjpeg(quality):
    image = sample_photo(128)
    real = tf.image.adjust_jpeg_quality(image[0], quality)
    simulated = attack_lib.simulated_jpeg(tf.constant(image), tf.constant([quality]))[0]
    assert psnr(simulated, real) > 30.0  # measured: about 42 dB on this photo
    assert psnr(real, image[0]) < 35.0  # a real change, not a near-identity


@pytest.mark.parametrize("kind", sorted(attack_lib.ATTACKS))
def test_gradients_flow_through_attack(kind):
    layer = attack_lib.ATTACKS[kind](AttackConfig())
    images = tf.constant(np.clip(sample_photo(64).repeat(2, axis=0), 0.02, 0.98))
    weights = tf.constant(np.random.default_rng(1).normal(size=images.shape), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(images)
        out = layer(images, tf.constant(1.0), SEED)
        loss = tf.reduce_sum(out * weights)
    grad = tape.gradient(loss, images)
    assert out.shape == images.shape
    assert grad is not None and np.all(np.isfinite(grad))
    assert float(tf.reduce_mean(tf.abs(grad))) > 1e-3


@pytest.mark.parametrize("kind,min_psnr", [
    ("identity", 99.0), ("noise", 99.0), ("blur", 99.0), ("resize", 45.0), ("color", 60.0),
    # JPEG at q=100 still subsamples chroma 4:2:0: about 35 dB on this saturated photo.
    ("jpeg_sim", 30.0), ("jpeg_real", 30.0), ("combo", 30.0),
])
def test_zero_strength_is_near_identity(kind, min_psnr):
    layer = attack_lib.ATTACKS[kind](AttackConfig())
    images = sample_photo(64)
    out = layer(tf.constant(images), tf.constant(0.0), SEED)
    assert psnr(out, images) > min_psnr


def test_noise_std_matches_sigma():
    cfg = AttackConfig()
    images = tf.fill([8, 64, 64, 3], 0.5)
    out = attack_lib.GaussianNoise(cfg)(images, tf.constant(1.0), SEED)
    measured = np.std(np.asarray(out - images), axis=(1, 2, 3))
    expected = np.asarray(attack_lib.uniform(attack_lib.sub_seed(SEED, 0), [8, 1, 1, 1], 0.0, 1.0))
    expected = expected.reshape(-1) * cfg.noise_max_sigma
    np.testing.assert_allclose(measured, expected, rtol=0.03, atol=1e-4)
    half = attack_lib.GaussianNoise(cfg)(images, tf.constant(0.5), SEED)
    np.testing.assert_allclose(np.std(np.asarray(half - images), axis=(1, 2, 3)), expected / 2,
                               rtol=0.03, atol=1e-4)


def test_attacks_change_the_image_at_full_strength():
    images = tf.constant(sample_photo(64).repeat(4, axis=0))
    for kind in sorted(set(attack_lib.ATTACKS) - {"identity"}):
        out = attack_lib.ATTACKS[kind](AttackConfig())(images, tf.constant(1.0), SEED)
        assert psnr(out, images) < 60.0, kind  # the identity gives ~120 dB (float rounding)
        assert float(tf.reduce_min(out)) >= -1e-6 and float(tf.reduce_max(out)) <= 1 + 1e-6, kind


def test_blur_is_gaussian_with_the_drawn_sigma():
    cfg = AttackConfig()
    impulse = np.zeros([1, 33, 33, 3], np.float32)
    impulse[0, 16, 16] = 1.0
    out = np.asarray(attack_lib.GaussianBlur(cfg)(tf.constant(impulse), tf.constant(1.0), SEED))[0, ..., 0]
    sigma = float(attack_lib.uniform(SEED, [], 0.0, 1.0)) * cfg.blur_max_sigma
    taps = np.exp(-0.5 * (np.arange(-4, 5) / sigma) ** 2)
    expected = np.outer(taps, taps) / taps.sum() ** 2
    np.testing.assert_allclose(out[12:21, 12:21], expected, atol=1e-6)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)


def test_brightness_is_a_bounded_per_sample_factor():
    cfg = dataclasses.replace(AttackConfig(), contrast_max_delta=0.0, saturation_max_delta=0.0, hue_max_delta=0.0)
    images = tf.fill([16, 8, 8, 3], 0.5)
    ratio = np.asarray(attack_lib.ColorJitter(cfg)(images, tf.constant(1.0), SEED)) / 0.5
    per_sample = ratio.reshape(16, -1)
    np.testing.assert_allclose(per_sample, np.broadcast_to(per_sample[:, :1], per_sample.shape), atol=1e-5)
    assert np.all(np.abs(per_sample[:, 0] - 1.0) <= cfg.brightness_max_delta + 1e-5)
    assert np.std(per_sample[:, 0]) > 0.05


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0])
def test_crop_boxes_in_range(strength):
    cfg = AttackConfig()
    boxes = np.asarray(attack_lib.random_crop_boxes(SEED, 2000, tf.constant(strength), cfg))
    y0, x0, y1, x1 = boxes.T
    assert np.all(boxes >= 0.0) and np.all(boxes <= 1.0 + 1e-6)
    assert np.all(y1 > y0) and np.all(x1 > x0)
    area = (y1 - y0) * (x1 - x0)
    min_area = 1.0 - strength * (1.0 - cfg.crop_min_area)
    assert np.all(area >= min_area - 1e-5) and np.all(area <= 1.0 + 1e-6)
    full = np.all(np.isclose(boxes, [0.0, 0.0, 1.0, 1.0]), axis=1)
    if strength > 0:
        assert abs((~full).mean() - cfg.crop_probability) < 0.05
    else:
        assert np.allclose(area, 1.0, atol=1e-5)


def test_apply_sliced_attacks_each_slice():
    cfg = dataclasses.replace(AttackConfig(), kinds=("identity", "noise"))
    images = tf.fill([4, 16, 16, 3], 0.5)
    out = np.asarray(attack_lib.apply_sliced(attack_lib.build_attacks(cfg), images, tf.constant(1.0), SEED))
    assert np.array_equal(out[:2], np.asarray(images[:2]))
    assert np.all(np.std(out[2:] - 0.5, axis=(1, 2, 3)) > 0)


# -- the seed architecture ---------------------------------------------------------------------

def _convs(model: keras.Model) -> list[tuple[int, tuple, str, str]]:
    return [(layer.filters, tuple(layer.kernel_size), layer.activation.__name__, layer.padding)
            for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def test_seed_architecture():
    model = seed_lib.build_autoencoder()
    encoder, decoder = model.get_layer("encoder"), model.get_layer("decoder")
    predictor, noise = model.get_layer("w_predictor"), model.get_layer("noise")

    assert _convs(encoder) == [(8, (5, 5), "relu", "same"), (4, (3, 3), "relu", "same"),
                               (2, (3, 3), "relu", "same"), (1, (3, 3), "relu", "same")]
    assert _convs(decoder) == [(2, (5, 5), "relu", "same"), (4, (3, 3), "relu", "same"),
                               (8, (3, 3), "relu", "same"), (1, (3, 3), "sigmoid", "same")]
    assert _convs(predictor) == [(8, (5, 5), "relu", "same"), (4, (3, 3), "relu", "same"),
                                 (1, (3, 3), "sigmoid", "same")]
    assert tuple(encoder.output.shape) == (None, 28, 28, 1)
    concat = decoder.get_layer("code_and_w")
    assert tuple(concat.output.shape) == (None, 28, 28, 2)
    assert isinstance(noise, keras.layers.GaussianNoise) and noise.stddev == 0.5
    assert tuple(model.output["marked"].shape) == (None, 28, 28, 1)
    assert tuple(model.output["w_hat"].shape) == (None, 28, 28, 1)

    x = tf.fill([2, 28, 28, 1], 0.5)
    w = tf.zeros([2, 28, 28, 1])
    assert np.array_equal(noise(x, training=False), x)
    assert float(tf.math.reduce_std(noise(x, training=True) - x)) == pytest.approx(0.5, rel=0.05)
    out = model({"image": x, "w": w}, training=False)
    assert out["marked"].shape == (2, 28, 28, 1) and out["w_hat"].shape == (2, 28, 28, 1)


@pytest.fixture
def seed_task() -> seed_lib.SeedTask:
    """A SeedTask on random stand-in images (no Fashion-MNIST needed)."""
    rng = np.random.default_rng(0)
    images = rng.random((64, 28, 28, 1), dtype=np.float32)
    return seed_lib.SeedTask(get_preset("seed"), images[:48], images[48:])


def test_seed_examples_are_pure_functions_of_step(seed_task):
    a, b = seed_task.example(5, 8), seed_task.example(5, 8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(seed_task.example(6, 8)[1], a[1])
    assert a[0].shape == (8, 28, 28, 1) and a[1].shape == (8, 784)
    assert set(np.unique(a[1])) <= {0.0, 1.0}


def test_seed_noise_is_a_function_of_the_seed(seed_task):
    images, bits = (tf.constant(x) for x in seed_task.example(0, 4))
    seed = tf.constant([1, 7], tf.int32)
    first = seed_task.losses(images, bits, 7, seed)[0]
    seed_task.losses(images, bits, 8, tf.constant([1, 8], tf.int32))
    assert float(seed_task.losses(images, bits, 7, seed)[0]) == float(first)


def test_seed_serving_shapes(seed_task):
    embedder, extractor = seed_task.serving()
    gray = tf.constant(seed_task.val_images[:3])
    image = tf.concat([gray] * 3, axis=-1)
    bits = tf.constant(np.random.default_rng(1).integers(0, 2, (3, 784)), tf.float32)
    residual = embedder.serve(image, bits)["residual"]
    assert residual.shape == (3, 28, 28, 1)
    marked = tf.concat([gray + residual] * 3, axis=-1)
    np.testing.assert_allclose(marked[..., :1], seed_task.mark(gray, bits), atol=1e-5)
    logits = extractor.serve(marked)["logits"]
    assert logits.shape == (3, 784) and np.all(np.isfinite(logits))
    p = tf.reshape(seed_task.w_predictor(gray + residual), (3, 784))
    np.testing.assert_array_equal(np.asarray(logits) > 0, np.asarray(p) > 0.5)


def _write_idx(path: Path, images: np.ndarray, gzipped: bool) -> None:
    header = bytes([0, 0, 8, images.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
    raw = header + images.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gzipped else raw)


def test_load_fashion_mnist_reads_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    train_raw = rng.integers(0, 256, (5, 28, 28))
    val_raw = rng.integers(0, 256, (3, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", train_raw, gzipped=True)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", val_raw, gzipped=False)
    train_images, val_images = seed_lib.load_fashion_mnist(str(tmp_path))
    assert train_images.shape == (5, 28, 28, 1) and val_images.shape == (3, 28, 28, 1)
    assert train_images.dtype == np.float32
    np.testing.assert_allclose(train_images[..., 0] * 255, train_raw, atol=1e-3)
    with pytest.raises(FileNotFoundError):
        seed_lib.load_fashion_mnist(str(tmp_path / "missing"))


@pytest.mark.skipif(not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists()
                    and not (FASHION_MNIST / "train-images-idx3-ubyte").exists(),
                    reason="Fashion-MNIST not installed (Debian package dataset-fashion-mnist)")
def test_seed_preset_trains_and_exports(tmp_path):
    args = ["--preset", "seed", "--steps", "2", "--workdir", str(tmp_path / "work"),
            "--out", str(tmp_path / "bundle")]
    assert train.main(args) == 0
    card = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert card["preset"] == "seed" and card["working_size"] == 28 and card["payload_bits"] == 784
    assert {"psnr", "acc_clean", "acc_noise"} <= set(card["metrics"])
    extract = tf.saved_model.load(str(tmp_path / "bundle" / "extractor")).signatures["serving_default"]
    assert extract(image=tf.zeros([1, 28, 28, 3]))["logits"].shape == (1, 784)


@pytest.mark.parametrize("full_size", [False, True])
def test_embedder_residual_resolution(full_size):
    """The decoder ends at S/2 and upsamples, or (full_size_decoder) adds a stage at S itself;
    both give one S x S residual channel."""
    from training.config import ModelConfig
    from training.models import build_embedder

    cfg = ModelConfig(working_size=32, payload_bits=16, embedder_channels=(8, 16, 16), full_size_decoder=full_size)
    embedder = build_embedder(cfg)
    rng = np.random.default_rng(0)
    out = np.asarray(embedder({"image": rng.random((2, 32, 32, 3), np.float32),
                               "bits": rng.integers(0, 2, (2, 16)).astype(np.float32)}))
    assert out.shape == (2, 32, 32, 1)
    names = {layer.name for layer in embedder.layers}
    assert ("fuse_full" in names) is full_size and ("to_working_size" in names) is not full_size


def test_learning_rate_drops_at_the_configured_step():
    cfg = get_preset("tiny").replace(learning_rate=1e-3, lr_drop_step=10, lr_drop_factor=0.5)
    assert [train.learning_rate(cfg, s) for s in (0, 9, 10, 500)] == [1e-3, 1e-3, 5e-4, 5e-4]
    assert train.learning_rate(cfg.replace(lr_drop_step=0), 10**6) == 1e-3


def test_psnr_spread_draws_one_strength_per_sample():
    """With `loss.psnr_spread_db`, each sample's residual gets its own PSNR in [target - spread,
    target]; without it, the batch shares the scheduled one."""
    from training.residual import ResidualTask
    cfg = tiny_config()
    cfg = cfg.replace(loss=dataclasses.replace(cfg.loss, psnr_start=30.0, psnr_final=30.0, psnr_spread_db=10.0))
    photos = [np.asarray(Image.open(SAMPLES / "opencv_fruits.jpg").convert("RGB"))]
    task = ResidualTask(cfg, photos, photos)
    canvas, bits = (tf.constant(x) for x in task.example(0, 8))
    seed = tf.constant([1, 2], tf.int32)
    targets = np.asarray(task.sample_psnr(tf.constant(0, tf.int64), seed, 8)).reshape(-1)
    assert targets.shape == (8,) and targets.min() >= 20.0 and targets.max() <= 30.0 and targets.std() > 1
    marked, _ = task.embed(canvas, bits, tf.reshape(tf.constant(targets, tf.float32), (-1, 1, 1, 1)), training=False)
    measured = [psnr(np.asarray(m), np.asarray(c)) for m, c in zip(marked, canvas)]
    assert np.corrcoef(measured, targets)[0, 1] > 0.9
    unspread = ResidualTask(tiny_config(), photos, photos)
    assert np.ndim(unspread.sample_psnr(tf.constant(0, tf.int64), seed, 8)) == 0
