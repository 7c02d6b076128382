"""The lowest JPEG or lossy WebP quality a marked file may be written at: exact payload recovery
of marked photos re-encoded at each quality (JPEG at 4:2:0, like most camera and web JPEGs; WebP
with libwebp's defaults, as Pillow and the pipeline write it).

    PYTHONPATH=. python benchmarks/jpeg_floor.py --images DIR [--format WEBP] [--limit 16] [--side 1024]

Prints one table row per quality: photos, exact payload rate, detection rate, mean bit
accuracy, mean PSNR, mean file size against q95 and the photos not read back exactly.
`filigree.imaging.encode.MIN_MARK_QUALITY` (JPEG) and `MIN_WEBP_MARK_QUALITY` are chosen from
these tables (see docs/formats.md for the measured runs).
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
SAVE_OPTIONS = {"JPEG": {"subsampling": "4:2:0"}, "WEBP": {}}


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
    parser.add_argument("--format", choices=sorted(SAVE_OPTIONS), default="JPEG")
    parser.add_argument("--qualities", type=lambda text: tuple(int(q) for q in text.split(",")),
                        default=QUALITIES, help="comma-separated; must include 95 (the size reference)")
    args = parser.parse_args()
    wm = Watermarker.load()
    rng = np.random.default_rng(0)
    qualities = args.qualities
    rows = {q: {"exact": 0, "detected": 0, "acc": [], "psnr": [], "bytes": [], "missed": []}
            for q in qualities}
    sample = photos(args.images, args.limit, args.side)
    for name, image in sample:
        payload = f"{int(rng.integers(1, 2 ** 48)):x}"
        marked = wm.embed(image, payload)
        for quality in qualities:
            buffer = io.BytesIO()
            marked.save(buffer, args.format, quality=quality, **SAVE_OPTIONS[args.format])
            written = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
            read = wm.extract(written, expected=payload)
            row = rows[quality]
            row["exact"] += read.match is True
            if read.match is not True:
                row["missed"].append(os.path.splitext(name)[0])
            row["detected"] += bool(read.detected)
            row["acc"].append(1.0 - (read.ber or 0.0))
            row["psnr"].append(psnr(np.asarray(image), np.asarray(written)))
            row["bytes"].append(len(buffer.getvalue()))
    base = np.mean(rows[95]["bytes"])
    print(f"{args.format}: {len(sample)} photos from {args.images}, long side <= {args.side} px, bundled model")
    print("| quality | exact payload | detected | bit accuracy | PSNR vs source (dB) | size vs q95 | not exact |")
    print("|---|---|---|---|---|---|---|")
    for quality in qualities:
        row = rows[quality]
        n = len(sample)
        print(f"| {quality} | {row['exact']}/{n} | {row['detected']}/{n} | {np.mean(row['acc']):.3f} | "
              f"{np.mean(row['psnr']):.1f} | {np.mean(row['bytes']) / base:.2f} | "
              f"{', '.join(row['missed'])} |")


if __name__ == "__main__":
    main()
