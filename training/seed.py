"""The `seed` recipe: the original Keras watermarking autoencoder on 28x28 Fashion-MNIST.

    image [28,28,1] -> encoder: Conv2D 8 (5x5) -> 4 -> 2 -> 1 (3x3), ReLU -> code [28,28,1]
    concat(code, w [28,28,1] binary plane)          -> [28,28,2]
    decoder: Conv2D 2 (5x5) -> 4 -> 8 (3x3), ReLU -> 1 (3x3), sigmoid -> marked [28,28,1]
    GaussianNoise(0.5) (training only)
    w-predictor: Conv2D 8 (5x5) -> 4 (3x3), ReLU -> 1 (3x3), sigmoid -> w_hat [28,28,1]

Loss: image MSE(marked, image) + bit_weight * watermark loss(w_hat, w), the watermark loss being
MSE against the plane (`loss.bit_loss="mse"`, the original) or binary cross-entropy of each
bit's block read-out (`"bce"`).
All convolutions use padding "same".

The payload of L = k * k bits (k divides 28) is spread over the plane: bit i fills one
(28/k) x (28/k) block of w, and is read back as the mean of w_hat over its block (de-spreading).
The `seed` preset keeps L = 784 (k = 28: one bit per pixel, the original); `seed-fixed` uses
L = 16 (7 x 7 blocks). See docs/seed.md for why 784 bits cannot pass GaussianNoise(0.5).
Images, payloads and the training noise are pure functions of (seed, step), so a resumed run
repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import gzip
import os

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from training.config import TrainConfig
from training.data import random_bits
from training.export import EmbedderServing, ExtractorServing
from training.models import luma

SIDE = 28
NOISE_STDDEV = 0.5
LOGIT_EPS = 1e-6
BIT_LOSSES = ("mse", "bce")

ENCODER_LAYERS = ((8, 5), (4, 3), (2, 3), (1, 3))
DECODER_LAYERS = ((2, 5), (4, 3), (8, 3))
PREDICTOR_LAYERS = ((8, 5), (4, 3))


# -- data --------------------------------------------------------------------------------------

def read_idx(path: str) -> np.ndarray:
    """An IDX file (optionally gzipped) as a uint8 array of the shape its header declares."""
    with tf.io.gfile.GFile(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def find_idx(folder: str, stem: str) -> str:
    """`folder/stem` or `folder/stem.gz`, whichever exists."""
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if tf.io.gfile.exists(path):
            return path
    raise FileNotFoundError(f"{stem}[.gz] not found in {folder!r} (install the Debian package "
                            "dataset-fashion-mnist, or `make seed-data`)")


def to_float_images(raw: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 28, 28, 1] in [0, 1]."""
    return (raw.astype(np.float32) / 255.0)[..., None]


def load_fashion_mnist(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(train_images, val_images) from the Fashion-MNIST idx files in `path`; the official
    test split (10,000 images) is the validation set."""
    train = to_float_images(read_idx(find_idx(path, "train-images-idx3-ubyte")))
    val = to_float_images(read_idx(find_idx(path, "t10k-images-idx3-ubyte")))
    print(f"data: {len(train)} training and {len(val)} validation images from {path}", flush=True)
    return train, val


def sample_batch(images: np.ndarray, seed: int, step: int, batch_size: int) -> np.ndarray:
    """`batch_size` images drawn with replacement, a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    return images[rng.integers(0, len(images), size=batch_size)]


# -- networks ----------------------------------------------------------------------------------

def _stack(x, spec, prefix: str):
    for i, (filters, kernel) in enumerate(spec):
        x = layers.Conv2D(filters, kernel, padding="same", activation="relu", name=f"{prefix}_conv{i}")(x)
    return x


def build_encoder() -> keras.Model:
    """image [28,28,1] -> code [28,28,1]."""
    image = keras.Input((SIDE, SIDE, 1), name="image")
    return keras.Model(image, _stack(image, ENCODER_LAYERS, "encoder"), name="encoder")


def build_decoder() -> keras.Model:
    """(code [28,28,1], w [28,28,1]) -> marked image [28,28,1] in (0, 1)."""
    code = keras.Input((SIDE, SIDE, 1), name="code")
    w = keras.Input((SIDE, SIDE, 1), name="w")
    x = layers.Concatenate(axis=-1, name="code_and_w")([code, w])
    x = _stack(x, DECODER_LAYERS, "decoder")
    marked = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="decoder_out")(x)
    return keras.Model({"code": code, "w": w}, marked, name="decoder")


