"""The residual -> encode -> write stage: the embedder's residual added to the native pixels, the
marked image encoded like its source, decoded again for its PSNR (refused below `--min_psnr`,
see `filigree.capacity`) and the views its verification reads; written atomically here when
nothing is verified, else by the read-back step once the file reads back its payload."""

from __future__ import annotations

import math

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from filigree.attacks import default_suite_spec, parse_suite
from filigree.bundle import ModelCard
from filigree.capacity import visibility_failure
from filigree.payload import PayloadCodec
from filigree.periodic import (MIN_PERIODS, QUALITY_MARGIN, PeriodicMarker, SaltedCodec, eight_bit_scale,
                               search_luma, too_small)
from filigree.presence import ExistingMark, existing_mark, existing_periodic_mark
from filigree.imaging import decode, encode, metrics
from filigree.imaging.depth import mark_samples
from filigree.imaging.kernels import add_residual
from filigree.tiling import tile_views
from filigree.watermarker import mark_pixels
from pipeline import storage
from pipeline.manifest import normalize
from pipeline.options import RunConfig
from pipeline.planning import Item, absolute_prefix, output_path
from pipeline.progress import NAMESPACE, Progress
from pipeline.records import StepFailure
from pipeline.verify import attacked_views, search_copy, seed_for

def size_ratio(output_bytes: int, source_bytes: int | None) -> float | None:
    """The marked file's size over its source's, to 3 decimals; None without a source size."""
    return round(output_bytes / source_bytes, 3) if source_bytes else None


