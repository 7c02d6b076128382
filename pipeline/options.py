"""Command-line options of `python -m pipeline.run`, parsed into a typed `RunConfig`.

Filigree's own options are parsed here; everything else (`--runner`, `--project`, `--region`,
`--temp_location`, `--sdk_container_image`, ...) is passed through to Beam untouched. The secret
key is resolved here and never stored in the config, the pipeline options or any output.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass

from filigree.attacks import parse_suite
from filigree.payload import KEY_ENV_VAR, resolve_key

MODES = ("embed", "extract")
VERIFY_LEVELS = ("none", "clean", "attacks")


@dataclass(frozen=True)
class RunConfig:
    """Everything the pipeline graph needs, except the key (see `parse_run_args`)."""

    input: str
    """File, folder, glob or prefix of images, local or gs://."""
    output: str = "out"
    """Output prefix: `marked/` and `report/` go under it."""
    model: str | None = None
    """Model bundle directory, or a bundled model's name (`filigree.resources.BUNDLED_MODELS`);
    None: the default bundled model."""
    assignments: str | None = None
    """CSV (`image,payload`) or JSONL manifest of payloads per image: one file or a glob of shards."""
    payload: str | None = None
    """Payload for every image without a manifest row."""
    mode: str = "embed"
    verify: str = "clean"
    attacks: str | None = None
    """Comma-separated attack specs for `--verify attacks` (see filigree/attacks.py); None: the
    model's default suite (`filigree.attacks.default_suite_spec`)."""
    strength: float | None = None
    """Residual strength (default: the model card's)."""
    fpr: float = 1e-6
    """Target false-positive rate of `detected`."""
    jpeg_quality: int | None = None
    """Quality of marked JPEG/WebP outputs; None keeps the source's estimated quality, never
    below `filigree.imaging.encode.MIN_MARK_QUALITY` (the lowest at which the mark reads)."""
    max_pixels: int = 100_000_000
    """Images with more pixels are refused before decoding."""
    batch_size: int = 16
    """Largest inference batch."""
    skip_existing: bool = False
    """Skip images whose marked output already exists."""
    max_error_rate: float | None = None
    """Fail the job when the share of `error` records exceeds this."""
    decode_timeout_s: float = 120.0
    """Per-image limit on decoding, after which the image is reported as an error."""
    seed: int = 0
    """Seed of the random attacks (noise), so re-runs give identical reports."""
    reframe: bool = False
    """Reads that find no mark search deeper: for a crop of the marked frame (filigree/reframe.py),
    or, with a periodic bundle, windows of the image (`PeriodicMarker.search`)."""
    max_grid: int | None = None
    """Embed mode: mark on at most this many tiles a side (default: the model card's)."""
    min_psnr: float = 35.0
    """Embed mode: visibility floor in dB; an image whose mark would be louder (a lower PSNR
    against the data's own peak) gets a `too_small` error and no output."""
    overwrite_marks: bool = False
    """Embed mode: mark images that already carry a mark readable with this key (default:
    refuse them as `already_marked`)."""
    verbose: bool = False
    """Let TensorFlow's and Beam's own start-up and log lines through to the console."""

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.run",
        description="Embed payloads into images (or read them back) with a Filigree model, "
                    "as an Apache Beam batch job. Unknown options go to Beam.")
    parser.add_argument("--input", help="file, folder, glob or prefix, local or gs:// "
                                        "(default: the bundled samples and their assignments.csv)")
    parser.add_argument("--output", default="out", help="output prefix, local or gs:// (default: ./out)")
    parser.add_argument("--model", help="model bundle directory, local or gs://, or a bundled model's name: "
                                         "default (tiled layout) or periodic (re-synchronisable after crops, "
                                         "rotations, mirrors and screenshots; docs/sync.md); default: default")
    parser.add_argument("--assignments", help="CSV (header image,payload) or JSONL manifest: one file or a "
                                              "glob of shards, read in parallel")
    parser.add_argument("--payload", help="payload for every image without a manifest row "
                                          "(hex; or dec:123, text:abc)")
    parser.add_argument("--mode", choices=MODES, default="embed")
    parser.add_argument("--verify", choices=VERIFY_LEVELS, default="clean",
                        help="embed mode: read back the written files (clean) and after attacks")
    parser.add_argument("--attacks", help="attack suite for --verify attacks (default: the full suite of "
                                           "filigree/attacks.py; with a periodic model also its geometric edits)")
    parser.add_argument("--key", help=f"secret key (prefer --key_file or ${KEY_ENV_VAR})")
    parser.add_argument("--key_file", help="file holding the secret key")
    parser.add_argument("--strength", type=float, help="residual strength (default: the model's)")
    parser.add_argument("--fpr", type=float, default=1e-6, help="target false-positive rate of detection")
    parser.add_argument("--jpeg_quality", type=int,
                        help="quality of marked JPEG/WebP outputs (default: the source's estimated "
                             "quality, 5 points above it for a periodic model, never below the "
                             "lowest at which the mark reads)")
    parser.add_argument("--max_pixels", type=int, default=100_000_000,
                        help="refuse images with more pixels, from their header (default 100 MP)")
    parser.add_argument("--batch_size", type=int, default=16, help="largest inference batch")
    parser.add_argument("--skip_existing", action="store_true",
                        help="skip images whose marked output already exists (resumable runs)")
    parser.add_argument("--max_error_rate", type=float,
                        help="fail the job (exit status 3, after writing the report) when the share "
                             "of error records is above this, in [0, 1]")
    parser.add_argument("--decode_timeout_s", type=float, default=120.0, help="per-image decode limit")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random attacks")
    parser.add_argument("--reframe", action="store_true",
                        help="reads that find no mark search deeper: for a crop of the marked frame "
                             "(tiled bundles), or windows of the image for a marked piece (periodic "
                             "bundles); 0.5-3 s of CPU per such read; p-values pay for everything tried")
    parser.add_argument("--max_grid", type=int,
                        help="embed mode: mark on at most N x N tiles (fewer embedder calls, faster; "
                             "the mark is amplified to read as well, so PSNR drops; default: the model's)")
    parser.add_argument("--min_psnr", type=float, default=35.0,
                        help="embed mode: visibility floor in dB (default 35); images that would need "
                             "a louder mark get a too_small error and no output")
    parser.add_argument("--overwrite_marks", action="store_true",
                        help="embed mode: re-mark images that already carry a mark readable with "
                             "this key (default: refuse them as already_marked)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's and Beam's own start-up and log lines")
    return parser


