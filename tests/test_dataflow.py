"""The Dataflow path, proven offline: no network, no credentials.

- The commands of docs/dataflow.md are run for real with --runner=DataflowRunner and
  --template_location: the launcher translates the whole job, stages its artefacts and writes a
  classic template, all on the local GCS server (tests/conftest.py). The test reads the template
  back (worker image, experiments, service options, Beam options), compares the staged graph with
  the one the launcher builds, unpickles every staged function in a fresh interpreter as a worker
  would, and looks for the secret key in every byte that was written.
- The Flex Template metadata (pipeline/flex_template.json) declares exactly the pipeline's
  options; the launch request body, the gcloud commands and the Airflow DAG in docs/dataflow.md
  only use options that exist.
- The Dockerfile builds one image that is both the Flex Template launcher and the workers' SDK
  container, from the same pins as setup.py.
"""

from __future__ import annotations

import argparse
import ast
import base64
import binascii
import bz2
import contextlib
import dataclasses
import datetime
import io
import json
import os
import re
import runpy
import shlex
import subprocess
import sys
import textwrap
import uuid
import warnings
import zlib
from pathlib import Path

import pytest

from pipeline.options import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "dataflow.md"
README = ROOT / "README.md"
METADATA = ROOT / "pipeline" / "flex_template.json"
DATA = ROOT / "filigree" / "data"

# Values that stand in for the shell variables of docs/dataflow.md.
PROJECT = "filigree-test"
REGION = "europe-west4"
IMAGE = "europe-west4-docker.pkg.dev/filigree-test/filigree/filigree:0.1.0"
IMAGE_GPU = "europe-west4-docker.pkg.dev/filigree-test/filigree/filigree-gpu:0.1.0"
DAY = "2026-11-27"

# Launch parameters are visible to anyone who can view a job: the key comes from key_file.
NOT_TEMPLATE_PARAMETERS = {"key"}


# -- docs/dataflow.md ---------------------------------------------------------------------------

def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of a Markdown file in one language."""
    pattern = re.compile(rf"^```{language}[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
    return [m.group(1) for m in pattern.finditer(path.read_text())]


def shell_commands(path: Path) -> list[list[str]]:
    """The commands of the sh blocks, `\\` continuations joined, comments dropped, as words."""
    commands = []
    for block in code_blocks(path, "sh"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands.append(shlex.split(line, comments=True))
    return commands


def pipeline_commands(path: Path) -> list[list[str]]:
    """Arguments of every `python -m pipeline.run ...` command in a Markdown file."""
    found = []
    for words in shell_commands(path):
        for i in range(len(words) - 2):
            if words[i].endswith("python") and words[i + 1:i + 3] == ["-m", "pipeline.run"]:
                found.append(words[i + 3:])
    return found


def gcloud_commands(path: Path, *group: str) -> list[list[str]]:
    """Arguments of every `gcloud GROUP... ` command."""
    prefix = ["gcloud", *group]
    return [words[len(prefix):] for words in shell_commands(path) if words[:len(prefix)] == prefix]


def substitute(words: list[str], bucket: str) -> list[str]:
    values = {"PROJECT": PROJECT, "REGION": REGION, "BUCKET": bucket, "IMAGE": IMAGE,
              "IMAGE_GPU": IMAGE_GPU, "DAY": DAY}
    return [re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], w) for w in words]


def unknown_beam_options(beam_args: list[str]) -> set[str]:
    """Options that no Beam/Dataflow PipelineOptions class declares."""
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(beam_args)
    return (set(options.get_all_options(retain_unknown_options=True))
            - set(options.get_all_options()))


def check_pipeline_args(args: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse like the launcher does; fail on any option neither Filigree nor Beam knows, and on
    abbreviations (argparse would accept `--skip_exist`)."""
    parser = build_parser()
    parsed, beam_args = parser.parse_known_args(args)
    assert not unknown_beam_options(beam_args), f"unknown options in {args}"
    ours = {s for a in parser._actions for s in a.option_strings}
    for word in args:
        name = word.split("=", 1)[0]
        if word.startswith("--") and word not in beam_args:
            assert name in ours, f"{name} is not spelled as in build_parser()"
    return parsed, beam_args


def metadata() -> dict:
    return json.loads(METADATA.read_text())


