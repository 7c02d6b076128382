"""Typed training configuration and the named presets.

A preset is a complete `TrainConfig`; the command line picks one by name and may override
the step count, data and seed. Every field is documented where it is declared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """Embedder/extractor architecture."""

    architecture: str = "residual"
    """`residual` (tiled residual nets), `periodic` (a payload tile laid out periodically and
    read by re-synchronisation, see training/periodic.py), `fold` (the same networks trained
    through the simulated fold channel, training/fold_channel.py) or `seed` (the 28x28
    autoencoder)."""
    working_size: int = 64
    """Side S of the square working resolution both networks see."""
    payload_bits: int = 100
    """Raw bits L per image (before error correction is mapped onto them)."""
    color_mode: str = "luma"
    """`luma`: one residual channel added equally to R, G, B; `rgb`: three channels."""
    embedder_channels: tuple[int, ...] = (16, 32, 64)
    """Widths of the embedder's stride-2 stages (the decoder mirrors them back up to S/2)."""
    extractor_channels: tuple[int, ...] = (32, 64, 64, 128)
    """Widths of the extractor's stride-2 conv-BN-ReLU stages."""
    full_size_decoder: bool = False
    """Decode the residual up to S itself (one more stage, fed the image) instead of stopping at
    S/2 and upsampling: four times the residual's degrees of freedom, at a higher CPU cost."""
    bn_momentum: float = 0.99
    """Momentum of the extractor's batch-norm moving statistics (lower follows a short run)."""
    message_pattern: bool = True
    """Add a direct linear path message -> Dense -> coarse pattern to the residual."""
    texture_mask: float = 0.0
    """0 disables it; >0 scales the residual by (floor + local contrast) so that flat
    regions get less of the mark. The value is the floor (smaller = stronger masking)."""
    tile_grid: int = 1
    """Serving layout written to the model card: the pipeline repeats the payload over up to
    tile_grid x tile_grid tiles of an image, one working view each (see filigree/tiling.py)."""
    min_tile: int = 96
    """Smallest tile side, in image pixels, the pipeline marks with (small images get fewer tiles)."""
    spread_band: tuple[float, float] | None = None
    """`periodic`/`fold`: start the generator and extractor as the spread-spectrum code of
    orthonormal patterns in this radial band (cycles per tile), the extractor with a
    matched-filter path (training/periodic.py); None: random initialisation."""
    template_weight: float = 0.35
    """`periodic`: share (as an amplitude, RMS units) of the key-derived sync template in the tile;
    the generator's payload pattern gets sqrt(1 - weight^2)."""


