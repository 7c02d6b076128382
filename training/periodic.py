"""The periodic-layout training task: a payload generator and a folded-tile extractor trained end
to end through the attack layers and the reader's own re-synchronisation steps.

The mark is content-independent and periodic: the generator maps raw bits to one circular
T x T tile, a key-derived sync template is mixed in, the tile is laid out over the image with
a period P (in image pixels), shaped by a texture mask and added to luma. A reader finds the
period lattice from the autocorrelation of the whitened image, folds the image over it
(averaging all periods into one tile), finds the phase with the sync template and hands the
aligned tile to the extractor (`filigree.sync`). Periodic self-referencing marks follow Kutter,
"Watermarking resisting to translation, rotation and scaling" (SPIE 1998); the template search
follows Pereira & Pun, "Robust template matching for affine resistant image watermarks"
(IEEE TIP 2000).

One training step, for a batch of canvases (photo crops at `attacks.canvas_size`):
  bits -> generator -> tile (unit RMS) mixed with a random sync template -> laid out with a
  random period -> texture mask -> normalised to the scheduled PSNR -> added to luma -> one
  attack kind per batch slice -> whitening -> resampled so the period is T (with small rotation
  and scale errors, as a lattice estimate has) -> folded over 3 x 3 periods at a random phase
  and aligned to within a pixel -> extractor -> BCE against the bits.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from training import attacks as attack_lib
from training.config import TrainConfig
from training.models import luma, psnr_to_rms
from training.photo_task import PhotoTask


# -- layers -----------------------------------------------------------------------------------
class CircularPad(layers.Layer):
    """Wrap-around padding of H and W by `pad` pixels: a convolution after it sees a periodic
    tile as the infinite periodic pattern it stands for."""

    def __init__(self, pad: int, **kwargs):
        super().__init__(**kwargs)
        self.pad = pad

    def call(self, x):
        p = self.pad
        x = ops.concatenate([x[:, -p:], x, x[:, :p]], axis=1)
        return ops.concatenate([x[:, :, -p:], x, x[:, :, :p]], axis=2)

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}


class TileNormalise(layers.Layer):
    """Zero mean, unit RMS per tile (the extractor's input scale does not depend on how strongly
    the image was marked or how many periods were folded)."""

    def call(self, x):
        x = x - ops.mean(x, axis=(1, 2, 3), keepdims=True)
        return x / ops.sqrt(ops.mean(ops.square(x), axis=(1, 2, 3), keepdims=True) + 1e-12)


def _circular_conv(x, filters: int, strides: int, name: str, activation="relu", bn: bool = False):
    x = CircularPad(1, name=f"{name}_pad")(x)
    x = layers.Conv2D(filters, 3, strides=strides, padding="valid", use_bias=not bn,
                      activation=None if bn else activation, name=name)(x)
    if bn:
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        x = layers.Activation(activation, name=f"{name}_act")(x)
    return x


def spread_spectrum_basis(bits_n: int, tile: int, band: tuple[float, float], seed: int = 0) -> np.ndarray:
    """float32 [L, T, T]: L orthonormal circular patterns whose spectra lie in the radial band
    (cycles per tile): the classic spread-spectrum code (Cox, Kilian, Leighton & Shamoon, "Secure
    spread spectrum watermarking for multimedia", IEEE TIP 6(12), 1997), one pattern per bit."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(tile)[:, None] * tile
    fx = np.fft.rfftfreq(tile)[None, :] * tile
    radius = np.hypot(fy, fx)
    inside = (radius >= band[0]) & (radius <= band[1])
    shape = (bits_n,) + inside.shape
    spectra = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)) * inside
    patterns = np.fft.irfft2(spectra, s=(tile, tile)).reshape(bits_n, -1)
    q, _ = np.linalg.qr(patterns.T)
    return q.T.reshape(bits_n, tile, tile).astype(np.float32)