def parser_options() -> dict[str, argparse.Action]:
    """The pipeline's own options by name, without --help."""
    return {a.dest: a for a in build_parser()._actions if a.option_strings and a.dest != "help"}


# -- the local GCS "project" --------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(gcs_server):
    """A bucket laid out as docs/dataflow.md assumes: a day of incoming photos and its manifest
    (one file, and the same rows as shards), photos found in the wild, a model bundle and a key
    file.

    Returns (bucket name, google.cloud.storage client, key)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    bucket = client.create_bucket(f"filigree-df-{uuid.uuid4().hex[:12]}")
    photos = sorted(p for p in (DATA / "samples").iterdir() if p.suffix.lower() in {".jpg", ".png"})[:2]
    for photo in photos:
        for folder in ("incoming", "found"):
            bucket.blob(f"{folder}/{DAY}/{photo.name}").upload_from_filename(str(photo))
    bucket.blob(f"manifests/{DAY}.csv").upload_from_string(
        "image,payload\n" + "".join(f"{p.name},{i + 1:x}\n" for i, p in enumerate(photos)))
    for i, p in enumerate(photos):  # the same rows as a glob of shards
        bucket.blob(f"manifests/{DAY}/part-{i:05d}-of-{len(photos):05d}.csv").upload_from_string(
            f"image,payload\n{p.name},{i + 1:x}\n")
    for path in (DATA / "model").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            bucket.blob(f"models/default/{path.relative_to(DATA / 'model').as_posix()}").upload_from_filename(str(path))
    key = f"filigree-dataflow-test-key-{uuid.uuid4().hex}"
    bucket.blob("secrets/filigree.key").upload_from_string(key + "\n")
    return bucket.name, client, key


def launch(argv: list[str]) -> None:
    """Runs flex_main.py in this process exactly as the Flex Template launcher runs it."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
            pytest.raises(SystemExit) as exit_info:
        patch.setattr(sys, "argv", [str(ROOT / "flex_main.py"), *argv])
        # runpy notes that other tests already imported pipeline.run; a launcher has not.
        warnings.filterwarnings("ignore", "'pipeline.run' found in sys.modules", RuntimeWarning)
        runpy.run_path(str(ROOT / "flex_main.py"), run_name="__main__")
    assert exit_info.value.code in (0, None), f"launcher failed:\n{out.getvalue()}"


def fetch_job(client, bucket: str, job_name: str, template: str, into: Path) -> tuple[dict, dict[str, Path]]:
    """(template JSON, {staged file name: local copy}) of the job written under the bucket."""
    into.mkdir(parents=True, exist_ok=True)
    template_path = into / "template.json"
    client.bucket(bucket).blob(template).download_to_filename(str(template_path))
    staged = {}
    for blob in client.list_blobs(bucket, prefix=f"staging/{job_name}."):
        local = into / blob.name.rsplit("/", 1)[-1]
        blob.download_to_filename(str(local))
        staged[local.name] = local
    return json.loads(template_path.read_text()), staged


def decoded_blobs(data: bytes):
    """`data` and every pickle payload inside it (Beam: base64 of bz2- or zlib-compressed)."""
    yield data
    for match in re.finditer(rb"[A-Za-z0-9+/]{40,}={0,2}", data):
        try:
            raw = base64.b64decode(match.group(0), validate=True)
        except (binascii.Error, ValueError):
            continue
        for decompress in (bz2.decompress, zlib.decompress):
            try:
                yield decompress(raw)
                break
            except (OSError, ValueError, zlib.error):
                continue
    for decompress in (bz2.decompress, zlib.decompress):
        try:
            yield decompress(data)
        except (OSError, ValueError, zlib.error):
            pass


def assert_key_absent(key: str, template: dict, staged: dict[str, Path], carried: str) -> None:
    """No trace of the key in the template or the staged files, pickles unpacked. `carried` is
    a string the pickled graph does hold (the output prefix), so the search provably sees inside."""
    written = [json.dumps(template).encode()] + [p.read_bytes() for p in staged.values()]
    blobs = [blob for data in written for blob in decoded_blobs(data)]
    for needle in (key.encode(), key.encode("utf-16-le"), base64.b64encode(key.encode())):
        assert not any(needle in blob for blob in blobs), "the secret key was written into the job"
    unpacked = [blob for blob in blobs if not any(blob is data for data in written)]
    assert any(carried.encode() in blob for blob in unpacked)


