"""Quality benchmark: robustness, image quality, speed and false positives at native resolution.

    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --images DIR [--model DIR] [--key K]
        [--peers dwtDct,dwtDctSvd,rivaGan] [--attacks SPECS] [--out DIR] [--limit N] [--seed S]
        [--reframe]
        [--docs docs/quality.md [--docs-block NAME]]

For every photo in DIR (sorted by name; EXIF orientation applied, converted to 8-bit RGB):

1. Filigree: a random payload of the model's full data-bit capacity (seeded by ``--seed`` and
   the photo's index) is embedded with `Watermarker.embed` at the photo's own resolution; the
   marked image is saved as PNG in memory and decoded again (lossless), then every attack of the
   suite (`pipeline.attacks` specs; ``none`` is the clean PNG) is applied to it and read back
   twice with `Watermarker.extract`: blind (no expected payload: BCH decode + blind p-value) and
   informed (expected payload given: raw bit error rate, binomial p-value). Per attack:
   * bit accuracy = 1 - BER of the raw (pre-ECC) bits against the expected raw bits;
   * exact = the ECC-decoded payload equals the embedded one;
   * detected = the blind read's ``detected`` (BCH decodes and p-value <= target FPR);
   * detected (informed) = the informed read's ``detected`` (binomial p-value <= target FPR).
   With ``--reframe``, a read that finds nothing searches for a crop of the marked frame
   (`pipeline.reframe`; the p-value is multiplied by the number of framings tried).
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
each marked image with its original. Times are wall-clock seconds of the embed / extract call
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
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python benchmarks/quality.py` without PYTHONPATH
    sys.path.insert(0, str(REPO))

from filigree.attacks import DEFAULT_SUITE_SPEC, Attack, parse_suite  # noqa: E402
from filigree.imaging.metrics import psnr, ssim  # noqa: E402
from filigree.payload import binomial_tail, format_payload, resolve_key  # noqa: E402

DEFAULT_ATTACKS = "none," + DEFAULT_SUITE_SPEC
DEFAULT_PEERS = "dwtDct,dwtDctSvd,rivaGan"
PEER_METHODS = ("dwtDct", "dwtDctSvd", "rivaGan")
PEER_BITS = 32
PEER_MIN_AREA = 256 * 256  # invisible-watermark refuses r*c below this
TARGET_FPR = 1e-6
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
FILIGREE = "Filigree"

# What each attack kind does, for the docs and the JSON (pipeline/attacks.py is the code).
ATTACK_DESCRIPTIONS = {
    "none": "clean: the marked image after a lossless PNG round trip, nothing else",
    "jpeg": "JPEG round trip at quality Q (Pillow/libjpeg defaults: 4:2:0 chroma subsampling, "
            "standard IJG tables scaled by Q)",
    "resize": "bicubic resize of both sides by S (Pillow, antialiased when shrinking); NOT "
              "resized back, the extractor sees the smaller image",
    "crop": "centre crop keeping fraction F of the area (each side times sqrt(F))",
    "noise": "additive Gaussian noise, standard deviation S on the [0, 1] scale, per channel and "
             "pixel, seeded, clipped and rounded to 8 bits",
    "blur": "Gaussian blur with standard deviation S pixels (Pillow ImageFilter.GaussianBlur)",
    "brightness": "Pillow ImageEnhance.Brightness(F): every channel multiplied by F, clipped",
    "contrast": "Pillow ImageEnhance.Contrast(F): deviations from the image's mean grey level "
                "multiplied by F, clipped",
    "saturation": "Pillow ImageEnhance.Color(F): deviations from the pixel's grey level "
                  "multiplied by F, clipped",
    "combo": "the listed attacks applied in order",
}


# ---------------------------------------------------------------------------------------------
# small helpers


def peer_tau(bits: int = PEER_BITS, fpr: float = TARGET_FPR) -> int:
    """Smallest number of matching bits tau with P[Binom(bits, 1/2) >= tau] <= fpr."""
    for tau in range(bits + 1):
        if binomial_tail(bits, tau) <= fpr:
            return tau
    return bits + 1


PEER_TAU = peer_tau()


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


def png_roundtrip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return decoded.convert("RGB")


def attack_seed(seed: int, photo: int, attack: int) -> int:
    return int(np.random.SeedSequence([seed, photo, attack]).generate_state(1)[0])


def attack_label(name: str) -> str:
    """Short human label for an attack's canonical spec."""
    if name == "none":
        return "clean PNG"
    if name.startswith("combo:"):
        return "combo " + " → ".join(attack_label(part) for part in name[6:].split("+"))
    kind, _, param = name.partition(":")
    value = float(param) if param else 0.0
    if kind == "jpeg":
        return f"JPEG q{param}"
    if kind == "resize":
        return f"resize {value * 100:g}%"
    if kind == "crop":
        return f"crop {value * 100:g}% area"
    if kind == "noise":
        return f"noise σ={param}"
    if kind == "blur":
        return f"blur σ={param}px"
    if kind in ("brightness", "contrast", "saturation"):
        return f"{kind} ×{param}"
    return name


