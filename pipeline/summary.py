"""Run summary: a mergeable summary of per-image records.

``SummaryFn`` folds per-image records (see ``pipeline.records``) into an accumulator whose size
does not grow with the number of records, so it can summarise any number of images and Beam may
merge partial accumulators in any order. Means are computed from exact integer sums, so the
summary is bit-for-bit identical whatever the bundling and merge order.

Counts: ``total`` is every image (``ok + error + skipped``); ``ignored`` counts the files under
``--input`` that are not images (status ``ignored``), listed by path (the first
``IGNORED_LISTED`` in sorted order) under ``"ignored"``.

Views: ``"clean"`` covers the record's own read-back (``ber``, ``decoded``, ``detected``,
``match``); every key of ``record["attacks"]`` is a view of its own. Only ``"ok"`` records
contribute to views, PSNR and the thumbnail sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

import apache_beam as beam
import numpy as np

__all__ = [
    "CLEAN",
    "PSNR_HIST_HI",
    "PSNR_HIST_LO",
    "SAMPLE_SIZE",
    "SummaryAccumulator",
    "SummaryFn",
    "ViewAccumulator",
    "add_record",
    "finite",
    "merge",
    "natural_key",
    "rate",
    "summarize",
    "to_summary",
    "view_names",
]

SAMPLE_SIZE = 6
IGNORED_LISTED = 100
"""Ignored (non-image) files named in the summary; all of them are counted."""
PSNR_HIST_LO = 20  # dB, lower edge of the first bin
PSNR_HIST_HI = 60  # dB, upper edge of the last bin; bins are 1 dB wide, [lo, hi)
CLEAN = "clean"
_N_BINS = PSNR_HIST_HI - PSNR_HIST_LO
_EXACT_SHIFT = 1074  # every finite float is an integer multiple of 2**-1074
_SAMPLE_FIELDS = ("image", "output", "psnr", "payload", "decoded", "match", "ber",
                  "width", "height", "format", "line")


@dataclasses.dataclass
class ViewAccumulator:
    """Counts and exact sums for one view (``clean`` or an attack)."""

    n: int = 0
    ber_n: int = 0
    ber_sum: int = 0  # exact, in units of 2**-1074
    with_payload: int = 0
    exact: int = 0
    detected_n: int = 0
    detected: int = 0
    decoded: int = 0

    def merge(self, other: ViewAccumulator) -> None:
        """Adds ``other``'s counts into this one."""
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


@dataclasses.dataclass
class SummaryAccumulator:
    """Everything ``SummaryFn`` keeps; its size is bounded by the number of distinct codes,
    attack names and ``SAMPLE_SIZE``, never by the number of records."""

    ok: int = 0
    error: int = 0
    skipped: int = 0
    ignored: int = 0
    ignored_files: list[str] = dataclasses.field(default_factory=list)
    """The first `IGNORED_LISTED` ignored paths in sorted order."""
    error_codes: dict[str, int] = dataclasses.field(default_factory=dict)
    skip_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    modes: dict[str, int] = dataclasses.field(default_factory=dict)
    psnr_n: int = 0
    psnr_sum: int = 0  # exact, in units of 2**-1074
    psnr_min: float | None = None
    psnr_max: float | None = None
    psnr_infinite: int = 0
    psnr_bins: list[int] = dataclasses.field(default_factory=lambda: [0] * (_N_BINS + 2))
    views: dict[str, ViewAccumulator] = dataclasses.field(default_factory=dict)
    # (sha256 of the image path, canonical JSON of the sampled fields), sorted, one per image.
    sample: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _exact(value: float) -> int:
    """``value`` as an exact integer multiple of 2**-1074 (``value`` must be finite)."""
    numerator, denominator = value.as_integer_ratio()
    return numerator << (_EXACT_SHIFT - (denominator.bit_length() - 1))


def _exact_mean(total: int, count: int) -> float | None:
    """Correctly rounded mean of values whose exact sum is ``total`` (units of 2**-1074)."""
    return float(Fraction(total, count << _EXACT_SHIFT)) if count else None


