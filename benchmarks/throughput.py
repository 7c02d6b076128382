"""Throughput and memory of embedding, against the bare image codec and against peers.

    PYTHONPATH=. .venv/bin/python benchmarks/throughput.py            # full run (~10-15 min)
    PYTHONPATH=. .venv/bin/python benchmarks/throughput.py --quick    # 0.3 and 2 MP, no sweep
    PYTHONPATH=. .venv/bin/python benchmarks/throughput.py --sizes 12 --repeats 5 --json out.json

On photo-like JPEGs of 0.3, 2, 12 and 48 MP (generated from a bundled sample photo: upscaled
with Lanczos and given sensor-like grain, saved at quality 90 with 4:2:0 chroma, as cameras
do; cached under --workdir), a fresh process per photo size measures side by side, in turns
(so that no allocator state carries over from other sizes or from the peers, which run in
processes of their own), with the repeats' medians reported:

* codec: the bare codec, decode + re-encode at the output settings (quality 95, the source's
  chroma subsampling) + write: the floor any watermarking job pays;
* embed: Filigree's embedding as `Watermarker.embed` does it, in stages: decode, resize to the
  working size (every tile of the image's grid), inference (payload coding + embedder on every
  tile), residual upsample + add (into the output image), encode, write; `embed API` is one
  `Watermarker.embed` call for comparison;
* extract: decode, resize, inference (extractor + BCH decoding) of the marked photo (saved at
  the output settings), as `Watermarker.extract` reads: the image's own grid first, every grid
  only when that finds nothing; `extract_unmarked` (per-stage table) reads the unmarked photo,
  which takes every grid;
* extract (draft): the same on a JPEG decoded at reduced scale (libjpeg's DCT scaling), with
  its agreement with the full decode's bits;
* pipeline step: the pipeline's per-image work without Beam (decode into a DecodedImage, view,
  inference, mark, encode with metadata, write, then verify: decode the written file again,
  PSNR against the source, read-back view), the figure to size Dataflow jobs with;
* peers: invisible-watermark's `dwtDct` and `dwtDctSvd` (and `rivaGan` on request), when
  importable: decode + their encode (BGR array in, array out) + encode + write.

Times are wall clock and CPU time (user + system of the process: inference may use several
threads). CPU time is the steadier figure on a shared machine and the one to size clusters with.
Peak memory is measured in a fresh child process per path: the peak resident set size above the
child's resident size just before the call (after imports, model load and a warm-up), divided by
the decoded image's size (W x H x 3 bytes). With --pipeline, the Beam pipeline runs on the
DirectRunner over a folder of 2 MP photos for each batch size of --batch-sizes (its CPU time
includes the job's decoding child process), and once more for its peak memory on a 48 MP photo.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import io
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_state  # noqa: E402
from benchmarks.throughput_report import fmt_ms, print_report, print_stages, print_targets  # noqa: E402

SIZES_MP = (0.3, 2.0, 12.0, 48.0)
SEED_PHOTO = "opencv_aloeL.jpg"
PAYLOAD = "0123456789abc"
OUTPUT_QUALITY = 95
PEERS_DEFAULT = ("dwtDct", "dwtDctSvd")
PEER_TIME_BUDGET_S = 240.0  # skip a peer on larger photos once one call takes this long


# -- photos -------------------------------------------------------------------------------------

def photo_path(workdir: Path, megapixels: float, seed: int = 0) -> Path:
    return workdir / f"photo_{megapixels:g}mp_{seed}.jpg"


def make_photo(workdir: Path, megapixels: float, seed: int = 0) -> Path:
    """A 4:3 photo-like JPEG of about `megapixels` (cached): a bundled sample photo upscaled
    with Lanczos, plus grain (sigma 2.5 levels, per pixel, on all channels), quality 90, 4:2:0."""
    path = photo_path(workdir, megapixels, seed)
    if path.exists():
        return path
    from filigree.resources import bundled_samples_dir
    width = int(round(math.sqrt(megapixels * 1e6 * 4 / 3)))
    height = int(round(width * 3 / 4))
    with Image.open(os.path.join(bundled_samples_dir(), SEED_PHOTO)) as source:
        base = source.convert("RGB")
    if seed:
        base = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if seed % 2 else base
        base = base.rotate(seed * 7 % 360, resample=Image.Resampling.BILINEAR, expand=False)
    big = base.resize((width, height), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(seed)
    out = np.empty((height, width, 3), np.uint8)
    for start in range(0, height, 256):
        rows = np.asarray(big.crop((0, start, width, min(height, start + 256))), dtype=np.int16)
        rows += np.rint(rng.normal(0, 2.5, rows.shape)).astype(np.int16)
        out[start:start + rows.shape[0]] = np.clip(rows, 0, 255)
    del big
    tmp = path.with_suffix(".tmp")
    Image.fromarray(out).save(tmp, "JPEG", quality=90, subsampling="4:2:0")
    os.replace(tmp, path)
    return path


# -- timing -------------------------------------------------------------------------------------

class Stages:
    """Wall and CPU seconds per named stage of one run of a path."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - cpu


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _encode(image: Image.Image, subsampling: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=OUTPUT_QUALITY, subsampling=subsampling, optimize=False)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _subsampling(data: bytes) -> str:
    from PIL import JpegImagePlugin
    with Image.open(io.BytesIO(data)) as image:
        return {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(image), "4:2:0")


