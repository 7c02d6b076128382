"""The methods the quality benchmark compares (`benchmarks/quality.py`): Filigree's `Watermarker`
and invisible-watermark's peers, each run on one photo: embed, PNG round trip, every attack of
the suite, blind and informed reads, false-positive reads of the unmarked original."""

from __future__ import annotations

import io
from typing import Any, Sequence

import numpy as np
from PIL import Image

from benchmarks.common import finite, timed
from benchmarks.visibility import visibility_record
from filigree.attacks import Attack
from filigree.imaging.metrics import psnr, ssim
from filigree.payload import binomial_tail, format_payload

PEER_METHODS = ("dwtDct", "dwtDctSvd", "rivaGan")
PEER_BITS = 32
PEER_MIN_AREA = 256 * 256  # invisible-watermark refuses r*c below this
TARGET_FPR = 1e-6
FILIGREE = "Filigree"


def peer_tau(bits: int = PEER_BITS, fpr: float = TARGET_FPR) -> int:
    """Smallest number of matching bits tau with P[Binom(bits, 1/2) >= tau] <= fpr."""
    for tau in range(bits + 1):
        if binomial_tail(bits, tau) <= fpr:
            return tau
    return bits + 1


PEER_TAU = peer_tau()


def png_roundtrip(image: Image.Image) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
        return decoded.convert("RGB")


def attack_seed(seed: int, photo: int, attack: int) -> int:
    return int(np.random.SeedSequence([seed, photo, attack]).generate_state(1)[0])


def random_bits(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.integers(0, 2, size=count, dtype=np.uint8)


def bits_to_int(bits: np.ndarray) -> int:
    return int("".join(str(int(b)) for b in bits), 2)


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


def filigree_marked(method: FiligreeMethod, image: Image.Image, value: int) -> tuple[Image.Image, float]:
    """The photo marked by Filigree after the PNG round trip (8-bit RGB), and the embed call's
    wall-clock seconds."""
    marked, embed_s = timed(lambda: method.wm.embed(image, value))
    return png_roundtrip(marked), embed_s


def peer_marked(peer: PeerMethod, original: np.ndarray, bits: np.ndarray) -> tuple[Image.Image, float]:
    """The photo (uint8 RGB) marked by a peer after the PNG round trip, and the embed call's
    wall-clock seconds."""
    marked_px, embed_s = timed(lambda: peer.embed(original, bits))
    return png_roundtrip(Image.fromarray(marked_px, "RGB")), embed_s


def run_filigree(method: FiligreeMethod, index: int, image: Image.Image, attacks: Sequence[Attack],
                 seed: int, rng: np.random.Generator) -> dict[str, Any]:
    wm = method.wm
    value = bits_to_int(random_bits(rng, method.data_bits))
    expected = format_payload(value, method.data_bits)
    megapixels = image.width * image.height / 1e6
    marked, embed_s = filigree_marked(method, image, value)
    original = np.asarray(image)
    marked_px = np.asarray(marked)
    record: dict[str, Any] = {
        "payload": expected, "embed_s": embed_s, "embed_s_per_mp": embed_s / megapixels,
        "psnr": finite(psnr(original, marked_px)), "ssim": ssim(original, marked_px),
        "visibility": visibility_record(original, marked_px), "attacks": {}, "unmarked": {},
    }
    for j, attack in enumerate(attacks):
        attacked = attack(marked, seed=attack_seed(seed, index, j))
        blind, extract_s = timed(lambda: wm.extract(attacked, reframe=method.reframe))
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
        _, extract_s = timed(lambda: wm.extract(marked))
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
    marked, embed_s = peer_marked(peer, original, bits)
    marked_px = np.asarray(marked)
    record.update({"embed_s": embed_s, "embed_s_per_mp": embed_s / megapixels,
                   "psnr": finite(psnr(original, marked_px)), "ssim": ssim(original, marked_px),
                   "visibility": visibility_record(original, marked_px)})
    for j, attack in enumerate(attacks):
        attacked = np.asarray(attack(marked, seed=attack_seed(seed, index, j)))
        read, extract_s = timed(lambda: _peer_read(peer, attacked, bits))
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
        _, extract_s = timed(lambda: peer.read(marked_px))
        record["extract_s"], record["extract_s_per_mp"] = extract_s, extract_s / megapixels
    return record


def retime(image: Image.Image, filigree: FiligreeMethod, record: dict[str, Any],
           peers: list[PeerMethod], per_method: dict[str, list[dict[str, Any]]], file: str,
           peer_bits: np.ndarray) -> None:
    """Measure one embed and one clean read per method now, back to back, and put those times
    into the (possibly cached) records, so every method is timed under the same load."""
    megapixels = image.width * image.height / 1e6
    value = int(record["payload"], 16)
    marked, embed_s = filigree_marked(filigree, image, value)
    _, extract_s = timed(lambda: filigree.wm.extract(marked))
    record.update(embed_s=embed_s, embed_s_per_mp=embed_s / megapixels, extract_s=extract_s,
                  extract_s_per_mp=extract_s / megapixels, timing="retimed")
    original = np.asarray(image)
    for peer in peers:
        records = [r for r in per_method[peer.name] if r["file"] == file]
        if not records or records[-1].get("refused_embed"):
            continue
        marked, embed_s = peer_marked(peer, original, peer_bits)
        marked_px = np.asarray(marked)
        _, extract_s = timed(lambda: peer.read(marked_px))
        records[-1].update(embed_s=embed_s, embed_s_per_mp=embed_s / megapixels,
                           extract_s=extract_s, extract_s_per_mp=extract_s / megapixels,
                           timing="retimed")
