"""Re-synchronisation of the periodic layout (`filigree.sync`) under geometric edits.

    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/sync.py                 # all 56 dev photos
    PYTHONPATH=. nice -n 10 .venv/bin/python benchmarks/sync.py --stride 4      # every 4th photo
    PYTHONPATH=. .venv/bin/python benchmarks/sync.py --photos 8 --edits none --timing-photos 8

Each development photo (/work/shared/data/photos, never the reserved held-out sets) is marked at
native resolution with the periodic layout of a random band-limited tile standing in for the
trained generator: tile = sqrt(1 - a^2) * G + a * S_t (a = 0.35, G unit-RMS white noise limited
to 3..24 cycles per tile, S_t a sync template of a fixed key, t drawn per photo), laid out with
period P = period_for(H, W) from the origin, multiplied by a texture mask (local std of luma
over 9 x 9, divided by its median, clipped to [0.25, 2]) and scaled to the stated RMS strength
in grey levels over the image, added equally to R, G and B. The marked photo and the unmarked
one go through the same edits (same random positions), then `synchronise` reads each blind.

Per edit the table gives, for the marked photos, the share whose top hypothesis (highest z) has
the right geometry: both period vectors within 1 % of the true ones (so the period, the angle,
the mirror and the quarter turn are right), the right template, and the tile's phase within one
tile sample; then the share where any hypothesis is right, the median z of the top hypothesis,
the highest z over the unmarked photos under the same edit (null), and the median CPU time of
one read (time.process_time, single-threaded numpy). A separate line times reads of photos
resized to 1920 x 1080 and marked at that size (2 MP), marked and unmarked, median of repeats.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from filigree.sync import period_for, sync_templates, synchronise, tile_pattern  # noqa: E402

PHOTO_DIR = Path("/work/shared/data/photos")
TEMPLATE_WEIGHT = 0.35
KEY = b"filigree-benchmark-key"
Reader = Callable[[np.ndarray, np.ndarray], list]


@dataclass(frozen=True)
class Placement:
    """Affine map of pixel indices (y, x) of the marked photo into the edited image."""

    matrix: np.ndarray
    offset: np.ndarray

    def then(self, other: "Placement") -> "Placement":
        return Placement(other.matrix @ self.matrix, other.matrix @ self.offset + other.offset)


IDENTITY = Placement(np.eye(2), np.zeros(2))


def translation(dy: float, dx: float) -> Placement:
    return Placement(np.eye(2), np.array([dy, dx], float))


def resized(size: tuple[int, int], new_size: tuple[int, int]) -> Placement:
    """Pillow resize from (w, h) to (w2, h2): pixel centres scale about the image corner."""
    sy, sx = new_size[1] / size[1], new_size[0] / size[0]
    return Placement(np.diag([sy, sx]), np.array([0.5 * sy - 0.5, 0.5 * sx - 0.5]))


# --- edits: (image, rng, host photo) -> (edited image, placement) -------------------------------


def crop_area(fraction: float):
    def apply(image, rng, host):
        w, h = image.size
        side = np.sqrt(fraction)
        cw, ch = round(w * side), round(h * side)
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return image.crop((x0, y0, x0 + cw, y0 + ch)), translation(-y0, -x0)
    return apply


def shift(fraction: float):
    def apply(image, rng, host):
        w, h = image.size
        x0, y0 = round(w * fraction), round(h * fraction)
        return image.crop((x0, y0, w, h)), translation(-y0, -x0)
    return apply


def margin(fraction: float):
    def apply(image, rng, host):
        w, h = image.size
        mx, my = round(w * fraction), round(h * fraction)
        canvas = Image.new("RGB", (w + 2 * mx, h + 2 * my), (0, 0, 0))
        canvas.paste(image, (mx, my))
        return canvas, translation(my, mx)
    return apply


def rotation(degrees: float, expand: bool):
    def apply(image, rng, host):
        angle = degrees * (1 if rng.random() < 0.5 else -1)
        w, h = image.size
        out = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=expand)
        # Pillow turns counter-clockwise on screen about the centre (w/2, h/2) in continuous
        # coordinates (index + 0.5); with expand the centre moves to the new canvas's centre.
        c, s = np.cos(np.radians(angle)), np.sin(np.radians(angle))
        m = np.array([[c, -s], [s, c]])
        w2, h2 = out.size
        centre, centre2 = np.array([h / 2, w / 2]), np.array([h2 / 2, w2 / 2])
        offset = centre2 - 0.5 - m @ (centre - 0.5)
        return out, Placement(m, offset)
    return apply


def transpose(method: Image.Transpose):
    def apply(image, rng, host):
        w, h = image.size
        maps = {
            Image.Transpose.FLIP_LEFT_RIGHT: (np.array([[1, 0], [0, -1]]), (0, w - 1)),
            Image.Transpose.ROTATE_90: (np.array([[0, -1], [1, 0]]), (w - 1, 0)),
            Image.Transpose.ROTATE_180: (np.array([[-1, 0], [0, -1]]), (h - 1, w - 1)),
            Image.Transpose.ROTATE_270: (np.array([[0, 1], [-1, 0]]), (0, h - 1)),
        }
        m, offset = maps[method]
        return image.transpose(method), Placement(m.astype(float), np.array(offset, float))
    return apply


def square_crop(image, rng, host):
    w, h = image.size
    side = min(w, h)
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    return image.crop((x0, y0, x0 + side, y0 + side)), translation(-y0, -x0)


def screenshot(image, rng, host):
    w, h = image.size
    small_size = (round(w * 0.7), round(h * 0.7))
    small = image.resize(small_size, Image.Resampling.BICUBIC)
    canvas = Image.new("RGB", (w, h), (128, 128, 128))
    canvas.paste(small, (w // 7, h // 9))
    return canvas, resized((w, h), small_size).then(translation(h // 9, w // 7))


def collage(image, rng, host):
    w, h = image.size
    half_size = (round(w / 2), round(h / 2))
    half = image.resize(half_size, Image.Resampling.BICUBIC)
    canvas = host.resize((w, h), Image.Resampling.BICUBIC)
    x0, y0 = int(rng.integers(0, w - half_size[0] + 1)), int(rng.integers(0, h - half_size[1] + 1))
    canvas.paste(half, (x0, y0))
    return canvas, resized((w, h), half_size).then(translation(y0, x0))


def jpeg(quality: int):
    def apply(image, rng, host):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), IDENTITY
    return apply


def scale(factor: float):
    def apply(image, rng, host):
        size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
        return image.resize(size, Image.Resampling.BICUBIC), resized(image.size, size)
    return apply


def reshare(image, rng, host):
    cropped, placement = crop_area(0.64)(image, rng, host)
    factor = 1080 / max(cropped.size)
    size = (round(cropped.width * factor), round(cropped.height * factor))
    out, _ = jpeg(75)(cropped.resize(size, Image.Resampling.BICUBIC), rng, host)
    return out, placement.then(resized(cropped.size, size))


EDITS = {
    "none": lambda image, rng, host: (image, IDENTITY),
    "crop 80%": crop_area(0.80),
    "crop 64%": crop_area(0.64),
    "crop 50%": crop_area(0.50),
    "shift 3%": shift(0.03),
    "shift 5%": shift(0.05),
    "margin 10%": margin(0.10),
    "rotate ±2°": rotation(2, expand=False),
    "rotate ±2° expand": rotation(2, expand=True),
    "rotate ±5°": rotation(5, expand=False),
    "rotate ±5° expand": rotation(5, expand=True),
    "mirror": transpose(Image.Transpose.FLIP_LEFT_RIGHT),
    "turn 90°": transpose(Image.Transpose.ROTATE_90),
    "turn 180°": transpose(Image.Transpose.ROTATE_180),
    "turn 270°": transpose(Image.Transpose.ROTATE_270),
    "square crop": square_crop,
    "screenshot 70%": screenshot,
    "half in photo": collage,
    "JPEG q75": jpeg(75),
    "JPEG q50": jpeg(50),
    "resize 50%": scale(0.5),
    "resize 25%": scale(0.25),
    "crop+1080+q75": reshare,
}


# --- marking -------------------------------------------------------------------------------------


def band_tile(rng: np.random.Generator, n: int = 64, fmin: float = 3, fmax: float = 24) -> np.ndarray:
    """float32 [n, n]: unit-RMS white noise limited to fmin..fmax cycles per tile."""
    f = np.fft.fftfreq(n) * n
    radius = np.hypot(f[:, None], f[None, :])
    spectrum = (rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))) * (
        (radius >= fmin) & (radius <= fmax))
    tile = np.real(np.fft.ifft2(spectrum))
    return (tile / tile.std()).astype(np.float32)


def texture_mask(luma: np.ndarray, k: int = 9) -> np.ndarray:
    """Local std of luma over k x k, divided by its median, clipped to [0.25, 2]."""
    pad = k // 2
    padded = np.pad(luma.astype(np.float64), pad, mode="reflect")

    def box(x: np.ndarray) -> np.ndarray:
        c = np.pad(x, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        return (c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]) / (k * k)

    mean, mean_sq = box(padded), box(padded**2)
    std = np.sqrt(np.maximum(mean_sq - mean**2, 0))
    return np.clip(std / (np.median(std) + 1e-3), 0.25, 2.0)


def mark(rgb: np.ndarray, tile: np.ndarray, strength: float) -> np.ndarray:
    """uint8 [H, W, 3]: rgb + the masked periodic layout of `tile` at `strength` grey levels RMS."""
    h, w = rgb.shape[:2]
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    residual = tile_pattern(tile, h, w, period_for(h, w)) * texture_mask(luma)
    residual *= strength / np.sqrt(np.mean(residual**2))
    return np.clip(np.rint(rgb + residual[..., None]), 0, 255).astype(np.uint8)


# --- scoring -------------------------------------------------------------------------------------


def geometry_right(hypothesis, placement: Placement, period: int, template: int) -> bool:
    """Both period vectors within 1 %, the template, and the phase within one tile sample."""
    if hypothesis.template != template:
        return False
    true_basis = (period * placement.matrix).T  # rows: displacement per period along tile axes
    error = np.linalg.norm(hypothesis.basis - true_basis, axis=1) / np.linalg.norm(true_basis, axis=1)
    if np.any(error > 0.01):
        return False
    n = hypothesis.tile.shape[0]
    phase = (n / period) * np.linalg.solve(placement.matrix, hypothesis.origin - placement.offset)
    distance = np.abs((phase + n / 2) % n - n / 2)
    return bool(np.all(distance <= 1.0))


def load_photos(count: int, stride: int = 1) -> list[tuple[str, Image.Image]]:
    files = sorted(p for p in PHOTO_DIR.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return [(p.name, Image.open(p).convert("RGB")) for p in files[::stride][:count]]


def timed(reader: Reader, pixels: np.ndarray, templates: np.ndarray) -> tuple[list, float]:
    start = time.process_time()
    hypotheses = reader(pixels, templates)
    return hypotheses, time.process_time() - start


def run_edits(photos, templates, strength: float, edits: list[str], reader: Reader, seed: int):
    """{edit: list of (right_top, right_any, z_top, null_z, cpu_s marked, cpu_s unmarked)}."""
    rows: dict[str, list] = {e: [] for e in edits}
    rng = np.random.default_rng(seed)
    for index, (name, image) in enumerate(photos):
        rgb = np.asarray(image)
        t = int(rng.integers(0, len(templates)))
        tile = (np.sqrt(1 - TEMPLATE_WEIGHT**2) * band_tile(rng) + TEMPLATE_WEIGHT * templates[t])
        marked = Image.fromarray(mark(rgb, tile, strength))
        period = period_for(*rgb.shape[:2])
        host = photos[(index + 1) % len(photos)][1]
        for edit in edits:
            edit_seed = int(rng.integers(0, 2**31))
            edited, placement = EDITS[edit](marked, np.random.default_rng(edit_seed), host)
            clean, _ = EDITS[edit](image, np.random.default_rng(edit_seed), host)
            found, cpu_marked = timed(reader, np.asarray(edited), templates)
            null, cpu_clean = timed(reader, np.asarray(clean), templates)
            rights = [geometry_right(h, placement, period, t) for h in found]
            rows[edit].append((
                bool(rights and rights[0]), any(rights),
                found[0].z if found else 0.0, null[0].z if null else 0.0, cpu_marked, cpu_clean,
            ))
        print(f"  {name}: {sum(rows[e][-1][0] for e in edits)}/{len(edits)} edits right", file=sys.stderr,
              flush=True)
    return rows


def two_megapixel_cpu(photos, templates, strength: float, reader: Reader, repeats: int = 3):
    """Median CPU seconds of reads at 1920 x 1080, marked and unmarked."""
    rng = np.random.default_rng(1)
    marked_s, clean_s = [], []
    for _, image in photos:
        rgb = np.asarray(image.resize((1920, 1080), Image.Resampling.BICUBIC))
        tile = np.sqrt(1 - TEMPLATE_WEIGHT**2) * band_tile(rng) + TEMPLATE_WEIGHT * templates[0]
        marked = mark(rgb, tile, strength)
        for _ in range(repeats):
            marked_s.append(timed(reader, marked, templates)[1])
            clean_s.append(timed(reader, rgb, templates)[1])
    return float(np.median(marked_s)), float(np.median(clean_s)), float(np.percentile(marked_s + clean_s, 90))


def print_table(rows, strength: float, count: int) -> None:
    print(f"\n### {strength} grey levels RMS, {count} photos\n")
    print("| edit | right (top) | right (any) | median z | null max z | CPU ms (median) |")
    print("|---|---|---|---|---|---|")
    for edit, results in rows.items():
        r = np.array(results, dtype=float)
        print(f"| {edit} | {int(r[:, 0].sum())}/{len(r)} | {int(r[:, 1].sum())}/{len(r)} | "
              f"{np.median(r[:, 2]):.1f} | {r[:, 3].max():.1f} | {1000 * np.median(r[:, 4:6]):.0f} |")
    all_rows = np.concatenate([np.array(v, dtype=float) for v in rows.values()])
    print(f"| all | {int(all_rows[:, 0].sum())}/{len(all_rows)} | {int(all_rows[:, 1].sum())}/{len(all_rows)}"
          f" | {np.median(all_rows[:, 2]):.1f} | {all_rows[:, 3].max():.1f} | "
          f"{1000 * np.median(all_rows[:, 4:6]):.0f} |")


def main(argv: list[str] | None = None, reader: Reader = synchronise) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=56, help="at most N development photos")
    parser.add_argument("--stride", type=int, default=1, help="every k-th photo (sorted by name)")
    parser.add_argument("--strengths", default="1.5,2.0", help="grey levels RMS, comma-separated")
    parser.add_argument("--edits", default=",".join(EDITS), help="comma-separated edit names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-photos", type=int, default=8, help="photos for the 2 MP timing")
    args = parser.parse_args(argv)
    edits = [e.strip() for e in args.edits.split(",")]
    unknown = [e for e in edits if e not in EDITS]
    if unknown:
        parser.error(f"unknown edits {unknown}; known: {list(EDITS)}")
    photos = load_photos(args.photos, args.stride)
    templates = sync_templates(KEY)
    reader(np.zeros((64, 64, 3), np.uint8), templates)  # warm-up (template bank)
    for strength in (float(s) for s in args.strengths.split(",")):
        rows = run_edits(photos, templates, strength, edits, reader, args.seed)
        print_table(rows, strength, len(photos))
    if args.timing_photos:
        marked_s, clean_s, p90 = two_megapixel_cpu(photos[: args.timing_photos], templates, 1.5, reader)
        print(f"\n2 MP (1920 x 1080) read CPU, {min(args.timing_photos, len(photos))} photos x 3: "
              f"marked {1000 * marked_s:.0f} ms, unmarked {1000 * clean_s:.0f} ms (median), "
              f"90th percentile {1000 * p90:.0f} ms")


if __name__ == "__main__":
    main()