# A worker's first steps, in a fresh interpreter: load the main session, unpickle every function
# of the staged graph, and report what they carry.
WORKER = textwrap.dedent("""
    import dataclasses, json, sys
    from apache_beam.internal import pickler
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2
    from pipeline.options import RunConfig
    from filigree.payload import PayloadCodec
    from pipeline.handlers import BundleHandler

    def visit(obj, found, seen, depth=0):
        if id(obj) in seen or depth > 10:
            return
        seen.add(id(obj))
        if isinstance(obj, RunConfig):
            found["configs"].append(dataclasses.asdict(obj))
        elif isinstance(obj, BundleHandler):
            found["model_dirs"].append(obj.model_dir)
        elif isinstance(obj, PayloadCodec):
            found["codecs"] += 1
        if isinstance(obj, dict):
            children = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            children = list(obj)
        else:
            children = list(getattr(obj, "__dict__", {}).values())
        for child in children:
            visit(child, found, seen, depth + 1)

    def unpickle(pipeline_pb, main_session):
        pickler.load_session(main_session)
        pipeline = beam_runner_api_pb2.Pipeline.FromString(open(pipeline_pb, "rb").read())
        found = {"configs": [], "model_dirs": [], "codecs": 0, "functions": 0, "names": []}
        for transform in pipeline.components.transforms.values():
            found["names"].append(transform.unique_name)
            urn = transform.spec.urn
            if urn == common_urns.primitives.PAR_DO.urn:
                fn = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn
            elif urn in (common_urns.composites.COMBINE_GLOBALLY.urn, common_urns.composites.COMBINE_PER_KEY.urn):
                fn = beam_runner_api_pb2.CombinePayload.FromString(transform.spec.payload).combine_fn
            else:
                continue
            if not fn.urn.startswith("beam:") or "pickled" not in fn.urn:
                continue
            visit(pickler.loads(fn.payload), found, set())
            found["functions"] += 1
        return found

    jobs = sys.argv[1:]
    print(json.dumps([unpickle(pb, session) for pb, session in zip(jobs[::2], jobs[1::2])]))
""")


def unpickle_as_worker(jobs: list[dict[str, Path]]) -> list[dict]:
    """What a worker finds in each job's staged files (one fresh interpreter for all)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("STORAGE_EMULATOR_HOST", None)
    files = [str(staged[name]) for staged in jobs for name in ("pipeline.pb", "pickled_main_session")]
    result = subprocess.run([sys.executable, "-c", WORKER, *files],
                            capture_output=True, text=True, env=env, cwd="/", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def local_graph(args: list[str]) -> set[str]:
    """Names of every transform that the launcher's graph has, built here without running."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from filigree.bundle import read_card
    from pipeline.options import parse_run_args
    from filigree.payload import PayloadCodec
    from filigree.resources import bundled_model_dir
    from pipeline.run import build_pipeline, resolve_inputs

    cfg, key, _ = parse_run_args(args)
    model_dir = cfg.model or bundled_model_dir()
    card = read_card(model_dir)
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
    build_pipeline(pipeline, cfg, resolve_inputs(cfg.input), card, PayloadCodec.from_card(card.raw, key=key),
                   model_dir)
    return {t.unique_name for t in pipeline.to_runner_api().components.transforms.values()}


def assert_all_staged(graph: set[str], staged: list[str]) -> None:
    """Every transform of the local graph is in the staged one, except the reshuffle that
    `beam.Create` adds on other runners and Dataflow's batch Create does without."""
    missing = graph - set(staged)
    assert all(name.endswith("/MaybeReshuffle") or "/MaybeReshuffle/" in name for name in missing), missing


def expected_config(args: list[str]) -> dict:
    from pipeline.options import parse_run_args

    return dataclasses.asdict(parse_run_args(args)[0])


STEPS = {"Watermark/ListInputs", "Watermark/PlanAndDecode", "Watermark/Extract",
         "Watermark/ReadBack", "Watermark/AllBlocks", "RecordsToJson", "WriteRecords", "Summarize",
         "WriteSummary"}