def short_label(name: str) -> str:
    """ASCII label for the figure (Pillow's default font has no σ or ×)."""
    if name.startswith("combo:"):
        return "combo"
    label = attack_label(name).replace(" area", "")
    return label.replace("σ=", "").replace("×", "x")


def attack_record(attack: Attack) -> dict[str, Any]:
    stages = attack.name[6:].split("+") if attack.name.startswith("combo:") else [attack.name]
    parsed = []
    for stage in stages:
        kind, _, param = stage.partition(":")
        parsed.append({"kind": kind, "param": float(param) if param else None,
                       "description": ATTACK_DESCRIPTIONS.get(kind, "")})
    return {"spec": attack.name, "label": attack_label(attack.name), "stages": parsed}


def _median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(statistics.median(values)) if values else None


def _mean(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return float(sum(values) / len(values)) if values else None


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _finite(value: float) -> float | None:
    """JSON-safe float (inf PSNR of identical images becomes None)."""
    return float(value) if math.isfinite(value) else None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _random_bits(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 2, size=count, dtype=np.uint8)


def _bits_to_int(bits: np.ndarray) -> int:
    return int("".join(str(int(b)) for b in bits), 2)


# ---------------------------------------------------------------------------------------------
# methods


class FiligreeMethod:
    name = FILIGREE

    def __init__(self, model_dir: str | None, key: bytes | None, fpr: float, reframe: bool = False):
        from filigree import Watermarker
        from filigree.reframe import SearchConfig

        self.wm = Watermarker.load(model_dir, key, fpr=fpr)
        self.fpr = fpr
        self.reframe = SearchConfig() if reframe else None
        probe = Image.new("RGB", (96, 80), (128, 120, 110))
        self.wm.extract(self.wm.embed(probe, 0))  # warm-up: tracing is not timed

    @property
    def data_bits(self) -> int:
        return self.wm.data_bits

    def card(self) -> dict[str, Any]:
        raw = self.wm.bundle.card.raw
        training = raw.get("training", {})
        return {
            "name": raw.get("name"), "created": raw.get("created"), "version": raw.get("version"),
            "preset": raw.get("preset"), "working_size": raw.get("working_size"),
            "color_mode": raw.get("color_mode"), "payload_bits": raw.get("payload_bits"),
            "data_bits": self.wm.data_bits, "ecc": raw.get("ecc"),
            "strength": self.wm.strength, "target_psnr": raw.get("target_psnr"),
            "metrics": raw.get("metrics"), "training_steps": training.get("steps"),
            "training_wall_time_s": training.get("wall_time_s"),
            "training_hardware": training.get("hardware"),
        }


class PeerMethod:
    """invisible-watermark's dwtDct / dwtDctSvd / rivaGan with 32-bit payloads."""

    def __init__(self, method: str, module: Any, tau: int = PEER_TAU):
        self.name = method
        self.tau = tau
        self.method = method
        self.module = module
        if method == "rivaGan":
            module.WatermarkEncoder.loadModel()
            module.WatermarkDecoder.loadModel()
        probe = np.full((272, 272, 3), 128, dtype=np.uint8)
        bits = np.zeros(PEER_BITS, dtype=np.uint8)
        self.read(self.embed(probe, bits))  # warm-up (ONNX session, torch import)

    def embed(self, rgb: np.ndarray, bits: np.ndarray) -> np.ndarray:
        encoder = self.module.WatermarkEncoder()
        encoder.set_watermark("bits", [int(b) for b in bits])
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        return np.ascontiguousarray(encoder.encode(bgr, self.method)[..., ::-1])

    def read(self, rgb: np.ndarray) -> np.ndarray | None:
        """32 bits, or None when the library refuses the image (under 256x256 in area)."""
        if rgb.shape[0] * rgb.shape[1] < PEER_MIN_AREA:
            return None
        decoder = self.module.WatermarkDecoder("bits", PEER_BITS)
        bgr = np.ascontiguousarray(rgb[..., ::-1])
        return np.asarray(decoder.decode(bgr, self.method), dtype=np.uint8).reshape(-1)


def load_peers(names: list[str], tau: int = PEER_TAU) -> tuple[list[PeerMethod], str | None]:
    if not names:
        return [], None
    unknown = [n for n in names if n not in PEER_METHODS]
    if unknown:
        raise SystemExit(f"--peers: unknown {', '.join(unknown)} (known: {', '.join(PEER_METHODS)})")
    try:
        import imwatermark  # noqa: F401
        from imwatermark import watermark as module
    except ImportError as exc:
        return [], (f"peers skipped: invisible-watermark is not importable ({exc}); install them "
                    "with `make bench-deps`")
    peers, notes = [], []
    for name in names:
        try:
            peers.append(PeerMethod(name, module, tau))
        except Exception as exc:  # noqa: BLE001 - e.g. onnxruntime missing for rivaGan
            notes.append(f"{name} skipped: {type(exc).__name__}: {exc}")
    return peers, "; ".join(notes) or None


# ---------------------------------------------------------------------------------------------
# the run


def run_filigree(method: FiligreeMethod, index: int, image: Image.Image, attacks: Sequence[Attack],
                 seed: int, rng: np.random.Generator) -> dict[str, Any]:
    wm = method.wm
    value = _bits_to_int(_random_bits(rng, method.data_bits))
    expected = format_payload(value, method.data_bits)
    megapixels = image.width * image.height / 1e6
    marked, embed_s = _timed(lambda: wm.embed(image, value))
    marked = png_roundtrip(marked)
    original = np.asarray(image)
    marked_px = np.asarray(marked)
    record: dict[str, Any] = {
        "payload": expected, "embed_s": embed_s, "embed_s_per_mp": embed_s / megapixels,
        "psnr": _finite(psnr(original, marked_px)), "ssim": ssim(original, marked_px),
        "attacks": {}, "unmarked": {},
    }
    for j, attack in enumerate(attacks):
        attacked = attack(marked, seed=attack_seed(seed, index, j))
        blind, extract_s = _timed(lambda: wm.extract(attacked, reframe=method.reframe))
        informed = wm.extract(attacked, expected=value, reframe=method.reframe)
        record["attacks"][attack.name] = {
            "size": list(attacked.size),
            "bit_acc": 1.0 - float(informed.ber), "exact": blind.decoded == expected,
            "detected": bool(blind.detected), "p_value": blind.p_value,
            "corrected": blind.corrected, "decoded": blind.decoded,
            "detected_informed": bool(informed.detected), "p_value_informed": informed.p_value,
            "framing": blind.framing or informed.framing, "extract_s": extract_s,
        }
        if attack.name == "none":
            record["extract_s"] = extract_s
            record["extract_s_per_mp"] = extract_s / megapixels
        unmarked = attack(image, seed=attack_seed(seed, index, j))
        blind_u = wm.extract(unmarked, reframe=method.reframe)
        informed_u = wm.extract(unmarked, expected=value, reframe=method.reframe)
        record["unmarked"][attack.name] = {
            "detected": bool(blind_u.detected), "p_value": blind_u.p_value,
            "decoded": blind_u.decoded, "bit_acc": 1.0 - float(informed_u.ber),
            "detected_informed": bool(informed_u.detected),
            "p_value_informed": informed_u.p_value,
        }
    if "extract_s" not in record:  # suite without "none": time a clean read anyway
        _, extract_s = _timed(lambda: wm.extract(marked))
        record["extract_s"], record["extract_s_per_mp"] = extract_s, extract_s / megapixels
    return record


def _peer_read(peer: PeerMethod, rgb: np.ndarray, bits: np.ndarray) -> dict[str, Any]:
    got = peer.read(rgb)
    if got is None:
        return {"refused": True, "bit_acc": 0.5, "exact": False, "detected": False,
                "matches": None, "p_value": 1.0}
    matches = int(np.count_nonzero(got == bits))
    return {"refused": False, "bit_acc": matches / PEER_BITS, "exact": matches == PEER_BITS,
            "detected": matches >= peer.tau, "matches": matches,
            "p_value": binomial_tail(PEER_BITS, matches)}


def run_peer(peer: PeerMethod, index: int, image: Image.Image, attacks: Sequence[Attack],
             seed: int, bits: np.ndarray, unmarked_all: bool = False) -> dict[str, Any]:
    original = np.asarray(image)
    megapixels = image.width * image.height / 1e6
    record: dict[str, Any] = {"payload": "".join(map(str, bits)), "attacks": {}, "unmarked": {}}
    if original.shape[0] * original.shape[1] < PEER_MIN_AREA:
        record["refused_embed"] = True
        return record
    marked_px, embed_s = _timed(lambda: peer.embed(original, bits))
    marked = png_roundtrip(Image.fromarray(marked_px, "RGB"))
    marked_px = np.asarray(marked)
    record.update({"embed_s": embed_s, "embed_s_per_mp": embed_s / megapixels,
                   "psnr": _finite(psnr(original, marked_px)), "ssim": ssim(original, marked_px)})
    for j, attack in enumerate(attacks):
        attacked = np.asarray(attack(marked, seed=attack_seed(seed, index, j)))
        read, extract_s = _timed(lambda: _peer_read(peer, attacked, bits))
        read["extract_s"] = extract_s
        read["size"] = [attacked.shape[1], attacked.shape[0]]
        record["attacks"][attack.name] = read
        if attack.name == "none":
            record["extract_s"], record["extract_s_per_mp"] = extract_s, extract_s / megapixels
        if unmarked_all or attack.name == "none":
            unmarked = np.asarray(attack(image, seed=attack_seed(seed, index, j)))
            record["unmarked"][attack.name] = _peer_read(peer, unmarked, bits)
    if not record["unmarked"]:
        record["unmarked"]["none"] = _peer_read(peer, original, bits)
    if "extract_s" not in record:
        _, extract_s = _timed(lambda: peer.read(marked_px))
        record["extract_s"], record["extract_s_per_mp"] = extract_s, extract_s / megapixels
    return record


def retime(image: Image.Image, filigree: FiligreeMethod, record: dict[str, Any],
           peers: list[PeerMethod], per_method: dict[str, list[dict[str, Any]]], file: str,
           peer_bits: np.ndarray) -> None:
    """Measure one embed and one clean read per method now, back to back, and put those times
    into the (possibly cached) records, so every method is timed under the same load."""
    megapixels = image.width * image.height / 1e6
    value = int(record["payload"], 16)
    marked, embed_s = _timed(lambda: filigree.wm.embed(image, value))
    marked = png_roundtrip(marked)
    _, extract_s = _timed(lambda: filigree.wm.extract(marked))
    record.update(embed_s=embed_s, embed_s_per_mp=embed_s / megapixels, extract_s=extract_s,
                  extract_s_per_mp=extract_s / megapixels, timing="retimed")
    original = np.asarray(image)
    for peer in peers:
        records = [r for r in per_method[peer.name] if r["file"] == file]
        if not records or records[-1].get("refused_embed"):
            continue
        marked_px, embed_s = _timed(lambda: peer.embed(original, peer_bits))
        marked_px = np.asarray(png_roundtrip(Image.fromarray(marked_px, "RGB")))
        _, extract_s = _timed(lambda: peer.read(marked_px))
        records[-1].update(embed_s=embed_s, embed_s_per_mp=embed_s / megapixels,
                           extract_s=extract_s, extract_s_per_mp=extract_s / megapixels,
                           timing="retimed")


def summarise(per_photo: list[dict[str, Any]], attacks: Sequence[Attack],
              filigree: bool) -> dict[str, Any]:
    photos = [r for r in per_photo if not r.get("refused_embed")]
    summary: dict[str, Any] = {
        "photos": len(photos), "refused_embed": len(per_photo) - len(photos),
        "psnr_mean": _mean([r["psnr"] for r in photos]),
        "psnr_min": min((r["psnr"] for r in photos if r["psnr"] is not None), default=None),
        "ssim_mean": _mean([r["ssim"] for r in photos]),
        "ssim_min": min((r["ssim"] for r in photos), default=None),
        "embed_s_median": _median([r["embed_s"] for r in photos]),
        "embed_s_per_mp_median": _median([r["embed_s_per_mp"] for r in photos]),
        "extract_s_median": _median([r["extract_s"] for r in photos]),
        "extract_s_per_mp_median": _median([r["extract_s_per_mp"] for r in photos]),
        "attacks": {},
    }
    for attack in attacks:
        reads = [r["attacks"][attack.name] for r in photos]
        if not reads:
            continue
        entry = {
            "n": len(reads),
            "bit_acc_mean": _mean([x["bit_acc"] for x in reads]),
            "bit_acc_min": min(x["bit_acc"] for x in reads),
            "exact_rate": sum(bool(x["exact"]) for x in reads) / len(reads),
            "detection_rate": sum(bool(x["detected"]) for x in reads) / len(reads),
            "p_value_median": _median([x["p_value"] for x in reads]),
        }
        if filigree:
            entry["detection_rate_informed"] = (
                sum(bool(x["detected_informed"]) for x in reads) / len(reads))
            entry["p_value_informed_median"] = _median([x["p_value_informed"] for x in reads])
        else:
            entry["refused"] = sum(bool(x["refused"]) for x in reads)
        summary["attacks"][attack.name] = entry
    unmarked = [u for r in photos for u in r["unmarked"].values()]
    fp: dict[str, Any] = {
        "reads": len(unmarked),
        "detected": sum(bool(u["detected"]) for u in unmarked),
        "min_p_value": min((u["p_value"] for u in unmarked), default=None),
        "max_bit_acc": max((u["bit_acc"] for u in unmarked), default=None),
        "mean_bit_acc": _mean([u["bit_acc"] for u in unmarked]),
    }
    fp["rate"] = fp["detected"] / fp["reads"] if fp["reads"] else None
    if filigree:
        fp["decoded_some_payload"] = sum(u["decoded"] is not None for u in unmarked)
        fp["detected_informed"] = sum(bool(u["detected_informed"]) for u in unmarked)
        fp["min_p_value_informed"] = min((u["p_value_informed"] for u in unmarked), default=None)
    else:
        fp["refused"] = sum(bool(u["refused"]) for u in unmarked)
    summary["false_positives"] = fp
    return summary


# ---------------------------------------------------------------------------------------------
# per-photo record cache (resumable runs, shards)

CACHE_VERSION = 1


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


def _key_tag(key: bytes | None) -> str:
    """A one-way tag telling cached records of different keys apart (never the key itself)."""
    if key is None:
        return "default"
    import hmac

    return hmac.new(key, b"filigree/quality-bench/cache", hashlib.sha256).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.2g}"


