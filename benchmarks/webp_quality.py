"""Calibration and error of the lossy-WebP quality estimate (`filigree.imaging.vp8`).

    PYTHONPATH=. python benchmarks/webp_quality.py --images DIR --calibrate [--side 512]
    PYTHONPATH=. python benchmarks/webp_quality.py --images DIR [--side 1024] [--step 5]

Photos are split by their sorted position: even ones calibrate, odd ones are held out.
``--calibrate`` encodes the calibration photos with Pillow (libwebp defaults) at every quality
0..100 and prints the most common coarsest-segment luma AC index per quality: the table
`LIBWEBP_Y_AC_INDEX`, and whether it equals the one in the code. Without it, the held-out photos
are encoded at qualities ``step..100`` and estimated; one row per true quality gives the
estimates' median, range, exact share and mean absolute error.
"""

from __future__ import annotations

import argparse
import collections
import io

import numpy as np
from PIL import Image

from benchmarks.jpeg_floor import photos
from filigree.imaging import vp8


def webp_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=quality)
    return buffer.getvalue()


def coarsest_index(image: Image.Image, quality: int) -> int:
    quantizer = vp8.webp_quantizer(webp_bytes(image, quality))
    if quantizer is None:
        raise RuntimeError(f"libwebp's own output at q{quality} did not parse")
    return max(quantizer.segment_y_ac_qi)


def calibrate(images: list[Image.Image]) -> tuple[int, ...]:
    """Most common coarsest luma AC index per quality 0..100 (ties: the larger index)."""
    table = []
    for quality in range(101):
        counts = collections.Counter(coarsest_index(image, quality) for image in images)
        table.append(max(counts, key=lambda index: (counts[index], index)))
    return tuple(table)


def evaluate(images: list[Image.Image], step: int) -> None:
    print("| true quality | photos | estimate: median | min | max | exact | mean abs error |")
    print("|---|---|---|---|---|---|---|")
    errors = []
    for quality in range(step, 101, step):
        estimates = np.array([vp8.estimate_webp_quality(webp_bytes(image, quality)) for image in images])
        error = estimates - quality
        errors.extend(error.tolist())
        print(f"| {quality} | {len(images)} | {int(np.median(estimates))} | {estimates.min()} | "
              f"{estimates.max()} | {int(np.sum(error == 0))}/{len(images)} | {np.mean(np.abs(error)):.2f} |")
    errors = np.array(errors)
    print(f"\nall: mean abs error {np.mean(np.abs(errors)):.2f}, mean error {errors.mean():+.2f}, "
          f"|error| <= 1 in {np.mean(np.abs(errors) <= 1):.0%}, <= 3 in {np.mean(np.abs(errors) <= 3):.0%}, "
          f"largest {errors.min():+d} / {errors.max():+d}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--step", type=int, default=5)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args()
    sample = photos(args.images, args.limit, args.side)
    calibration, held_out = sample[0::2], sample[1::2]
    if args.calibrate:
        table = calibrate([image for _, image in calibration])
        print(f"{len(calibration)} calibration photos, long side <= {args.side} px")
        print(f"LIBWEBP_Y_AC_INDEX = {table}")
        print(f"equals the code's table: {table == vp8.LIBWEBP_Y_AC_INDEX}")
        return
    print(f"{len(held_out)} held-out photos, long side <= {args.side} px, libwebp defaults (Pillow)")
    evaluate([image for _, image in held_out], args.step)


if __name__ == "__main__":
    main()