@dataclass(frozen=True)
class AttackConfig:
    """Differentiable attacks applied between embedder and extractor."""

    canvas_scale: int = 2
    """Training crops are taken at `canvas_scale * working_size`; the residual is upsampled
    onto that canvas and attacks run there, as they would at native resolution."""
    start_step: int = 500
    """No attacks before this step (the nets first learn to communicate)."""
    ramp_steps: int = 3000
    """Steps over which attack strengths grow from 0 to their maxima."""
    kinds: tuple[str, ...] = (
        "identity", "jpeg_real", "jpeg_sim", "noise", "blur", "resize", "color", "combo",
    )
    """Batch slices, one attack kind each; the batch size must be a multiple of their count."""
    jpeg_min_quality: int = 30
    noise_max_sigma: float = 0.06
    blur_max_sigma: float = 1.5
    resize_min_scale: float = 0.3
    brightness_max_delta: float = 0.35
    contrast_max_delta: float = 0.35
    saturation_max_delta: float = 0.5
    hue_max_delta: float = 0.05
    crop_probability: float = 0.5
    """Share of samples whose extractor view is a random crop of the attacked canvas."""
    crop_min_area: float = 0.7
    canvas_size: int = 256
    """`periodic`: side of the training canvases (photo crops) the mark is laid out on."""
    min_period: float = 40.0
    """`periodic`: smallest period (canvas pixels) a training sample is marked with ..."""
    max_period: float = 84.0
    """... and the largest; `fold_periods` of them must fit the canvas."""
    fold_periods: int = 3
    """`periodic`: the reader folds fold_periods x fold_periods periods into one tile."""
    fold_angle_error: float = 0.5
    """`periodic`: lattice-estimate rotation error the extractor is trained to tolerate (degrees)."""
    fold_scale_error: float = 0.005
    """`periodic`: relative period error the extractor is trained to tolerate."""
    phase_jitter: float = 1.0
    """`periodic`: phase error (tile pixels) after template alignment the extractor tolerates."""
    fold_snr_start: float = 1.0
    """`fold`: lowest amplitude SNR (mark / photo noise, RMS) of the folded tile at attack
    strength 0 ..."""
    fold_snr_min: float = 0.12
    """... falling to this one at full strength ..."""
    fold_snr_max: float = 2.0
    """... and the highest (SNRs are drawn log-uniformly between them)."""
    fold_spacing_range: tuple[float, float] = (0.7, 2.0)
    """`fold`: analysis pixels per tile sample (the layout's period over 64, after the reader's
    downscaling): sets the whitening's response and the anti-aliasing."""
    fold_blur_max: float = 1.0
    """`fold`: largest Gaussian blur (sigma, analysis pixels) of the mark at full strength,
    standing for JPEG, resizing and blur."""


@dataclass(frozen=True)
class LossConfig:
    """Loss weights and the imperceptibility schedule."""

    psnr_start: float = 30.0
    """Residual RMS is normalised to this PSNR at the start of training ..."""
    psnr_final: float = 42.5
    """... and ramped to this one."""
    psnr_ramp_start: int = 1000
    psnr_ramp_steps: int = 8000
    psnr_schedule: str = "adaptive"
    """`linear`: ramp over `psnr_ramp_steps` from `psnr_ramp_start`. `adaptive`: from
    `psnr_ramp_start`, raise the target by `psnr_step_db` per step while the running training
    bit accuracy is above `psnr_up_accuracy`, lower it while below `psnr_down_accuracy`
    (between start and final): invisibility grows only as fast as the nets keep up."""
    psnr_step_db: float = 0.003
    psnr_up_accuracy: float = 0.97
    psnr_down_accuracy: float = 0.93
    psnr_spread_db: float = 0.0
    """0: every sample at the scheduled PSNR. >0: each training sample's residual is normalised to
    a PSNR drawn uniformly from [target - spread, target], so one model learns marks as strong
    as a small image's (one tile, amplified) and as weak as a large image's tiles."""
    image_weight: float = 0.0
    """Weight of an extra texture-weighted image loss (shapes where the energy goes)."""
    bit_weight: float = 1.0
    low_frequency_weight: float = 0.0
    """`periodic`: weight of the payload tile's energy share below `low_frequency_cutoff`
    (smooth blobs are what the eye sees best)."""
    low_frequency_cutoff: float = 4.0
    """Radial frequency, cycles per tile, below which tile energy is penalised."""
    bit_loss: str = "bce"
    """Seed architecture only: the watermark-plane loss, `bce` (binary cross-entropy) or `mse`
    (the original design). The residual nets always use BCE on their logits."""