def render_markdown(report: dict[str, Any]) -> str:
    methods = report["methods"]
    names = list(methods)
    attacks = report["attacks"]
    model = report["model"]
    photos = report["photos"]
    mps = [p["megapixels"] for p in photos]
    lines = ["# Watermark quality benchmark", ""]
    lines.append(
        f"Model **{model['name']}** ({model['created']}, {model['training_steps']} training "
        f"steps; card PSNR {model['metrics'].get('psnr') if model.get('metrics') else '—'}): "
        f"{model['data_bits']} data bits in {model['payload_bits']} raw bits "
        f"(BCH m={model['ecc']['m']}, t={model['ecc']['t']}), working size "
        f"{model['working_size']} px, strength {model['strength']:g}, key: {report['key']}.")
    lines.append("")
    lines.append(
        f"{len(photos)} photos from `{report['images']}` ({min(mps):.2f}–{max(mps):.2f} MP, native "
        f"resolution), seed {report['seed']}, target FPR {report['target_fpr']:g}. "
        + (f"Peers: invisible-watermark {report.get('peer_version') or '—'}, "
           f"{PEER_BITS}-bit payloads, detected when ≥ {report['peer_tau']}/{PEER_BITS} bits "
           f"match (P[Binom({PEER_BITS}, ½) ≥ {report['peer_tau']}] = "
           f"{binomial_tail(PEER_BITS, report['peer_tau']):.2g})."
           if len(names) > 1 else "No peers."))
    if report.get("peers_note"):
        lines.append(f"Note: {report['peers_note']}.")
    lines += ["", f"Command: `{report['command']}`", ""]

    lines += ["## Image quality and speed", "",
              "| method | payload | photos | PSNR dB mean (min) | SSIM mean (min) | embed s/MP | "
              "extract s/MP | embed s |",
              "|---|---|---|---|---|---|---|---|"]
    for name in names:
        s = methods[name]["summary"]
        payload = (f"{model['data_bits']} bits + BCH" if name == FILIGREE
                   else f"{PEER_BITS} bits, no ECC")
        lines.append(
            f"| {name} | {payload} | {s['photos']} | "
            f"{_fmt(s['psnr_mean'], 2)} ({_fmt(s['psnr_min'], 2)}) | "
            f"{_fmt(s['ssim_mean'], 4)} ({_fmt(s['ssim_min'], 4)}) | "
            f"{_fmt(s['embed_s_per_mp_median'], 3)} | {_fmt(s['extract_s_per_mp_median'], 3)} | "
            f"{_fmt(s['embed_s_median'], 2)} |")
    host = report.get("host", {})
    records = [r for m in methods.values() for r in m["per_photo"]]
    loads = [r["loadavg"][0] for r in records if r.get("loadavg")]
    load = ""
    if report.get("retimed") and host.get("loadavg_start") and host.get("loadavg_end"):
        load = (f" Times re-measured in the report's run, all methods back to back per photo; "
                f"1-minute load average {host['loadavg_start'][0]:g} at its start and "
                f"{host['loadavg_end'][0]:g} at its end, on {host.get('cpus')} CPUs.")
    elif loads:
        load = (f" 1-minute load average {min(loads):g}–{max(loads):g} when the records were "
                f"computed, on {host.get('cpus')} CPUs.")
    if load and (max(loads, default=0) > (host.get("cpus") or 1)
                 or max((host.get("loadavg_end") or [0])[:1]) > (host.get("cpus") or 1)):
        load += " Times on a busy machine are inflated."
    lines += ["", "Times: medians over photos of one call, seconds per megapixel of the photo "
              f"(extract: the blind read of the clean PNG); benchmark compute "
              f"{report.get('compute_s', report['wall_time_s']):.0f} s in all."
              + load, ""]

    on_subsets = methods.get(FILIGREE, {}).get("on_subsets") or {}

    def summary_of(name: str) -> dict[str, Any]:
        if name.startswith("@"):
            return on_subsets[name[1:]]
        return methods[name]["summary"]

    def attack_table(title: str, note: str, cell: Callable[[str, dict[str, Any]], str],
                     columns: list[tuple[str, str]]) -> None:
        lines.extend([f"## {title}", "", note, "",
                      "| attack | " + " | ".join(label for _, label in columns) + " |",
                      "|---|" + "---|" * len(columns)])
        for attack in attacks:
            cells = []
            for name, _ in columns:
                entry = summary_of(name)["attacks"].get(attack["spec"])
                cells.append("—" if entry is None else cell(name, entry))
            lines.append(f"| {attack['label']} | " + " | ".join(cells) + " |")
        lines.append("")

    columns = [(n, n) for n in names]
    subset_columns = [(f"@{peer}", f"Filigree on {peer}'s {summary['photos']} photos")
                      for peer, summary in on_subsets.items()]
    subset_note = "".join(
        f" {peer} ran on {methods[peer]['summary']['photos']} of the {len(photos)} photos "
        f"(index mod {report['peer_subsets'][peer].split('/')[1]} = "
        f"{report['peer_subsets'][peer].split('/')[0]}) to bound CPU time; the column "
        f"'Filigree on {peer}'s photos' is Filigree on the same ones."
        for peer in on_subsets if peer in methods)
    attack_table(
        "Bit accuracy",
        "Mean over photos (minimum in brackets). Filigree: its raw bits before error correction"
        + ("." if len(names) == 1 else
           "; peers: their 32 payload bits. A read the peer library refuses (image under "
           "256×256 in area) counts as 0.5.") + subset_note,
        lambda n, e: f"{e['bit_acc_mean']:.3f} ({e['bit_acc_min']:.2f})"
        + (f" [{e['refused']} refused]" if e.get("refused") else ""),
        columns + subset_columns)
    attack_table(
        "Exact payload recovery",
        f"Share of photos whose whole payload comes back: Filigree after BCH decoding "
        f"({model['data_bits']} bits), peers all {PEER_BITS} bits right (no ECC).",
        lambda n, e: _pct(e["exact_rate"]), columns + subset_columns)
    attack_table(
        f"Detection at FPR ≤ {report['target_fpr']:g}",
        "Share of marked photos detected. Filigree (blind): `extract(image)` without the "
        "payload, BCH decodes with a blind p-value ≤ the target. Filigree (informed): "
        "`extract(image, expected)`, binomial test of its raw bits against the embedded "
        f"payload. Peers: ≥ {report['peer_tau']}/{PEER_BITS} bits right (informed, like "
        "Filigree's informed read).",
        lambda n, e: _pct(e["detection_rate"]) + (
            f" / {_pct(e['detection_rate_informed'])}" if "detection_rate_informed" in e else ""),
        [(n, f"{n} (blind / informed)" if n == FILIGREE else n) for n in names]
        + [(c, f"{label} (blind / informed)") for c, label in subset_columns])

    lines += ["## False positives on unmarked photos", "",
              f"Every unmarked original and each of its {len(attacks)} attacked versions "
              "(the same attacks and seeds), read with the same key. Filigree blind: "
              "detected / decoded to some payload / smallest blind p-value; informed: "
              "against the payload the photo was given."
              + ("" if len(names) == 1 else
                 f" Peers: reads with ≥ {report['peer_tau']}/{PEER_BITS} bits matching the "
                 "photo's peer payload"
                 + (" (clean unmarked originals only)." if report.get("peer_unmarked") == "clean"
                    else ", all versions.")), "",
              "| method | reads | detected (blind) | FPR | smallest p-value | "
              "decoded some payload | detected (informed) | smallest informed p | "
              "max bit acc |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        fp = methods[name]["summary"]["false_positives"]
        if name == FILIGREE:
            lines.append(
                f"| {name} | {fp['reads']} | {fp['detected']} | {_pct(fp['rate'])} | "
                f"{_p(fp['min_p_value'])} | {fp['decoded_some_payload']} | "
                f"{fp['detected_informed']} | {_p(fp['min_p_value_informed'])} | "
                f"{_fmt(fp['max_bit_acc'], 2)} |")
        else:
            lines.append(
                f"| {name} | {fp['reads']} | — | — | — | — | {fp['detected']} | "
                f"{_p(fp['min_p_value'])} | {_fmt(fp['max_bit_acc'], 2)} |")
    lines += ["", "## Photos", "",
              "| photo | size | MP |", "|---|---|---|"]
    for photo in photos:
        lines.append(f"| {photo['file']} | {photo['width']}×{photo['height']} | "
                     f"{photo['megapixels']:.2f} |")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# figure (Pillow only)

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def render_figure(report: dict[str, Any], path: Path) -> None:
    methods = list(report["methods"])
    attacks = report["attacks"]
    width, height = max(900, 110 * len(attacks) + 160), 520
    left, right, top, bottom = 70, 20, 64, 110
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small, title_font = _font(15), _font(13), _font(18)
    plot_w, plot_h = width - left - right, height - top - bottom

    def y_of(value: float) -> float:
        return top + plot_h * (1.0 - value)

    for tick in np.linspace(0, 1, 11):
        y = y_of(tick)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{tick:.1f}", fill="black", font=small, anchor="rm")
    draw.line([(left, top), (left, top + plot_h)], fill="black")
    draw.line([(left, top + plot_h), (width - right, top + plot_h)], fill="black")
    group_w = plot_w / max(1, len(attacks))
    bar_w = group_w * 0.8 / max(1, len(methods))
    for i, attack in enumerate(attacks):
        x0 = left + i * group_w + group_w * 0.1
        for k, name in enumerate(methods):
            entry = report["methods"][name]["summary"]["attacks"].get(attack["spec"])
            if entry is None:
                continue
            value = float(entry["bit_acc_mean"])
            bx = x0 + k * bar_w
            draw.rectangle([bx, y_of(value), bx + bar_w - 2, y_of(0)], fill=PALETTE[k % 6])
        label = short_label(attack["spec"])
        text = Image.new("RGBA", (int(draw.textlength(label, font=font)) + 4, 20), (0, 0, 0, 0))
        ImageDraw.Draw(text).text((2, 2), label, fill="black", font=font)
        text = text.rotate(35, expand=True, resample=Image.BICUBIC)
        cx = left + (i + 0.5) * group_w
        image.paste(text, (int(cx - text.width + 8), top + plot_h + 6), text)
    chance = y_of(0.5)
    for x in range(left, width - right, 12):
        draw.line([(x, chance), (x + 6, chance)], fill=(90, 90, 90), width=2)
    draw.text((left + 4, chance - 2), "chance", fill=(60, 60, 60), font=small, anchor="lb")
    draw.text((left, 14), "Bit accuracy per attack (mean over photos; Filigree: raw bits, "
              f"peers: {PEER_BITS} payload bits)", fill="black", font=title_font)
    lx = left + 10
    total = len(report["photos"])
    for k, method in enumerate(methods):
        count = report["methods"][method]["summary"]["photos"]
        name = method if count == total else f"{method} ({count} of {total} photos)"
        draw.rectangle([lx, 38, lx + 14, 50], fill=PALETTE[k % 6])
        draw.text((lx + 20, 44), name, fill="black", font=font, anchor="lm")
        lx += 40 + int(draw.textlength(name, font=font))
    image.save(path, "PNG", optimize=True)


# ---------------------------------------------------------------------------------------------
# docs block


def update_docs(doc: Path, block: str, markdown: str, figure: Path) -> Path | None:
    """Replace the marked block of `doc` with `markdown` (headings one level down); for the
    ``heldout`` block also copy the figure beside it as quality.png and link it (returned)."""
    text = doc.read_text(encoding="utf-8")
    begin, end = f"<!-- quality:{block}:begin -->", f"<!-- quality:{block}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"--docs {doc}: no {begin} ... {end} block")
    body = markdown.replace("# Watermark quality benchmark\n", "", 1).strip()
    body = re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)
    if block == "heldout":
        body = f"{body}\n\n![Bit accuracy per attack](quality.png)"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{body}\n{end}{tail}", encoding="utf-8")
    if block != "heldout":
        return None
    target = doc.parent / "quality.png"
    target.write_bytes(figure.read_bytes())
    return target


