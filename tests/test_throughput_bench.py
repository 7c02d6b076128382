"""Smoke test of benchmarks/throughput.py: one tiny generated photo, one repeat, no peers, no
pipeline sweep; and one peak-memory child measurement in this process."""

from __future__ import annotations

import json

import pytest



@pytest.fixture(scope="module")
def throughput(load_benchmark):
    return load_benchmark("throughput")


def test_smoke_main_prints_the_side_by_side_table(throughput, tmp_path, capsys):
    out = tmp_path / "result.json"
    assert throughput.main(["--sizes", "0.05", "--repeats", "1", "--no-memory", "--no-pipeline",
                            "--peers", "", "--in-process", "--workdir", str(tmp_path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "### Side by side" in text and "embed/codec" in text and "### Per stage" in text
    assert "upsample+add" in text and "### Targets" in text
    result = json.loads(out.read_text())["results"][0]
    assert set(result["paths"]) == {"codec", "embed", "embed_api", "extract", "extract_draft",
                                    "extract_unmarked", "pipeline_step"}
    stages = result["paths"]["embed"]["wall"]
    assert list(stages) == ["decode", "resize", "inference", "upsample+add", "encode", "write"]
    assert result["width"] * result["height"] == pytest.approx(50_000, rel=0.02)


def test_memory_child_reports_peak_above_baseline(throughput, tmp_path):
    photo = throughput.make_photo(tmp_path, 0.05)
    measured = throughput.memory_child("codec", str(photo), str(tmp_path))
    assert measured["kind"] == "codec" and measured["decoded_mb"] > 0.1
    assert measured["peak_mb"] >= 0
