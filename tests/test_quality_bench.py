"""Smoke test of benchmarks/quality.py: two small generated photos, two attacks, no peers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from benchmarks.quality_report import ATTACK_DESCRIPTIONS



@pytest.fixture(scope="module")
def quality(load_benchmark):
    return load_benchmark("quality")


def _photo(width: int, height: int, seed: int) -> Image.Image:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([0.5 + 0.3 * np.sin(x / 17 + seed), 0.5 + 0.3 * np.cos(y / 11),
                    0.5 + 0.2 * np.sin((x + y) / 23)], -1)
    rgb += np.random.default_rng(seed).normal(0, 0.04, rgb.shape).astype(np.float32)
    return Image.fromarray(np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8))


def test_peer_threshold(quality):
    # P[Binom(32, 1/2) >= 30] = 529 / 2^32 ~ 1.2e-7 <= 1e-6 < P[>= 29] ~ 1.3e-6
    assert quality.peer_tau(32, 1e-6) == 30
    assert quality.redact(["--key", "s3cret", "--key=s3cret", "--seed", "1"]) == [
        "--key", "<key>", "--key=<key>", "--seed", "1"]


def test_smoke_main_writes_json_markdown_figure(quality, tmp_path, capsys):
    images = tmp_path / "photos"
    images.mkdir()
    _photo(320, 240, 1).save(images / "a.png")
    _photo(256, 288, 2).save(images / "b.jpg", quality=95)
    (images / "notes.txt").write_text("not a photo")
    out = tmp_path / "out"
    doc = tmp_path / "quality.md"
    doc.write_text("intro\n<!-- quality:heldout:begin -->\nold\n<!-- quality:heldout:end -->\n"
                   "<!-- quality:visibility:begin -->\nold\n<!-- quality:visibility:end -->\nend\n")
    crops = tmp_path / "crops"

    assert quality.main(["--images", str(images), "--attacks", "none,jpeg:50", "--peers", "none",
                         "--out", str(out), "--seed", "3", "--key", "smoke-key",
                         "--seam-payloads", "2", "--crops-dir", str(crops),
                         "--docs", str(doc)]) == 0

    report = json.loads((out / "quality.json").read_text())
    assert [p["file"] for p in report["photos"]] == ["a.png", "b.jpg"]
    assert [a["spec"] for a in report["attacks"]] == ["none", "jpeg:50"]
    assert report["attacks"][1]["stages"] == [
        {"kind": "jpeg", "param": 50.0, "description": ATTACK_DESCRIPTIONS["jpeg"]}]
    assert list(report["methods"]) == ["Filigree"]
    assert report["peer_tau"] == 30 and report["target_fpr"] == 1e-6
    assert report["key"].startswith("custom") and "smoke-key" not in json.dumps(report)
    assert report["model"]["data_bits"] >= 32 and report["model"]["name"]
    assert "--images" in report["command"]

    filigree = report["methods"]["Filigree"]
    summary = filigree["summary"]
    assert summary["photos"] == 2 and 20 < summary["psnr_mean"] < 80
    assert 0 < summary["ssim_min"] <= 1
    assert summary["embed_s_per_mp_median"] > 0 and summary["extract_s_per_mp_median"] > 0
    for spec in ("none", "jpeg:50"):
        entry = summary["attacks"][spec]
        assert entry["n"] == 2
        assert 0 <= entry["bit_acc_mean"] <= 1
        for rate in ("exact_rate", "detection_rate", "detection_rate_informed"):
            assert 0 <= entry[rate] <= 1
    visibility = summary["visibility"]
    assert visibility["photos"] == 2
    for view in ("screen", "flat"):
        assert 0 < visibility[view]["ssimulacra2_min"] <= visibility[view]["ssimulacra2_mean"] < 100
    for photo in report["photos"]:
        assert 0 < photo["jpeg_reference"]["ssimulacra2"] < 100
    seams = report["seams"]  # the bundled model tiles a 1024x768 image
    assert seams["payloads"] == 2 and seams["layout"].endswith("tiles")
    assert seams["ratio_max"] >= seams["ratio_mean"] > 0
    assert sorted(p.name for p in crops.iterdir()) == ["00-a-Filigree.png", "01-b-Filigree.png"]
    with Image.open(crops / "00-a-Filigree.png") as crop:
        assert crop.size == (3 * 320 + 16, 240)  # original | marked | residual, whole photo
    for photo in filigree["per_photo"]:
        assert photo["visibility"]["flat"]["box"] == [0, 0, 320, 240] or photo["file"] == "b.jpg"
        assert len(photo["payload"]) == (report["model"]["data_bits"] + 3) // 4
        assert set(photo["attacks"]) == set(photo["unmarked"]) == {"none", "jpeg:50"}
    fp = summary["false_positives"]
    assert fp["reads"] == 4 and fp["detected"] == 0 and fp["rate"] == 0
    assert 0 < fp["min_p_value"] <= 1

    markdown = (out / "quality.md").read_text()
    assert markdown.strip() in capsys.readouterr().out
    for heading in ("## Image quality and speed", "## Visibility", "## Bit accuracy", "## Exact payload recovery",
                    "## Detection at FPR", "## False positives on unmarked photos", "## Photos"):
        assert heading in markdown
    assert "| clean PNG |" in markdown and "| JPEG q50 |" in markdown
    with Image.open(out / "quality.png") as figure:
        assert figure.format == "PNG" and figure.width >= 600

    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert "### Bit accuracy" in text and "![Bit accuracy per attack](quality.png)" in text
    heldout, visibility_block = text.split("<!-- quality:visibility:begin -->")
    assert "### Visibility" in visibility_block and "### Visibility" not in heldout
    assert "Tile seams" in visibility_block and "| Filigree | 2 |" in visibility_block
    assert (tmp_path / "quality.png").is_file()

    # --from-json re-renders the same Markdown without running anything
    again = tmp_path / "again"
    assert quality.main(["--from-json", str(out / "quality.json"), "--out", str(again)]) == 0
    assert (again / "quality.md").read_text() == markdown

    # --docs-block visibility rewrites that block alone
    only = tmp_path / "only.md"
    only.write_text("<!-- quality:visibility:begin -->\nold\n<!-- quality:visibility:end -->\n")
    assert quality.main(["--from-json", str(out / "quality.json"), "--out", str(again),
                         "--docs", str(only), "--docs-block", "visibility"]) == 0
    block = only.read_text()
    assert "### Visibility" in block and "### Bit accuracy" not in block and "old" not in block
    assert "Command: `" in block
