"""The lowest JPEG quality a marked file may be written at: exact payload recovery of marked
photos re-encoded at each quality (4:2:0, like most camera and web JPEGs).

    PYTHONPATH=. python benchmarks/jpeg_floor.py --images DIR [--limit 16] [--side 1024]

Prints one table row per quality: photos, exact payload rate, detection rate, mean bit
accuracy, mean PSNR and mean file size against q95. `filigree.imaging.encode.MIN_MARK_QUALITY`
is chosen from this table (see docs/formats.md for the measured run).
"""

from __future__ import annotations

import argparse
import glob
import io
import os

import numpy as np
from PIL import Image

from filigree import Watermarker
from filigree.imaging.metrics import psnr

QUALITIES = (20, 30, 40, 50, 60, 70, 80, 90, 95)


def photos(folder: str, limit: int, side: int) -> list[tuple[str, Image.Image]]:
    paths = sorted(p for p in glob.glob(os.path.join(folder, "*"))
                   if p.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff")))[:limit]
    out = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        image.thumbnail((side, side), Image.Resampling.LANCZOS)
        out.append((os.path.basename(path), image))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--side", type=int, default=1024)
    args = parser.parse_args()
    wm = Watermarker.load()
    rng = np.random.default_rng(0)
    rows = {q: {"exact": 0, "detected": 0, "acc": [], "psnr": [], "bytes": []} for q in QUALITIES}
    sample = photos(args.images, args.limit, args.side)
    for name, image in sample:
        payload = f"{int(rng.integers(1, 2 ** 48)):x}"
        marked = wm.embed(image, payload)
        for quality in QUALITIES:
            buffer = io.BytesIO()
            marked.save(buffer, "JPEG", quality=quality, subsampling="4:2:0")
            written = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
            read = wm.extract(written, expected=payload)
            row = rows[quality]
            row["exact"] += read.match is True
            row["detected"] += bool(read.detected)
            row["acc"].append(1.0 - (read.ber or 0.0))
            row["psnr"].append(psnr(np.asarray(image), np.asarray(written)))
            row["bytes"].append(len(buffer.getvalue()))
    base = np.mean(rows[95]["bytes"])
    print(f"{len(sample)} photos from {args.images}, long side <= {args.side} px, bundled model")
    print("| quality | exact payload | detected | bit accuracy | PSNR vs source (dB) | size vs q95 |")
    print("|---|---|---|---|---|---|")
    for quality in QUALITIES:
        row = rows[quality]
        n = len(sample)
        print(f"| {quality} | {row['exact']}/{n} | {row['detected']}/{n} | {np.mean(row['acc']):.3f} | "
              f"{np.mean(row['psnr']):.1f} | {np.mean(row['bytes']) / base:.2f} |")


if __name__ == "__main__":
    main()
