"""Marked JPEGs re-saved near their source's quality: how many read back, at what size.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/requantise.py --model periodic \
        --images benchmarks/photos --payloads 3 --margins 0,3,5,10

Each JPEG photo of `--images` is decoded as the job decodes it (`filigree.imaging.decode`), marked
with `--payloads` random payloads (`Watermarker.embed_pixels`), and each marked copy is encoded
as the job encodes it (`filigree.imaging.encode.encode_image`: the source's chroma subsampling,
metadata) at the quality the job would choose with a margin of d points
(`filigree.imaging.encode.output_quality`) for each d of `--margins`, then read blind
(`Watermarker.extract`, default options). Per margin the table gives the marked copies read back
with their exact payload, and the size of a marked file over an unmarked re-save of the same
photo at the source's own quality (each photo's mean over its payloads; median and largest over
photos): what the margin and the mark cost together. The quality the job writes a periodic
bundle's marks at is the source's + `filigree.periodic.QUALITY_MARGIN`.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from geometry import random_payload  # noqa: E402
from quality import list_photos  # noqa: E402

from filigree import Watermarker  # noqa: E402
from filigree.imaging import decode, encode  # noqa: E402


def measure(wm: Watermarker, paths: list[Path], payloads: int, margins: list[int], seed: int) -> dict:
    """{margin: {"read": n, "marks": n, "ratios": [per photo size ratio]}} and per-photo lines."""
    rng = np.random.default_rng(seed)
    rows = {d: {"read": 0, "marks": 0, "ratios": []} for d in margins}
    for path in paths:
        decoded = decode.decode_image(path.read_bytes())
        if decoded.format != "JPEG" or decoded.quality is None:
            continue
        line = []
        plain = len(encode.encode_image(decoded, decoded.pixels, jpeg_quality=decoded.quality))
        for d in margins:
            quality = encode.output_quality(decoded, margin=d)
            read, sizes = 0, []
            for _ in range(payloads):
                payload = random_payload(wm, rng)
                data = encode.encode_image(decoded, wm.embed_pixels(decoded.pixels, payload), jpeg_quality=quality)
                sizes.append(len(data))
                result = wm.extract(Image.open(io.BytesIO(data)))
                read += result.detected and result.decoded == payload.zfill(len(result.decoded or ""))
            rows[d]["read"] += read
            rows[d]["marks"] += payloads
            rows[d]["ratios"].append(float(np.mean(sizes)) / plain)
            line.append(f"q{quality}: {read}/{payloads}")
        print(f"  {path.name[:32]:32s} source q{decoded.quality}  " + "  ".join(line), flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="bundle directory or bundled model name (default: the default model)")
    parser.add_argument("--key", default="filigree-requantise-benchmark")
    parser.add_argument("--images", type=Path, default=Path("benchmarks/photos"))
    parser.add_argument("--payloads", type=int, default=3, help="random payloads per photo")
    parser.add_argument("--margins", default="0,3,5,10", help="quality points above the source's")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    margins = [int(v) for v in args.margins.split(",") if v.strip()]
    wm = Watermarker.load(args.model, args.key)
    rows = measure(wm, list_photos(args.images), args.payloads, margins, args.seed)
    print(f"\nmodel {args.model or 'default'}, {args.images}, {args.payloads} payloads per JPEG photo\n")
    print("| quality written | marks read back | size over an unmarked re-save at the source's quality, median (largest) |")
    print("|---|---|---|")
    for d, row in rows.items():
        ratios = row["ratios"] or [float("nan")]
        print(f"| source + {d} | {row['read']} / {row['marks']} | {np.median(ratios):.2f} ({max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
