"""The decode stage: Job -> (path, Item) with the payload's bits and the working-size views for
inference, or an error/skipped record. Reads are retried, decoding runs in a child process
under a timeout (`pipeline.decoding`)."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.metrics import Metrics

from filigree.imaging import decode
from filigree.payload import PayloadCodec, PayloadError, format_payload
from filigree.periodic import PeriodicMarker, SaltedCodec, eight_bit_scale, search_luma
from filigree.tiling import Tiling, read_views, tile_views
from pipeline import storage
from pipeline.decoding import DecodeWorker
from pipeline.options import RunConfig
from pipeline.planning import Item, Job, PlanJobs, existing_output, output_path
from pipeline.progress import NAMESPACE
from pipeline.records import StepFailure, new_record, skipped_record
from pipeline.verify import search_copy

class Prepare(beam.DoFn):
    """Job -> (path, Item) ready for inference, or an error/skipped record (tag 'records')."""

    def __init__(self, cfg: RunConfig, codec: PayloadCodec, working_size: int, tiling: Tiling):
        self.cfg, self.codec, self.working_size, self.tiling = cfg, codec, working_size, tiling
        self.read_counter = Metrics.counter(NAMESPACE, "read")
        self.failed_counter = Metrics.counter(NAMESPACE, "failed")

    def setup(self):
        self.decoder = DecodeWorker(self.cfg.max_pixels)
        self.periodic = PeriodicMarker(None, None, self.codec, 1.0) if isinstance(self.codec, SaltedCodec) else None

    def teardown(self):
        self.decoder.close()

    def process(self, job: Job):
        cfg = self.cfg
        base = {"line": job.line}
        record = new_record(job.path, cfg.mode, **base)
        try:
            if cfg.mode == "embed":
                output_path(cfg, job)  # refuses, early, a target outside the output folder
                existing = existing_output(cfg, job) if cfg.skip_existing else None
                if existing is not None:
                    yield beam.pvalue.TaggedOutput("records", skipped_record(
                        job.path, cfg.mode, "exists", "marked output already exists (--skip_existing)",
                        output=existing, **base))
                    return
            value, record["payload"] = self._payload(job)
            data = self._read(job.path)
            source_bytes, decoded = len(data), self._decode(data)
            del data  # not held while the item travels on
        except StepFailure as failure:
            self.failed_counter.inc()
            yield beam.pvalue.TaggedOutput("records", {**record, "status": "error",
                                                       "error_code": failure.code, "error": failure.message})
            return
        self.read_counter.inc()
        record.update(width=decoded.width, height=decoded.height, format=decoded.format,
                      notes=list(decoded.notes), source_bytes=source_bytes, source_quality=decoded.quality)
        if self.periodic is not None:
            yield job.path, self._periodic_item(job, record, decoded)
            return
        if cfg.mode == "embed":
            grid = self.tiling.grid_for(decoded.height, decoded.width, cfg.max_grid)
            view = tile_views(decoded.model_pixels, grid, self.working_size)
        else:
            view = read_views(decoded.model_pixels, self.tiling, self.working_size)
        sources = {"clean": search_copy(decoded.model_pixels, self.working_size, self.tiling)} if cfg.reframe else {}
        bits = None if value is None else self.codec.encode(value)
        yield job.path, Item(job, record, decoded, bits, {"clean": view}, sources)

    def _periodic_item(self, job: Job, record: dict, decoded: decode.DecodedImage) -> Item:
        """A periodic bundle's item: the aligned tiles of the source's sync hypotheses (read, or
        checked for an existing mark before embedding) and, to embed, the salted raw bits."""
        tiles, templates, score = self.periodic.read_views_scored(eight_bit_scale(decoded.model_pixels))
        bits = salt = None
        if self.cfg.mode == "embed" and job.payload is not None:
            bits, salt = self.periodic.salted_bits(decoded.pixels, job.payload)
        searching = self.cfg.reframe and self.cfg.mode != "embed"
        sources = {"clean": search_luma(decoded.model_pixels)} if searching else {}
        return Item(job, record, decoded, bits, {"clean": tiles}, sources, contexts={"clean": templates}, salt=salt,
                    lattice_score=score)

    def _payload(self, job: Job) -> tuple[int | None, str | None]:
        """The payload's value and canonical text (None, None without one); a payload that does
        not parse is this image's `bad_payload` error, before its file is read. Its bits are
        encoded only once the image has been read and decoded (a periodic bundle's salt depends
        on its pixels)."""
        if job.payload is None:
            return None, None
        try:
            value = self.codec.parse(job.payload)
            return value, format_payload(value, self.codec.data_bits)
        except PayloadError as exc:
            raise StepFailure("bad_payload", str(exc)) from None

    @staticmethod
    def _read(path: str) -> bytes:
        try:
            return storage.with_retries(lambda: storage.read_bytes(path), "reading an image")
        except FileNotFoundError:
            raise StepFailure("not_found", "image file not found") from None
        except IsADirectoryError:
            raise StepFailure("read_error", "cannot read image: it is a directory") from None
        except Exception as exc:  # noqa: BLE001 - any I/O failure is this image's error
            message = str(exc)
            code = "not_found" if "not found" in message.lower() or "no such file" in message.lower() else "read_error"
            raise StepFailure(code, f"cannot read image: {message[:300]}") from None

    def _decode(self, data: bytes) -> decode.DecodedImage:
        try:
            return decode_with_timeout(data, self.cfg.max_pixels, self.cfg.decode_timeout_s, self.decoder)
        except decode.ImageDecodeError as exc:
            raise StepFailure(exc.code, str(exc)) from None
        except MemoryError:
            raise StepFailure("too_large", "not enough memory to decode this image") from None
        except Exception as exc:  # noqa: BLE001 - a decoder bug on hostile input is this image's error
            raise StepFailure("corrupt", f"cannot decode image: {type(exc).__name__}: {exc}"[:300]) from None


class PlanAndPrepare(beam.DoFn):
    """`PlanJobs` and `Prepare` in one step: a group of listing hits and manifest rows -> (path,
    Item) for its Job, or records (tag 'records'). An exception that escapes either fails the
    whole group, and its dead letter (the group) becomes a record per row."""

    def __init__(self, plan: PlanJobs, prepare: Prepare):
        self.plan, self.prepare = plan, prepare

    def setup(self):
        self.prepare.setup()

    def teardown(self):
        self.prepare.teardown()

    def process(self, element, shards=()):
        for out in self.plan.process(element, shards):
            if isinstance(out, Job):
                yield from self.prepare.process(out)
            else:
                yield out


def decode_with_timeout(data: bytes, max_pixels: int, timeout_s: float,
                        worker: DecodeWorker | None = None) -> decode.DecodedImage:
    """Decode in a child process (`worker`, else a new one, closed after); give up with
    ImageDecodeError 'timeout' after `timeout_s`, the child killed so the work stops."""
    own = worker is None
    worker = DecodeWorker(max_pixels) if own else worker
    try:
        return worker.decode(data, timeout_s)
    finally:
        if own:
            worker.close()
