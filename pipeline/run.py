"""`python -m pipeline.run`: the Filigree batch job (launcher).

    python -m pipeline.run                                    # bundled samples -> ./out
    python -m pipeline.run --input DIR --assignments a.csv --output OUT --verify attacks
    python -m pipeline.run --input gs://b/in/ --assignments 'gs://b/manifests/day-*.csv' --output gs://b/out ...
    python -m pipeline.run --input gs://b/in/ --output gs://b/out --runner DataflowRunner ...
    python -m pipeline.run --mode extract --input OUT/marked --assignments a.csv

Outputs: OUTPUT/marked/<path relative to input> and OUTPUT/report/{images-*.jsonl,
summary.json, summary.html}. Unknown options go to Beam; without --runner the local
DirectRunner runs the job in this process.

Exit status: 0 when the job ran (whatever share of images failed, unless --max_error_rate says
otherwise); 2 for bad options, a missing manifest, model or input, before anything runs; 3 when
the share of `error` records exceeded --max_error_rate (the report is still written, then the
job fails); 1 when the job itself failed. Errors are one `error: ...` line on stderr.

Re-runs: the previous run's report files (images-*.jsonl shards, summary.json, summary.html)
are removed before the job starts, so the report always describes one run; marked images are
rewritten in place under the same names (or skipped with --skip_existing). Temp files that an
interrupted run left under OUTPUT/marked/ (`.name.<uuid>.tmp`, older than
`storage.STALE_TEMP_AGE_S`) are removed too.

Console: only Filigree's own lines (TensorFlow's C++ start-up lines are filtered out, see
`pipeline.console`) unless --verbose. The order of records
in the JSONL shards is not specified (sort by `image`, `line` to compare runs); each record and
summary.json are identical across re-runs over the same inputs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from pipeline.console import quiet_native_logs, verbose_requested  # noqa: E402 - first: before TensorFlow

if __name__ == "__main__":
    quiet_native_logs(verbose_requested(sys.argv[1:]))

import apache_beam as beam  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions, StandardOptions  # noqa: E402

from filigree.bundle import BundleError, ModelCard, read_card  # noqa: E402
from filigree.payload import PayloadCodec, PayloadError  # noqa: E402
from filigree.periodic import SaltedCodec, codec_for_card  # noqa: E402
from pipeline.blocks import BlockSummaryFn, RecordBlock  # noqa: E402
from pipeline.graph import Watermark  # noqa: E402
from pipeline.manifest import (InputSpec, check_manifests, combine_inputs, describe_input, has_scheme,  # noqa: E402
                               split_inputs)
from pipeline.options import RunConfig, parse_run_args  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from pipeline.report import format_console_summary, write_summary  # noqa: E402
from pipeline.storage import STALE_TEMP_AGE_S, is_temp_name  # noqa: E402
from pipeline.thumbnails import sample_thumbnails  # noqa: E402


def resolve_input(path: str) -> InputSpec:
    """Decide whether `--input` is a file, a folder, a glob or a prefix."""
    if has_scheme(path):
        exact = FileSystems.match([path])[0].metadata_list if not any(c in path for c in "*?[") else []
        is_file = any(m.path == path for m in exact)
        is_dir = not is_file and bool(FileSystems.match([path.rstrip("/") + "/*"])[0].metadata_list)
    else:
        is_file, is_dir = os.path.isfile(path), os.path.isdir(path)
        path = os.path.abspath(path) if (is_file or is_dir) else path
    return describe_input(path, is_dir=is_dir, is_file=is_file)


def resolve_inputs(text: str) -> InputSpec:
    """`--input` as one listing plan: one path, or a comma-separated list of them (listed in
    parallel; a path that exists as given is never split)."""
    if not has_scheme(text) and os.path.exists(text):
        return resolve_input(text)
    return combine_inputs([resolve_input(path) for path in split_inputs(text)])


def report_prefix(output: str) -> str:
    return FileSystems.join(output.rstrip("/"), "report")


def build_pipeline(pipeline: beam.Pipeline, cfg: RunConfig, spec: InputSpec, card: ModelCard,
                   codec: PayloadCodec | SaltedCodec, model_dir: str) -> None:
    """Attach the whole job to `pipeline`."""
    blocks = pipeline | "Watermark" >> Watermark(cfg, spec, card, codec, model_dir)
    (blocks
     | "RecordsToJson" >> beam.Map(RecordBlock.text)
     | "WriteRecords" >> beam.io.WriteToText(FileSystems.join(report_prefix(cfg.output), "images"),
                                             file_name_suffix=".jsonl"))
    (blocks
     | "Summarize" >> beam.CombineGlobally(BlockSummaryFn())
     | "WriteSummary" >> beam.Map(finish_report, cfg=cfg, model_name=card.name))


class ErrorRateExceeded(RuntimeError):
    """The share of `error` records is above --max_error_rate (raised after the report is
    written, so that the job fails on every runner)."""


ERROR_RATE_MARKER = "above --max_error_rate"


def check_error_rate(counts: dict, max_error_rate: float | None, output: str) -> None:
    """Raise ErrorRateExceeded when `error / total` exceeds `max_error_rate`."""
    if max_error_rate is None or not counts.get("total"):
        return
    rate = counts["error"] / counts["total"]
    if rate > max_error_rate:
        raise ErrorRateExceeded(f"{counts['error']} of {counts['total']} inputs failed ({rate:.1%}), "
                                f"{ERROR_RATE_MARKER} {max_error_rate:.1%}; see {report_prefix(output)}")


def finish_report(summary: dict, cfg: RunConfig, model_name: str) -> dict:
    """Write summary.json/.html (with thumbnails of a few samples); fail the job when the error
    share exceeds --max_error_rate."""
    summary = {**summary, "model": model_name}
    thumbnails = sample_thumbnails(summary)
    write_summary(cfg.output, summary, thumbnails)
    check_error_rate(summary["counts"], cfg.max_error_rate, cfg.output)
    return summary


def clear_report(output: str) -> list[str]:
    """Delete a previous run's report files (only the names this job writes); their paths."""
    prefix = report_prefix(output)
    patterns = [FileSystems.join(prefix, "images-*-of-*.jsonl"), FileSystems.join(prefix, "summary.json"),
                FileSystems.join(prefix, "summary.html")]
    stale = [meta.path for result in FileSystems.match(patterns) for meta in result.metadata_list]
    if stale:
        FileSystems.delete(stale)
    return stale