def documented_command(marker: str) -> list[str]:
    """The one `python -m pipeline.run --runner DataflowRunner` command of docs/dataflow.md
    that contains `marker`."""
    matches = [args for args in pipeline_commands(DOC)
               if "DataflowRunner" in args and any(marker in a for a in args)]
    assert len(matches) == 1, f"expected one Dataflow command with {marker!r} in {DOC.name}"
    return matches[0]


# -- the offline Dataflow translation -----------------------------------------------------------

@dataclasses.dataclass
class Job:
    args: list[str]
    template: dict
    staged: dict[str, Path]
    worker: dict | None = None


@pytest.fixture(scope="module")
def jobs(site, tmp_path_factory) -> dict[str, Job]:
    """The documented GPU embed command (verification after attacks, bundled model, gs:// key
    file) and the documented extract command (gs:// model, the key itself on the command line),
    each launched with --template_location; then what a worker makes of their staged files."""
    bucket, client, key = site
    gpu = substitute(documented_command("worker_accelerator"), bucket)
    assert "--key" not in gpu and "--key_file" in gpu
    extract = substitute(documented_command("--mode"), bucket)
    at = extract.index("--key_file")  # the documented way; here the key itself, on the command line
    extract[at:at + 2] = ["--key", key]
    found = {}
    for name, args in (("gpu", gpu), ("extract", extract)):
        job_name, template = f"filigree-{name}-test", f"templates/{name}.json"
        launch(args + ["--job_name", job_name, "--template_location", f"gs://{bucket}/{template}"])
        spec, staged = fetch_job(client, bucket, job_name, template, tmp_path_factory.mktemp(name))
        found[name] = Job(args, spec, staged)
    for job, worker in zip(found.values(), unpickle_as_worker([j.staged for j in found.values()])):
        job.worker = worker
    return found


def test_gpu_job_template_has_image_experiments_and_options(site, jobs):
    bucket = site[0]
    environment = jobs["gpu"].template["environment"]
    pool, = environment["workerPools"]
    assert pool["workerHarnessContainerImage"] == IMAGE_GPU
    images = pool["sdkHarnessContainerImages"]
    assert [i["containerImage"] for i in images] == [IMAGE_GPU]
    assert images[0]["useSingleCorePerContainer"] is True  # one SDK process per VM, so per GPU
    assert {"use_runner_v2", "no_use_multiple_sdk_containers"} <= set(environment["experiments"])
    assert environment["serviceOptions"] == ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    # Beam's options, as the Dataflow UI shows them.
    options = environment["sdkPipelineOptions"]["options"]
    assert options["project"] == PROJECT and options["region"] == REGION
    assert options["job_name"] == "filigree-gpu-test"
    assert options["sdk_container_image"] == IMAGE_GPU
    assert options["machine_type"] == "g2-standard-4"
    assert options["max_num_workers"] == 4
    assert options["temp_location"].startswith(f"gs://{bucket}/tmp/")
    assert options["pipelineUrl"].startswith(f"gs://{bucket}/staging/filigree-gpu-test.")
    # Nothing to install on workers: the image has everything.
    assert set(jobs["gpu"].staged) == {"pipeline.pb", "pickled_main_session", "submission_environment_dependencies.txt"}


def test_cpu_job_template_runs_a_process_per_vcpu(jobs):
    environment = jobs["extract"].template["environment"]
    pool, = environment["workerPools"]
    assert [i["containerImage"] for i in pool["sdkHarnessContainerImages"]] == [IMAGE]
    assert "no_use_multiple_sdk_containers" not in environment["experiments"]
    assert "serviceOptions" not in environment
    assert environment["sdkPipelineOptions"]["options"]["max_num_workers"] == 10


def test_gpu_embed_job_stages_the_whole_graph_for_workers(site, jobs):
    """Every transform of the launcher's graph was staged; a fresh interpreter unpickles all of
    them, with Filigree's options as given and the bundled model left for each worker to find."""
    job = jobs["gpu"]
    graph = local_graph(job.args)
    assert STEPS | {"Watermark/Embed", "Watermark/MarkAndWrite"} <= graph
    assert_all_staged(graph, job.worker["names"])
    assert job.worker["functions"] >= 10
    expected = expected_config(job.args)
    assert expected["verify"] == "attacks" and expected["skip_existing"] and expected["max_error_rate"] == 0.01
    assert expected["output"] == f"gs://{site[0]}/marked/{DAY}"
    # A glob of manifest shards, read in parallel blocks; the rows are the work: no listing.
    assert expected["assignments"] == f"gs://{site[0]}/manifests/{DAY}/part-*.csv"
    assert {f"Watermark/ListInputs/ReadManifest/{step}" for step in ("MatchShards", "ScanBlocks", "ReadRows")} <= graph
    assert not any(name.startswith("Watermark/ListInputs/MatchFiles") for name in graph)
    assert job.worker["configs"] and all(c == expected for c in job.worker["configs"])
    assert job.worker["model_dirs"] and set(job.worker["model_dirs"]) == {None}
    assert job.worker["codecs"] >= 2