def finite(value: Any) -> float | None:
    """``value`` as a finite float, or None when missing, non-numeric, NaN or infinite."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _tristate(value: Any) -> bool | None:
    """None stays None; anything else is its truth value."""
    return None if value is None else bool(value)


def _bump(counter: dict[str, int], key: str, n: int = 1) -> None:
    counter[key] = counter.get(key, 0) + n


def _psnr_bin(value: float) -> int:
    """Index into ``psnr_bins``: 0 is underflow, ``_N_BINS + 1`` is overflow."""
    if value < PSNR_HIST_LO:
        return 0
    if value >= PSNR_HIST_HI:
        return _N_BINS + 1
    return int(math.floor(value - PSNR_HIST_LO)) + 1


def _add_view(acc: SummaryAccumulator, name: str, entry: Mapping[str, Any],
              has_payload: bool) -> None:
    """Adds one record's result for view ``name``."""
    view = acc.views.get(name)
    if view is None:
        view = acc.views[name] = ViewAccumulator()
    view.n += 1
    ber = finite(entry.get("ber"))
    if ber is not None:
        view.ber_n += 1
        view.ber_sum += _exact(ber)
    if has_payload:
        view.with_payload += 1
        view.exact += entry.get("match") is True
    detected = _tristate(entry.get("detected"))
    if detected is not None:
        view.detected_n += 1
        view.detected += detected
    view.decoded += entry.get("decoded") is not None


def _add_psnr(acc: SummaryAccumulator, value: Any) -> None:
    """Adds one PSNR value; None and NaN are ignored, +inf (identical pixels) is counted apart."""
    if value is None or isinstance(value, (str, bytes)):
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        return
    if math.isnan(number) or number == -math.inf:
        return
    acc.psnr_bins[_psnr_bin(number)] += 1
    if number == math.inf:
        acc.psnr_infinite += 1
        return
    acc.psnr_n += 1
    acc.psnr_sum += _exact(number)
    acc.psnr_min = number if acc.psnr_min is None else min(acc.psnr_min, number)
    acc.psnr_max = number if acc.psnr_max is None else max(acc.psnr_max, number)


def _image_key(image: Any) -> str:
    """Sample ordering key: hex sha256 of the image path."""
    return hashlib.sha256(str(image).encode("utf-8", "surrogatepass")).hexdigest()


def _json_value(value: Any) -> Any:
    """A JSON-safe copy of a scalar record field (non-finite floats become None)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return finite(value)
    return str(value)


def _sample_entry(record: Mapping[str, Any]) -> tuple[str, str]:
    slim = {field: _json_value(record.get(field)) for field in _SAMPLE_FIELDS}
    return _image_key(record.get("image")), json.dumps(slim, sort_keys=True)


def _merge_samples(entries: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The ``SAMPLE_SIZE`` smallest entries, keeping the smallest entry per image."""
    best: dict[str, tuple[str, str]] = {}
    for entry in entries:
        current = best.get(entry[0])
        if current is None or entry < current:
            best[entry[0]] = entry
    return sorted(best.values())[:SAMPLE_SIZE]


def _add_sample(acc: SummaryAccumulator, record: Mapping[str, Any]) -> None:
    if len(acc.sample) >= SAMPLE_SIZE and _image_key(record.get("image")) > acc.sample[-1][0]:
        return
    acc.sample = _merge_samples([*acc.sample, _sample_entry(record)])


def add_record(acc: SummaryAccumulator, record: Mapping[str, Any]) -> SummaryAccumulator:
    """Folds one per-image record into ``acc`` (in place) and returns it."""
    status = record.get("status")
    code = record.get("error_code")
    code = str(code) if code is not None else "unknown"
    mode = record.get("mode")
    _bump(acc.modes, str(mode) if mode is not None else "unknown")
    if status == "ignored":
        acc.ignored += 1
        acc.ignored_files = sorted({*acc.ignored_files, str(record.get("image"))})[:IGNORED_LISTED]
        return acc
    if status == "skipped":
        acc.skipped += 1
        _bump(acc.skip_reasons, code)
        return acc
    if status != "ok":
        acc.error += 1
        _bump(acc.error_codes, code if status == "error" else "invalid_status")
        return acc
    acc.ok += 1
    has_payload = record.get("payload") is not None
    _add_view(acc, CLEAN, record, has_payload)
    attacks = record.get("attacks") or {}
    for name, entry in attacks.items():
        if isinstance(entry, Mapping):
            _add_view(acc, str(name), entry, has_payload)
    _add_psnr(acc, record.get("psnr"))
    _add_sample(acc, record)
    return acc