def validate(cfg: RunConfig) -> RunConfig:
    """Raise ValueError with a clear message for inconsistent options."""
    if cfg.mode == "extract" and cfg.payload is not None:
        raise ValueError("--payload is for embed mode; in extract mode use --assignments for expected payloads")
    if not 0.0 < cfg.fpr < 1.0:
        raise ValueError(f"--fpr must be in (0, 1), got {cfg.fpr}")
    if cfg.jpeg_quality is not None and not 1 <= cfg.jpeg_quality <= 100:
        raise ValueError(f"--jpeg_quality must be in [1, 100], got {cfg.jpeg_quality}")
    if cfg.max_pixels < 1:
        raise ValueError("--max_pixels must be at least 1")
    if not cfg.decode_timeout_s > 0:
        raise ValueError(f"--decode_timeout_s must be positive, got {cfg.decode_timeout_s}")
    if cfg.batch_size < 1:
        raise ValueError("--batch_size must be at least 1")
    if cfg.strength is not None and not 0.0 < cfg.strength <= 10.0:
        raise ValueError(f"--strength must be in (0, 10], got {cfg.strength}")
    if cfg.max_grid is not None and cfg.max_grid < 1:
        raise ValueError(f"--max_grid must be at least 1, got {cfg.max_grid}")
    if not 0.0 <= cfg.min_psnr < 100.0:
        raise ValueError(f"--min_psnr must be in [0, 100) dB, got {cfg.min_psnr}")
    if cfg.max_error_rate is not None and not 0.0 <= cfg.max_error_rate <= 1.0:
        raise ValueError(f"--max_error_rate must be in [0, 1], got {cfg.max_error_rate}")
    if cfg.verify == "attacks" and cfg.attacks is not None:
        parse_suite(cfg.attacks)
    return cfg


def parse_run_args(argv: list[str] | None = None) -> tuple[RunConfig, bytes | None, list[str]]:
    """(config, key bytes or None, Beam arguments)."""
    args, beam_args = build_parser().parse_known_args(argv)
    key = resolve_key(args.key, args.key_file)
    if args.input is None:
        from filigree.resources import bundled_samples_dir
        args.input = bundled_samples_dir()
        if args.assignments is None and args.payload is None and args.mode == "embed":
            args.assignments = os.path.join(args.input, "assignments.csv")
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    cfg = RunConfig(**{k: v for k, v in vars(args).items() if k in fields})
    return validate(cfg), key, beam_args
