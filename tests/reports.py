"""Reading a finished run's report (imported by name: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import glob
import json
import os


def read_records(output) -> list[dict]:
    """Every record of OUTPUT/report/images*.jsonl, shard by shard in name order."""
    records = []
    for path in sorted(glob.glob(os.path.join(str(output), "report", "images*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def read_summary(output) -> dict:
    """OUTPUT/report/summary.json."""
    with open(os.path.join(str(output), "report", "summary.json"), encoding="utf-8") as f:
        return json.load(f)
