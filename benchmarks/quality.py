"""Quality benchmark: robustness, image quality, speed and false positives at native resolution.

    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --images DIR [--model DIR] [--key K]
        [--peers dwtDct,dwtDctSvd,rivaGan] [--attacks SPECS] [--out DIR] [--limit N] [--seed S]
        [--reframe]
        [--docs docs/quality.md [--docs-block NAME]]

For every photo in DIR (sorted by name; EXIF orientation applied, converted to 8-bit RGB):

1. Filigree: a random payload of the model's full data-bit capacity (seeded by ``--seed`` and
   the photo's index) is embedded with `Watermarker.embed` at the photo's own resolution; the
   marked image is saved as PNG in memory and decoded again (lossless), then every attack of the
   suite (`filigree.attacks` specs; ``none`` is the clean PNG) is applied to it and read back
   twice with `Watermarker.extract`: blind (no expected payload: BCH decode + blind p-value) and
   informed (expected payload given: raw bit error rate, binomial p-value). Per attack:
   * bit accuracy = 1 - BER of the raw (pre-ECC) bits against the expected raw bits;
   * exact = the ECC-decoded payload equals the embedded one;
   * detected = the blind read's ``detected`` (BCH decodes and p-value <= target FPR);
   * detected (informed) = the informed read's ``detected`` (binomial p-value <= target FPR).
   With ``--reframe``, a read that finds nothing searches for a crop of the marked frame
   (`filigree.reframe`; the p-value is multiplied by the number of framings tried).
2. Peers (invisible-watermark 0.2.0, optional): the same photos with a random 32-bit payload
   each, through ``WatermarkEncoder.encode(bgr, method)``; same PNG round trip and attacks;
   ``WatermarkDecoder('bits', 32).decode``. No ECC, so exact = all 32 bits right; detected = at
   least ``PEER_TAU`` of 32 bits right, the smallest threshold with P[Binom(32, 1/2) >= tau] <=
   the target FPR (tau = 30 at 1e-6). The library refuses images under 256x256 pixels in area
   (r*c < 65536); such a read counts as refused: bit accuracy 0.5 (a coin flip), not exact, not
   detected.
3. False positives: every unmarked original and each of its attacked versions (same attacks,
   same seeds) is read blind with the same key; reported are the share detected (expected 0)
   and the smallest p-value seen. The informed read against the payload the photo was given, and
   the peers' decoders against theirs, are reported alongside.

PSNR and SSIM (`filigree.imaging.metrics.psnr` / `ssim`: 8-bit RGB PSNR, SSIM of BT.601 luma) compare
each marked image with its original. Visibility (benchmarks/visibility.py): PSNR and SSIMULACRA2
(`filigree.imaging.metrics.ssimulacra2`) of the 8-bit marked output in two views, the whole image
at long side 1600 px ("screen") and the flattest 512x512 crop at native resolution, for every
method, plus a JPEG q90 re-save of the same crop as a reference; the tile-seam ratio of Filigree's
residual on a smooth 1024x768 gradient (``--seam-payloads`` payloads; ``--seam-period P`` measures
on a P-pixel grid instead of the bundle's tile borders); with ``--crops-dir DIR``, the flattest crop
of each photo and method as original | marked | residual x10 PNGs (re-marked for that). Times are wall-clock seconds of the embed / extract call
per megapixel of the photo (the extract time is the blind read of the clean PNG); the first
call of each method is run once beforehand on a small image so graph tracing and model loading
are not counted.

``--peers NAME@K/N`` runs that peer only on the photos whose index mod N is K (rivaGan takes tens
of seconds per megapixel and call on a busy 2-core machine); the tables then add Filigree on the
same photos. Finished (method, photo) records are cached in OUT/cache under a hash of everything
they depend on, so runs resume, and ``--shard K/N`` splits a run over processes; ``--retime``
re-measures every method's times back to back in the reporting run.

Writes OUT/quality.md (also printed), OUT/quality.json (every number, per photo and per
attack, plus the attack parameters, photo list, model card and command line) and
OUT/quality.png (bit accuracy per attack, Filigree vs peers). With ``--docs FILE`` the Markdown
replaces the block between ``<!-- quality:NAME:begin -->`` and ``<!-- quality:NAME:end -->`` in
FILE (NAME from ``--docs-block``, default ``heldout``); for the ``heldout`` block the figure is
also copied beside FILE as quality.png and linked.

The methods run per photo are in benchmarks/quality_methods.py, the tables, figure and files in
benchmarks/quality_report.py; helpers shared with the other benchmarks in benchmarks/common.py.
"""


