"""The job's input stage, and the whole job, at scale: manifest rows per second and memory per row,
beside a bare Beam pipeline on the same rows.

    nice -n 10 env PYTHONPATH=. .venv/bin/python benchmarks/input_scale.py --rows 10000,100000,1000000
    nice -n 10 env PYTHONPATH=. .venv/bin/python benchmarks/input_scale.py --pipelines run,bare --rows 3000,30000

For each size a manifest of generated rows is written as `--shards` CSV shards (`image,payload`,
paths like `cam07/2026/IMG_00012345.jpg`, 16-hex-digit payloads; one row in 1,000 repeats an
earlier image and one in 1,000 has no payload), and read by a glob. Two pipelines run on it, each
in a fresh process on Beam's DirectRunner:

* **job**: the job's input stage, `pipeline.graph.plan_inputs` (what `Watermark` runs before
  decoding, there in the same step as decoding): `ListInputs` (the manifest read in parallel blocks, `pipeline.planning.ReadManifest`;
  no listing, since the manifest names the images) and `PlanJobs`, ending in a count of Jobs plus
  records, which must equal the number of rows (every row accounted for);
* **run**: the whole job, `pipeline.run.main` (`python -m pipeline.run --verify none`), over
  `--real_images` real photos (320 x 240 JPEGs made from the bundled samples, named by the first
  rows) and rows that name missing files (each becomes a `not_found` record); payloads are 12 hex
  digits (48 bits, within the bundled model's data bits) and the count is summary.json's total;
* **bare**: `ReadFromText(glob, skip_header_lines=1)`, keyed by the image column, `CoGroupByKey`,
  a count.

Printed per run: wall seconds, rows per wall second, CPU seconds (user + system of the process
during the run) per million rows, and the peak resident memory above the process before the run,
per row. The last table compares job and bare: per-row CPU time and memory at each size, and the
growth from one size to the next (which removes fixed costs such as start-up, loading the
models and the first buffers), against the targets: at most `TARGET_CPU` times the bare
pipeline's CPU time and `TARGET_MEMORY` times its peak memory growth per row. On a shared machine
CPU time is the steadier figure; wall time follows the load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PIPELINES = ("run", "job", "bare")
TARGET_CPU = 4.0
"""The job's CPU time per row may be at most this many times the bare pipeline's."""
TARGET_MEMORY = 1.5
"""The job's peak memory growth per row may be at most this many times the bare pipeline's."""
RUN_PAYLOAD_DIGITS = 12
"""Hex digits of the whole job's payloads (48 bits: within the bundled model's data bits)."""


def write_manifest(folder: Path, rows: int, shards: int, seed: int = 0, payload_digits: int = 16,
                   named: tuple[str, ...] = ()) -> str:
    """`rows` generated rows in `shards` CSV files under `folder` (the first ones name the images
    `named`, the others generated paths); returns their glob."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    per_shard = -(-rows // shards)
    written = 0
    for shard in range(shards):
        lines = ["image,payload\n"]
        for i in range(written, min(written + per_shard, rows)):
            image = i - 1 - rng.randrange(max(i, 1)) if i and i % 1000 == 999 else i  # a duplicate row
            payload = "" if i % 1000 == 500 else f"{rng.getrandbits(4 * payload_digits):0{payload_digits}x}"
            name = named[image] if image < len(named) else f"cam{image % 97:02d}/2026/IMG_{image:08d}.jpg"
            lines.append(f"{name},{payload}\n")
        written = min(written + per_shard, rows)
        (folder / f"part-{shard:05d}-of-{shards:05d}.csv").write_text("".join(lines))
    return str(folder / "part-*.csv")