def init_spread_spectrum(generator: keras.Model, extractor: keras.Model, basis: np.ndarray) -> None:
    """Start both networks as the spread-spectrum code of `basis` [L, T, T]: the generator's
    linear path lays out sum_l (2 b_l - 1) B_l and its convolutional path starts at zero; the
    extractor's matched-filter path correlates with each B_l and its convolutional head starts
    at zero. Training then only has to improve on the classic code."""
    bits_n, tile, _ = basis.shape
    half = tile // 2
    # depth_to_space(2): plane (i, j, 2 dy + dx) -> tile pixel (2 i + dy, 2 j + dx)
    planes = basis.reshape(bits_n, half, 2, half, 2).transpose(0, 1, 3, 2, 4).reshape(bits_n, -1)
    dense = generator.get_layer("linear_dense")
    dense.set_weights([planes * np.sqrt(tile * tile / bits_n), np.zeros(planes.shape[1], np.float32)])
    out = generator.get_layer("gen_out")
    out.set_weights([np.zeros_like(w) for w in out.get_weights()])
    matched = extractor.get_layer("matched_filter")
    matched.set_weights([basis.reshape(bits_n, -1).T, np.zeros(bits_n, np.float32)])
    head = extractor.get_layer("logits")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])


def build_generator(tile: int, bits_n: int, widths: tuple[int, ...]) -> keras.Model:
    """bits [L] in {0, 1} -> tile [T, T, 1]: a linear path (Dense to T/2 x T/2 x 4, depth-to-space)
    plus a circular conv path from an 8 x 8 message plane upsampled to T."""
    bits = keras.Input((bits_n,), name="bits")
    signed = layers.Rescaling(2.0, offset=-1.0, name="signed_bits")(bits)
    half = tile // 2
    linear = layers.Dense(half * half * 4, name="linear_dense")(signed)
    linear = layers.Reshape((half, half, 4), name="linear_plane")(linear)
    linear = layers.Lambda(lambda t: tf.nn.depth_to_space(t, 2), name="linear_tile")(linear)

    start = 8
    x = layers.Dense(start * start * widths[0], activation="relu", name="message_dense")(signed)
    x = layers.Reshape((start, start, widths[0]), name="message_plane")(x)
    size, i = start, 0
    while size < tile:
        x = layers.UpSampling2D(2, interpolation="nearest", name=f"up{i}")(x)
        size *= 2
        x = _circular_conv(x, widths[min(i + 1, len(widths) - 1)], 1, name=f"gen{i}")
        i += 1
    x = _circular_conv(x, 1, 1, name="gen_out", activation=None)
    out = layers.Add(name="tile")([x, linear])
    return keras.Model(bits, out, name="generator")


def build_tile_extractor(tile: int, bits_n: int, widths: tuple[int, ...], matched_filter: bool = False) -> keras.Model:
    """aligned folded tile [T, T, 1] -> logits [L]: per-tile normalisation, circular
    conv-BN-ReLU stages (the first at full resolution, then stride 2), a dense head; with
    `matched_filter`, plus a linear path (one dense layer on the normalised tile)."""
    image = keras.Input((tile, tile, 1), name="tile")
    normalised = TileNormalise(name="normalise")(image)
    x = _circular_conv(normalised, widths[0], 1, name="conv_in", bn=True)
    for i, width in enumerate(widths[1:]):
        x = _circular_conv(x, width, 2, name=f"conv{i}", bn=True)
    x = layers.Flatten(name="flatten")(x)
    logits = layers.Dense(bits_n, name="logits")(x)
    if matched_filter:
        flat = layers.Flatten(name="flat_tile")(normalised)
        logits = layers.Add(name="logits_sum")([logits, layers.Dense(bits_n, name="matched_filter")(flat)])
    return keras.Model(image, logits, name="tile_extractor")


# -- pixel operations shared with the reader (filigree.sync / filigree.jnd mirror them) ---------
def box_mean(x, k: int):
    """Mean over a k x k box, edges padded by reflection; x [B, H, W, 1]. Separable running
    sums (a large-kernel average pool is two orders of magnitude slower on CPU)."""
    r = k // 2
    padded = tf.pad(x, [[0, 0], [r, r], [r, r], [0, 0]], mode="REFLECT")
    rows = tf.pad(tf.cumsum(padded, axis=1), [[0, 0], [1, 0], [0, 0], [0, 0]])
    rows = (rows[:, k:] - rows[:, :-k]) / k
    cols = tf.pad(tf.cumsum(rows, axis=2), [[0, 0], [0, 0], [1, 0], [0, 0]])
    return (cols[:, :, k:] - cols[:, :, :-k]) / k