# ---------------------------------------------------------------------------------------------


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
                        help="comma-separated pipeline.attacks specs; 'none' is the clean PNG "
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
                             "frame (pipeline/reframe.py; its p-value pays for every framing tried)")
    parser.add_argument("--shard", default=None, metavar="K/N",
                        help="only photos with index %% N == K, into the cache, no report: run "
                             "N shards in parallel, then once without --shard to write the report")
    parser.add_argument("--retime", action="store_true",
                        help="time one embed and one clean read per method and photo again in "
                             "this run (all methods back to back, under the same load), "
                             "replacing the times of cached records")
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
    load_start = _loadavg()
    for index, path in enumerate(photos):
        if shard is not None and index % shard[1] != shard[0]:
            continue
        image = load_rgb(path)
        photo = {"file": path.name, "width": image.width, "height": image.height,
                 "megapixels": image.width * image.height / 1e6,
                 "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        photo_records.append(photo)
        rng = np.random.default_rng([args.seed, index])
        record = cache.get(FILIGREE, photo, index)
        if record is None:
            record, elapsed = _timed(
                lambda: run_filigree(filigree, index, image, attacks, args.seed, rng))
            record["file"], record["elapsed_s"] = path.name, elapsed
            record["loadavg"] = _loadavg()
            cache.put(FILIGREE, photo, index, record)
        per_method[FILIGREE].append(record)
        rng = np.random.default_rng([args.seed, index])
        _random_bits(rng, filigree.data_bits)  # the Filigree payload's draw
        peer_bits = _random_bits(rng, PEER_BITS)
        for peer in peers:
            subset = subsets.get(peer.name)
            if subset is not None and index % subset[1] != subset[0]:
                continue
            peer_record = cache.get(peer.name, photo, index)
            if peer_record is None:
                peer_record, elapsed = _timed(lambda: run_peer(
                    peer, index, image, attacks, args.seed, peer_bits,
                    unmarked_all=args.peer_unmarked == "all"))
                peer_record["file"], peer_record["elapsed_s"] = path.name, elapsed
                peer_record["loadavg"] = _loadavg()
                cache.put(peer.name, photo, index, peer_record)
            per_method[peer.name].append(peer_record)
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
                 "loadavg_end": _loadavg()},
        "peer_unmarked": args.peer_unmarked,
        "retimed": bool(args.retime),
        "wall_time_s": time.perf_counter() - started,
        "compute_s": sum(r.get("elapsed_s", 0.0) for rs in per_method.values() for r in rs),
        "photos": photo_records,
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


def write_outputs(report: dict[str, Any], out: Path, docs: str | None, block: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    (out / "quality.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n",
                                      encoding="utf-8")
    (out / "quality.md").write_text(markdown, encoding="utf-8")
    render_figure(report, out / "quality.png")
    if docs:
        update_docs(Path(docs), block, markdown, out / "quality.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
