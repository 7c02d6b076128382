"""Tests for pipeline.storage: whole-file reads, atomic writes (local and on a real GCS server)
and output paths that cannot escape their folder."""

from __future__ import annotations

import os
import random

import pytest

from pipeline.storage import read_bytes, safe_relative_output, write_atomically


# ------------------------------------------------------------------------------- file I/O


def test_write_atomically_writes_overwrites_and_cleans_up(tmp_path) -> None:
    target = tmp_path / "out" / "marked" / "deep" / "a.png"
    write_atomically(str(target), b"first")
    assert target.read_bytes() == b"first"
    write_atomically(str(target), b"second version")
    assert target.read_bytes() == b"second version"
    assert read_bytes(str(target)) == b"second version"
    assert os.listdir(target.parent) == ["a.png"]


def test_write_atomically_gz_name_is_not_compressed(tmp_path) -> None:
    target = tmp_path / "x.gz"
    write_atomically(str(target), b"raw bytes")
    assert target.read_bytes() == b"raw bytes" and read_bytes(str(target)) == b"raw bytes"


def test_write_atomically_failure_leaves_no_temp(tmp_path, monkeypatch) -> None:
    from apache_beam.io.filesystems import FileSystems

    def broken_rename(sources, destinations):
        raise IOError("rename failed")

    monkeypatch.setattr(FileSystems, "rename", staticmethod(broken_rename))
    with pytest.raises(IOError):
        write_atomically(str(tmp_path / "a.jpg"), b"data")
    assert os.listdir(tmp_path) == []


def test_write_atomically_on_gcs(gcs_bucket) -> None:
    path = f"gs://{gcs_bucket.name}/out/marked/sub/a.jpg"
    write_atomically(path, b"first")
    write_atomically(path, b"second version")
    assert read_bytes(path) == b"second version"
    blobs = list(gcs_bucket.list_blobs())
    assert [blob.name for blob in blobs] == ["out/marked/sub/a.jpg"]
    assert blobs[0].content_type == "image/jpeg"


def test_write_atomically_concurrent_writers_leave_one_file(tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    target = str(tmp_path / "same.png")
    payloads = [bytes([i]) * 1000 for i in range(8)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda data: write_atomically(target, data), payloads))
    assert os.listdir(tmp_path) == ["same.png"]
    assert (tmp_path / "same.png").read_bytes() in payloads


# ------------------------------------------------------------------------------- output paths


@pytest.mark.parametrize(
    "root, path, expected",
    [
        ("/data/in", "/data/in/a/b.jpg", "a/b.jpg"),
        ("/data/in/", "/data/in/a/b.jpg", "a/b.jpg"),
        ("gs://bucket/in", "gs://bucket/in/x/y.png", "x/y.png"),
        ("GS://bucket/in", "gs://bucket/in/y.png", "y.png"),
        ("gs://bucket/in", "gs://bucket/input/y.png", "_external/gs/bucket/input/y.png"),
        ("gs://bucket/in", "gs://other/in/y.png", "_external/gs/other/in/y.png"),
        ("gs://bucket/in", "s3://bucket/in/y.png", "_external/s3/bucket/in/y.png"),
        ("/data/in", "gs://bucket/data/in/y.png", "_external/gs/bucket/data/in/y.png"),
        ("/data/in", "/data/in/../secret/x.jpg", "_external/local/data/secret/x.jpg"),
        ("/data/in", "/data/in/a/../../../../etc/passwd", "_external/local/etc/passwd"),
        ("/data/in", "/etc/passwd", "_external/local/etc/passwd"),
        ("/data/in", "/data/in/./a/./b.jpg", "a/b.jpg"),
        ("/data/in", "/data/in/a/../b.jpg", "b.jpg"),
        ("/data/in", "/data/in//a///b.jpg", "a/b.jpg"),
        ("/data/in", "/data/in/a\\..\\..\\b.jpg", "_external/local/data/b.jpg"),
        ("/data/in", "/data/in/single.jpg", "single.jpg"),
        ("/data/in/sub", "/data/in/..", "_external/local/data"),
        ("/data/in/one.jpg", "/data/in/one.jpg", "one.jpg"),
        ("C:\\photos", "C:\\photos\\2024\\a.jpg", "2024/a.jpg"),
        ("/data/in", "C:\\Windows\\a.jpg", "_external/local/C/Windows/a.jpg"),
        ("file:///data/in", "/data/in/a.jpg", "a.jpg"),
        ("/", "/x/y.jpg", "x/y.jpg"),
        ("/data/in", "/data/in/bad\x00name\n.jpg", "bad_name_.jpg"),
    ],
)
def test_safe_relative_output_cases(root: str, path: str, expected: str) -> None:
    assert safe_relative_output(root, path) == expected


def test_safe_relative_output_relative_against_absolute() -> None:
    here = os.path.abspath("photos")
    assert safe_relative_output("photos", os.path.join(here, "a.jpg")) == "a.jpg"
    assert safe_relative_output(here, "photos/sub/a.jpg") == "sub/a.jpg"


@pytest.mark.parametrize("path", ["", "/", "..", "gs://", "./.", "\\", "/..", "gs://../."])
def test_safe_relative_output_without_name_raises(path: str) -> None:
    with pytest.raises(ValueError):
        safe_relative_output("/data/in/sub", path)


def _assert_contained(relative: str) -> None:
    assert relative and not relative.startswith("/") and "\\" not in relative
    assert "://" not in relative and "\x00" not in relative
    parts = relative.split("/")
    assert all(part not in ("", ".", "..") for part in parts), relative
    base = "/srv/out/marked"
    assert os.path.normpath(os.path.join(base, relative)).startswith(base + "/")


def test_safe_relative_output_never_escapes_fuzz() -> None:
    pieces = ["a", "b.jpg", "..", ".", "", "/", "\\", "gs://", "C:", "~", "%2e%2e", "\x00",
              "in", "data", "...", " ", "file://", "x:y"]
    roots = ["/data/in", "data/in", "gs://bucket/in", "", "/", "C:\\in"]
    generator = random.Random(0)
    for _ in range(3000):
        path = "".join(generator.choice(pieces) + generator.choice(["/", "", "\\"])
                       for _ in range(generator.randint(1, 8)))
        root = generator.choice(roots)
        try:
            relative = safe_relative_output(root, path)
        except ValueError:
            continue
        _assert_contained(relative)
        assert safe_relative_output(root, path) == relative