def texture_mask(y, floor: float, window: int = 9):
    """Perceptual weight per pixel, [B, H, W, 1]: the local standard deviation of luma (in
    [0, 1] units) over a `window` box plus `floor`: flat regions get `floor`, texture more."""
    mean = box_mean(y, window)
    var = ops.maximum(box_mean(ops.square(y), window) - ops.square(mean), 0.0)
    return ops.sqrt(var + 1e-12) + floor


def whiten(y, window: int = 15, offset: float = 2.0 / 255.0):
    """The reader's whitening of luma [B, H, W, 1]: prediction error against the mean of the
    four neighbours (reflect padding), divided by its local standard deviation plus `offset`."""
    padded = tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    neighbours = (padded[:, :-2, 1:-1] + padded[:, 2:, 1:-1] + padded[:, 1:-1, :-2] + padded[:, 1:-1, 2:]) / 4.0
    error = y - neighbours
    mean = box_mean(error, window)
    var = ops.maximum(box_mean(ops.square(error), window) - ops.square(mean), 0.0)
    return error / (ops.sqrt(var + 1e-12) + offset)


def training_templates(count: int, seed: int) -> np.ndarray:
    """`count` sync templates [count, T, T] of `count` random keys: the reader's own
    key-derived templates (`filigree.sync.sync_template`), as many keys as a training run needs
    so the extractor never learns one key's template."""
    from filigree.sync import sync_template
    return np.stack([sync_template(f"training-{seed}-{i}".encode(), 0) for i in range(count)]).astype(np.float32)


def periodic_layout(tiles, period, height: int, width: int):
    """Lay [B, T, T, 1] tiles out periodically with `period` pixels (a scalar float tensor) over
    an H x W canvas, origin at (0, 0): pixel (y, x) is the tile at (y T / period, x T / period)
    modulo T, bilinear between tile samples (`filigree.sync.tile_pattern`'s convention)."""
    n = tiles.shape[1]

    def axis(length: int):
        coord = tf.math.floormod(tf.range(length, dtype=tf.float32) * (n / period), float(n))
        lower = tf.floor(coord)
        first = tf.math.floormod(tf.cast(lower, tf.int32), n)
        return first, tf.math.floormod(first + 1, n), coord - lower

    y0, y1, fy = axis(height)
    x0, x1, fx = axis(width)
    fy, fx = fy[None, :, None, None], fx[None, None, :, None]
    rows = tf.gather(tiles, y0, axis=1) * (1.0 - fy) + tf.gather(tiles, y1, axis=1) * fy
    return tf.gather(rows, x0, axis=2) * (1.0 - fx) + tf.gather(rows, x1, axis=2) * fx


def unit_rms(x):
    """Scale each sample of x [B, ...] to unit root-mean-square."""
    axes = tuple(range(1, len(x.shape)))
    return x / ops.sqrt(ops.mean(ops.square(x), axis=axes, keepdims=True) + 1e-12)


def fold_transform(period, angle, scale_error, offset_y, offset_x, tile: int):
    """Projective-transform parameters [B, 8] mapping output pixels (fold grid, period T) to
    canvas pixels: canvas = R(angle) * (period / T) * (1 + scale_error) * (out + offset)."""
    s = period / tile * (1.0 + scale_error)
    cos, sin = tf.cos(angle) * s, tf.sin(angle) * s
    zeros = tf.zeros_like(cos)
    # x_in = a0 x + a1 y + a2 ; y_in = b0 x + b1 y + b2 (TensorFlow's [a0 a1 a2 b0 b1 b2 c0 c1])
    a2 = cos * offset_x - sin * offset_y
    b2 = sin * offset_x + cos * offset_y
    return tf.stack([cos, -sin, a2, sin, cos, b2, zeros, zeros], axis=1)