def clear_stale_temp_files(output: str, min_age_s: float = STALE_TEMP_AGE_S) -> list[str]:
    """Delete the temp files (`.name.<32 hex>.tmp`, see `storage.write_atomically`) that an
    interrupted run left under OUTPUT/marked/, when older than `min_age_s` (a run writing there
    right now keeps its own); their paths."""
    pattern = FileSystems.join(output.rstrip("/"), "marked", "**")
    now = time.time()
    stale = [meta.path for meta in FileSystems.match([pattern])[0].metadata_list
             if is_temp_name(meta.path) and now - (meta.last_updated_in_seconds or now) >= min_age_s]
    if stale:
        FileSystems.delete(stale)
    return stale


def describe_failure(exc: BaseException) -> str:
    """One line about a failed job (the first line of the error, without Beam's traceback)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:1000]


def beam_options(beam_args: list[str]) -> PipelineOptions:
    """Beam options; the in-process DirectRunner unless a runner is named."""
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = "DirectRunner"
    return options


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        cfg, key, beam_args = parse_run_args(argv)
        quiet_native_logs(cfg.verbose)
        from filigree.resources import model_dir_of
        model_dir = model_dir_of(cfg.model)
        card = read_card(model_dir)
        codec = codec_for_card(card, key)
        if cfg.payload is not None:
            codec.parse(cfg.payload)
        if cfg.assignments:
            check_manifests(cfg.assignments)
        spec = resolve_inputs(cfg.input)
        options = beam_options(beam_args)
        if not options.view_as(GoogleCloudOptions).template_location:  # staging a template runs nothing
            clear_report(cfg.output)
            clear_stale_temp_files(cfg.output)
    except (ValueError, BundleError, PayloadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    del key
    Progress.reset()
    print(f"filigree: {cfg.mode} {','.join(spec.patterns)} with model {card.name} ({codec.data_bits} data bits) "
          f"-> {cfg.output}", flush=True)
    try:
        with beam.Pipeline(options=options) as pipeline:
            build_pipeline(pipeline, cfg, spec, card, codec, model_dir)
    except Exception as exc:  # noqa: BLE001 - any job failure ends in a clear line and a status
        if isinstance(exc, ErrorRateExceeded) or ERROR_RATE_MARKER in str(exc):
            print(f"error: the job failed: {describe_failure(exc).split(': ', 1)[1]}", file=sys.stderr, flush=True)
            return 3
        print(f"error: the job failed: {describe_failure(exc)}", file=sys.stderr, flush=True)
        return 1
    if options.view_as(StandardOptions).runner not in ("DirectRunner", "direct"):
        return 0
    summary_path = FileSystems.join(report_prefix(cfg.output), "summary.json")
    with FileSystems.open(summary_path) as f:
        summary = json.loads(f.read())
    print(format_console_summary(summary, cfg.output), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
