"""`python -m pipeline.run`: the Filigree batch job (launcher).

    python -m pipeline.run                                    # bundled samples -> ./out
    python -m pipeline.run --input DIR --assignments a.csv --output OUT --verify attacks
    python -m pipeline.run --input gs://b/in/ --output gs://b/out --runner DataflowRunner ...
    python -m pipeline.run --mode extract --input OUT/marked --assignments a.csv

Outputs: OUTPUT/marked/<path relative to input> and OUTPUT/report/{images-*.jsonl,
summary.json, summary.html}. Unknown options go to Beam; without --runner the local
DirectRunner runs the job in this process.
"""

from __future__ import annotations

import json
import logging
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import apache_beam as beam  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: E402

from pipeline import report  # noqa: E402
from pipeline.bundle import BundleError, ModelCard, read_card  # noqa: E402
from pipeline.manifest import InputSpec, describe_input, has_scheme  # noqa: E402
from pipeline.options import RunConfig, parse_run_args  # noqa: E402
from pipeline.payload import PayloadCodec, PayloadError  # noqa: E402
from pipeline.transforms import Watermark  # noqa: E402


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


def report_prefix(output: str) -> str:
    return FileSystems.join(output.rstrip("/"), "report")


def build_pipeline(pipeline: beam.Pipeline, cfg: RunConfig, spec: InputSpec, card: ModelCard,
                   codec: PayloadCodec, model_dir: str) -> None:
    """Attach the whole job to `pipeline`."""
    records = pipeline | "Watermark" >> Watermark(cfg, spec, card, codec, model_dir)
    (records
     | "RecordsToJson" >> beam.Map(lambda r: json.dumps(r, sort_keys=True, allow_nan=False))
     | "WriteRecords" >> beam.io.WriteToText(FileSystems.join(report_prefix(cfg.output), "images"),
                                             file_name_suffix=".jsonl"))
    (records
     | "Summarize" >> beam.CombineGlobally(report.SummaryFn())
     | "WriteSummary" >> beam.Map(finish_report, cfg=cfg, model_name=card.name))


def finish_report(summary: dict, cfg: RunConfig, model_name: str) -> dict:
    """Write summary.json/.html (with thumbnails of a few samples); fail the job when the error
    share exceeds --max_error_rate."""
    summary = {**summary, "model": model_name}
    thumbnails = report.sample_thumbnails(summary)
    report.write_summary(cfg.output, summary, thumbnails)
    counts = summary["counts"]
    if cfg.max_error_rate is not None and counts["total"]:
        rate = counts["error"] / counts["total"]
        if rate > cfg.max_error_rate:
            raise RuntimeError(f"{counts['error']} of {counts['total']} inputs failed ({rate:.1%}), "
                               f"above --max_error_rate {cfg.max_error_rate:.1%}; see {report_prefix(cfg.output)}")
    return summary


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
        model_dir = cfg.model
        if model_dir is None:
            from pipeline.resources import bundled_model_dir
            model_dir = bundled_model_dir()
        card = read_card(model_dir)
        codec = PayloadCodec.from_card(card.raw, key=key)
        if cfg.payload is not None:
            codec.parse(cfg.payload)
        if cfg.assignments and not FileSystems.exists(cfg.assignments):
            raise ValueError(f"--assignments {cfg.assignments} does not exist")
        spec = resolve_input(cfg.input)
    except (ValueError, BundleError, PayloadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    del key
    print(f"filigree: {cfg.mode} {spec.pattern} with model {card.name} ({codec.data_bits} data bits) "
          f"-> {cfg.output}", flush=True)
    options = beam_options(beam_args)
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, cfg, spec, card, codec, model_dir)
    if options.view_as(StandardOptions).runner not in ("DirectRunner", "direct"):
        return 0
    summary_path = FileSystems.join(report_prefix(cfg.output), "summary.json")
    with FileSystems.open(summary_path) as f:
        summary = json.loads(f.read())
    print(report.format_console_summary(summary, cfg.output), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