def _encode_and_write(t: "Stages", image, out: Path, sub: str) -> "Stages":
    """The last two timed stages every path shares: encode, then write."""
    with t("encode"):
        encoded = _encode(image, sub)
    with t("write"):
        _write(out, encoded)
    return t


def _timed_decode(data: bytes):
    """A fresh stage timer whose first stage, `decode`, has decoded `data`."""
    t = Stages()
    with t("decode"):
        image = _decode(data)
    return t, image


def run_codec(data: bytes, out: Path, sub: str) -> Stages:
    t, image = _timed_decode(data)
    return _encode_and_write(t, image, out, sub)


def run_embed(wm, data: bytes, out: Path, sub: str) -> Stages:
    """`Watermarker.embed`'s own steps, timed one by one (see Watermarker.embed)."""
    from filigree.watermarker import image_pixels, mark_pixels, pixels_to_image
    t, image = _timed_decode(data)
    with t("resize"):
        pixels, alpha, mode = image_pixels(image)
        views = _tiles(wm, pixels)
    with t("inference"):
        residual = _tiled_inference(wm, views)
    with t("upsample+add"):
        marked = pixels_to_image(mark_pixels(pixels, residual, wm.strength), alpha, mode)
    return _encode_and_write(t, marked, out, sub)


def _tiles(wm, pixels: np.ndarray) -> np.ndarray:
    """The working views the embedder gets: one per tile of the image's grid."""
    from filigree.tiling import tile_views
    return tile_views(pixels, wm.tiling.grid_for(*pixels.shape[:2]), wm.working_size)


def _tiled_inference(wm, views: np.ndarray) -> np.ndarray:
    """Payload coding + the embedder on every tile, laid out as the residual to upsample."""
    from filigree.tiling import tiled_residual
    bits = np.repeat(wm.codec.encode(PAYLOAD)[None], len(views), axis=0)
    return tiled_residual(wm.residuals(views, bits), wm.tiling)


def _read_views(wm, pixels: np.ndarray) -> np.ndarray:
    from filigree.tiling import read_views
    return read_views(pixels, wm.tiling, wm.working_size)


def run_embed_api(wm, data: bytes, out: Path, sub: str) -> Stages:
    t, image = _timed_decode(data)
    with t("embed"):
        marked = wm.embed(image, PAYLOAD)
    return _encode_and_write(t, marked, out, sub)