def test_extract_job_stages_the_whole_graph_for_workers(site, jobs):
    job = jobs["extract"]
    graph = local_graph(job.args)
    assert STEPS <= graph and not graph & {"Watermark/Embed", "Watermark/MarkAndWrite"}
    assert_all_staged(graph, job.worker["names"])
    expected = expected_config(job.args)
    assert expected["mode"] == "extract"
    assert "Watermark/ListInputs/MatchFiles" in graph  # no manifest: the input is listed
    assert not any("ReadManifest" in name for name in graph)
    assert job.worker["configs"] and all(c == expected for c in job.worker["configs"])
    assert set(job.worker["model_dirs"]) == {f"gs://{site[0]}/models/default"}


@pytest.mark.parametrize("name", ["gpu", "extract"])
def test_key_is_nowhere_in_the_job(site, jobs, name):
    """Not in the template, not in any staged file, not inside any pickle (--key_file for the GPU
    job, --key for the extract job)."""
    job = jobs[name]
    assert_key_absent(site[2], job.template, job.staged, carried=expected_config(job.args)["output"])


def test_dry_run_translates_without_staging(site):
    bucket, client, _ = site
    args = substitute(documented_command("--mode"), bucket)
    launch(args + ["--job_name", "filigree-dry-run", "--dry_run=True"])
    assert not list(client.list_blobs(bucket, prefix="staging/filigree-dry-run."))


def test_key_file_on_gcs(site):
    from filigree.payload import resolve_key

    bucket, _, key = site
    assert resolve_key(key_file=f"gs://{bucket}/secrets/filigree.key", env_var=None) == key.encode()
    with pytest.raises(ValueError, match="cannot read key file") as error:
        resolve_key(key_file=f"gs://{bucket}/secrets/missing.key", env_var=None)
    assert key not in str(error.value)


# -- Flex Template ------------------------------------------------------------------------------

def test_flex_template_parameters_are_the_pipeline_options():
    options = parser_options()
    assert NOT_TEMPLATE_PARAMETERS <= set(options)
    names = [p["name"] for p in metadata()["parameters"]]
    assert len(names) == len(set(names))
    assert set(names) == set(options) - NOT_TEMPLATE_PARAMETERS


def test_flex_template_metadata_is_valid_and_consistent_with_the_parser():
    from google.cloud.dataflow_v1beta3.types import TemplateMetadata

    TemplateMetadata.from_json(METADATA.read_text())  # field names and types of the API
    options = parser_options()
    for parameter in metadata()["parameters"]:
        action = options[parameter["name"]]
        assert parameter["label"] and parameter["helpText"]
        if not parameter["isOptional"]:
            assert parameter["name"] in {"input", "output"}  # their local defaults mean nothing on Dataflow
        regexes = [re.compile(r) for r in parameter.get("regexes", [])]
        accepts = lambda value: all(r.fullmatch(value) for r in regexes)  # noqa: E731
        if action.choices:
            assert regexes, parameter["name"]
            assert all(accepts(c) for c in action.choices) and not accepts("other")
        elif isinstance(action, argparse._StoreTrueAction):
            assert accepts("true") and accepts("false") and not accepts("yes please")
        elif action.type in (int, float):
            assert regexes, parameter["name"]
            if action.default is not None:
                assert accepts(str(action.default)), parameter["name"]
            assert not accepts("abc")


