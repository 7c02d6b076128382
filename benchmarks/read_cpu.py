"""CPU of a default blind read (`Watermarker.extract`), marked and unmarked, at given sizes.

    PYTHONPATH=. .venv/bin/python benchmarks/read_cpu.py [--model periodic] [--sizes 0.3,2,12]
        [--images benchmarks/photos] [--photos 12] [--repeats 3]

Each photo is resized (Lanczos) to each size in megapixels, marked with a fixed payload, and read
blind as a PIL image, marked and unmarked; a read's CPU is the least process time of
``--repeats`` reads after one warm-up. The table gives the median and the largest over the
photos. Process CPU, not wall time: the machine may be shared. To compare two versions of the
reader side by side, run this script with ``PYTHONPATH`` pointing at each checkout in turn.
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

from filigree import Watermarker  # noqa: E402

HELD_OUT = Path(__file__).resolve().parent / "photos"

PAYLOAD = "0x1234"


def resized(image: Image.Image, megapixels: float) -> Image.Image:
    """`image` scaled (Lanczos) to about `megapixels` million pixels, aspect kept."""
    scale = (megapixels * 1e6 / (image.width * image.height)) ** 0.5
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


def read_cpu_ms(wm: Watermarker, image: Image.Image, repeats: int) -> float:
    """The least process CPU, in ms, of `repeats` blind reads of `image` (after one warm-up)."""
    wm.extract(image)
    times = []
    for _ in range(repeats):
        start = time.process_time()
        wm.extract(image)
        times.append(time.process_time() - start)
    return 1000.0 * min(times)


def measure(wm: Watermarker, photos: list[Path], sizes: list[float], repeats: int) -> list[dict]:
    """One row per size: median and max read CPU (ms) of the marked and the unmarked photos."""
    rows = []
    for size in sizes:
        marked, plain = [], []
        for path in photos:
            image = resized(Image.open(path).convert("RGB"), size)
            plain.append(read_cpu_ms(wm, image, repeats))
            marked.append(read_cpu_ms(wm, wm.embed(image, PAYLOAD), repeats))
        rows.append({"megapixels": size, "marked": marked, "unmarked": plain})
        print(f"  {size:g} MP: marked median {np.median(marked):.0f} ms, unmarked median {np.median(plain):.0f} ms",
              file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="bundle directory or bundled model name (default: the default model)")
    parser.add_argument("--images", type=Path, default=HELD_OUT)
    parser.add_argument("--photos", type=int, default=12)
    parser.add_argument("--sizes", default="0.3,2,12", help="megapixels, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    wm = Watermarker.load(args.model)
    photos = list_photos(args.images)[: args.photos]
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    rows = measure(wm, photos, sizes, args.repeats)
    import filigree
    print(f"\n{len(photos)} photos from {args.images}, model {args.model or 'default'}, "
          f"reader {Path(filigree.__file__).parent}, least of {args.repeats} reads\n")
    print("| size | marked: median ms | marked: max ms | unmarked: median ms | unmarked: max ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['megapixels']:g} MP | {np.median(row['marked']):.0f} | {max(row['marked']):.0f} "
              f"| {np.median(row['unmarked']):.0f} | {max(row['unmarked']):.0f} |")


if __name__ == "__main__":
    main()