class MarkAndWrite(beam.DoFn):
    """(path, PredictionResult(item, residual)) -> marked file written; the item goes on with
    verification views (or straight to a record when --verify none)."""

    def __init__(self, cfg: RunConfig, card: ModelCard, working_size: int, codec: PayloadCodec):
        self.cfg, self.card, self.working_size, self.codec = cfg, card, working_size, codec
        self.tiling = card.tiling
        self.strength = card.default_strength if cfg.strength is None else cfg.strength
        self.marked_counter = Metrics.counter(NAMESPACE, "marked")
        self.failed_counter = Metrics.counter(NAMESPACE, "failed")

    def setup(self):
        self.progress = Progress("marked")
        self.periodic = PeriodicMarker(None, None, self.codec, self.strength, self.cfg.fpr) \
            if isinstance(self.codec, SaltedCodec) else None
        spec = self.cfg.attacks if self.cfg.attacks is not None else default_suite_spec(self.periodic is not None)
        self.suite = parse_suite(spec) if self.cfg.verify == "attacks" else ()

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
            # and an `ok` record, or an error record and no file. With verification, the write
            # waits for the read-back (`pipeline.verify.ReadBack`).
            if self.periodic is not None and too_small(decoded.height, decoded.width):
                raise StepFailure("too_small", f"{decoded.width} x {decoded.height} px holds fewer than {MIN_PERIODS} "
                                               "periods of this model's periodic mark along its shorter side")
            grid = self.tiling.grid_for(decoded.height, decoded.width, cfg.max_grid)
            existing = self._existing(item, result.inference["source_logits"], grid)
            if existing is not None:
                record["existing_payload"] = existing.payload
                if not cfg.overwrite_marks:
                    yield beam.pvalue.TaggedOutput("records", {
                        **record, "status": "skipped", "error_code": "already_marked",
                        "error": f"{existing.describe()}; refused (--overwrite_marks marks it anyway)"})
                    return
                record["notes"] = [*record.get("notes", []), f"overwritten: {existing.describe()}"]
            try:
                data, psnr, views, sources, contexts = self._mark(decoded, result.inference, item.salt, path, grid)
            except Exception as exc:  # noqa: BLE001 - this image's failure, reported in its record
                raise StepFailure("encode_failed", f"cannot mark or encode: {type(exc).__name__}: {exc}"[:500]) from None
            record.update(psnr=psnr if math.isfinite(psnr) else None, output_bytes=len(data),
                          output_quality=self._output_quality(decoded),
                          size_ratio=size_ratio(len(data), record.get("source_bytes")))
            failure = visibility_failure(psnr, cfg.min_psnr)
            if failure is not None:
                raise StepFailure(failure.code, failure.message)
            if cfg.verify == "none":
                storage.write_marked(target, data)
        except StepFailure as failure:
            self.failed_counter.inc()
            yield beam.pvalue.TaggedOutput("records", {**record, "status": "error", "error_code": failure.code,
                                                       "error": failure.message})
            return
        self.marked_counter.inc()
        self.progress.tick()
        if cfg.verify == "none":
            yield beam.pvalue.TaggedOutput("records", {**record, "output": target})
            return
        yield path, Item(item.job, record, None, None, views, sources, grid=grid, encoded=data, target=target,
                         contexts=contexts)

    def _existing(self, item: Item, source_logits: np.ndarray, grid: int) -> ExistingMark | None:
        """The mark the source carries already (`filigree.presence`); a periodic bundle reads it
        with this key from the source's sync hypotheses."""
        if self.periodic is None:
            return existing_mark(self.codec, source_logits, grid, self.tiling, self.cfg.fpr)
        read = self.periodic.decode_views(source_logits, item.contexts["clean"], None, self.cfg.fpr)
        return existing_periodic_mark(read, item.lattice_score)

    def _output_quality(self, decoded: decode.DecodedImage) -> int | None:
        """The quality the marked image is written at (`encode.output_quality`): a periodic
        bundle's faint mark takes `QUALITY_MARGIN` points above the source's."""
        margin = QUALITY_MARGIN if self.periodic is not None else 0
        return encode.output_quality(decoded, self.cfg.jpeg_quality, margin)

    def _marked_pixels(self, decoded: decode.DecodedImage, inference: dict, salt: int | None) -> np.ndarray:
        """The marked copy of the native pixels."""
        depth = decoded.depth
        if self.periodic is not None:
            residual = self.periodic.residual_from_tile(eight_bit_scale(decoded.model_pixels), inference["tile"], salt)
            if depth is not None:
                return mark_samples(decoded.pixels, residual[..., None] / np.float32(255.0), 1.0, depth)
            return add_residual(decoded.pixels, residual[..., None], 257.0 if decoded.pixels.dtype == np.uint16 else 1.0)
        if depth is None:
            return mark_pixels(decoded.pixels, inference["residual"], self.strength)
        # 16-bit grey: sized to, and kept within, the data's true depth
        return mark_samples(decoded.pixels, inference["residual"], self.strength, depth)

    def _mark(self, decoded: decode.DecodedImage, inference: dict, salt: int | None, path: str, grid: int):
        """(encoded bytes, PSNR, read-back views, their search copies, periodic contexts). Works on the native pixels: the marked
        copy is the only other full-size array, and it is dropped once encoded; the written
        bytes are decoded again (the file is what gets verified) and compared row tile by row
        tile with the source."""
        cfg = self.cfg
        depth = decoded.depth
        marked = self._marked_pixels(decoded, inference, salt)
        quality = self._output_quality(decoded)
        data = encode.encode_image(decoded, marked, jpeg_quality=quality or encode.UNKNOWN_SOURCE_QUALITY)
        del marked
        written = decode.decode_image(data, max_pixels=max(cfg.max_pixels, decoded.width * decoded.height))
        if depth is None:
            psnr = metrics.psnr(decoded.pixels, written.pixels, data_range=decoded.peak)
            written_view = written.pixels
        else:  # against the data's own peak, on its own samples
            psnr = metrics.psnr(depth.to_samples(decoded.pixels), depth.to_samples(written.pixels),
                                data_range=depth.peak)
            written_view = depth.full_range(written.pixels)
        psnr = round(float(psnr), 3)
        views: dict[str, np.ndarray] = {}
        contexts: dict[str, tuple] = {}
        if self.periodic is not None:
            searched: dict[str, np.ndarray] | None = {} if cfg.reframe else None
            if cfg.verify != "none":
                views["clean"], contexts["clean"] = self.periodic.read_views(eight_bit_scale(written_view))
                if searched is not None:
                    searched["clean"] = search_luma(written_view)
                views.update(attacked_views(written_view, self.suite, self.working_size, seed_for(path, cfg.seed),
                                            searched, periodic=self.periodic, contexts=contexts))
            return data, psnr, views, searched or {}, contexts
        sources: dict[str, np.ndarray] | None = {} if cfg.reframe else None
        if cfg.verify != "none":
            views["clean"] = tile_views(written_view, grid, self.working_size)
            if sources is not None:
                sources["clean"] = search_copy(written_view, self.working_size, self.tiling)
            views.update(attacked_views(written_view, self.suite, self.working_size,
                                        seed_for(path, cfg.seed), sources, self.tiling, grid))
        return data, psnr, views, sources or {}, contexts
