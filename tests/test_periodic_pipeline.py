"""The Beam job with a periodic bundle (tests/periodic_bundle.py): embed with read-back after
attacks, refusal of images too small for the layout, extract mode after geometric edits, and
re-marking checks with this key and with another one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

from filigree.resources import bundled_samples_dir
from periodic_bundle import build_linear_periodic_bundle
from pipeline.run import main
from reports import read_records

PAYLOAD = "0a1b2c3d4e5f6789"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    return build_linear_periodic_bundle(str(tmp_path_factory.mktemp("periodic") / "bundle"))


@pytest.fixture(scope="module")
def embedded(bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    inputs = root / "in"
    inputs.mkdir()
    samples = Path(bundled_samples_dir())
    Image.open(samples / "opencv_building.jpg").save(inputs / "building.jpg", quality=92)
    Image.open(samples / "opencv_aloeL.jpg").convert("RGB").resize((800, 692)).save(inputs / "aloe.png")
    Image.open(samples / "opencv_building.jpg").resize((100, 70)).save(inputs / "tiny.png")
    out = root / "out"
    code = main(["--input", str(inputs), "--output", str(out), "--payload", PAYLOAD, "--model", bundle,
                 "--key", "pipeline-key", "--verify", "attacks", "--attacks", "jpeg:75,rotate:2,mirror"])
    return {"code": code, "out": out, "inputs": inputs,
            "records": {os.path.basename(r["image"]): r for r in read_records(out)}}


def test_embed_reads_back_after_geometric_attacks(embedded):
    """Both photos read back clean and mirrored; the building also after JPEG q75 and a
    rotation. (The aloe, a dense texture at 800 x 692, is marginal rotated: its own texture
    scores a lattice beside the mark's, whose aligned tile reaches a template z of about 7.
    Off-centre crops are read in
    `test_extract_mode_reads_edited_copies`, at fixed positions: `offcrop` places its crop by a
    seed drawn from the image's path, which changes with the temporary folder.)"""
    assert embedded["code"] == 0
    for name, attacks in (("building.jpg", ("jpeg:75", "rotate:2", "mirror")), ("aloe.png", ("mirror",))):
        record = embedded["records"][name]
        assert record["status"] == "ok" and record["decoded"] == PAYLOAD, record
        assert record["psnr"] >= 38.0
        for attack in attacks:
            assert record["attacks"][attack]["match"] is True, (name, attack, record["attacks"][attack])


def test_marked_jpeg_is_written_above_its_source_quality(embedded):
    """The faint periodic mark is written `QUALITY_MARGIN` points above the source's quality
    (a re-save with the source's own tables would put most of it back)."""
    from filigree.periodic import QUALITY_MARGIN
    record = embedded["records"]["building.jpg"]
    assert record["source_quality"] == 92
    assert record["output_quality"] == 92 + QUALITY_MARGIN
    from filigree.imaging.decode import decode_image
    assert decode_image(Path(record["output"]).read_bytes()).quality == 92 + QUALITY_MARGIN


def test_an_image_too_small_for_the_layout_is_refused(embedded):
    record = embedded["records"]["tiny.png"]
    assert (record["status"], record["error_code"]) == ("error", "too_small"), record
    assert not os.path.exists(embedded["out"] / "marked" / "tiny.png")


def test_extract_mode_reads_edited_copies(embedded, bundle, tmp_path):
    marked = embedded["out"] / "marked"
    edited = tmp_path / "edited"
    edited.mkdir()
    image = Image.open(marked / "building.jpg")
    image.rotate(-2, resample=Image.Resampling.BICUBIC).save(edited / "rotated.png")
    image.crop((90, 40, 90 + 640, 40 + 500)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(edited / "cropped.png")
    Image.open(marked / "aloe.png").transpose(Image.Transpose.ROTATE_90).save(edited / "turned.png")
    out = tmp_path / "out"
    assert main(["--input", str(edited), "--output", str(out), "--mode", "extract", "--model", bundle,
                 "--key", "pipeline-key"]) == 0
    records = read_records(out)
    assert len(records) == 3
    for record in records:
        assert record["detected"] and record["decoded"] == PAYLOAD, record


def test_re_marking_with_this_key_is_refused(embedded, bundle, tmp_path):
    marked = embedded["out"] / "marked"
    out = tmp_path / "again"
    assert main(["--input", str(marked / "building.jpg"), "--output", str(out), "--payload", "1234",
                 "--model", bundle, "--key", "pipeline-key"]) == 0
    [record] = read_records(out)
    assert (record["status"], record["error_code"]) == ("skipped", "already_marked"), record
    assert record["existing_payload"] == PAYLOAD
    out = tmp_path / "unmarked"
    assert main(["--input", str(embedded["inputs"] / "building.jpg"), "--output", str(out), "--payload", "1234",
                 "--model", bundle, "--key", "another-key", "--verify", "none"]) == 0
    assert read_records(out)[0]["status"] == "ok"


def test_extract_mode_with_reframe_reads_a_marked_photo_pasted_into_another(embedded, bundle, tmp_path):
    """The marked building (868 x 600) in the corner of a dense texture three times its sides:
    the straight read, at the whole image's analysis size (1024 px, 0.39 x), cannot resolve its
    period; `--reframe` finds it in a window analysed at its own resolution (and names the
    window); the unmarked collage stays unread either way."""
    samples = Path(bundled_samples_dir())
    marked = Image.open(embedded["out"] / "marked" / "building.jpg").convert("RGB")
    folder = tmp_path / "collages"
    folder.mkdir()
    for name, piece in (("marked.png", marked), ("plain.png", Image.open(samples / "opencv_building.jpg").convert("RGB"))):
        host = Image.open(samples / "opencv_aloeL.jpg").convert("RGB").resize((piece.width * 3, piece.height * 3))
        host.paste(piece, (piece.width * 2, 0))
        host.save(folder / name)
    runs = {}
    for flags in ((), ("--reframe",)):
        out = tmp_path / ("out" + "".join(flags))
        assert main(["--input", str(folder), "--output", str(out), "--mode", "extract", "--model", bundle,
                     "--key", "pipeline-key", *flags]) == 0
        runs[flags] = {os.path.basename(r["image"]): r for r in read_records(out)}
    assert not runs[()]["marked.png"]["detected"], runs[()]["marked.png"]
    found = runs[("--reframe",)]["marked.png"]
    assert found["detected"] and found["decoded"] == PAYLOAD, found
    assert found["framing"]["window"] == [0.5, 0.0, 0.5, 0.5]
    assert not runs[("--reframe",)]["plain.png"]["detected"]
