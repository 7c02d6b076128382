"""The model bundles that ship with the package, by name: `default` (tiled) and `periodic`
(re-synchronisable). Names resolve in the API, on the command line and on workers; the trained
periodic bundle reads a real photo back after the geometric edits it exists for."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from filigree import Watermarker
from filigree.attacks import parse_attack
from filigree.resources import BUNDLED_MODELS, bundled_model_dir, bundled_samples_dir, model_dir_of
from pipeline.handlers import load_worker_bundle, travelling_model_dir
from pipeline.run import main
from reports import read_records

DATA = Path(__file__).resolve().parents[1] / "filigree" / "data"
PAYLOAD = "f1e2d3c4b5a69788"  # 64 bits


def test_bundled_names_resolve_to_their_folders():
    assert set(BUNDLED_MODELS) == {"default", "periodic"}
    assert Path(bundled_model_dir("periodic")) == (DATA / "periodic").resolve()
    assert model_dir_of(None) == model_dir_of("default") == bundled_model_dir()
    assert model_dir_of("periodic") == bundled_model_dir("periodic")
    assert model_dir_of("gs://bucket/models/v2") == "gs://bucket/models/v2"
    assert model_dir_of("/models/v2") == "/models/v2"
    with pytest.raises(ValueError, match="no bundled model called 'tiny'"):
        bundled_model_dir("tiny")


def test_a_name_always_means_the_bundled_model(tmp_path, monkeypatch):
    """A folder called `periodic` in the working directory (an output folder, say) does not
    shadow the bundled model, on the launcher or on a worker; it is reached as `./periodic`."""
    (tmp_path / "periodic").mkdir()
    monkeypatch.chdir(tmp_path)
    assert model_dir_of("periodic") == bundled_model_dir("periodic")
    assert load_worker_bundle("periodic").card.layout is not None
    assert model_dir_of("./periodic") == "./periodic"


def test_a_misspelt_model_name_is_refused_with_the_bundled_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="not a bundled model \\(default, periodic\\)"):
        model_dir_of("Periodic")
    assert main(["--input", str(tmp_path), "--model", "Periodic", "--payload", "1"]) == 2


def test_bundled_models_travel_to_workers_by_name():
    assert travelling_model_dir(bundled_model_dir()) is None
    assert travelling_model_dir(bundled_model_dir("periodic")) == "periodic"
    assert travelling_model_dir("gs://bucket/models/v2") == "gs://bucket/models/v2"
    assert load_worker_bundle("periodic").card.layout is not None
    assert load_worker_bundle(None).card.layout is None


@pytest.fixture(scope="module")
def periodic():
    return Watermarker.load("periodic")


@pytest.fixture(scope="module")
def building():
    with Image.open(os.path.join(bundled_samples_dir(), "opencv_building.jpg")) as image:
        return image.convert("RGB")


def test_periodic_bundle_carries_64_data_bits(periodic):
    assert periodic.periodic is not None
    assert periodic.data_bits == 64


@pytest.mark.parametrize("spec", ["none", "offcrop:0.64", "shift:0.05", "margin:0.1", "rotate:2", "mirror"])
def test_periodic_bundle_reads_a_photo_after_geometric_edits(periodic, building, spec):
    marked = periodic.embed(building, PAYLOAD)
    edited = parse_attack(spec).apply(marked, seed=3)
    read = periodic.extract(edited)
    assert read.detected and read.payload == PAYLOAD, (spec, read)


def test_periodic_bundle_detects_nothing_in_the_unmarked_photo(periodic, building):
    for spec in ("none", "offcrop:0.64", "rotate:2", "mirror"):
        read = periodic.extract(parse_attack(spec).apply(building, seed=3))
        assert not read.detected, (spec, read)


def test_job_verifies_a_periodic_bundle_against_geometric_edits_by_default(tmp_path):
    """Without --attacks, `--verify attacks` with a periodic model adds its geometric edits to
    the photometric suite; the tiled default keeps the photometric suite alone."""
    from filigree.attacks import DEFAULT_SUITE_SPEC, GEOMETRIC_SUITE_SPEC, parse_suite
    inputs = tmp_path / "in"
    inputs.mkdir()
    with Image.open(os.path.join(bundled_samples_dir(), "opencv_building.jpg")) as image:
        image.save(inputs / "building.png")
    out = tmp_path / "out"
    assert main(["--input", str(inputs), "--output", str(out), "--payload", PAYLOAD, "--model", "periodic",
                 "--verify", "attacks"]) == 0
    [record] = read_records(out)
    assert record["status"] == "ok", record
    names = [a.name for a in parse_suite(f"{DEFAULT_SUITE_SPEC},{GEOMETRIC_SUITE_SPEC}")]
    assert sorted(record["attacks"]) == sorted(names)
    for attack in (a.name for a in parse_suite(GEOMETRIC_SUITE_SPEC)):
        assert record["attacks"][attack]["match"] is True, (attack, record["attacks"][attack])


def test_job_marks_with_the_periodic_bundle_by_name(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    with Image.open(os.path.join(bundled_samples_dir(), "opencv_building.jpg")) as image:
        image.save(inputs / "building.jpg", quality=90)
    out = tmp_path / "out"
    code = main(["--input", str(inputs), "--output", str(out), "--payload", PAYLOAD, "--model", "periodic",
                 "--verify", "attacks", "--attacks", "offcrop:0.8,mirror"])
    assert code == 0
    [record] = read_records(out)
    assert record["status"] == "ok" and record["decoded"] == PAYLOAD, record
    assert record["output_quality"] == 95  # the source's 90 + the periodic layout's margin
    for attack in ("offcrop:0.8", "mirror"):
        assert record["attacks"][attack]["match"] is True, (attack, record["attacks"][attack])
    assert 42.0 <= record["psnr"] < 60.0, record["psnr"]  # marked, at least 42 dB
