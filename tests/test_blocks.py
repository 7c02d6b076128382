"""pipeline.blocks: records folded into report blocks where they are made, in a real Beam pipeline."""

from __future__ import annotations

import json
import math
import random

import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from pipeline.blocks import BlockSummaryFn, RecordBlock, ToBlocks, make_block
from pipeline.summary import summarize


def _finite(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def records(count: int, seed: int = 7) -> list[dict]:
    """Report records of every status (the report's own generator, without NaN: the report
    writes JSON without NaN)."""
    from test_report import _record
    rng = random.Random(seed)
    out = []
    for i in range(count):
        record = _record(i, rng)
        record["psnr"], record["ber"] = _finite(record["psnr"]), _finite(record["ber"])
        out.append(record)
    return out


def test_a_block_holds_its_records_lines_and_summary():
    batch = records(50)
    block = make_block(batch)
    assert block.count == 50
    assert [json.loads(line) for line in block.text().split("\n")] == batch
    assert BlockSummaryFn().extract_output(block.summary) == summarize(batch)
    assert len(block.lines) < len("\n".join(json.dumps(r) for r in batch)) / 4  # compressed


def test_blocks_in_a_pipeline_keep_every_record_and_the_summary(tmp_path):
    batch = records(2500)
    with beam.Pipeline("DirectRunner") as pipeline:
        blocks = (pipeline | beam.Create(batch, reshuffle=False) | beam.ParDo(ToBlocks(records=1000)))
        lines = blocks | beam.FlatMap(lambda block: block.text().split("\n"))
        assert_that(lines | beam.Map(json.loads) | beam.Map(json.dumps, sort_keys=True),
                    equal_to([json.dumps(r, sort_keys=True) for r in batch]), label="lines")
        counts = blocks | beam.Map(lambda block: block.count)
        assert_that(counts | beam.CombineGlobally(sum), equal_to([2500]), label="count")
        assert_that(counts | beam.CombineGlobally(max), equal_to([1000]), label="largest")
        assert_that(blocks | beam.CombineGlobally(BlockSummaryFn()), equal_to([summarize(batch)]), label="summary")


def test_an_empty_block_is_never_made():
    with beam.Pipeline("DirectRunner") as pipeline:
        blocks = pipeline | beam.Create([], reshuffle=False) | beam.ParDo(ToBlocks())
        assert_that(blocks, equal_to([]))
    assert isinstance(make_block([]), RecordBlock) and make_block([]).count == 0
