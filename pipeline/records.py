"""Report records: one per matched image and manifest row (see `pipeline.graph` for the
reliability contract), the per-image failure that becomes an error record, and the read-back
fields of a record."""

from __future__ import annotations

from typing import Any

import apache_beam as beam

from filigree.payload import ReadResult

def new_record(image: str, mode: str, **fields: Any) -> dict:
    """A report record with every key present."""
    record = {
        "image": image, "status": "ok", "error": None, "error_code": None, "output": None,
        "payload": None, "decoded": None, "detected": None, "p_value": None, "ber": None,
        "corrected": None, "match": None, "psnr": None, "attacks": {}, "width": None,
        "height": None, "format": None, "line": None, "notes": [], "mode": mode,
        "source_quality": None, "source_bytes": None, "output_quality": None, "output_bytes": None,
        "size_ratio": None, "existing_payload": None,
    }
    record.update(fields)
    return record


_UNSET = {key: value for key, value in new_record("", "").items() if key not in ("image", "mode")}
"""The values a new record starts with (`image` and `mode` have none)."""


def lean_record(record: dict) -> dict:
    """`record` without the keys that still hold a new record's value: what travels between the
    job's steps (about half the bytes of a record that failed early); `full_record` restores it."""
    return {key: value for key, value in record.items() if key not in _UNSET or value != _UNSET[key]}


def full_record(lean: dict) -> dict:
    """The record that `lean_record` made `lean` from (every key present, as `new_record`)."""
    return new_record(**lean)


class Record(dict):
    """The element type of the job's record PCollections (declare it with `with_output_types`;
    the records themselves are plain dicts): it gives them `RecordCoder`."""


class RecordCoder(beam.coders.Coder):
    """A record encoded without the keys that still hold a new record's value (`lean_record`:
    about half the bytes of a record that failed early) and decoded whole (`full_record`). A
    runner encodes elements where they leave a fused stage (the job folds its records into
    report blocks before they would: `pipeline.blocks`)."""

    def __init__(self):
        self._fields = beam.coders.FastPrimitivesCoder()

    def encode(self, record: dict) -> bytes:
        return self._fields.encode(lean_record(record))

    def decode(self, encoded: bytes) -> dict:
        return full_record(self._fields.decode(encoded))

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return Record


beam.coders.registry.register_coder(Record, RecordCoder)


def error_record(image: str, mode: str, code: str, message: str, **fields: Any) -> dict:
    return new_record(image, mode, status="error", error_code=code, error=message, **fields)


def skipped_record(image: str, mode: str, code: str, message: str, **fields: Any) -> dict:
    return new_record(image, mode, status="skipped", error_code=code, error=message, **fields)


def ignored_record(image: str, mode: str, code: str, message: str, **fields: Any) -> dict:
    """A file under --input that is not an image: listed, counted, left alone."""
    return new_record(image, mode, status="ignored", error_code=code, error=message, **fields)


class StepFailure(Exception):
    """This image's expected failure (`code`: the record's `error_code`), raised inside a step and
    turned into its error record by the step."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def read_fields(read: ReadResult) -> dict:
    fields = {"decoded": read.decoded, "detected": bool(read.detected), "p_value": _round_p(read.p_value),
              "ber": None if read.ber is None else round(read.ber, 6), "corrected": read.corrected,
              "match": read.match}
    return _with_framing(fields, read)


def attack_fields(read: ReadResult) -> dict:
    fields = {"ber": None if read.ber is None else round(read.ber, 6), "decoded": read.decoded,
              "detected": bool(read.detected), "p_value": _round_p(read.p_value), "match": read.match}
    return _with_framing(fields, read)


def _with_framing(fields: dict, read: ReadResult) -> dict:
    """`fields` plus, for a mark that was found, the tile grid (tiled bundles) and the framing
    (a re-framing search) that read it."""
    if read.grid is not None and read.detected:
        fields["grid"] = read.grid
    if read.framing is not None:
        fields["framing"] = read.framing
    return fields


def _round_p(p: float) -> float:
    return float(f"{p:.6g}")