@dataclass(frozen=True)
class TrainConfig:
    """A complete training recipe."""

    name: str
    description: str
    model: ModelConfig = field(default_factory=ModelConfig)
    attacks: AttackConfig = field(default_factory=AttackConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: str = "../shared/data/photos"
    """Folder, glob or gs:// prefix of training photos."""
    batch_size: int = 32
    learning_rate: float = 1e-3
    lr_drop_step: int = 0
    """From this step on the learning rate is `learning_rate * lr_drop_factor` (0: never)."""
    lr_drop_factor: float = 0.3
    steps: int = 100_000
    validation_fraction: float = 0.1
    eval_every: int = 500
    eval_samples: int = 64
    checkpoint_every_s: float = 180.0
    export_every: int = 0
    """Export the bundle every N steps during training (0: only at the end)."""
    max_photo_side: int = 1024
    """Photos are downscaled so their longer side is at most this on load."""
    mixed_precision: bool = False
    seed: int = 1

    def replace(self, **changes) -> "TrainConfig":
        """A copy with top-level fields changed."""
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, TrainConfig] = {
    "tiny": TrainConfig(
        name="tiny",
        description="CI-sized: 32px working size, 32 bits, a loud 14 dB mark; in 200 steps "
                    "(under a minute on 2 cores) it reads 16-bit payloads back.",
        model=ModelConfig(working_size=32, payload_bits=32, embedder_channels=(16, 32, 32),
                          extractor_channels=(16, 32, 32, 64)),
        attacks=AttackConfig(start_step=150, ramp_steps=300,
                             kinds=("identity", "noise", "jpeg_sim", "color")),
        loss=LossConfig(psnr_start=14.0, psnr_final=14.0, psnr_schedule="linear"),
        batch_size=16, learning_rate=5e-3, steps=200, eval_every=100, eval_samples=32,
        checkpoint_every_s=60.0, max_photo_side=512,
    ),
    "default": TrainConfig(
        name="default",
        description="Production recipe for CPU: 64px working size on a 128px canvas, 100 bits, "
                    "luma residual decoded at full working size, attack curriculum without crop "
                    "training (crops are read by the re-framing search), PSNR adaptive from 35 dB "
                    "towards 42.5 dB, learning rate 1e-3 then 3e-4 from step 4000; served on up "
                    "to 5 x 5 tiles.",
        model=ModelConfig(full_size_decoder=True, tile_grid=5),
        attacks=AttackConfig(crop_probability=0.0),
        loss=LossConfig(psnr_start=35.0),
        lr_drop_step=4000,
    ),
    "periodic": TrainConfig(
        name="periodic",
        description="Re-synchronisable mark: a 64 x 64 circular payload tile (128 raw bits) plus a "
                    "key-derived sync template, laid out periodically under a texture mask; the "
                    "extractor reads the tile folded over 3 x 3 periods after whitening, with "
                    "lattice-estimate errors; PSNR adaptive from 36 dB towards 46 dB.",
        model=ModelConfig(architecture="periodic", working_size=64, payload_bits=128,
                          embedder_channels=(64, 64, 32, 16), extractor_channels=(32, 64, 64, 128),
                          texture_mask=0.01),
        attacks=AttackConfig(start_step=300, ramp_steps=3000, canvas_size=192, min_period=40.0,
                             max_period=60.0),
        loss=LossConfig(psnr_start=36.0, psnr_final=46.0, psnr_ramp_start=500,
                        low_frequency_weight=0.1),
        lr_drop_step=8000,
    ),
    "periodic-fold": TrainConfig(
        name="periodic-fold",
        description="The periodic layout's networks (128 raw bits, 64 x 64 tile) trained through "
                    "the simulated fold channel (training/fold_channel.py): misalignment, "
                    "whitening response, blur, real folded-photo noise at an amplitude SNR falling "
                    "from 1.0 to 0.12; both networks start as the spread-spectrum code of 128 "
                    "orthonormal patterns in 6..20 cycles per tile (a matched-filter path in the "
                    "extractor). Fine-tune with `periodic` (--init-from).",
        model=ModelConfig(architecture="fold", working_size=64, payload_bits=128,
                          embedder_channels=(32, 32, 16, 8), extractor_channels=(16, 48, 96, 128),
                          texture_mask=0.01, spread_band=(6.0, 20.0)),
        attacks=AttackConfig(start_step=200, ramp_steps=2000, canvas_size=192, min_period=40.0,
                             max_period=60.0, phase_jitter=0.5),
        loss=LossConfig(low_frequency_weight=0.1),
        batch_size=64, steps=6000, eval_every=250, eval_samples=256, checkpoint_every_s=120.0,
        lr_drop_step=4000,
    ),
    "gpu": TrainConfig(
        name="gpu",
        description="Bigger nets at 128px working size on a 256px canvas, for a GPU job.",
        model=ModelConfig(working_size=128, embedder_channels=(64, 128, 128),
                          extractor_channels=(64, 128, 128, 256, 256), full_size_decoder=True,
                          tile_grid=3, min_tile=192),
        attacks=AttackConfig(crop_probability=0.0),
        loss=LossConfig(psnr_start=35.0),
        batch_size=64, steps=300_000, eval_every=2000, eval_samples=256, mixed_precision=True,
    ),
    "seed": TrainConfig(
        name="seed",
        description="The original Keras autoencoder: 28x28 grayscale Fashion-MNIST, w as a 28x28 "
                    "binary plane (784 bits), GaussianNoise(0.5), two MSE losses. 784 bits exceed "
                    "the noisy channel's capacity (at most 392 bits per image even with the image "
                    "given up; docs/seed.md). Measured after 400 steps on 512 held-out test "
                    "images: 18.3 dB PSNR, bit accuracy 0.500 through the noise (chance).",
        model=ModelConfig(architecture="seed", working_size=28, payload_bits=28 * 28),
        loss=LossConfig(bit_loss="mse"),
        data="/usr/share/datasets/fashion-mnist",
        batch_size=64, learning_rate=1e-3, steps=6000, eval_every=1000, eval_samples=512,
    ),
    "seed-fixed": TrainConfig(
        name="seed-fixed",
        description="The seed autoencoder changed only where the channel demands it: the same "
                    "three networks, 28x28 Fashion-MNIST and GaussianNoise(0.5), but a 16-bit "
                    "payload, each bit spread over a 7x7 block of the w plane and read as the "
                    "block mean of the sigmoid output, BCE on the bits, bit weight 0.2 and "
                    "learning rate 3e-3 (docs/seed.md). Measured at its 800 steps on 512 held-out "
                    "test images: bit accuracy 0.929 through the noise (0.974 clean) at 14.1 dB "
                    "PSNR, a plainly visible mark.",
        model=ModelConfig(architecture="seed", working_size=28, payload_bits=16),
        loss=LossConfig(bit_loss="bce", bit_weight=0.2),
        data="/usr/share/datasets/fashion-mnist",
        batch_size=64, learning_rate=3e-3, steps=800, eval_every=200, eval_samples=512,
    ),
}


