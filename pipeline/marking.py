"""The residual -> encode -> write stage: the embedder's residual added to the native pixels, the
marked image encoded like its source and written atomically, then decoded again for its PSNR and
the views its verification reads."""

from __future__ import annotations

import math

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from filigree.attacks import parse_suite
from filigree.bundle import ModelCard
from filigree.imaging import decode, encode, metrics
from filigree.tiling import tile_views
from filigree.watermarker import mark_pixels
from pipeline import storage
from pipeline.manifest import normalize
from pipeline.options import RunConfig
from pipeline.planning import Item, absolute_prefix, output_path
from pipeline.progress import NAMESPACE, Progress
from pipeline.records import UNCHANGED_NOTE, StepFailure
from pipeline.verify import attacked_views, search_copy, seed_for

class MarkAndWrite(beam.DoFn):
    """(path, PredictionResult(item, residual)) -> marked file written; the item goes on with
    verification views (or straight to a record when --verify none)."""

    def __init__(self, cfg: RunConfig, card: ModelCard, working_size: int):
        self.cfg, self.card, self.working_size = cfg, card, working_size
        self.tiling = card.tiling
        self.strength = card.default_strength if cfg.strength is None else cfg.strength
        self.marked_counter = Metrics.counter(NAMESPACE, "marked")
        self.failed_counter = Metrics.counter(NAMESPACE, "failed")

    def setup(self):
        self.suite = parse_suite(self.cfg.attacks) if self.cfg.verify == "attacks" else ()
        self.progress = Progress("marked")

    def process(self, element):
        path, result = element
        item: Item = result.example
        decoded, cfg = item.decoded, self.cfg
        record = dict(item.record)
        try:
            target = output_path(cfg, item.job, decoded.output_extension)
            if normalize(absolute_prefix(target)) == normalize(absolute_prefix(item.job.path)):
                raise StepFailure("overwrites_input", "the marked file would replace its own input")
            # Everything that can fail runs before the write, so an image either gets its file
            # and an `ok`/verification record, or an error record and no file.
            try:
                grid = self.tiling.grid_for(decoded.height, decoded.width, cfg.max_grid)
                data, psnr, views, sources = self._mark(decoded, result.inference, path, grid)
            except Exception as exc:  # noqa: BLE001 - this image's failure, reported in its record
                raise StepFailure("encode_failed", f"cannot mark or encode: {type(exc).__name__}: {exc}"[:500]) from None
            try:
                storage.with_retries(lambda: storage.write_atomically(target, data), "writing a marked image")
            except Exception as exc:  # noqa: BLE001 - this image's failure, reported in its record
                message = f"cannot write the marked image: {type(exc).__name__}: {exc}"
                raise StepFailure("write_failed", message[:500]) from None
        except StepFailure as failure:
            self.failed_counter.inc()
            yield beam.pvalue.TaggedOutput("records", {**record, "status": "error", "psnr": None,
                                                       "error_code": failure.code, "error": failure.message})
            return
        self.marked_counter.inc()
        self.progress.tick()
        record["output"] = target
        record["psnr"] = psnr if math.isfinite(psnr) else None
        if record["psnr"] is None:
            record["notes"] = [*record.get("notes", []), UNCHANGED_NOTE]
        if cfg.verify == "none":
            yield beam.pvalue.TaggedOutput("records", record)
            return
        yield path, Item(item.job, record, None, None, views, sources, grid=grid)

    def _mark(self, decoded: decode.DecodedImage, residual: np.ndarray, path: str, grid: int):
        """(encoded bytes, PSNR, read-back views, their search copies). Works on the native pixels: the marked
        copy is the only other full-size array, and it is dropped once encoded; the written
        bytes are decoded again (the file is what gets verified) and compared row tile by row
        tile with the source."""
        cfg = self.cfg
        marked = mark_pixels(decoded.pixels, residual, self.strength)
        data = encode.encode_image(decoded, marked, jpeg_quality=cfg.jpeg_quality)
        del marked
        written = decode.decode_image(data, max_pixels=max(cfg.max_pixels, decoded.width * decoded.height))
        psnr = round(float(metrics.psnr(decoded.pixels, written.pixels, data_range=decoded.maxval)), 3)
        views: dict[str, np.ndarray] = {}
        sources: dict[str, np.ndarray] | None = {} if cfg.reframe else None
        if cfg.verify != "none":
            views["clean"] = tile_views(written.pixels, grid, self.working_size)
            if sources is not None:
                sources["clean"] = search_copy(written.pixels, self.working_size, self.tiling)
            views.update(attacked_views(written.pixels, self.suite, self.working_size,
                                        seed_for(path, cfg.seed), sources, self.tiling, grid))
        return data, psnr, views, sources or {}