def test_flex_launcher_arguments_reach_the_pipeline():
    """The launcher passes every parameter as --name=value: all of them parse, switches included,
    and {today}/{yesterday} become UTC dates."""
    flex_main = runpy.run_path(str(ROOT / "flex_main.py"))
    now = datetime.datetime(2026, 11, 28, 0, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    samples = {"input": "gs://b/incoming/{yesterday}/", "output": "gs://b/marked/{today}", "mode": "embed",
               "verify": "attacks", "skip_existing": "true", "max_error_rate": "0.01", "seed": "3",
               "fpr": "1e-6", "jpeg_quality": "90", "batch_size": "8"}
    args = flex_main["launcher_args"]([f"--{k}={v}" for k, v in samples.items()], now)
    parsed, beam_args = build_parser().parse_known_args(args)
    assert beam_args == []
    assert parsed.input == "gs://b/incoming/2026-11-26/" and parsed.output == "gs://b/marked/2026-11-27"
    assert parsed.skip_existing is True and parsed.max_error_rate == 0.01
    off = build_parser().parse_known_args(flex_main["launcher_args"](["--skip_existing=false"], now))[0]
    assert off.skip_existing is False
    with pytest.raises(SystemExit):
        flex_main["launcher_args"](["--skip_existing=maybe"], now)


# -- docs/dataflow.md and README.md: commands that match the tested options ---------------------

def test_documented_pipeline_commands_parse():
    commands = pipeline_commands(DOC) + pipeline_commands(README)
    assert len([c for c in commands if "DataflowRunner" in c]) >= 3
    for args in commands:
        parsed, beam_args = check_pipeline_args(args)
        if "DataflowRunner" in args:
            assert parsed.input and parsed.output.startswith("gs://"), args
            assert "--sdk_container_image" in beam_args, args


def test_documented_flex_template_commands_match_the_metadata():
    names = {p["name"] for p in metadata()["parameters"]}
    builds = gcloud_commands(DOC, "dataflow", "flex-template", "build")
    assert len(builds) == 1
    assert "--metadata-file" in builds[0] and builds[0][builds[0].index("--metadata-file") + 1] == \
        "pipeline/flex_template.json"
    assert builds[0][builds[0].index("--sdk-language") + 1] == "PYTHON"
    runs = gcloud_commands(DOC, "dataflow", "flex-template", "run")
    assert runs
    flex_main = runpy.run_path(str(ROOT / "flex_main.py"))
    for words in runs:
        parameters = {}
        for i, word in enumerate(words):
            if word == "--parameters":
                value = words[i + 1]
                if value.startswith("^"):  # gcloud's alternative delimiter: ^~^a=1,2~b=3
                    delimiter, value = value[1:].split("^", 1)
                    items = value.split(delimiter)
                else:
                    items = value.split(",")
                parameters.update(item.split("=", 1) for item in items)
        pipeline = {k: v for k, v in parameters.items() if k in names}
        assert set(parameters) - set(pipeline) <= {"sdk_container_image"}, parameters
        assert parameters.get("sdk_container_image"), "workers need the image: sdk_container_image"
        args = flex_main["launcher_args"]([f"--{k}={v}" for k, v in pipeline.items()])
        check_pipeline_args(args + [f"--sdk_container_image={parameters['sdk_container_image']}"])


def test_documented_launch_request_is_a_valid_flex_template_launch():
    from google.cloud.dataflow_v1beta3.types import LaunchFlexTemplateRequest

    bodies = [b for b in code_blocks(DOC, "json") if "launchParameter" in b]
    assert len(bodies) == 1
    request = LaunchFlexTemplateRequest.from_json(bodies[0])  # fails on any unknown field
    launch_parameter = json.loads(bodies[0])["launchParameter"]
    names = {p["name"] for p in metadata()["parameters"]}
    parameters = launch_parameter["parameters"]
    assert set(parameters) <= names
    assert {"input", "output", "skip_existing", "max_error_rate"} <= set(parameters)
    assert "{yesterday}" in parameters["output"]  # date-partitioned, from a fixed body
    assert request.launch_parameter.environment.sdk_container_image
    flex_main = runpy.run_path(str(ROOT / "flex_main.py"))
    parsed, _ = check_pipeline_args(flex_main["launcher_args"]([f"--{k}={v}" for k, v in parameters.items()]))
    assert parsed.skip_existing is True and parsed.max_error_rate is not None


def airflow_options_to_args(options: dict) -> list[str]:
    """What Airflow's Beam provider makes of `pipeline_options` (beam_options_to_args)."""
    args = []
    for name, value in options.items():
        if value is None or value is True:
            args.append(f"--{name}")
        elif value is False:
            continue
        elif isinstance(value, list):
            args.extend(f"--{name}={v}" for v in value)
        else:
            args.append(f"--{name}={value}")
    return args


def test_documented_airflow_dag_uses_existing_options():
    dags = [b for b in code_blocks(DOC, "python") if "BeamRunPythonPipelineOperator" in b]
    assert len(dags) == 1
    tree = ast.parse(dags[0])
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "BeamRunPythonPipelineOperator"]
    assert len(calls) == 1
    keywords = {k.arg: k.value for k in calls[0].keywords}
    assert ast.literal_eval(keywords["py_file"]) == "pipeline.run"
    assert ast.literal_eval(keywords["py_options"]) == ["-m"]
    assert ast.literal_eval(keywords["runner"]) == "DataflowRunner"
    options = ast.literal_eval(keywords["pipeline_options"])
    assert "{{ ds }}" in options["output"] and options["skip_existing"] is True
    parsed, beam_args = check_pipeline_args(airflow_options_to_args(options))
    assert parsed.max_error_rate is not None and "--sdk_container_image" in " ".join(beam_args)