def merge(accumulators: Iterable[SummaryAccumulator]) -> SummaryAccumulator:
    """A new accumulator holding the union of ``accumulators`` (which are left untouched)."""
    out = SummaryAccumulator()
    samples: list[tuple[str, str]] = []
    for acc in accumulators:
        out.ok += acc.ok
        out.error += acc.error
        out.skipped += acc.skipped
        out.ignored += acc.ignored
        out.ignored_files = sorted({*out.ignored_files, *acc.ignored_files})[:IGNORED_LISTED]
        for target, source in ((out.error_codes, acc.error_codes),
                               (out.skip_reasons, acc.skip_reasons), (out.modes, acc.modes)):
            for key, n in source.items():
                _bump(target, key, n)
        out.psnr_n += acc.psnr_n
        out.psnr_sum += acc.psnr_sum
        out.psnr_infinite += acc.psnr_infinite
        out.psnr_bins = [a + b for a, b in zip(out.psnr_bins, acc.psnr_bins)]
        for attr, pick in (("psnr_min", min), ("psnr_max", max)):
            values = [v for v in (getattr(out, attr), getattr(acc, attr)) if v is not None]
            setattr(out, attr, pick(values) if values else None)
        for name, view in acc.views.items():
            out.views.setdefault(name, ViewAccumulator()).merge(view)
        samples.extend(acc.sample)
    out.sample = _merge_samples(samples)
    return out


def rate(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def _view_summary(view: ViewAccumulator) -> dict[str, Any]:
    ber_mean = _exact_mean(view.ber_sum, view.ber_n)
    return {
        "n": view.n,
        "ber_n": view.ber_n,
        "ber_mean": ber_mean,
        "bit_accuracy": None if ber_mean is None else 1.0 - ber_mean,
        "with_payload": view.with_payload,
        "exact": view.exact,
        "exact_rate": rate(view.exact, view.with_payload),
        "detected_n": view.detected_n,
        "detected": view.detected,
        "detected_rate": rate(view.detected, view.detected_n),
        "decoded": view.decoded,
        "decoded_rate": rate(view.decoded, view.n),
    }


def _summary_mode(modes: Mapping[str, int]) -> str | None:
    if not modes:
        return None
    return next(iter(modes)) if len(modes) == 1 else "mixed"


def _sorted_counts(counter: Mapping[str, int]) -> dict[str, int]:
    return {key: counter[key] for key in sorted(counter)}


def natural_key(name: str) -> tuple:
    """Sort key that orders ``jpeg:9`` before ``jpeg:10``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name) if part)


def view_names(summary: Mapping[str, Any]) -> list[str]:
    """Views in display order: ``clean`` first, then attacks in natural order."""
    views = summary.get("views") or {}
    attacks = sorted((name for name in views if name != CLEAN), key=natural_key)
    return ([CLEAN] if CLEAN in views else []) + attacks


def to_summary(acc: SummaryAccumulator) -> dict[str, Any]:
    """The JSON-serialisable summary of an accumulator (finite numbers only)."""
    bins = acc.psnr_bins
    return {
        "mode": _summary_mode(acc.modes),
        "modes": _sorted_counts(acc.modes),
        "counts": {"total": acc.ok + acc.error + acc.skipped, "ok": acc.ok,
                   "error": acc.error, "skipped": acc.skipped, "ignored": acc.ignored},
        "ignored": acc.ignored_files,
        "error_codes": _sorted_counts(acc.error_codes),
        "skip_reasons": _sorted_counts(acc.skip_reasons),
        "psnr": {
            "n": acc.psnr_n,
            "mean": _exact_mean(acc.psnr_sum, acc.psnr_n),
            "min": acc.psnr_min,
            "max": acc.psnr_max,
            "infinite": acc.psnr_infinite,
            "histogram": {"lo": PSNR_HIST_LO, "hi": PSNR_HIST_HI, "bin_width": 1,
                          "counts": list(bins[1:-1]), "underflow": bins[0],
                          "overflow": bins[-1]},
        },
        "views": {name: _view_summary(acc.views[name]) for name in sorted(acc.views)},
        "sample": [json.loads(canonical) for _, canonical in acc.sample],
    }


class SummaryFn(beam.CombineFn):
    """Combines per-image records into the run summary dict (see ``to_summary``)."""

    def create_accumulator(self) -> SummaryAccumulator:
        return SummaryAccumulator()

    def add_input(self, accumulator: SummaryAccumulator,
                  element: Mapping[str, Any]) -> SummaryAccumulator:
        return add_record(accumulator, element)

    def merge_accumulators(
            self, accumulators: Iterable[SummaryAccumulator]) -> SummaryAccumulator:
        return merge(accumulators)

    def extract_output(self, accumulator: SummaryAccumulator) -> dict[str, Any]:
        return to_summary(accumulator)


def summarize(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One-pass summary of ``records`` without Beam."""
    acc = SummaryAccumulator()
    for record in records:
        add_record(acc, record)
    return to_summary(acc)