def build_w_predictor() -> keras.Model:
    """marked image [28,28,1] -> p(w = 1) [28,28,1]."""
    marked = keras.Input((SIDE, SIDE, 1), name="marked")
    x = _stack(marked, PREDICTOR_LAYERS, "predictor")
    w_hat = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="predictor_out")(x)
    return keras.Model(marked, w_hat, name="w_predictor")


def build_autoencoder(seed: int = 1) -> keras.Model:
    """The whole seed model: (image, w) -> {"marked", "w_hat"}, GaussianNoise in between."""
    image = keras.Input((SIDE, SIDE, 1), name="image")
    w = keras.Input((SIDE, SIDE, 1), name="w")
    marked = build_decoder()({"code": build_encoder()(image), "w": w})
    noisy = layers.GaussianNoise(NOISE_STDDEV, seed=seed, name="noise")(marked)
    w_hat = build_w_predictor()(noisy)
    return keras.Model({"image": image, "w": w}, {"marked": marked, "w_hat": w_hat}, name="seed_autoencoder")


def reseed(noise: layers.GaussianNoise, seed) -> None:
    """Point the noise layer's generator at `seed` ([2] ints), making its draw a pure function
    of that seed rather than of how many times the layer has run."""
    state = noise.seed_generator.state
    state.assign(ops.cast(seed, state.dtype))


def blocks_per_side(payload_bits: int) -> int:
    """k for a payload of k * k bits spread over k x k equal blocks of the 28 x 28 plane.

    Raises ValueError unless payload_bits is k * k with k dividing 28 (1, 4, 16, 49, 196, 784)."""
    k = int(round(payload_bits ** 0.5))
    if k * k != payload_bits or k < 1 or SIDE % k:
        raise ValueError(f"the seed architecture spreads k * k bits over k x k blocks of the "
                         f"{SIDE} x {SIDE} plane (k dividing {SIDE}: 1, 4, 16, 49, 196 or 784 "
                         f"bits), got {payload_bits}")
    return k


