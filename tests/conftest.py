"""Shared fixtures: a real Google Cloud Storage server on localhost.

`gcs_server` runs gcp-storage-emulator (in memory) for the whole test session and points both
google-cloud-storage and Beam's gs:// filesystem at it through STORAGE_EMULATOR_HOST. Beam would
first look for Application Default Credentials, with retries (about 23 s per process when there
are none); the fixture marks its credentials as already resolved to None, which makes Beam use an
anonymous client. That only holds in this process: a pipeline started in a subprocess inherits
STORAGE_EMULATOR_HOST but not the shortcut.
"""

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

_STARTUP_TIMEOUT_S = 30.0


def _free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_up(url: str) -> bool:
    """Returns whether the server at `url` answers the bucket listing with 200."""
    # No proxy, whatever the environment says: the server is on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{url}/storage/v1/b?project=p", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """Starts an in-memory GCS server for the session and yields its base URL.

    While it runs, STORAGE_EMULATOR_HOST points at it and Beam's credential lookup is skipped.
    """
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("gcs") / "emulator.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start",
             "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + _STARTUP_TIMEOUT_S
        while not _is_up(url):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"GCS emulator did not come up on {url}:\n{log_path.read_text()}")
            time.sleep(0.1)

        # Private Beam API (apache_beam/internal/gcp/auth.py): re-check on Beam upgrades.
        from apache_beam.internal.gcp import auth

        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("STORAGE_EMULATOR_HOST", url)
            # Clients that honour a proxy from the environment must not send loopback to it.
            no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"]))
            patch.setenv("NO_PROXY", no_proxy)
            patch.setenv("no_proxy", no_proxy)
            patch.setattr(auth._Credentials, "_credentials_init", True)
            patch.setattr(auth._Credentials, "_credentials", None)
            yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def gcs_bucket(gcs_server):
    """Creates a new, empty bucket on the emulator and yields it (a google.cloud.storage.Bucket).

    Buckets are not deleted: names are unique and the server keeps everything in memory.
    """
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(project="test", credentials=AnonymousCredentials())
    yield client.create_bucket(f"filigree-test-{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
def load_benchmark():
    """Loads a benchmark script from benchmarks/ as a module: `load_benchmark("quality")`."""
    import importlib.util
    from pathlib import Path

    def load(name: str):
        path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture(scope="session")
def untiled_model(tmp_path_factory) -> str:
    """The bundled networks served untiled: one view of the whole image, the residual amplified
    by the gain a tiled bundle gives a one-tile image (`Tiling.gain(1)`), so the mark is as
    readable. The re-framing search works on such bundles."""
    import json
    import shutil

    from filigree.resources import bundled_model_dir
    from filigree.tiling import Tiling

    target = tmp_path_factory.mktemp("untiled") / "model"
    shutil.copytree(bundled_model_dir(), target)
    card = json.loads((target / "model.json").read_text())
    card["default_strength"] *= Tiling.from_card(card).gain(1)
    card.pop("tiling", None)
    (target / "model.json").write_text(json.dumps(card))
    return str(target)