from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/quality.py` without PYTHONPATH
    sys.path.insert(0, str(REPO))

from benchmarks.common import loadavg, timed  # noqa: E402
from benchmarks.quality_methods import (FILIGREE, PEER_BITS, TARGET_FPR, FiligreeMethod,  # noqa: E402
                                        bits_to_int, filigree_marked, load_peers, peer_marked,
                                        peer_tau, random_bits, retime, run_filigree, run_peer)
from benchmarks.quality_report import attack_record, summarise, write_outputs  # noqa: E402
from benchmarks.visibility import (Borders, flattest_crop_box, jpeg_reference, period_borders,  # noqa: E402
                                   seam_record, side_by_side, tile_borders)
from filigree.attacks import DEFAULT_SUITE_SPEC, parse_suite  # noqa: E402
from filigree.payload import resolve_key  # noqa: E402

DEFAULT_ATTACKS = "none," + DEFAULT_SUITE_SPEC
DEFAULT_PEERS = "dwtDct,dwtDctSvd,rivaGan"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


def list_photos(folder: str | os.PathLike) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise SystemExit(f"--images {folder}: not a folder")
    photos = sorted(p for p in folder.iterdir()
                    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not photos:
        raise SystemExit(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return photos


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


CACHE_VERSION = 2  # 2: records carry the visibility views


class RecordCache:
    """One JSON file per (method, photo) under DIR, named by a hash of everything the record
    depends on; None disables caching. Writes are atomic (rename)."""

    def __init__(self, folder: Path | None, context: dict[str, Any]):
        self.folder = folder
        self.context = context

    def _path(self, method: str, photo: dict[str, Any], index: int) -> Path | None:
        if self.folder is None:
            return None
        context = dict(self.context)
        if method != FILIGREE:
            # A peer's record does not depend on the Filigree model, key or search, only on its payload,
            # which is drawn after the Filigree payload (so on the model's data bits).
            context["model"] = context["model"][2]
            context.pop("key", None)
            context.pop("reframe", None)
        ident = json.dumps({"v": CACHE_VERSION, "method": method, "index": index,
                            "photo": photo["sha256"], **context}, sort_keys=True)
        digest = hashlib.sha256(ident.encode()).hexdigest()[:24]
        return self.folder / method / f"{index:03d}-{digest}.json"

    def get(self, method: str, photo: dict[str, Any], index: int) -> dict[str, Any] | None:
        path = self._path(method, photo, index)
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def put(self, method: str, photo: dict[str, Any], index: int, record: dict[str, Any]) -> None:
        path = self._path(method, photo, index)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(record, allow_nan=False), encoding="utf-8")
        os.replace(temp, path)


SEAM_STREAM = 7_000_001  # seeds the seam gradient's payloads apart from the photos' ones


def layout_borders(filigree: FiligreeMethod, period: int | None) -> Callable[[int, int], Borders | None]:
    """Borders of Filigree's layout on an image of a given size: the tile grid the bundle marks
    it with (None for a single view), or a ``period`` grid when given."""
    wm = filigree.wm

    def borders(height: int, width: int) -> Borders | None:
        if period is not None:
            return period_borders(height, width, period)
        grid = wm.tiling.grid_for(height, width, wm.max_grid)
        return tile_borders(height, width, grid, wm.working_size) if grid > 1 else None
    return borders


def filigree_seams(filigree: FiligreeMethod, seed: int, payloads: int,
                   period: int | None) -> dict[str, Any]:
    """`seam_record` of Filigree on the smooth gradient, one random payload per mark."""
    def marker(value: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda px: np.asarray(filigree_marked(filigree, Image.fromarray(px), value)[0])

    values = [bits_to_int(random_bits(np.random.default_rng([seed, SEAM_STREAM, k]),
                                      filigree.data_bits)) for k in range(max(1, payloads))]
    return seam_record([marker(v) for v in values], layout_borders(filigree, period))


def write_crops(folder: Path, index: int, path: Path, original: np.ndarray,
                marked: dict[str, np.ndarray]) -> None:
    """The photo's flattest crop per method as ``NN-<photo>-<method>.png`` (original | marked |
    residual x10)."""
    folder.mkdir(parents=True, exist_ok=True)
    box = flattest_crop_box(original)
    for name, pixels in marked.items():
        side_by_side(box.of(original), box.of(pixels)).save(
            folder / f"{index:02d}-{path.stem}-{name}.png", optimize=True)


def _key_tag(key: bytes | None) -> str:
    """A one-way tag telling cached records of different keys apart (never the key itself)."""
    if key is None:
        return "default"
    import hmac

    return hmac.new(key, b"filigree/quality-bench/cache", hashlib.sha256).hexdigest()[:16]


def redact(argv: list[str]) -> list[str]:
    """`argv` with the value of --key replaced, so key material never reaches the report."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("<key>")
            hide = False
        elif arg == "--key":
            out.append(arg)
            hide = True
        elif arg.startswith("--key="):
            out.append("--key=<key>")
        else:
            out.append(arg)
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Filigree quality benchmark: robustness, PSNR/SSIM, speed, false positives, "
                    "against invisible-watermark peers.")
    parser.add_argument("--images", help="folder of photos (not recursive)")
    parser.add_argument("--from-json", default=None,
                        help="re-render the Markdown, figure and docs block from an earlier "
                             "quality.json instead of running")
    parser.add_argument("--model", default=None, help="model bundle folder (default: bundled)")
    parser.add_argument("--key", default=None,
                        help="watermark key (default: $FILIGREE_KEY, else the public default)")
    parser.add_argument("--peers", default=DEFAULT_PEERS,
                        help="comma-separated invisible-watermark methods, or 'none' "
                             "(default: %(default)s)")
    parser.add_argument("--attacks", default=DEFAULT_ATTACKS,
                        help="comma-separated filigree.attacks specs; 'none' is the clean PNG "
                             "(default: %(default)s)")
    parser.add_argument("--out", default="out/quality", help="output folder (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=None, help="first N photos only")
    parser.add_argument("--seed", type=int, default=0, help="payload and noise seed (default 0)")
    parser.add_argument("--fpr", type=float, default=TARGET_FPR,
                        help="target false-positive rate (default: %(default)g)")
    parser.add_argument("--peer-unmarked", choices=("clean", "all"), default="clean",
                        help="peers' false-positive reads: the clean unmarked originals only "
                             "(default; rivaGan is slow on CPU) or every attacked version too")
    parser.add_argument("--cache", default=None,
                        help="per-photo record cache folder (default: OUT/cache); a rerun with "
                             "the same settings reuses finished photos")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument("--reframe", action="store_true",
                        help="Filigree reads that find no mark search for a crop of the marked "
                             "frame (filigree/reframe.py; its p-value pays for every framing tried)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="only photos with index %% N == K, into the cache, no report: run "
                             "N shards in parallel, then once without --shard to write the report")
    parser.add_argument("--retime", action="store_true",
                        help="time one embed and one clean read per method and photo again in "
                             "this run (all methods back to back, under the same load), "
                             "replacing the times of cached records")
    parser.add_argument("--seam-payloads", type=int, default=8,
                        help="payloads the seam gradient is marked with (default: %(default)s)")
    parser.add_argument("--seam-period", type=int, default=None,
                        help="measure seams on a grid of this period in pixels instead of the "
                             "bundle's tile borders (for a periodic layout)")
    parser.add_argument("--crops-dir", default=None,
                        help="write each photo's flattest 512x512 crop per method as "
                             "original | marked | residual x10 PNGs here")
    parser.add_argument("--docs", default=None,
                        help="Markdown file whose quality block gets the results and figure")
    parser.add_argument("--docs-block", default="heldout",
                        help="name of the block in --docs (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        return write_outputs(report, Path(args.out), args.docs, args.docs_block)
    if not args.images:
        parser.error("--images is required (or --from-json)")
    if not 0 < args.fpr <= 1:
        raise SystemExit("--fpr must be in (0, 1]")
    tau = peer_tau(PEER_BITS, args.fpr)
    attacks = parse_suite(args.attacks)
    if not attacks:
        raise SystemExit("--attacks: empty suite")
    photos = list_photos(args.images)
    if args.limit is not None:
        photos = photos[:max(0, args.limit)]
    peer_specs = [] if args.peers.strip().lower() in ("", "none") else [
        p.strip() for p in args.peers.split(",") if p.strip()]
    peer_names, subsets = [], {}
    for spec in peer_specs:
        name, _, part = spec.partition("@")
        peer_names.append(name)
        if part:
            try:
                k, n = (int(x) for x in part.split("/"))
                if not 0 <= k < n:
                    raise ValueError
            except ValueError:
                parser.error(f"--peers {spec}: the subset must be @K/N with 0 <= K < N")
            subsets[name] = (k, n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    shard = None
    if args.shard:
        try:
            k, n = (int(x) for x in args.shard.split("/"))
            if not 0 <= k < n:
                raise ValueError
        except ValueError:
            parser.error("--shard must be K/N with 0 <= K < N")
        shard = (k, n)

    key = resolve_key(args.key)
    filigree = FiligreeMethod(args.model, key, args.fpr, reframe=args.reframe)
    peers, peers_note = load_peers(peer_names, tau)
    card = filigree.card()
    cache = RecordCache(
        None if args.no_cache else Path(args.cache) if args.cache else out / "cache",
        {"seed": args.seed, "attacks": [a.name for a in attacks], "fpr": args.fpr, "tau": tau,
         "model": [card["name"], card["created"], card["data_bits"], float(card["strength"])],
         "key": _key_tag(key), "peer_unmarked": args.peer_unmarked, "reframe": args.reframe})
    per_method: dict[str, list[dict[str, Any]]] = {FILIGREE: []}
    for peer in peers:
        per_method[peer.name] = []
    photo_records = []
    started = time.perf_counter()
    load_start = loadavg()
    for index, path in enumerate(photos):
        if shard is not None and index % shard[1] != shard[0]:
            continue
        image = load_rgb(path)
        photo = {"file": path.name, "width": image.width, "height": image.height,
                 "megapixels": image.width * image.height / 1e6,
                 "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        photo["jpeg_reference"] = jpeg_reference(np.asarray(image))
        photo_records.append(photo)
        rng = np.random.default_rng([args.seed, index])
        record = cache.get(FILIGREE, photo, index)
        if record is None:
            record, elapsed = timed(
                lambda: run_filigree(filigree, index, image, attacks, args.seed, rng))
            record["file"], record["elapsed_s"] = path.name, elapsed
            record["loadavg"] = loadavg()
            cache.put(FILIGREE, photo, index, record)
        per_method[FILIGREE].append(record)
        rng = np.random.default_rng([args.seed, index])
        random_bits(rng, filigree.data_bits)  # the Filigree payload's draw
        peer_bits = random_bits(rng, PEER_BITS)
        marked_peers = []
        for peer in peers:
            subset = subsets.get(peer.name)
            if subset is not None and index % subset[1] != subset[0]:
                continue
            peer_record = cache.get(peer.name, photo, index)
            if peer_record is None:
                peer_record, elapsed = timed(lambda: run_peer(
                    peer, index, image, attacks, args.seed, peer_bits,
                    unmarked_all=args.peer_unmarked == "all"))
                peer_record["file"], peer_record["elapsed_s"] = path.name, elapsed
                peer_record["loadavg"] = loadavg()
                cache.put(peer.name, photo, index, peer_record)
            per_method[peer.name].append(peer_record)
            if not peer_record.get("refused_embed"):
                marked_peers.append(peer)
        if args.crops_dir:
            original = np.asarray(image)
            value = int(per_method[FILIGREE][-1]["payload"], 16)
            marked = {FILIGREE: np.asarray(filigree_marked(filigree, image, value)[0])}
            for peer in marked_peers:
                marked[peer.name] = np.asarray(peer_marked(peer, original, peer_bits)[0])
            write_crops(Path(args.crops_dir), index, path, original, marked)
        if args.retime:
            retime(image, filigree, per_method[FILIGREE][-1], peers, per_method, path.name,
                   peer_bits)
        print(f"[{index + 1}/{len(photos)}] {path.name} {image.width}x{image.height} "
              f"({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    if shard is not None:
        print(f"shard {args.shard}: {len(photo_records)} photos cached in {cache.folder}; run "
              "again without --shard for the report", file=sys.stderr)
        return 0

    try:
        from importlib.metadata import version
        peer_version = version("invisible-watermark") if peers else None
    except Exception:  # noqa: BLE001
        peer_version = None
    report: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "PYTHONPATH=. .venv/bin/python benchmarks/quality.py "
                   + " ".join(shlex.quote(a) for a in redact(argv)),
        "argv": redact(argv),
        "images": args.images,
        "seed": args.seed,
        "key": "default (public)" if key is None else "custom (not recorded)",
        "target_fpr": args.fpr,
        "peer_bits": PEER_BITS,
        "peer_tau": tau,
        "peer_version": peer_version,
        "peers_requested": peer_specs,
        "peer_subsets": {name: f"{k}/{n}" for name, (k, n) in subsets.items()},
        "peers_note": peers_note,
        "model": {"dir": args.model or "filigree/data/model (bundled)", **card},
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "loadavg_start": load_start,
                 "loadavg_end": loadavg()},
        "peer_unmarked": args.peer_unmarked,
        "retimed": bool(args.retime),
        "wall_time_s": time.perf_counter() - started,
        "compute_s": sum(r.get("elapsed_s", 0.0) for rs in per_method.values() for r in rs),
        "photos": photo_records,
        "seams": filigree_seams(filigree, args.seed, args.seam_payloads, args.seam_period),
        "attacks": [attack_record(a) for a in attacks],
        "methods": {},
    }
    for name, records in per_method.items():
        report["methods"][name] = {
            "summary": summarise(records, attacks, filigree=name == FILIGREE),
            "per_photo": records,
        }
    # Filigree on exactly the photos of each peer that ran on a subset, for a like-for-like look.
    report["methods"][FILIGREE]["on_subsets"] = {}
    for name in subsets:
        if name in per_method:
            files = {r["file"] for r in per_method[name]}
            chosen = [r for r in per_method[FILIGREE] if r["file"] in files]
            report["methods"][FILIGREE]["on_subsets"][name] = summarise(
                chosen, attacks, filigree=True)

    return write_outputs(report, out, args.docs, args.docs_block)


if __name__ == "__main__":
    sys.exit(main())
