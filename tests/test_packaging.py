"""The packaging files agree with each other: setup.py, requirements.lock, Dockerfile, .ci/run."""

import os
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "filigree" / "data"


def _lock():
    """Returns (python "X.Y" the lock was made for, {canonical name: pinned version})."""
    text = (ROOT / "requirements.lock").read_text()
    python = re.search(r"^# python (\d+\.\d+)$", text, re.M)
    assert python, "requirements.lock must start with a '# python X.Y' line"
    pins = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not an exact pin in requirements.lock: {line!r}"
            pins[canonicalize_name(name)] = version
    return python.group(1), pins


def _dockerfile_arg(name):
    match = re.search(rf"^ARG {name}=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert match, f"Dockerfile has no default for ARG {name}"
    return match.group(1)


@pytest.fixture(scope="module")
def distribution():
    """The setuptools Distribution that setup.py describes, as finalized for a build."""
    import setuptools  # noqa: F401  (makes `distutils` setuptools' own copy)
    from distutils.core import run_setup

    cwd = os.getcwd()
    os.chdir(ROOT)  # find_packages and package_data globs are relative to the project root
    try:
        return run_setup(str(ROOT / "setup.py"), stop_after="init")
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def shipped_data(distribution):
    """The package-data files a build of the distribution would ship, as absolute paths."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        build_py = distribution.get_command_obj("build_py")
        build_py.ensure_finalized()
        return {(ROOT / src_dir / name).resolve()
                for _, src_dir, _, names in build_py.data_files for name in names}
    finally:
        os.chdir(cwd)


def test_dockerfile_matches_lock():
    python, pins = _lock()
    assert _dockerfile_arg("PYTHON_VERSION") == python
    assert _dockerfile_arg("BEAM_VERSION") == pins["apache-beam"]
    assert _dockerfile_arg("TF_VERSION") == pins["tensorflow"]
    launcher = _dockerfile_arg("LAUNCHER_IMAGE")
    assert f"/python{python.replace('.', '')}-template-launcher-base" in launcher


def test_running_python_is_the_locks():
    python, _ = _lock()
    assert "%d.%d" % sys.version_info[:2] == python


def test_direct_dependencies_are_locked_compatibly(distribution):
    _, pins = _lock()
    requirements = [Requirement(r) for r in distribution.install_requires]
    requirements += [Requirement(r) for r in distribution.extras_require["test"]]
    assert {r.name for r in requirements} >= {
        "tensorflow", "apache-beam", "numpy", "pillow", "google-cloud-storage", "bchlib",
        "pytest", "gcp-storage-emulator"}
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in requirements.lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {name}=={pins[name]}, outside {requirement}")


def test_plain_tensorflow_not_cpu_build():
    _, pins = _lock()
    assert "tensorflow-cpu" not in pins


def test_ci_runs_make_test():
    script = ROOT / ".ci" / "run"
    assert os.access(script, os.X_OK)
    lines = [line.strip() for line in script.read_text().splitlines()]
    assert "set -euo pipefail" in lines
    assert "make test" in lines


def test_every_package_is_shipped(distribution):
    # The library (filigree, with its subpackages), the Beam job and the training job.
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for top in ("filigree", "pipeline", "training") for p in (ROOT / top).rglob("__init__.py")}
    assert {"filigree", "filigree.imaging", "pipeline", "training"} <= on_disk
    assert on_disk - set(distribution.packages) == set()


def test_architecture_doc_names_every_module():
    text = (ROOT / "docs" / "architecture.md").read_text()
    for top in ("filigree", "pipeline", "training"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "data" in path.relative_to(ROOT).parts:
                continue
            relative = path.relative_to(ROOT / top).as_posix()
            assert f"`{relative}`" in text, f"docs/architecture.md does not name {top}/{relative}"


def test_package_data_covers_everything_under_filigree_data(shipped_data):
    on_disk = {p.resolve() for p in DATA.rglob("*")
               if p.is_file() and "__pycache__" not in p.parts}
    assert on_disk, "filigree/data is empty"
    assert on_disk - shipped_data == set()


def test_samples_are_shipped_with_their_licence(shipped_data):
    samples = DATA / "samples"
    photos = sorted(p for p in samples.iterdir() if p.suffix.lower() in {".jpg", ".png"})
    assert {p.suffix.lower() for p in photos} == {".jpg", ".png"}
    assert sum(p.stat().st_size for p in photos) <= 2 * 1024 * 1024
    licence = (samples / "LICENSE.md").read_text()
    for photo in photos:
        assert photo.name in licence, f"{photo.name} has no entry in LICENSE.md"
    assert set(photos) | {samples / "LICENSE.md"} <= shipped_data


@pytest.mark.parametrize("folder", ["model", "periodic"])
def test_bundled_model_is_shipped(shipped_data, folder):
    model = DATA / folder
    if not (model / "model.json").exists():
        pytest.skip(f"no bundled model in filigree/data/{folder} yet")
    expected = [model / "model.json"]
    for part in ("embedder", "extractor"):
        expected += [model / part / "saved_model.pb",
                     *sorted((model / part / "variables").glob("*"))]
    missing = [str(p.relative_to(ROOT)) for p in expected if p.resolve() not in shipped_data]
    assert not missing


def test_resources_point_into_the_package():
    from filigree import resources

    assert Path(resources.bundled_samples_dir()) == (DATA / "samples").resolve()
    assert Path(resources.bundled_model_dir()) == (DATA / "model").resolve()
