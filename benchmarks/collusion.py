"""What the key protects against, measured: the averaging (collusion) attack, the copy attack and
reads with a wrong key.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/collusion.py --model BUNDLE

* Averaging attack: `--marked` development photos (/work/shared/data/photos, the attacker's own
  material), resized to 1024 x 768, are all marked with one payload; their pixel-wise average's
  high-pass luminance (luma minus its 5 x 5 box mean, added equally to R, G and B) is the
  attacker's estimate of the mark. Forge: the estimate, scaled to a PSNR of 38 dB and of 32 dB,
  is added to each held-out photo (`--images`, resized to 1024 x 768) and read blind; a forgery
  succeeds when the read is detected with the payload. Remove: each held-out photo is marked
  with the payload and the estimate, scaled to the RMS of that photo's own mark, is subtracted;
  the mark survives when the blind read still gives the payload.
* Copy attack: from a stolen pair (original, marked) of one held-out photo, the exact residual
  marked - original is added to every other held-out photo of the same size (photos are resized
  to 1024 x 768 for this) and read blind.
* Wrong key: every marked held-out photo read with another key (blind).

Prints one table; each row gives the count of successes for the attacker.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import list_photos  # noqa: E402

from filigree import Watermarker  # noqa: E402
from filigree.imaging.jnd import box_mean  # noqa: E402

DEV_PHOTOS = Path("/work/shared/data/photos")
HELD_OUT = Path(__file__).resolve().parent / "photos"
SIZE = (1024, 768)
PAYLOAD_VALUE = 0x5EED0F00DCAFE123
"""The one payload every marked image carries (its low `data_bits` bits for smaller models)."""


def photos(folder: Path, count: int) -> list[np.ndarray]:
    """uint8 RGB [768, 1024, 3] of the first `count` photos of a folder (sorted by name)."""
    return [np.asarray(Image.open(p).convert("RGB").resize(SIZE, Image.Resampling.LANCZOS))
            for p in list_photos(folder)[:count]]


def payload_for(wm: Watermarker) -> str:
    return format(PAYLOAD_VALUE & ((1 << wm.data_bits) - 1), "x")


def mark(wm: Watermarker, rgb: np.ndarray) -> np.ndarray:
    return np.asarray(wm.embed(Image.fromarray(rgb), payload_for(wm)))


def high_pass_luma(rgb: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3]: luma minus its 5 x 5 box mean, in all three channels."""
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    detail = luma - box_mean(luma, 5)
    return np.repeat(detail[..., None], 3, axis=2)


def scaled_to_psnr(estimate: np.ndarray, psnr: float) -> np.ndarray:
    rms = 255.0 / 10 ** (psnr / 20)
    return estimate * (rms / float(np.sqrt(np.mean(estimate**2))))


def read_payload(wm: Watermarker, rgb: np.ndarray) -> bool:
    read = wm.extract(Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8)))
    return read.detected and read.decoded is not None and int(read.decoded, 16) == int(payload_for(wm), 16)


def averaging_attack(wm: Watermarker, attacker: list[np.ndarray], victims: list[np.ndarray]) -> dict:
    average = np.mean([mark(wm, rgb).astype(np.float32) for rgb in attacker], axis=0)
    estimate = high_pass_luma(average)
    forged = {psnr: sum(read_payload(wm, v.astype(np.float32) + scaled_to_psnr(estimate, psnr)) for v in victims)
              for psnr in (38.0, 32.0)}
    removed = 0
    for v in victims:
        marked = mark(wm, v).astype(np.float32)
        own_rms = float(np.sqrt(np.mean((marked - v) ** 2)))
        attack = estimate * (own_rms / float(np.sqrt(np.mean(estimate**2))))
        removed += not read_payload(wm, marked - attack)
    return {"forged_38": forged[38.0], "forged_32": forged[32.0], "removed": removed}


def copy_attack(wm: Watermarker, victims: list[np.ndarray]) -> tuple[int, int]:
    original = victims[0]
    residual = mark(wm, original).astype(np.float32) - original
    others = victims[1:]
    return sum(read_payload(wm, v.astype(np.float32) + residual) for v in others), len(others)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="bundle directory or bundled model name (default: the default model)")
    parser.add_argument("--key", default="filigree-collusion-benchmark")
    parser.add_argument("--images", type=Path, default=HELD_OUT, help="held-out photos (victims)")
    parser.add_argument("--victims", type=int, default=6)
    parser.add_argument("--marked", type=int, default=40, help="photos the attacker averages")
    args = parser.parse_args(argv)
    wm = Watermarker.load(args.model, args.key)
    attacker = photos(DEV_PHOTOS, args.marked)
    victims = photos(args.images, args.victims)
    averaging = averaging_attack(wm, attacker, victims)
    copied, pairs = copy_attack(wm, victims)
    other = Watermarker.load(args.model, args.key + "-wrong")
    wrong = sum(other.extract(Image.fromarray(mark(wm, v))).detected for v in victims)
    n = len(victims)
    print(f"\nmodel {args.model or 'bundled'}, {len(attacker)} averaged photos, {n} held-out victims, "
          f"1024 x 768, payload {payload_for(wm)}\n")
    print("| attack (without the key) | attacker's successes |")
    print("|---|---|")
    print(f"| averaging, estimate added at 38 dB: forged | {averaging['forged_38']} / {n} |")
    print(f"| averaging, estimate added at 32 dB: forged | {averaging['forged_32']} / {n} |")
    print(f"| averaging, estimate subtracted at the mark's RMS: removed | {averaging['removed']} / {n} |")
    print(f"| copy attack: a stolen pair's residual added to other photos: read as the payload | {copied} / {pairs} |")
    print(f"| wrong key: marked photos detected | {wrong} / {n} |")


if __name__ == "__main__":
    main()
