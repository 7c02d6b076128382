"""Geometric robustness of a bundle, as a user reads: `Watermarker.extract` with default options.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/geometry.py --model BUNDLE
    PYTHONPATH=. .venv/bin/python benchmarks/geometry.py --model BUNDLE --images benchmarks/photos \
        --edits "none,crop 80%,mirror"

Each photo (default: the development photos, /work/shared/data/photos; `--images` for the
held-out ones) is marked at native resolution with a random 64-bit payload by
`Watermarker.embed`, then each edit of `benchmarks/sync.py` (crops anywhere, shifts, margins,
rotations, mirror, quarter turns, square crop, screenshot, collage, JPEG, resize, re-share) is
applied to the marked photo and to the unmarked one (same random positions). Per edit the table
gives, over the marked photos: the bit accuracy of the informed read (1 - BER of the raw bits
against the payload's, as `ReadResult.ber` gives it), the share of blind reads that decode the
exact payload, the share detected blind; and the number of blind detections on the unmarked
photos under the same edit (false positives), with the median CPU time of a blind read. Last, the
calibration of informed reads: the share of the unmarked photos' reads against their marked
twin's payload whose p-value is at most 0.1, 0.01 and 0.001 (at most those values when the
p-values are calibrated). `--reframe` makes every read the deeper search
(`Watermarker.extract(..., reframe=True)`: for a periodic bundle, windows of the image).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality import list_photos  # noqa: E402
from sync import EDITS, PHOTO_DIR  # noqa: E402

from filigree import Watermarker  # noqa: E402


def load_photos(folder: Path, count: int, stride: int) -> list[tuple[str, Image.Image]]:
    paths = list_photos(folder)[::stride][:count]
    return [(p.name, Image.open(p).convert("RGB")) for p in paths]


def random_payload(wm: Watermarker, rng: np.random.Generator) -> str:
    bits = wm.data_bits
    value = int.from_bytes(rng.bytes((bits + 7) // 8), "big") >> (8 * ((bits + 7) // 8) - bits)
    return format(value, "x")


def measure(wm: Watermarker, photos, edits: list[str], seed: int, null_p: list[float],
            reframe: bool = False) -> list[dict]:
    """One row per edit (module docstring); the informed p-values of the unmarked photos'
    reads against the payload of their marked twin are appended to `null_p`. `reframe`: every
    read (marked and unmarked, blind and informed) with the deeper search."""
    rng = np.random.default_rng(seed)
    marked = []
    for name, image in photos:
        payload = random_payload(wm, rng)
        marked.append((name, image, wm.embed(image, payload), payload))
    rows = []
    for edit in edits:
        apply = EDITS[edit]
        accuracy, exact, detected, false, cpu = [], 0, 0, 0, []
        for i, (name, original, stamped, payload) in enumerate(marked):
            host = photos[(i + 1) % len(photos)][1]
            edit_seed = int(rng.integers(2**31))
            edited, _ = apply(stamped, np.random.default_rng(edit_seed), host)
            plain, _ = apply(original, np.random.default_rng(edit_seed), host)
            start = time.process_time()
            blind = wm.extract(edited, reframe=reframe)
            cpu.append(time.process_time() - start)
            informed = wm.extract(edited, expected=payload, reframe=reframe)
            accuracy.append(1.0 - informed.ber)
            exact += blind.decoded == payload.zfill(len(blind.decoded or ""))
            detected += blind.detected
            false += wm.extract(plain, reframe=reframe).detected
            null_p.append(wm.extract(plain, expected=payload, reframe=reframe).p_value)
        n = len(marked)
        rows.append({"edit": edit, "bit_accuracy": float(np.mean(accuracy)), "exact": exact / n,
                     "detected": detected / n, "false_positives": false, "photos": n,
                     "read_ms": 1000 * float(np.median(cpu))})
        print(f"  {edit:20s} bit acc {rows[-1]['bit_accuracy']:.3f}  exact {exact}/{n}  "
              f"detected {detected}/{n}  false {false}/{n}", flush=True)
    return rows


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}\n")
    print("| edit | bit accuracy | exact payload | detected | false detections (unmarked) | read CPU ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['edit']} | {r['bit_accuracy']:.3f} | {100 * r['exact']:.0f} % | {100 * r['detected']:.0f} % "
              f"| {r['false_positives']} / {r['photos']} | {r['read_ms']:.0f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="bundle directory or bundled model name (default: the default model)")
    parser.add_argument("--key", default="filigree-geometry-benchmark")
    parser.add_argument("--images", type=Path, default=PHOTO_DIR)
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--edits", default=",".join(EDITS), help="comma-separated edit names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reframe", action="store_true",
                        help="read with the deeper search (Watermarker.extract(reframe=True))")
    args = parser.parse_args(argv)
    edits = [e.strip() for e in args.edits.split(",") if e.strip()]
    unknown = [e for e in edits if e not in EDITS]
    if unknown:
        parser.error(f"unknown edits {unknown}; known: {list(EDITS)}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    wm = Watermarker.load(args.model, args.key)
    photos = load_photos(args.images, args.photos, args.stride)
    null_p: list[float] = []
    rows = measure(wm, photos, edits, args.seed, null_p, args.reframe)
    print_table(rows, f"{len(photos)} photos from {args.images}, model {args.model or 'bundled'}, "
                      f"{wm.data_bits} data bits, fpr {wm.fpr:g}" + (", --reframe" if args.reframe else ""))
    p = np.asarray(null_p)
    print(f"\ninformed reads of the unmarked photos (every edit, {len(p)} reads): "
          + ", ".join(f"P(p <= {a:g}) = {np.mean(p <= a):.4f}" for a in (0.1, 0.01, 0.001)))


if __name__ == "__main__":
    main()
