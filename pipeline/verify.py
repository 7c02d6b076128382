"""The verify stage: the views a read-back takes of a marked image (clean and after each attack of
the suite, with their re-framing search copies), and `ReadBack`, which decodes the extractor's
logits into the record's read-back fields and, in embed mode, writes the marked file when it
reads back its payload."""

from __future__ import annotations

import hashlib

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.utils import shared
from PIL import Image

from filigree.capacity import readback_failure
from filigree.imaging.pixels import pil_image, to_uint8
from filigree.payload import PayloadCodec, ReadResult
from filigree.periodic import PeriodicMarker, SaltedCodec, search_luma
from filigree.reframe import SearchConfig, search_source
from filigree.tiling import Tiling, decode_grid, decode_tiles, read_views, tile_views
from filigree.watermarker import Watermarker
from pipeline import storage
from pipeline.handlers import SharedBundle, load_worker_bundle, travelling_model_dir
from pipeline.planning import Item
from pipeline.progress import NAMESPACE, Progress
from pipeline.records import StepFailure, attack_fields, read_fields

def seed_for(path: str, seed: int) -> int:
    """A per-image attack seed independent of processing order."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{path}".encode()).digest()[:4], "big")


def search_copy(pixels: np.ndarray, working_size: int, tiling: Tiling = Tiling()) -> np.ndarray:
    """The small RGB copy a re-framing search reads (see `filigree.reframe.search_source`)."""
    return np.asarray(search_source(pil_image(to_uint8(pixels)), working_size, tiling))


def attacked_views(pixels: np.ndarray, suite, working_size: int, seed: int,
                   sources: dict[str, np.ndarray] | None = None,
                   tiling: Tiling = Tiling(), grid: int | None = None,
                   periodic: PeriodicMarker | None = None,
                   contexts: dict[str, tuple] | None = None) -> dict[str, np.ndarray]:
    """Per attack of the suite, the views of the image (native pixels, or float RGB) after it:
    the tiles of `grid`, or every read view (`tiling.read_views`) when None; with `sources`,
    also each attacked image's search copy, added there. With `periodic`, the aligned tiles of
    each attacked image's sync hypotheses, their template indices added to `contexts` (and with
    `sources`, its `search_luma`)."""
    if not suite:
        return {}
    if np.issubdtype(pixels.dtype, np.floating):
        image = Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255.0).astype(np.uint8), "RGB")
    else:
        image = pil_image(to_uint8(pixels))
        if image.mode != "RGB":
            image = image.convert("RGB")
    views = {}
    for attack in suite:
        attacked_image = attack(image, seed).convert("RGB")
        attacked = np.asarray(attacked_image)
        if periodic is not None:
            views[attack.name], contexts[attack.name] = periodic.read_views(attacked)
            if sources is not None:
                sources[attack.name] = search_luma(attacked)
            continue
        views[attack.name] = (read_views(attacked, tiling, working_size) if grid is None
                              else tile_views(attacked, grid, working_size))
        if sources is not None:
            sources[attack.name] = np.asarray(search_source(attacked_image, working_size, tiling))
    return views


class ReadBack(beam.DoFn):
    """(path, PredictionResult(item, {view: logits})) -> the finished record."""

    def __init__(self, codec: PayloadCodec, fpr: float, reframe_model: str | None = None,
                 reframe: bool = False, tiling: Tiling = Tiling(), verbose: bool = False):
        self.codec, self.fpr, self.tiling, self.verbose = codec, fpr, tiling, verbose
        self.reframe, self.reframe_model = reframe, travelling_model_dir(reframe_model)
        self.verified_counter = Metrics.counter(NAMESPACE, "verified")
        self.searched_counter = Metrics.counter(NAMESPACE, "searched")
        self._shared_bundle = shared.Shared()

    def setup(self):
        self.progress = Progress("read back")
        self.periodic = PeriodicMarker(None, None, self.codec, 1.0, self.fpr) if isinstance(self.codec, SaltedCodec) else None
        self.watermarker = None
        if self.reframe:
            bundle = self._shared_bundle.acquire(lambda: SharedBundle(load_worker_bundle(self.reframe_model, self.verbose)))
            self.watermarker = Watermarker(bundle.bundle, self.codec, fpr=self.fpr)

    def _read(self, item: Item, name: str, logits: np.ndarray, expected: str | None) -> ReadResult:
        if self.periodic is not None:
            source = item.sources.get(name)
            searching = self.watermarker is not None and source is not None
            read = self.periodic.decode_views(logits, item.contexts[name], expected, self.fpr, searching)
            if not searching or read.conclusive:
                return read
            self.searched_counter.inc()
            return self.watermarker.periodic.search(source, read, expected)
        if item.grid is None:
            read = decode_tiles(self.codec, logits, self.tiling, expected, self.fpr)
        else:
            read = decode_grid(self.codec, logits, item.grid, self.tiling, expected, self.fpr)
        source = item.sources.get(name)
        if self.watermarker is None or read.conclusive or source is None:
            return read
        self.searched_counter.inc()
        return self.watermarker.search(Image.fromarray(source), read, expected, SearchConfig())

    def process(self, element):
        _, result = element
        item: Item = result.example
        record = dict(item.record)
        expected = record.get("payload")
        reads = {name: self._read(item, name, logits, expected) for name, logits in result.inference.items()}
        clean = reads.pop("clean")
        record.update(read_fields(clean))
        record["attacks"] = {name: attack_fields(read) for name, read in reads.items()}
        self.verified_counter.inc()
        self.progress.tick()
        if item.encoded is not None:
            record = self._write_if_readable(item, record, clean, expected)
        yield record

    @staticmethod
    def _write_if_readable(item: Item, record: dict, clean: ReadResult, expected: str | None) -> dict:
        """Embed mode: the marked file is written only when its clean read gives back the payload;
        otherwise the record is an `unreadable` error and nothing is written."""
        try:
            failure = readback_failure(clean, expected)
            if failure is not None:
                raise StepFailure(failure.code, failure.message)
            storage.write_marked(item.target, item.encoded)
        except StepFailure as failure:
            return {**record, "status": "error", "error_code": failure.code, "error": failure.message}
        return {**record, "output": item.target}