def get_preset(name: str) -> TrainConfig:
    """The preset called `name`, with a clear error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def _parse_value(text: str, current):
    """Parse `text` as the type of the field's current value."""
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true/false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, tuple):
        return tuple(type(current[0])(v) if current else v for v in text.split(",") if v)
    if current is None:
        return text
    return type(current)(text)


def override(cfg: TrainConfig, assignment: str) -> TrainConfig:
    """Apply one `section.field=value` (or `field=value`) override, e.g.
    `attacks.crop_probability=0.2`, `loss.psnr_final=40`, `attacks.kinds=identity,noise`."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} must look like section.field=value")
    path, text = assignment.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) == 1:
        if not hasattr(cfg, parts[0]) or isinstance(getattr(cfg, parts[0]), (ModelConfig, AttackConfig, LossConfig)):
            raise ValueError(f"unknown config field {path!r}")
        return dataclasses.replace(cfg, **{parts[0]: _parse_value(text, getattr(cfg, parts[0]))})
    if len(parts) != 2 or not hasattr(cfg, parts[0]) or not hasattr(getattr(cfg, parts[0]), parts[1]):
        raise ValueError(f"unknown config field {path!r}")
    section = getattr(cfg, parts[0])
    value = _parse_value(text, getattr(section, parts[1]))
    return dataclasses.replace(cfg, **{parts[0]: dataclasses.replace(section, **{parts[1]: value})})
