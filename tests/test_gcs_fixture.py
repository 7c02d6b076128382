"""The local GCS server fixture works for both google-cloud-storage and Beam's gs:// filesystem."""

import os

import pytest
from google.api_core.exceptions import NotFound


def test_upload_and_download_with_google_cloud_storage(gcs_bucket):
    payload = os.urandom(300_000)
    gcs_bucket.blob("dir/photo.bin").upload_from_string(payload)

    blob = gcs_bucket.get_blob("dir/photo.bin")
    assert blob.size == len(payload)
    assert blob.download_as_bytes() == payload
    assert [b.name for b in gcs_bucket.client.list_blobs(gcs_bucket, prefix="dir/")] == [
        "dir/photo.bin"]


def test_beam_uses_anonymous_credentials(gcs_server):
    from apache_beam.internal.gcp import auth
    from apache_beam.options.pipeline_options import PipelineOptions

    assert auth.get_service_credentials(PipelineOptions()) is None


def test_beam_filesystems_create_open_match_rename(gcs_bucket):
    from apache_beam.io.filesystems import FileSystems

    root = f"gs://{gcs_bucket.name}/beam"
    payloads = {f"{root}/in/a.bin": os.urandom(1000), f"{root}/in/b.bin": os.urandom(2000)}
    for path, data in payloads.items():
        with FileSystems.create(path) as sink:
            sink.write(data)

    for path, data in payloads.items():
        with FileSystems.open(path) as source:
            assert source.read() == data

    [match] = FileSystems.match([f"{root}/in/*.bin"])
    assert {m.path: m.size_in_bytes for m in match.metadata_list} == {
        path: len(data) for path, data in payloads.items()}

    src, dst = f"{root}/in/a.bin", f"{root}/out/a.bin"
    FileSystems.rename([src], [dst])
    assert not FileSystems.exists(src)
    with FileSystems.open(dst) as source:
        assert source.read() == payloads[src]
    # google-cloud-storage sees what Beam wrote.
    assert gcs_bucket.blob("beam/out/a.bin").download_as_bytes() == payloads[src]


def test_beam_reports_missing_objects(gcs_bucket):
    from apache_beam.io.filesystems import FileSystems

    path = f"gs://{gcs_bucket.name}/missing.bin"
    assert not FileSystems.exists(path)
    with pytest.raises(NotFound):
        FileSystems.open(path).read()