def run_pipeline_step(wm, data: bytes, out: Path) -> Stages:
    """The pipeline's per-image work without Beam (Prepare + MarkAndWrite with --verify clean):
    decode into a DecodedImage, view, embed, mark, encode with metadata, write, decode the
    written bytes again, PSNR against the source and the read-back view."""
    from filigree.imaging import decode, encode, metrics
    from filigree.watermarker import mark_pixels
    t = Stages()
    with t("decode"):
        decoded = decode.decode_image(data)
    with t("resize"):
        views = _tiles(wm, decoded.pixels)
    with t("inference"):
        residual = _tiled_inference(wm, views)
    with t("upsample+add"):
        marked = mark_pixels(decoded.pixels, residual, wm.strength)
    with t("encode"):
        encoded = encode.encode_image(decoded, marked, jpeg_quality=OUTPUT_QUALITY)
        del marked
    with t("write"):
        _write(out, encoded)
    with t("verify"):
        written = decode.decode_image(encoded)
        metrics.psnr(decoded.pixels, written.pixels, data_range=decoded.maxval)
        _tiles(wm, written.pixels)  # the grid it was marked with, as MarkAndWrite
    return t


def run_extract(wm, data: bytes, draft: bool = False) -> tuple[Stages, object, np.ndarray]:
    """(stages, the read, the mean logits of the image's own grid)."""
    from filigree.tiling import decode_tiles
    from filigree.watermarker import image_pixels
    t = Stages()
    with t("decode"):
        image = Image.open(io.BytesIO(data))
        if draft:
            image.draft("RGB", draft_size(image.size, wm.working_size))
        image.load()
    # As Watermarker.read_pixels: the image's own grid first, every grid only if that fails.
    with t("resize"):
        pixels = image_pixels(image)[0]
        views = _tiles(wm, pixels)
    with t("inference"):
        logits = wm.logits(views).mean(axis=0)
        _, result = wm.codec.decode_best(logits[None], expected=PAYLOAD, fpr=wm.fpr,
                                         tried=len(wm.tiling.read_grids))
    if not result.detected:
        with t("resize"):
            views = _read_views(wm, pixels)
        with t("inference"):
            result = decode_tiles(wm.codec, wm.logits(views), wm.tiling, expected=PAYLOAD, fpr=wm.fpr)
    return t, result, logits


def draft_size(size: tuple[int, int], working_size: int) -> tuple[int, int]:
    """The size to ask JPEG draft mode for: the largest DCT scaling (1/2 ... 1/8) that keeps
    the short side at least 4x the working size."""
    width, height = size
    scale = 1
    while scale < 8 and min(width, height) // (scale * 2) >= 4 * working_size:
        scale *= 2
    return math.ceil(width / scale), math.ceil(height / scale)


def run_peer(method: str, data: bytes, out: Path, sub: str) -> Stages:
    from imwatermark import WatermarkEncoder
    t, image = _timed_decode(data)
    with t("embed"):
        bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
        encoder = WatermarkEncoder()
        encoder.set_watermark("bytes", b"fili")
        marked = encoder.encode(bgr, method)
        result = Image.fromarray(np.ascontiguousarray(marked[..., ::-1]))
    with t("encode"):
        encoded = _encode(result, sub)
    with t("write"):
        _write(out, encoded)
    return t


def peers_available(requested: tuple[str, ...]) -> tuple[str, ...]:
    if not requested:
        return ()
    try:
        import imwatermark  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed: no peer columns
        return ()
    if "rivaGan" in requested:
        try:
            from imwatermark import WatermarkEncoder
            WatermarkEncoder.loadModel()
        except Exception:  # noqa: BLE001 - rivaGan needs onnxruntime and its models
            requested = tuple(p for p in requested if p != "rivaGan")
    return requested


