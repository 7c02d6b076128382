"""Loading a model bundle (docs/bundle.md): the model card and the two SavedModel signatures.

Bundles may live on any filesystem Beam knows (local, gs://); remote bundles are copied to a
local cache directory first, so TensorFlow only ever reads local files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from filigree.detection import informed_p_scale
from filigree.periodic import PeriodicLayout, layout_of
from filigree.tiling import Tiling

BUNDLE_FORMAT = "filigree-bundle/1"
COLOR_MODES = ("luma", "rgb")


class BundleError(ValueError):
    """A model bundle that is missing, unreadable or does not honour the contract."""


@dataclass(frozen=True)
class ModelCard:
    """The fields of `model.json` the pipeline relies on (the rest stays in `raw`)."""

    name: str
    version: str
    working_size: int
    payload_bits: int
    color_mode: str
    default_strength: float
    raw: dict
    tiling: Tiling = Tiling()
    """The card's `tiling` entry, parsed (none: whole images, grid 1)."""
    layout: PeriodicLayout | None = None
    """The card's `layout` entry for a periodic bundle (filigree/periodic.py); None: tiled."""

    @classmethod
    def from_dict(cls, card: dict) -> "ModelCard":
        """Validate a parsed `model.json`."""
        if card.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"model.json format is {card.get('format')!r}, expected {BUNDLE_FORMAT!r}")
        try:
            parsed = cls(
                name=str(card["name"]),
                version=str(card["version"]),
                working_size=int(card["working_size"]),
                payload_bits=int(card["payload_bits"]),
                color_mode=str(card["color_mode"]),
                default_strength=float(card["default_strength"]),
                raw=card,
            )
            card["ecc"]["t"], card["ecc"]["m"], card["ecc"]["data_bits"]
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"model.json is missing or has a bad field: {exc}") from None
        if parsed.color_mode not in COLOR_MODES:
            raise BundleError(f"model.json color_mode {parsed.color_mode!r} is not one of {COLOR_MODES}")
        if parsed.working_size < 8 or parsed.payload_bits < 8:
            raise BundleError("model.json working_size and payload_bits must be at least 8")
        try:
            tiling = Tiling.from_card(card)
        except (TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"model.json has a bad tiling entry: {exc}") from None
        try:
            informed_p_scale(card)
        except ValueError as exc:
            raise BundleError(f"model.json has a bad calibration entry: {exc}") from None
        try:
            layout = layout_of(card)
        except (TypeError, ValueError, AttributeError) as exc:
            raise BundleError(f"model.json has a bad layout entry: {exc}") from None
        if layout is not None and parsed.working_size != layout.tile_size:
            raise BundleError(f"a periodic bundle's working_size ({parsed.working_size}) is its tile size "
                              f"({layout.tile_size})")
        return dataclasses.replace(parsed, tiling=tiling, layout=layout)

    @property
    def ecc(self) -> dict:
        return self.raw["ecc"]


def _filesystems():
    from apache_beam.io.filesystems import FileSystems
    return FileSystems


def is_remote(path: str) -> bool:
    return "://" in path