def to_plane(bits):
    """Spread bits [N, k*k] over the plane: [N, 28, 28, 1], bit i repeated over block i
    (row-major blocks of (28/k) x (28/k) pixels). k = 28 is the original one bit per pixel."""
    k = blocks_per_side(int(bits.shape[-1]))
    grid = ops.reshape(bits, (-1, k, k, 1))
    return ops.repeat(ops.repeat(grid, SIDE // k, axis=1), SIDE // k, axis=2)


def from_plane(plane, payload_bits: int):
    """De-spread: the mean of each block of `plane` [N, 28, 28, 1] -> [N, payload_bits]."""
    k = blocks_per_side(payload_bits)
    block = SIDE // k
    blocks = ops.reshape(plane, (-1, k, block, k, block))
    return ops.reshape(ops.mean(blocks, axis=(2, 4)), (-1, payload_bits))


def probability_to_logit(p):
    """log(p / (1 - p)) with p clipped away from 0 and 1."""
    p = ops.clip(p, LOGIT_EPS, 1.0 - LOGIT_EPS)
    return ops.log(p) - ops.log1p(-p)


def psnr(a, b):
    """PSNR in dB over the whole batch (pixels in [0, 1])."""
    return -10.0 * ops.log10(ops.mean(ops.square(a - b)) + 1e-12)


def bit_accuracy(p, bits):
    """Share of bits read correctly (p > 0.5 reads as 1); p and bits of one shape."""
    return ops.mean(ops.cast(ops.equal(ops.cast(p > 0.5, "float32"), bits), "float32"))


def watermark_loss(w_hat, bits, kind: str):
    """The watermark loss of the predicted plane w_hat [N,28,28,1] (probabilities) against the
    payload bits [N,L]: `mse`, the original per-pixel MSE against the spread plane, or `bce`,
    binary cross-entropy of each bit's block read-out (for L = 784, per-pixel BCE).
    Raises ValueError for another kind."""
    if kind == "mse":
        return ops.mean(ops.square(w_hat - to_plane(bits)))
    if kind == "bce":
        return ops.mean(ops.binary_crossentropy(bits, from_plane(w_hat, int(bits.shape[-1]))))
    raise ValueError(f"loss.bit_loss must be one of {BIT_LOSSES}, got {kind!r}")


# -- task --------------------------------------------------------------------------------------

class SeedTask:
    """Networks and step functions of the seed recipe (same interface as `ResidualTask`)."""

    def __init__(self, cfg: TrainConfig, train_images: np.ndarray, val_images: np.ndarray):
        model = cfg.model
        if model.working_size != SIDE:
            raise ValueError(f"the seed architecture needs working_size {SIDE}, got {model.working_size}")
        blocks_per_side(model.payload_bits)
        if cfg.loss.bit_loss not in BIT_LOSSES:
            raise ValueError(f"loss.bit_loss must be one of {BIT_LOSSES}, got {cfg.loss.bit_loss!r}")
        self.cfg = cfg
        self.payload_bits = model.payload_bits
        self.train_images, self.val_images = train_images, val_images
        self.autoencoder = build_autoencoder(cfg.seed)
        self.encoder = self.autoencoder.get_layer("encoder")
        self.decoder = self.autoencoder.get_layer("decoder")
        self.noise = self.autoencoder.get_layer("noise")
        self.w_predictor = self.autoencoder.get_layer("w_predictor")

    # -- data ------------------------------------------------------------------------------
    def example(self, step: int, batch_size: int):
        """(images [B,28,28,1], bits [B,L]) for one step, a pure function of (seed, step)."""
        return (sample_batch(self.train_images, self.cfg.seed, step, batch_size),
                random_bits(self.cfg.seed, step, batch_size, self.payload_bits))

    def eval_example(self):
        """The first `eval_samples` validation images with fixed payloads."""
        n = min(self.cfg.eval_samples, len(self.val_images))
        return self.val_images[:n], random_bits(self.cfg.seed + 7, 0, n, self.payload_bits)

    def signature(self):
        return (tf.TensorSpec([SIDE, SIDE, 1], tf.float32), tf.TensorSpec([self.payload_bits], tf.float32))

    def trainable_variables(self):
        return self.autoencoder.trainable_variables

    def trackables(self) -> dict:
        return {"autoencoder": self.autoencoder}

    # -- model pieces ----------------------------------------------------------------------
    def mark(self, images, bits):
        """Marked images [B,28,28,1] from grayscale covers and bits [B,L]."""
        code = self.encoder(images, training=False)
        return self.decoder({"code": code, "w": to_plane(bits)}, training=False)

    def noisy(self, marked, seed):
        """`marked` through the GaussianNoise layer in training mode, drawn from `seed`."""
        reseed(self.noise, seed)
        return self.noise(marked, training=True)

    # -- steps -----------------------------------------------------------------------------
    def losses(self, images, bits, step, seed):
        """Forward pass of one training step: (total loss, metrics)."""
        w = to_plane(bits)
        reseed(self.noise, seed)
        out = self.autoencoder({"image": images, "w": w}, training=True)
        marked, w_hat = out["marked"], out["w_hat"]
        image_mse = ops.mean(ops.square(marked - images))
        w_loss = watermark_loss(w_hat, bits, self.cfg.loss.bit_loss)
        total = image_mse + self.cfg.loss.bit_weight * w_loss
        metrics = {
            "loss": total,
            "image_mse": image_mse,
            "w_loss": w_loss,
            "bit_acc": bit_accuracy(from_plane(w_hat, self.payload_bits), bits),
            "psnr": psnr(marked, images),
            "attack_strength": ops.convert_to_tensor(1.0),
        }
        return total, metrics

    def evaluate(self, images, bits, step=None, target_psnr=None) -> dict:
        """PSNR of marked vs cover and payload bit accuracy (block read-out), clean and through
        GaussianNoise(0.5). `step` and `target_psnr` are accepted for the Trainer's interface;
        nothing here is scheduled."""
        marked = self.mark(images, bits)
        noisy = self.noisy(marked, tf.constant([self.cfg.seed, 12345], tf.int64))
        return {
            "psnr": psnr(marked, images),
            "acc_clean": bit_accuracy(self.read(marked), bits),
            "acc_noise": bit_accuracy(self.read(noisy), bits),
        }

    def read(self, images):
        """p(bit = 1) [B,L]: the predicted plane de-spread over the payload's blocks."""
        return from_plane(self.w_predictor(images, training=False), self.payload_bits)

    # -- export ----------------------------------------------------------------------------
    def serving(self, step: int | None = None, target_psnr: float | None = None):
        """Bundle signatures: RGB in, luma residual (marked - gray) and per-bit logits out.
        `step` and `target_psnr` are accepted for the Trainer's interface; nothing here is scheduled."""

        def residual_fn(image, bits):
            gray = luma(image)
            return self.mark(gray, bits) - gray

        def logits_fn(image):
            return probability_to_logit(self.read(luma(image)))

        networks = [self.autoencoder]
        return (EmbedderServing(residual_fn, SIDE, self.payload_bits, networks),
                ExtractorServing(logits_fn, SIDE, networks))