# -- memory (child processes) -------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _trim() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def memory_child(kind: str, photo: str, workdir: str) -> dict:
    """Peak RSS above the pre-call RSS of one run of `kind` on `photo` (in this process)."""
    data = Path(photo).read_bytes()
    out = Path(workdir) / f"mem_{os.getpid()}.jpg"
    sub = _subsampling(data)
    wm = None
    if kind in ("embed", "extract", "mark_and_write"):
        from filigree import Watermarker
        wm = Watermarker.load()
    warm = make_photo(Path(workdir), 0.3)
    warm_data = warm.read_bytes()
    action = _memory_action(kind, wm, sub, out, workdir)
    action(warm_data)  # imports, TF graph set-up, first-call allocations
    _trim()
    before = _status_kb("VmRSS")
    reset = _reset_peak()
    action(data)
    peak = _status_kb("VmHWM") if reset else _maxrss_kb()
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
    with contextlib.suppress(OSError):
        out.unlink()
    return {"kind": kind, "peak_mb": (peak - before) / 1024, "baseline_mb": before / 1024,
            "decoded_mb": width * height * 3 / 2**20, "exact_reset": reset}


def _maxrss_kb() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _memory_action(kind: str, wm, sub: str, out: Path, workdir: str):
    if kind == "codec":
        return lambda data: run_codec(data, out, sub)
    if kind == "embed":
        return lambda data: run_embed_api(wm, data, out, sub)
    if kind == "extract":
        return lambda data: run_extract(wm, data)
    if kind == "mark_and_write":
        return lambda data: mark_and_write(wm, data)
    if kind == "pipeline":
        return lambda data: pipeline_once(data, workdir)
    raise ValueError(kind)


def mark_and_write(wm, data: bytes):
    """The pipeline's per-image work without Beam: decode, view, embed, mark, encode, decode
    the written bytes again, PSNR against the source, read-back view (pipeline.marking.MarkAndWrite)."""
    from filigree.imaging import decode, encode, metrics
    from filigree.watermarker import mark_pixels
    decoded = decode.decode_image(data)
    residual = _tiled_inference(wm, _tiles(wm, decoded.pixels))
    marked = mark_pixels(decoded.pixels, residual, wm.strength)
    encoded = encode.encode_image(decoded, marked)
    del marked
    written = decode.decode_image(encoded)
    metrics.psnr(decoded.pixels, written.pixels, data_range=decoded.maxval)
    return _tiles(wm, written.pixels)