def write_photos(folder: Path, count: int, size: tuple[int, int] = (320, 240)) -> tuple[str, ...]:
    """`count` JPEGs of `size` under `folder`, made from the bundled sample photos; their names."""
    from PIL import Image

    from filigree.resources import bundled_samples_dir

    samples = sorted(p for p in Path(bundled_samples_dir()).iterdir() if p.suffix in (".jpg", ".png"))
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        with Image.open(samples[i % len(samples)]) as image:
            photo = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        photo = photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if (i // len(samples)) % 2 else photo
        names.append(f"photos/photo_{i:03d}.jpg")
        photo.save(folder / names[-1], quality=90)
    return tuple(names)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def job_stage(pipeline, manifest: str, root: str, output: str) -> list:
    """The job's input stage (`pipeline.graph.plan_inputs`): its PCollections of Jobs and records."""
    from pipeline.graph import plan_inputs
    from pipeline.manifest import describe_input
    from pipeline.options import RunConfig

    cfg = RunConfig(input=root, output=output, assignments=manifest)
    jobs, record_sets = plan_inputs(pipeline, cfg, describe_input(root, is_dir=True, is_file=False))
    return [jobs, *record_sets]


def bare_stage(pipeline, manifest: str) -> list:
    """ReadFromText -> key by image -> CoGroupByKey: one element per row."""
    import apache_beam as beam

    keyed = (pipeline
             | "Read" >> beam.io.ReadFromText(manifest, skip_header_lines=1)
             | "Key" >> beam.Map(lambda line: (line.split(",", 1)[0], line)))
    return [{"rows": keyed} | "Join" >> beam.CoGroupByKey() | "Rows" >> beam.FlatMap(lambda kv: kv[1]["rows"])]


def count_all(outputs: list):
    """The number of elements of all `outputs`, each counted where it is made (a Flatten first
    would hold every element of its inputs on the DirectRunner)."""
    import apache_beam as beam

    counts = [output | f"Count{i}" >> beam.combiners.Count.Globally() for i, output in enumerate(outputs)]
    return tuple(counts) | "Counts" >> beam.Flatten() | "Total" >> beam.CombineGlobally(sum)


def run_job(manifest: str, root: str, output: str) -> int:
    """The whole job (`python -m pipeline.run --verify none`) in this process; its total of
    records (summary.json)."""
    from pipeline.run import main as run_main

    status = run_main(["--input", root, "--assignments", manifest, "--output", output, "--verify", "none"])
    if status != 0:
        raise RuntimeError(f"pipeline.run exited with status {status}")
    return json.loads((Path(output) / "report" / "summary.json").read_text())["counts"]["total"]


def run_pipeline(kind: str, manifest: str, root: str, output: str) -> int:
    """The input stage (`job`) or the bare pipeline on the DirectRunner; its count."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    count_file = Path(output) / f"{kind}-count.txt"
    count_file.parent.mkdir(parents=True, exist_ok=True)
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as pipeline:
        outputs = job_stage(pipeline, manifest, root, output) if kind == "job" else bare_stage(pipeline, manifest)
        count_all(outputs) | "Write" >> beam.Map(lambda n: count_file.write_text(str(n)))
    return int(count_file.read_text())


def run_child(kind: str, manifest: str, root: str, output: str) -> dict:
    """Run one pipeline in this process; its count, wall and CPU time, and memory."""
    if kind == "run":
        import pipeline.run  # noqa: F401 - its imports (TensorFlow, Beam) are not the run's cost
    else:
        import apache_beam  # noqa: F401
    before_rss = rss_bytes()
    before_cpu = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    count = run_job(manifest, root, output) if kind == "run" else run_pipeline(kind, manifest, root, output)
    wall = time.perf_counter() - started
    after_cpu = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after_cpu.ru_utime - before_cpu.ru_utime) + (after_cpu.ru_stime - before_cpu.ru_stime)
    peak = after_cpu.ru_maxrss * 1024
    return {"kind": kind, "count": count, "wall_s": wall, "cpu_s": cpu,
            "rss_before": before_rss, "peak_growth": max(0, peak - before_rss)}


def run_in_fresh_process(kind: str, manifest: str, root: str, output: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run([sys.executable, __file__, "--child", kind, "--manifest", manifest, "--root", root,
                             "--output", output], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def per_row(run: dict, rows: int) -> dict:
    return {"rows_per_s": rows / run["wall_s"], "cpu_us": run["cpu_s"] / rows * 1e6,
            "bytes": run["peak_growth"] / rows}


def growth(small: dict, large: dict, rows_small: int, rows_large: int) -> dict:
    """Per-row CPU and memory between two sizes (fixed costs cancel out)."""
    extra = rows_large - rows_small
    return {"cpu_us": (large["cpu_s"] - small["cpu_s"]) / extra * 1e6,
            "bytes": (large["peak_growth"] - small["peak_growth"]) / extra}


def ratio(job: float, bare: float) -> float:
    return job / bare if bare > 0 else float("inf")


def verdict(value: float, target: float) -> str:
    return "within" if value <= target else "above"


def print_tables(results: dict[int, dict[str, dict]], kinds: tuple[str, ...]) -> None:
    print("\n| rows | pipeline | wall s | rows/s | CPU µs/row | peak memory growth | bytes/row | count |")
    print("|---|---|---|---|---|---|---|---|")
    for rows, runs in sorted(results.items()):
        for kind in kinds:
            run, figures = runs[kind], per_row(runs[kind], rows)
            print(f"| {rows:,} | {kind} | {run['wall_s']:.1f} | {figures['rows_per_s']:,.0f} | "
                  f"{figures['cpu_us']:.0f} | {run['peak_growth'] / 2**20:.0f} MiB | {figures['bytes']:.0f} | "
                  f"{run['count']:,} |")
    sizes = sorted(results)
    for kind in (k for k in kinds if k != "bare"):
        print(f"\n| rows | {kind} / bare: CPU per row | {kind} / bare: peak memory per row |")
        print("|---|---|---|")
        for rows in sizes:
            job, bare = per_row(results[rows][kind], rows), per_row(results[rows]["bare"], rows)
            print(f"| {rows:,} | {ratio(job['cpu_us'], bare['cpu_us']):.2f} | {ratio(job['bytes'], bare['bytes']):.2f} |")
        for small, large in zip(sizes, sizes[1:]):
            job = growth(results[small][kind], results[large][kind], small, large)
            bare = growth(results[small]["bare"], results[large]["bare"], small, large)
            cpu, memory = ratio(job["cpu_us"], bare["cpu_us"]), ratio(job["bytes"], bare["bytes"])
            print(f"| growth {small:,} → {large:,} | {cpu:.2f} ({job['cpu_us']:.0f} vs {bare['cpu_us']:.0f} µs; "
                  f"target ≤ {TARGET_CPU:g}: {verdict(cpu, TARGET_CPU)}) | {memory:.2f} ({job['bytes']:.0f} vs "
                  f"{bare['bytes']:.0f} B; target ≤ {TARGET_MEMORY:g}: {verdict(memory, TARGET_MEMORY)}) |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000,1000000", help="comma-separated manifest sizes")
    parser.add_argument("--shards", type=int, default=4, help="CSV shards per manifest")
    parser.add_argument("--pipelines", default="job,bare",
                        help="comma-separated, from run (the whole job), job (its input stage), bare")
    parser.add_argument("--real_images", type=int, default=20,
                        help="run: real photos among the rows (the others name missing files)")
    parser.add_argument("--child", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.manifest, args.root, args.output)))
        return 0
    kinds = tuple(kind for kind in PIPELINES if kind in args.pipelines.split(","))
    if "bare" not in kinds or len(kinds) < 2:
        parser.error("--pipelines: bare and at least one of run, job")
    whole_job = "run" in kinds
    results: dict[int, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="filigree-input-scale-") as tmp:
        named = write_photos(Path(tmp) / "in", args.real_images) if whole_job else ()
        for rows in (int(n) for n in args.rows.split(",")):
            base = Path(tmp) / str(rows)
            manifest = write_manifest(base / "manifests", rows, args.shards,
                                      payload_digits=RUN_PAYLOAD_DIGITS if whole_job else 16, named=named)
            root = Path(tmp) / "in" if whole_job else base / "in"
            root.mkdir(exist_ok=True)
            results[rows] = {}
            for kind in kinds:
                run = run_in_fresh_process(kind, manifest, str(root), str(base / f"out-{kind}"))
                expected = rows
                if run["count"] != expected:
                    raise SystemExit(f"{kind} at {rows} rows counted {run['count']}, expected {expected}")
                results[rows][kind] = run
                print(f"{rows:>9,} rows  {kind:<4}  {run['wall_s']:7.1f} s wall  {run['cpu_s']:7.1f} s CPU  "
                      f"peak +{run['peak_growth'] / 2**20:6.0f} MiB", flush=True)
    print_tables(results, kinds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