def fold_periods(canvas_w, transform, tile: int, periods: int):
    """Resample whitened canvases [B, H, W, 1] onto the fold grid and average `periods` x
    `periods` periods into one tile [B, T, T, 1]."""
    side = tile * periods
    grid = tf.raw_ops.ImageProjectiveTransformV3(
        images=canvas_w, transforms=transform, output_shape=tf.constant([side, side]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")
    blocks = tf.reshape(grid, [-1, periods, tile, periods, tile, 1])
    return tf.reduce_mean(blocks, axis=[1, 3])


def spectral_low_share(tiles, cutoff: float):
    """Share of each tile's energy below radial frequency `cutoff` (cycles per tile), [B]."""
    tile = tiles.shape[1]
    spectrum = tf.abs(tf.signal.fft2d(tf.cast(tiles[..., 0], tf.complex64))) ** 2
    f = np.fft.fftfreq(tile) * tile
    low = (np.hypot(f[:, None], f[None, :]) < cutoff).astype(np.float32)
    return tf.reduce_sum(spectrum * low, axis=[1, 2]) / (tf.reduce_sum(spectrum, axis=[1, 2]) + 1e-12)


# -- the task ----------------------------------------------------------------------------------
class PeriodicTask(PhotoTask):
    """Networks and step functions of the periodic recipe (schedules and data: `PhotoTask`)."""

    template_bank = 512

    def __init__(self, cfg: TrainConfig, train_photos, val_photos):
        m, a = cfg.model, cfg.attacks
        super().__init__(cfg, train_photos, val_photos, a.canvas_size)
        if a.max_period * a.fold_periods > self.canvas:
            raise ValueError(f"{a.fold_periods} periods of {a.max_period} px do not fit a {self.canvas} px canvas")
        self.tile = m.working_size
        self.generator = build_generator(self.tile, m.payload_bits, m.embedder_channels)
        self.extractor = build_tile_extractor(self.tile, m.payload_bits, m.extractor_channels,
                                              matched_filter=m.spread_band is not None)
        if m.spread_band is not None:
            init_spread_spectrum(self.generator, self.extractor,
                                 spread_spectrum_basis(m.payload_bits, self.tile, m.spread_band, cfg.seed))
        self.templates = tf.constant(training_templates(self.template_bank, cfg.seed))

    # -- model pieces ------------------------------------------------------------------------
    def tiles(self, bits, seed, training: bool):
        """Generator tiles (unit RMS) mixed with random sync templates: [B, T, T, 1]."""
        weight = self.cfg.model.template_weight
        payload = unit_rms(ops.cast(self.generator(bits, training=training), "float32"))
        index = tf.random.stateless_uniform([tf.shape(bits)[0]], seed=seed, minval=0,
                                            maxval=self.template_bank, dtype=tf.int32)
        template = tf.gather(self.templates, index)[..., None]
        return math.sqrt(1.0 - weight ** 2) * payload + weight * template, payload

    def embed(self, canvas, bits, target_psnr, period, seed, training: bool):
        """Marked canvases, the residual and the generator's tiles."""
        tiles, payload = self.tiles(bits, attack_lib.sub_seed(seed, 31), training)
        pattern = periodic_layout(tiles, period, self.canvas, self.canvas)
        mask = texture_mask(luma(canvas), self.cfg.model.texture_mask)
        residual = unit_rms(pattern * mask) * psnr_to_rms(target_psnr)
        return attack_lib.clip01(canvas + residual), residual, payload

    def read(self, attacked, period, seed):
        """The reader's view: whitened, resampled to period T with lattice-estimate errors,
        folded over `fold_periods`² periods, aligned to within `phase_jitter` pixels."""
        a = self.cfg.attacks
        batch = tf.shape(attacked)[0]
        whitened = whiten(luma(attacked))
        angle = attack_lib.uniform(attack_lib.sub_seed(seed, 41), [batch], -1.0, 1.0) * a.fold_angle_error * math.pi / 180
        scale_error = attack_lib.uniform(attack_lib.sub_seed(seed, 42), [batch], -1.0, 1.0) * a.fold_scale_error
        period_index = tf.cast(attack_lib.uniform(attack_lib.sub_seed(seed, 43), [batch, 2], 0.0, 1.0)
                               * float(self.fold_slack(period)), tf.int32)
        jitter = attack_lib.uniform(attack_lib.sub_seed(seed, 44), [batch, 2], -1.0, 1.0) * a.phase_jitter
        offset = tf.cast(period_index * self.tile, tf.float32) + jitter
        transform = fold_transform(tf.fill([batch], period), angle, scale_error,
                                   offset[:, 0], offset[:, 1], self.tile)
        return fold_periods(whitened, transform, self.tile, a.fold_periods)

    def fold_slack(self, period):
        """How many whole periods the fold grid can start at and still fit in the canvas (>= 1)."""
        a = self.cfg.attacks
        fits = tf.math.floor(self.canvas / period) - a.fold_periods + 1
        return tf.maximum(fits, 1.0)

    def draw_period(self, seed):
        a = self.cfg.attacks
        return attack_lib.uniform(seed, [], a.min_period, a.max_period)

    def trainable_variables(self):
        return self.generator.trainable_variables + self.extractor.trainable_variables

    def trackables(self) -> dict:
        return {"generator": self.generator, "tile_extractor": self.extractor,
                "psnr_state": self.psnr_state, "accuracy_ema": self.accuracy_ema}

    # -- steps -------------------------------------------------------------------------------
    def losses(self, canvas, bits, step, seed):
        strength = self.attack_strength(step)
        period = self.draw_period(attack_lib.sub_seed(seed, 3))
        marked, residual, payload = self.embed(canvas, bits, self.sample_psnr(step, seed, tf.shape(canvas)[0]),
                                               period, seed, training=True)
        attacked = attack_lib.apply_sliced(self.attacks, marked, strength, seed)
        logits = ops.cast(self.extractor(self.read(attacked, period, seed), training=True), "float32")
        bit_loss = ops.mean(ops.binary_crossentropy(bits, logits, from_logits=True))
        low_share = ops.mean(spectral_low_share(payload, self.cfg.loss.low_frequency_cutoff))
        total = self.cfg.loss.bit_weight * bit_loss + self.cfg.loss.low_frequency_weight * low_share
        mse = ops.mean(ops.square(marked - canvas))
        metrics = {
            "loss": total,
            "bit_loss": bit_loss,
            "bit_acc": ops.mean(ops.cast(ops.equal(ops.cast(logits > 0, "float32"), bits), "float32")),
            "psnr": -10.0 * ops.log10(mse + 1e-12),
            "low_share": low_share,
            "attack_strength": strength,
            "psnr_target": ops.convert_to_tensor(self.psnr_target(step)),
        }
        return total, metrics

    def evaluate(self, canvas, bits, step, psnr=None) -> dict:
        """Validation bit accuracy per attack kind at full strength, at the scheduled PSNR (or
        `psnr` when positive), with the mid-range period; BatchNorm in inference mode."""
        target = self.psnr_target(step)
        if psnr is not None:
            target = tf.where(psnr > 0, tf.cast(psnr, tf.float32), target)
        a = self.cfg.attacks
        seed = tf.constant([self.cfg.seed, 12345], tf.int32)
        period = tf.constant(0.5 * (a.min_period + a.max_period), tf.float32)
        marked, _, payload = self.embed(canvas, bits, target, period, seed, training=False)
        results = {"psnr": -10.0 * ops.log10(ops.mean(ops.square(marked - canvas)) + 1e-12),
                   "low_share": ops.mean(spectral_low_share(payload, self.cfg.loss.low_frequency_cutoff))}
        full = tf.constant(1.0)
        for name, attack in self.eval_attacks.items():
            attacked = attack(marked, full, seed)
            logits = self.extractor(self.read(attacked, period, seed), training=False)
            results[f"acc_{name}"] = ops.mean(ops.cast(ops.equal(ops.cast(logits > 0, "float32"), bits), "float32"))
        return results

    def serving(self, step: int, psnr: float | None = None):
        """Serving modules: the generator (bits -> unit-RMS payload tile) and the tile extractor;
        the strength (`psnr`, default the schedule's) is recorded in the card, not baked in."""
        from training.export import GeneratorServing, TileExtractorServing
        psnr = float(self.psnr_target(step)) if psnr is None else float(psnr)
        bits_n = self.cfg.model.payload_bits

        def tile_fn(bits):
            return unit_rms(self.generator(bits, training=False))[..., 0]

        def logits_fn(tile):
            return self.extractor(tile[..., None], training=False)

        return (GeneratorServing(tile_fn, self.tile, bits_n, [self.generator], target_psnr=psnr),
                TileExtractorServing(logits_fn, self.tile, [self.extractor]))
