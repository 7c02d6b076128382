"""Record blocks: the job's records folded, where they are made, into what the report needs.

Every record set of the job (decoding, marking, read-back, the dead letters of each step) goes
through `ToBlocks` in the step that makes it, before the sets are gathered: a `RecordBlock`
holds up to `BLOCK_RECORDS` records as zlib-compressed JSON lines (the report's
`images-*.jsonl`) and their `SummaryAccumulator` (the report's summary). A runner that holds
the gathered collection (the DirectRunner keeps it in memory until the report's steps run)
then holds about 40 bytes per record instead of the record itself (about 300 bytes for one
that failed early), and the records are never encoded, decoded and re-encoded on the way.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from typing import Iterable, Mapping

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindows

from pipeline.summary import SummaryAccumulator, SummaryFn, add_record, merge

BLOCK_RECORDS = 1000
"""Most records in one block."""


@dataclass(frozen=True)
class RecordBlock:
    """Records folded for the report: `lines`, their JSON lines (keys sorted, no NaN), joined
    by newlines and zlib-compressed; `summary`, their `SummaryAccumulator`; `count` records."""

    lines: bytes
    summary: SummaryAccumulator
    count: int

    def text(self) -> str:
        """The JSON lines, joined by newlines (no trailing newline)."""
        return zlib.decompress(self.lines).decode("utf-8")


def make_block(records: Iterable[Mapping]) -> RecordBlock:
    """One block of `records`, as `ToBlocks` makes them."""
    encoder = json.JSONEncoder(sort_keys=True, allow_nan=False)
    folder = _Folder(encoder)
    for record in records:
        folder.add(record)
    return folder.block()


class _Folder:
    """Records folded one by one into a block's lines and summary."""

    def __init__(self, encoder: json.JSONEncoder):
        self.encoder = encoder
        self.lines: list[str] = []
        self.summary = SummaryAccumulator()

    def add(self, record: Mapping) -> None:
        self.lines.append(self.encoder.encode(record))
        add_record(self.summary, record)

    def block(self) -> RecordBlock:
        text = "\n".join(self.lines).encode("utf-8")
        return RecordBlock(zlib.compress(text, 1), self.summary, len(self.lines))


class ToBlocks(beam.DoFn):
    """Records -> `RecordBlock`s of up to `records` each (one or more per bundle)."""

    def __init__(self, records: int = BLOCK_RECORDS):
        self.records = records

    def setup(self):
        self.encoder = json.JSONEncoder(sort_keys=True, allow_nan=False)

    def start_bundle(self):
        self.folder = _Folder(self.encoder)

    def process(self, record: Mapping):
        self.folder.add(record)
        if len(self.folder.lines) >= self.records:
            yield self._take()

    def finish_bundle(self):
        if self.folder.lines:
            yield GlobalWindows.windowed_value(self._take())

    def _take(self) -> RecordBlock:
        """The block folded so far; folding starts again."""
        block, self.folder = self.folder.block(), _Folder(self.encoder)
        return block


class BlockSummaryFn(SummaryFn):
    """`RecordBlock`s -> the run summary dict: `SummaryFn`, whose inputs are blocks, each
    merged in through its accumulator."""

    def add_input(self, accumulator: SummaryAccumulator, block: RecordBlock) -> SummaryAccumulator:
        return merge([accumulator, block.summary])