def pipeline_once(data: bytes, workdir: str) -> None:
    from pipeline.run import main
    folder = Path(tempfile.mkdtemp(dir=workdir))
    try:
        (folder / "in").mkdir()
        (folder / "in" / "photo.jpg").write_bytes(data)
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["--input", str(folder / "in"), "--payload", "1", "--output", str(folder / "out"),
                         "--verify", "clean"])
        if code != 0:
            raise RuntimeError(f"pipeline exited with {code}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure_memory(kind: str, photo: Path, workdir: Path) -> dict | None:
    return run_child(["--child-memory", kind, "--child-photo", str(photo)], workdir, timeout=1800)


# -- pipeline sweep -------------------------------------------------------------------------------

def _cpu_with_children() -> float:
    """CPU seconds of this process plus its finished children (the job decodes in a child
    process, `pipeline.decoding`, which ends with the run)."""
    times = os.times()
    return time.process_time() + times.children_user + times.children_system


def pipeline_sweep(workdir: Path, batch_sizes: list[int], count: int, verify: str) -> list[dict]:
    """images/s of `python -m pipeline.run` on the DirectRunner (in this process)."""
    from pipeline.run import main
    from pipeline.summary import SAMPLE_SIZE
    folder = workdir / f"pipeline_{count}"
    folder.mkdir(exist_ok=True)
    for index in range(count):
        target = folder / f"p{index:03d}.jpg"
        if not target.exists():
            shutil.copyfile(make_photo(workdir, 2.0, seed=index + 1), target)
    # The fixed run has as many images as the report samples (`pipeline.summary.SAMPLE_SIZE`), so
    # that both runs pay for the same sampled thumbnails and their SSIMULACRA2 and the difference
    # is the per-image work alone.
    fixed_count = min(SAMPLE_SIZE + 2, count - 1)
    small = workdir / f"pipeline_fixed_{fixed_count}"
    small.mkdir(exist_ok=True)
    for index in range(fixed_count):
        if not (small / f"p{index:03d}.jpg").exists():
            shutil.copyfile(folder / f"p{index:03d}.jpg", small / f"p{index:03d}.jpg")

    def one(src: Path, batch: int) -> tuple[float, float]:
        out = Path(tempfile.mkdtemp(dir=workdir))
        wall, cpu = time.perf_counter(), _cpu_with_children()
        with contextlib.redirect_stdout(io.StringIO()):
            code = main(["--input", str(src), "--payload", "1", "--output", str(out), "--verify", verify,
                         "--batch_size", str(batch)])
        wall, cpu = time.perf_counter() - wall, _cpu_with_children() - cpu
        shutil.rmtree(out, ignore_errors=True)
        if code != 0:
            raise RuntimeError(f"pipeline exited with {code}")
        return wall, cpu

    one(small, max(batch_sizes))  # warm imports
    fixed_wall, fixed_cpu = one(small, max(batch_sizes))
    rows = []
    for batch in batch_sizes:
        wall, cpu = one(folder, batch)
        per_cpu = (cpu - fixed_cpu) / (count - fixed_count)
        rows.append({"batch_size": batch, "images": count, "verify": verify, "wall_s": wall, "cpu_s": cpu,
                     "images_per_s": count / wall, "cpu_s_per_image": per_cpu,
                     "steady_images_per_s_per_core": 1.0 / per_cpu if per_cpu > 0 else None,
                     "fixed_images": fixed_count, "fixed_wall_s": fixed_wall, "fixed_cpu_s": fixed_cpu})
        print(f"  batch {batch:>3}: {count / wall:5.2f} images/s wall ({wall:.1f} s for {count}), "
              f"{per_cpu * 1000:.0f} ms CPU/image after start-up ({fixed_cpu:.1f} s CPU for {fixed_count} images)",
              flush=True)
    return rows


# -- measurements per photo size ----------------------------------------------------------------------

def median_stages(runs: list[Stages]) -> dict:
    names = list(runs[0].wall)
    return {
        "wall": {n: statistics.median(r.wall[n] for r in runs) for n in names},
        "cpu": {n: statistics.median(r.cpu[n] for r in runs) for n in names},
        "wall_total": statistics.median(sum(r.wall.values()) for r in runs),
        "cpu_total": statistics.median(sum(r.cpu.values()) for r in runs),
        "runs": len(runs),
    }


def measure_size(wm, workdir: Path, megapixels: float, repeats: int) -> dict:
    """Codec, embed, extract (full and draft) and the pipeline step on one photo, side by side
    in turns (the order rotates each repeat); medians of `repeats` runs after a warm-up."""
    photo = make_photo(workdir, megapixels)
    data = photo.read_bytes()
    with Image.open(photo) as image:
        width, height = image.size
    sub = _subsampling(data)
    out = workdir / f"out_{os.getpid()}.jpg"
    marked_path = workdir / f"marked_{os.getpid()}.jpg"
    run_embed(wm, data, marked_path, sub)
    marked = marked_path.read_bytes()
    marked_path.unlink()
    paths = {
        "codec": lambda: run_codec(data, out, sub),
        "embed": lambda: run_embed(wm, data, out, sub),
        "embed_api": lambda: run_embed_api(wm, data, out, sub),
        "extract": lambda: run_extract(wm, marked)[0],
        "extract_draft": lambda: run_extract(wm, marked, draft=True)[0],
        "extract_unmarked": lambda: run_extract(wm, data)[0],
        "pipeline_step": lambda: run_pipeline_step(wm, data, out),
    }
    for fn in paths.values():  # warm-up, not counted
        fn()
    runs: dict[str, list[Stages]] = {name: [] for name in paths}
    order = list(paths)
    for repeat in range(repeats):
        for name in order[repeat % len(order):] + order[:repeat % len(order)]:
            gc.collect()
            runs[name].append(paths[name]())
    result = {"megapixels": megapixels, "width": width, "height": height, "jpeg_bytes": len(data),
              "bits_per_pixel": 8 * len(data) / (width * height), "subsampling": sub,
              "paths": {name: median_stages(r) for name, r in runs.items()}}
    result["draft_agreement"] = draft_agreement(wm, out, sub, data)
    with contextlib.suppress(OSError):
        out.unlink()
    return result


def measure_peer(workdir: Path, megapixels: float, peer: str, repeats: int) -> dict:
    photo = make_photo(workdir, megapixels)
    data = photo.read_bytes()
    sub = _subsampling(data)
    out = workdir / f"peer_{os.getpid()}.jpg"
    runs = []
    for _ in range(repeats):
        runs.append(run_peer(peer, data, out, sub))
        if sum(runs[-1].wall.values()) > PEER_TIME_BUDGET_S / 4:
            break
    with contextlib.suppress(OSError):
        out.unlink()
    return median_stages(runs)


def run_child(args: list[str], workdir: Path, timeout: float = 3600) -> dict | None:
    """Run this script with `args` in a fresh process (no memory or allocator state carried
    over from other measurements) and return the JSON it prints last."""
    command = [sys.executable, __file__, *args, "--workdir", str(workdir)]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    print(f"  child {' '.join(args)} failed: {done.stderr[-800:]}", file=sys.stderr)
    return None


def draft_agreement(wm, out: Path, sub: str, data: bytes) -> dict:
    """Bits and BER of extraction from the marked JPEG, full decode vs draft decode."""
    marked = out.with_name("marked_for_draft.jpg")
    run_embed(wm, data, marked, sub)
    written = marked.read_bytes()
    _, full, full_logits = run_extract(wm, written)
    _, draft, draft_logits = run_extract(wm, written, draft=True)
    with contextlib.suppress(OSError):
        marked.unlink()
    return {"bits_equal": float(np.mean((full_logits > 0) == (draft_logits > 0))),
            "ber_full": full.ber, "ber_draft": draft.ber,
            "match_full": full.match, "match_draft": draft.match}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(f"{s:g}" for s in SIZES_MP), help="megapixels, comma-separated")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per path (default: 7 below 5 MP, 5 below 20 MP, else 3)")
    parser.add_argument("--peers", default=",".join(PEERS_DEFAULT),
                        help="invisible-watermark methods (dwtDct, dwtDctSvd, rivaGan), '' for none")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                        help="measure peak memory in child processes")
    parser.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True,
                        help="DirectRunner batch-size sweep and 48 MP pipeline peak memory")
    parser.add_argument("--batch-sizes", default="1,4,16")
    parser.add_argument("--pipeline-images", type=int, default=48)
    parser.add_argument("--quick", action="store_true", help="0.3 and 2 MP, 3 repeats, no pipeline runs")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "filigree-throughput"))
    parser.add_argument("--json", help="write all measurements here")
    parser.add_argument("--child-memory", help=argparse.SUPPRESS)
    parser.add_argument("--child-photo", help=argparse.SUPPRESS)
    parser.add_argument("--child-time", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--child-peer", help=argparse.SUPPRESS)
    parser.add_argument("--in-process", action="store_true",
                        help="time every size in this process (default: a fresh process per size)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.child_memory:
        print(json.dumps(memory_child(args.child_memory, args.child_photo, str(workdir))))
        return 0
    if args.child_peer:
        print(json.dumps(measure_peer(workdir, args.child_time, args.child_peer, args.repeats or 1)))
        return 0
    if args.child_time:
        from filigree import Watermarker
        print(json.dumps(measure_size(Watermarker.load(), workdir, args.child_time, args.repeats or 3)))
        return 0
    if args.quick:
        args.sizes, args.repeats, args.pipeline = "0.3,2", args.repeats or 3, False
    sizes = [float(s) for s in args.sizes.split(",") if s]
    state = machine_state()
    print(f"machine: {state['cpus']} CPUs ({state['cpu_model']}), load average "
          f"{', '.join(f'{v:.1f}' for v in state['loadavg'])} at start; {state['versions']}", flush=True)
    for megapixels in sizes:
        make_photo(workdir, megapixels)
    from filigree import Watermarker
    wm = Watermarker.load()
    peers = peers_available(tuple(p for p in args.peers.split(",") if p))
    print(f"model {wm.bundle.card.name} {wm.bundle.card.version}, working size {wm.working_size}; "
          f"peers: {', '.join(peers) or 'none importable'}", flush=True)
    results, peer_skip = [], set()
    for megapixels in sizes:
        repeats = args.repeats or (7 if megapixels < 5 else 5 if megapixels < 20 else 3)
        started = time.perf_counter()
        if args.in_process:
            result = measure_size(wm, workdir, megapixels, repeats)
        else:
            result = run_child(["--child-time", f"{megapixels:g}", "--repeats", str(repeats)], workdir)
            if result is None:
                continue
        result["peers"] = {}
        for peer in peers:
            if peer in peer_skip:
                continue
            peer_repeats = 1 if megapixels >= 12 or peer == "rivaGan" else min(repeats, 3)
            stats = run_child(["--child-peer", peer, "--child-time", f"{megapixels:g}",
                               "--repeats", str(peer_repeats)], workdir)
            if stats:
                result["peers"][peer] = stats
                if stats["wall_total"] > PEER_TIME_BUDGET_S / 4:
                    peer_skip.add(peer)  # larger photos would take too long
        results.append(result)
        r = result["paths"]
        print(f"{megapixels:g} MP: codec {fmt_ms(r['codec']['cpu_total'])} ms CPU, embed "
              f"{fmt_ms(r['embed']['cpu_total'])}, extract {fmt_ms(r['extract']['cpu_total'])} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    memory: dict = {}
    if args.memory:
        kinds = ["codec", "embed", "extract", "mark_and_write"]
        for megapixels in sizes:
            for kind in kinds:
                m = measure_memory(kind, make_photo(workdir, megapixels), workdir)
                if m:
                    memory[(megapixels, kind)] = m
                    print(f"  peak {kind:>14} {megapixels:>4g} MP: {m['peak_mb']:7.0f} MB "
                          f"({m['peak_mb'] / m['decoded_mb']:.2f}x decoded)", flush=True)
    sweep = []
    if args.pipeline:
        batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
        print("pipeline (DirectRunner, 2 MP photos, --verify clean):", flush=True)
        sweep = pipeline_sweep(workdir, batch_sizes, args.pipeline_images, "clean")
        if args.memory:
            for megapixels in (0.3, max(sizes)):
                m = measure_memory("pipeline", make_photo(workdir, megapixels), workdir)
                if m:
                    memory[(megapixels, "pipeline")] = m
                    print(f"  peak pipeline {megapixels:g} MP: {m['peak_mb']:.0f} MB above the "
                          f"process before the run ({m['peak_mb'] / m['decoded_mb']:.2f}x decoded)", flush=True)
    state_end = os.getloadavg()
    print(f"\nload average at end: {', '.join(f'{v:.1f}' for v in state_end)}")
    print_report(results, memory, "cpu")
    print_report(results, memory, "wall")
    print_stages(results)
    print_targets(results, memory, sweep)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "machine": state, "loadavg_end": state_end, "results": results, "pipeline": sweep,
            "memory": [{"megapixels": k[0], **v} for k, v in memory.items()]}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