# -- one image: Flex Template launcher and SDK container, same pins as setup.py -----------------

def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, name
    return match.group(1)


def test_dockerfile_image_launches_and_runs():
    text = (ROOT / "Dockerfile").read_text()
    # Beam's boot binary (the SDK container's entrypoint) and Google's Flex Template launcher.
    assert re.search(r"^FROM apache/beam_python\$\{PYTHON_VERSION\}_sdk:\$\{BEAM_VERSION\} AS beam_sdk$", text, re.M)
    assert re.search(r"^COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam$", text, re.M)
    assert re.search(r"^COPY --from=template_launcher /opt/google/dataflow/python_template_launcher ", text, re.M)
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]$', text, re.M)
    # The launcher runs flex_main.py from the image; nothing is re-installed at launch or on workers.
    assert re.search(r'FLEX_TEMPLATE_PYTHON_PY_FILE="\$\{WORKDIR\}/flex_main.py"', text)
    assert "COPY pyproject.toml setup.py flex_main.py ./" in text
    assert not re.search(r"FLEX_TEMPLATE_PYTHON_(REQUIREMENTS_FILE|SETUP_FILE|EXTRA_PACKAGES)=", text)
    # Exactly the lock, then the project without dependencies.
    assert "RUN pip install --no-cache-dir -r requirements.lock\n" in text
    assert re.search(r"pip install --no-cache-dir --no-deps --no-build-isolation \. && pip check", text)
    ignored = (ROOT / ".dockerignore").read_text().split()
    for needed in ("requirements.lock", "setup.py", "pyproject.toml", "flex_main.py", "filigree", "pipeline", "training"):
        assert needed not in ignored


def test_image_pins_agree_with_setup_and_lock():
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lock = (ROOT / "requirements.lock").read_text()
    python = re.search(r"^# python (\d+\.\d+)$", lock, re.M).group(1)
    pins = {canonicalize_name(name): version for name, version in
            re.findall(r"^([A-Za-z0-9._-]+)==(\S+)$", lock, re.M)}
    assert dockerfile_arg("PYTHON_VERSION") == python
    assert dockerfile_arg("BEAM_VERSION") == pins["apache-beam"]
    assert dockerfile_arg("TF_VERSION") == pins["tensorflow"]
    setup = (ROOT / "setup.py").read_text()
    beam = Requirement(re.search(r'"(apache-beam\[gcp\][^"]+)"', setup).group(1))
    assert beam.specifier.contains(dockerfile_arg("BEAM_VERSION"))
    gpu = Requirement(re.search(r'"(tensorflow\[and-cuda\][^"]+)"', setup).group(1))
    assert gpu.specifier.contains(dockerfile_arg("TF_VERSION"))
    # The GPU variant adds only CUDA wheels, held to the lock.
    assert '-c requirements.lock "tensorflow[and-cuda]==${TF_VERSION}"' in (ROOT / "Dockerfile").read_text()
    # The translation test ran with the Beam the image has.
    import apache_beam

    assert apache_beam.__version__ == dockerfile_arg("BEAM_VERSION")