def read_card(model_dir: str) -> ModelCard:
    """Read and validate `MODEL_DIR/model.json` (local or remote)."""
    fs = _filesystems()
    path = fs.join(model_dir, "model.json")
    try:
        with fs.open(path) as f:
            card = json.loads(f.read().decode("utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any filesystem error means "no readable bundle here"
        raise BundleError(f"cannot read model card {path}: {exc}") from None
    if not isinstance(card, dict):
        raise BundleError(f"{path} must hold a JSON object")
    return ModelCard.from_dict(card)


def localize(model_dir: str) -> str:
    """A local directory with the bundle's files: `model_dir` itself when local, else a cache
    copy (keyed by the remote path) made through Beam's FileSystems.

    A cached file is reused only when the remote file's checksum (GCS: its CRC32C) equals the
    one recorded when it was copied, and the cached bytes still hash (SHA-256) to what was
    written then; anything else (a changed remote file of the same size, a truncated or edited
    cache, a filesystem that gives no checksum) copies the file again."""
    if not is_remote(model_dir):
        if not os.path.isdir(model_dir):
            raise BundleError(f"model bundle {model_dir!r} is not a directory")
        return model_dir
    fs = _filesystems()
    root = model_dir.rstrip("/") + "/"
    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    local_root = os.path.join(tempfile.gettempdir(), "filigree-bundles", digest)
    matches = fs.match([root + "**"])[0].metadata_list
    if not matches:
        raise BundleError(f"no files found under model bundle {model_dir!r}")
    for meta in matches:
        relative = meta.path[len(root):]
        if not relative or relative.endswith("/"):
            continue
        target = os.path.join(local_root, *relative.split("/"))
        remote_checksum = _remote_checksum(fs, meta.path)
        if remote_checksum is not None and _cached_copy_is_current(target, remote_checksum):
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        partial = f"{target}.partial-{os.getpid()}"
        with fs.open(meta.path) as src:
            data = src.read()
        with open(partial, "wb") as dst:
            dst.write(data)
        os.replace(partial, target)
        _write_cache_record(target, remote_checksum, hashlib.sha256(data).hexdigest())
    return local_root


_CACHE_RECORD_SUFFIX = ".filigree-source.json"
"""Beside each cached file: the remote checksum it was copied at and the SHA-256 of its bytes."""


def _remote_checksum(fs, path: str) -> str | None:
    try:
        checksum = fs.checksum(path)
    except Exception:  # noqa: BLE001 - no checksum: the file is copied again
        return None
    return str(checksum) if checksum else None


def _file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


def _cached_copy_is_current(target: str, remote_checksum: str) -> bool:
    """Whether `target` was copied from a remote file with `remote_checksum` and is intact."""
    try:
        with open(target + _CACHE_RECORD_SUFFIX, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return (isinstance(record, dict) and record.get("remote_checksum") == remote_checksum
            and record.get("sha256") is not None and _file_sha256(target) == record["sha256"])


def _write_cache_record(target: str, remote_checksum: str | None, sha256: str) -> None:
    partial = f"{target}{_CACHE_RECORD_SUFFIX}.partial-{os.getpid()}"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump({"remote_checksum": remote_checksum, "sha256": sha256}, f)
    os.replace(partial, target + _CACHE_RECORD_SUFFIX)


@dataclass
class LoadedBundle:
    """A bundle's card and its two serving functions (numpy in, numpy out). Tiled bundles:
    embed_fn(views [N, S, S, 3], bits [N, L]) -> residuals, extract_fn(views) -> logits [N, L].
    Periodic bundles: embed_fn(bits [N, L]) -> payload tiles [N, n, n], extract_fn(aligned
    tiles [N, n, n]) -> logits [N, L]."""

    card: ModelCard
    embed_fn: Callable[..., np.ndarray]
    extract_fn: Callable[[np.ndarray], np.ndarray]
    _keep: Any = None  # the loaded SavedModel objects, kept alive with their functions


def load_bundle(model_dir: str) -> LoadedBundle:
    """Load both SavedModels and check their signatures against the card."""
    import tensorflow as tf

    card = read_card(model_dir)
    local = localize(model_dir)
    try:
        embedder = tf.saved_model.load(os.path.join(local, "embedder"))
        extractor = tf.saved_model.load(os.path.join(local, "extractor"))
        embed_sig = embedder.signatures["serving_default"]
        extract_sig = extractor.signatures["serving_default"]
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"cannot load SavedModels from {model_dir!r}: {exc}") from None
    check_signatures(card, embed_sig, extract_sig)
    if card.layout is not None:
        def tile_fn(bits: np.ndarray) -> np.ndarray:
            return embed_sig(bits=tf.constant(bits, tf.float32))["tile"].numpy()

        def tile_logits_fn(tiles: np.ndarray) -> np.ndarray:
            return extract_sig(tile=tf.constant(tiles, tf.float32))["logits"].numpy()

        return LoadedBundle(card, tile_fn, tile_logits_fn, _keep=(embedder, extractor))

    def embed_fn(images: np.ndarray, bits: np.ndarray) -> np.ndarray:
        out = embed_sig(image=tf.constant(images, tf.float32), bits=tf.constant(bits, tf.float32))
        return out["residual"].numpy()

    def extract_fn(images: np.ndarray) -> np.ndarray:
        return extract_sig(image=tf.constant(images, tf.float32))["logits"].numpy()

    return LoadedBundle(card, embed_fn, extract_fn, _keep=(embedder, extractor))


def check_signatures(card: ModelCard, embed_sig, extract_sig) -> None:
    """The signatures' input names and shapes must match docs/bundle.md and the card."""
    s, bits = card.working_size, card.payload_bits
    if card.layout is not None:
        expect = {
            "embedder": (embed_sig, {"bits": [None, bits]}, "tile"),
            "extractor": (extract_sig, {"tile": [None, s, s]}, "logits"),
        }
    else:
        expect = {
            "embedder": (embed_sig, {"image": [None, s, s, 3], "bits": [None, bits]}, "residual"),
            "extractor": (extract_sig, {"image": [None, s, s, 3]}, "logits"),
        }
    for name, (sig, inputs, output) in expect.items():
        _, kwargs = sig.structured_input_signature
        got = {k: spec.shape.as_list() for k, spec in kwargs.items()}
        if got != inputs:
            raise BundleError(f"{name} signature inputs {got} do not match the card's {inputs}")
        if output not in sig.structured_outputs:
            raise BundleError(f"{name} signature has no output {output!r}")
