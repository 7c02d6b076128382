"""Run report: a mergeable summary of per-image records, its HTML page and console text.

``SummaryFn`` folds per-image records (see ``pipeline.run``) into an accumulator whose size does
not grow with the number of records, so it can summarise any number of images and Beam may merge
partial accumulators in any order. Means are computed from exact integer sums, so the summary is
bit-for-bit identical whatever the bundling and merge order.

Views: ``"clean"`` covers the record's own read-back (``ber``, ``decoded``, ``detected``,
``match``); every key of ``record["attacks"]`` is a view of its own. Only ``"ok"`` records
contribute to views, PSNR and the thumbnail sample.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import logging
import math
import re
from collections.abc import Callable, Iterable, Mapping
from fractions import Fraction
from typing import Any

import apache_beam as beam
import numpy as np
from PIL import Image, ImageOps

from pipeline.storage import read_bytes, write_atomically

__all__ = [
    "PSNR_HIST_HI",
    "PSNR_HIST_LO",
    "RESIDUAL_GAIN",
    "SAMPLE_SIZE",
    "SummaryAccumulator",
    "SummaryFn",
    "ViewAccumulator",
    "add_record",
    "format_console_summary",
    "make_thumbnails",
    "merge",
    "render_html",
    "report_paths",
    "sample_thumbnails",
    "summarize",
    "to_summary",
    "view_names",
    "write_summary",
]

_LOG = logging.getLogger(__name__)

SAMPLE_SIZE = 6
PSNR_HIST_LO = 20  # dB, lower edge of the first bin
PSNR_HIST_HI = 60  # dB, upper edge of the last bin; bins are 1 dB wide, [lo, hi)
RESIDUAL_GAIN = 20.0
CLEAN = "clean"

_N_BINS = PSNR_HIST_HI - PSNR_HIST_LO
_EXACT_SHIFT = 1074  # every finite float is an integer multiple of 2**-1074
_SAMPLE_FIELDS = ("image", "output", "psnr", "payload", "decoded", "match", "ber",
                  "width", "height", "format", "line")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


# --------------------------------------------------------------------------------------------
# Accumulator


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


def _finite(value: Any) -> float | None:
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
    ber = _finite(entry.get("ber"))
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
        return _finite(value)
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


# --------------------------------------------------------------------------------------------
# Summary


def _rate(numerator: int, denominator: int) -> float | None:
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
        "exact_rate": _rate(view.exact, view.with_payload),
        "detected_n": view.detected_n,
        "detected": view.detected,
        "detected_rate": _rate(view.detected, view.detected_n),
        "decoded": view.decoded,
        "decoded_rate": _rate(view.decoded, view.n),
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
                   "error": acc.error, "skipped": acc.skipped},
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


# --------------------------------------------------------------------------------------------
# Thumbnails


ANALYSIS_SIDE = 1024
"""Thumbnails and the residual are computed on images reduced to at most this many pixels on
the long side (JPEGs are decoded at reduced scale directly), so a report never holds a
full-resolution copy of a large photo: the watermark residual is smooth at this scale (it is
upsampled from the model's working size), and the thumbnails are smaller still."""


def _open_rgb(data: bytes, max_side: int = ANALYSIS_SIDE) -> tuple[Image.Image, tuple[int, int]]:
    """Decodes the first frame, applies EXIF orientation, returns 8-bit RGB reduced (by an
    integer factor, with JPEG's DCT scaling when possible) to at most ``max_side`` pixels on
    the long side, and the full size (after orientation)."""
    with Image.open(io.BytesIO(data)) as opened:
        width, height = opened.size
        longest = max(width, height)
        if longest > max_side and opened.format in ("JPEG", "MPO"):
            factor = longest / max_side
            opened.draft(opened.mode if opened.mode in ("RGB", "L") else None,
                         (math.ceil(width / factor), math.ceil(height / factor)))
        opened.load()
        if opened.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            width, height = height, width
        image = ImageOps.exif_transpose(opened)
    image = _reduce_to(image, max_side)
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        array = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if array.max(initial=0) > 255 else 1.0
        image = Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB"), (width, height)


def _reduce_to(image: Image.Image, max_side: int) -> Image.Image:
    factor = math.ceil(max(image.size) / max_side)
    if factor <= 1:
        return image
    if image.mode not in ("1", "L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
                          "I", "F", "I;16", "I;16L", "I;16B", "I;16N"):
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    return image.reduce(factor)


def _png_base64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _thumbnail(image: Image.Image, size: int) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return copy


def _residual(original: Image.Image, marked: Image.Image, gain: float) -> tuple[Image.Image, int]:
    """``|marked - original| * gain`` (clipped to 8 bits) and the largest absolute difference
    in 8-bit levels, at the images' (analysis) resolution."""
    if marked.size != original.size:
        marked = marked.resize(original.size, Image.Resampling.BILINEAR)
    a = np.asarray(original, dtype=np.int16)
    b = np.asarray(marked, dtype=np.int16)
    diff = np.abs(b - a)
    amplified = np.clip(diff.astype(np.float32) * gain, 0, 255).astype(np.uint8)
    return Image.fromarray(amplified, "RGB"), int(diff.max(initial=0))


def make_thumbnails(image_path: str, original: bytes, marked: bytes, size: int = 256,
                    *, gain: float = RESIDUAL_GAIN) -> dict[str, Any] | None:
    """Base64 PNG thumbnails (longest side ``size``) of the original, the marked image and the
    amplified residual ``|marked - original| * gain``; None when either image cannot be decoded.

    The residual is computed before the final reduction, on the images at up to
    ``max(ANALYSIS_SIDE, 4 * size)`` pixels on the long side (full resolution for images that
    small), so fine patterns stay visible; ``residual_max`` is measured at that resolution.
    Large images are never held at full resolution twice (JPEGs are decoded reduced).
    """
    try:
        side = max(ANALYSIS_SIDE, 4 * size)
        source, (width, height) = _open_rgb(original, side)
        result, _ = _open_rgb(marked, side)
        residual, max_diff = _residual(source, result, gain)
        thumbs = {key: _thumbnail(image, size)
                  for key, image in (("original", source), ("marked", result),
                                     ("residual", residual))}
    except Exception as exc:  # noqa: BLE001 - any undecodable input just has no thumbnail
        _LOG.warning("no thumbnail for %r: %s", image_path, exc)
        return None
    name = re.split(r"[/\\]", str(image_path).rstrip("/\\"))[-1] or str(image_path)
    return {
        "image": str(image_path),
        "name": name,
        "width": width,
        "height": height,
        "gain": gain,
        "residual_max": max_diff,
        "thumb_width": thumbs["original"].width,
        "thumb_height": thumbs["original"].height,
        **{key: _png_base64(image) for key, image in thumbs.items()},
    }


def sample_thumbnails(summary: Mapping[str, Any], size: int = 256,
                      read: Callable[[str], bytes] = read_bytes) -> list[dict[str, Any]]:
    """Thumbnails for the summary's sample, read through ``read``; unreadable ones are left out."""
    out = []
    for record in summary.get("sample") or []:
        image, output = record.get("image"), record.get("output")
        if not image or not output:
            continue
        try:
            original, marked = read(image), read(output)
        except Exception as exc:  # noqa: BLE001 - a missing file only loses a thumbnail
            _LOG.warning("cannot read %r or %r for a thumbnail: %s", image, output, exc)
            continue
        thumb = make_thumbnails(image, original, marked, size)
        if thumb is not None:
            thumb["psnr"] = record.get("psnr")
            out.append(thumb)
    return out


# --------------------------------------------------------------------------------------------
# HTML


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100.0 * value:.{digits}f}%"


def _num(value: float | None, fmt: str = ".2f", unit: str = "") -> str:
    return "–" if value is None else f"{value:{fmt}}{unit}"


def _headline(summary: Mapping[str, Any]) -> str:
    counts = summary.get("counts") or {}
    psnr = summary.get("psnr") or {}
    clean = (summary.get("views") or {}).get(CLEAN) or {}
    cards = [
        ("Images", f"{counts.get('total', 0):,}"),
        ("OK / error / skipped",
         f"{counts.get('ok', 0):,} / {counts.get('error', 0):,} / {counts.get('skipped', 0):,}"),
        ("Mean PSNR", _num(psnr.get("mean"), ".2f", " dB")),
        ("Min PSNR", _num(psnr.get("min"), ".2f", " dB")),
        ("Exact payload recovery", _pct(clean.get("exact_rate"), 2)),
    ]
    items = "".join(f'<div class="card"><div class="label">{_esc(label)}</div>'
                    f'<div class="value">{_esc(value)}</div></div>' for label, value in cards)
    return f'<section class="cards">{items}</section>'


def _views_table(summary: Mapping[str, Any]) -> str:
    views = summary.get("views") or {}
    rows = []
    for name in view_names(summary):
        view = views[name]
        rows.append(
            "<tr>"
            f"<th scope=\"row\">{_esc(name)}</th>"
            f"<td>{view.get('n', 0):,}</td>"
            f"<td>{_esc(_num(view.get('ber_mean'), '.4f'))}</td>"
            f"<td>{_esc(_num(view.get('bit_accuracy'), '.4f'))}</td>"
            f"<td>{_esc(_pct(view.get('exact_rate'), 2))}</td>"
            f"<td>{_esc(_pct(view.get('detected_rate'), 2))}</td>"
            f"<td>{_esc(_pct(view.get('decoded_rate'), 2))}</td>"
            "</tr>")
    if not rows:
        rows.append('<tr><td colspan="7">No images were read back.</td></tr>')
    return ('<table class="views"><thead><tr><th>View</th><th>Images</th><th>Mean BER</th>'
            '<th>Bit accuracy</th><th>Exact payload</th><th>Detected</th><th>Decoded</th>'
            f'</tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _accuracy_svg(summary: Mapping[str, Any]) -> str:
    """Horizontal bars of bit accuracy (1 - BER) per view, on a 0.5 (chance) to 1.0 axis."""
    views = summary.get("views") or {}
    names = [name for name in view_names(summary) if views[name].get("bit_accuracy") is not None]
    label_w, bar_w, row_h, top = 160, 420, 24, 24
    width, height = label_w + bar_w + 80, top + row_h * max(len(names), 1) + 28
    parts = [f'<svg class="chart" id="accuracy-chart" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="Bit accuracy per view">']
    for i in range(6):
        tick = 0.5 + 0.1 * i
        x = label_w + bar_w * (tick - 0.5) / 0.5
        parts.append(f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{height - 22}" '
                     f'class="grid"/><text x="{x:.1f}" y="{height - 8}" '
                     f'text-anchor="middle" class="tick">{tick:.1f}</text>')
    if not names:
        parts.append(f'<text x="{label_w}" y="{top + 16}" class="tick">no data</text>')
    for row, name in enumerate(names):
        accuracy = views[name]["bit_accuracy"]
        y = top + row * row_h
        length = bar_w * min(max((accuracy - 0.5) / 0.5, 0.0), 1.0)
        parts.append(
            f'<text x="{label_w - 8}" y="{y + 15}" text-anchor="end" class="label">'
            f'{_esc(name)}</text><rect x="{label_w}" y="{y + 3}" width="{length:.1f}" '
            f'height="{row_h - 8}" class="bar"><title>{_esc(name)}: {accuracy:.4f}</title></rect>'
            f'<text x="{label_w + length + 6:.1f}" y="{y + 15}" class="value">'
            f'{accuracy:.4f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _psnr_svg(summary: Mapping[str, Any]) -> str:
    """Column chart of the PSNR histogram, with underflow and overflow columns at the ends."""
    hist = (summary.get("psnr") or {}).get("histogram") or {}
    lo, hi = int(hist.get("lo", PSNR_HIST_LO)), int(hist.get("hi", PSNR_HIST_HI))
    counts = [int(hist.get("underflow", 0)), *map(int, hist.get("counts") or []),
              int(hist.get("overflow", 0))]
    labels = [f"< {lo} dB"] + [f"{lo + i}–{lo + i + 1} dB" for i in range(len(counts) - 2)]
    labels.append(f"≥ {hi} dB")
    col_w, plot_h, left, top = 14, 160, 48, 12
    width, height = left + col_w * len(counts) + 12, top + plot_h + 36
    peak = max(counts, default=0) or 1
    parts = [f'<svg class="chart" id="psnr-chart" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="PSNR histogram">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 8}" y2="{top + plot_h}" '
             f'class="axis"/>',
             f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" class="tick">{peak:,}'
             f'</text><text x="{left - 6}" y="{top + plot_h}" text-anchor="end" '
             f'class="tick">0</text>']
    for i, (count, label) in enumerate(zip(counts, labels)):
        x = left + i * col_w
        h = plot_h * count / peak
        css = "bar" if 0 < i < len(counts) - 1 else "bar outside"
        parts.append(f'<rect x="{x + 1}" y="{top + plot_h - h:.1f}" width="{col_w - 2}" '
                     f'height="{h:.1f}" class="{css}"><title>{_esc(label)}: {count:,}</title>'
                     '</rect>')
    for value in range(lo, hi + 1, 10):
        x = left + (value - lo + 1) * col_w
        parts.append(f'<text x="{x}" y="{top + plot_h + 16}" text-anchor="middle" '
                     f'class="tick">{value}</text>')
    parts.append(f'<text x="{left + col_w * len(counts) / 2:.0f}" y="{height - 4}" '
                 'text-anchor="middle" class="tick">PSNR (dB)</text></svg>')
    return "".join(parts)


def _codes_table(summary: Mapping[str, Any]) -> str:
    rows = [(kind, code, n)
            for kind, key in (("error", "error_codes"), ("skipped", "skip_reasons"))
            for code, n in sorted((summary.get(key) or {}).items())]
    body = "".join(f"<tr><td>{_esc(kind)}</td><td>{_esc(code)}</td><td>{n:,}</td></tr>"
                   for kind, code, n in rows)
    if not body:
        body = '<tr><td colspan="3">No errors and nothing skipped.</td></tr>'
    return ('<table class="codes"><thead><tr><th>Status</th><th>Code</th><th>Images</th></tr>'
            f'</thead><tbody>{body}</tbody></table>')


def _data_uri(value: Any) -> str | None:
    """``data:image/png;base64,...`` for a well-formed base64 string, else None."""
    if not isinstance(value, str) or not value or not _BASE64_RE.match(value):
        return None
    return f"data:image/png;base64,{value}"


def _thumbnail_figure(thumb: Mapping[str, Any], psnr_by_image: Mapping[str, Any]) -> str:
    psnr = thumb.get("psnr")
    if psnr is None:
        psnr = psnr_by_image.get(thumb.get("image"))
    gain = _finite(thumb.get("gain"))
    cells = []
    for key, caption in (("original", "original"), ("marked", "marked"),
                         ("residual", f"residual ×{gain:g}" if gain else "residual")):
        uri = _data_uri(thumb.get(key))
        img = (f'<img src="{uri}" alt="{_esc(caption)}">' if uri
               else '<div class="missing">unavailable</div>')
        cells.append(f"<div>{img}<div class=\"caption\">{_esc(caption)}</div></div>")
    name = thumb.get("name") or thumb.get("image") or ""
    title = f"{name} — PSNR {_num(_finite(psnr), '.2f', ' dB')}"
    return (f'<figure class="thumb"><div class="triple">{"".join(cells)}</div>'
            f'<figcaption title="{_esc(thumb.get("image", ""))}">{_esc(title)}</figcaption>'
            '</figure>')


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem;color:#222;
max-width:1100px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
.cards{display:flex;flex-wrap:wrap;gap:.75rem}
.card{border:1px solid #ddd;border-radius:6px;padding:.6rem .9rem;min-width:9rem}
.card .label{font-size:.8rem;color:#666}.card .value{font-size:1.3rem;font-weight:600}
table{border-collapse:collapse;margin:.5rem 0}
th,td{border-bottom:1px solid #e4e4e4;padding:.3rem .7rem;text-align:right}
th:first-child,td:first-child{text-align:left}
.codes td:nth-child(2){text-align:left}
.chart .bar{fill:#3b6ea8}.chart .bar.outside{fill:#9aa9bb}
.chart .grid{stroke:#e4e4e4}.chart .axis{stroke:#888}
.chart text{font-size:11px;fill:#444}.chart .label{font-size:12px;fill:#222}
.thumbs{display:flex;flex-direction:column;gap:1.2rem}
.triple{display:flex;gap:.5rem;align-items:flex-start}
.triple img{max-width:256px;max-height:256px;border:1px solid #ddd;image-rendering:auto}
.caption{font-size:.8rem;color:#666;text-align:center}
figure{margin:0}figcaption{font-size:.9rem;margin-top:.3rem;word-break:break-all}
.missing{width:128px;height:96px;border:1px dashed #bbb;color:#999;font-size:.8rem;
display:flex;align-items:center;justify-content:center}
""".strip()


def render_html(summary: Mapping[str, Any], thumbnails: list[dict[str, Any]]) -> str:
    """A self-contained HTML page (inline CSS, SVG and PNG; no scripts) for ``summary``."""
    psnr_by_image = {s.get("image"): s.get("psnr") for s in summary.get("sample") or []}
    mode = summary.get("mode") or "unknown"
    figures = "".join(_thumbnail_figure(t, psnr_by_image) for t in thumbnails or [] if t)
    thumbs = ("<p>Residual: |marked − original| at full resolution, amplified by the gain "
              "shown.</p>"
              f'<div class="thumbs">{figures}</div>' if figures
              else "<p>No thumbnails.</p>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>Filigree watermark report</title>"
        f"<style>{_CSS}</style></head><body>"
        f"<h1>Filigree watermark report <small>({_esc(mode)})</small></h1>"
        f"{_headline(summary)}"
        "<h2>Payload recovery per view</h2>"
        f"{_views_table(summary)}"
        "<h2>Bit accuracy (1 − BER) per view</h2>"
        "<p>Axis from 0.5 (chance) to 1.0.</p>"
        f"{_accuracy_svg(summary)}"
        "<h2>PSNR of marked images</h2>"
        f"{_psnr_svg(summary)}"
        "<h2>Errors and skipped images</h2>"
        f"{_codes_table(summary)}"
        "<h2>Samples</h2>"
        f"{thumbs}"
        "</body></html>\n"
    )


# --------------------------------------------------------------------------------------------
# Output


def report_paths(output_prefix: str) -> tuple[str, str]:
    """``(<output>/report/summary.json, <output>/report/summary.html)``."""
    from apache_beam.io.filesystems import FileSystems

    prefix = output_prefix.rstrip("/") or output_prefix
    report = FileSystems.join(prefix, "report")
    return FileSystems.join(report, "summary.json"), FileSystems.join(report, "summary.html")


def write_summary(output_prefix: str, summary: Mapping[str, Any],
                  thumbnails: list[dict[str, Any]]) -> tuple[str, str]:
    """Writes the summary JSON and HTML page under ``<output_prefix>/report/`` (local or any
    Beam filesystem), each atomically; returns their paths."""
    json_path, html_path = report_paths(output_prefix)
    text = json.dumps(summary, indent=2, sort_keys=True, allow_nan=False)
    write_atomically(json_path, (text + "\n").encode("utf-8"))
    write_atomically(html_path, render_html(summary, thumbnails).encode("utf-8", "replace"))
    return json_path, html_path


def _plain(value: Any) -> str:
    """Text safe for a terminal: control characters become ``?``."""
    return _CONTROL_RE.sub("?", str(value))


def _code_list(counter: Mapping[str, int]) -> str:
    items = sorted(counter.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{_plain(code)} {n:,}" for code, n in items)


def format_console_summary(summary: Mapping[str, Any], output: str) -> str:
    """A short plain-text summary for the end of a run."""
    counts = summary.get("counts") or {}
    views = summary.get("views") or {}
    clean = views.get(CLEAN) or {}
    psnr = summary.get("psnr") or {}
    mode = summary.get("mode") or "unknown"
    ok, decoded = counts.get("ok", 0), clean.get("decoded", 0)
    done = "marked" if mode == "embed" else "read"
    lines = [
        f"Filigree {_plain(mode)}: {counts.get('total', 0):,} images — {ok:,} ok, "
        f"{counts.get('error', 0):,} errors, {counts.get('skipped', 0):,} skipped",
        f"  {done}: {ok:,}, payload read back: {decoded:,} ({_pct(_rate(decoded, ok))})",
    ]
    if summary.get("error_codes"):
        lines.append(f"  errors: {_code_list(summary['error_codes'])}")
    if summary.get("skip_reasons"):
        lines.append(f"  skipped: {_code_list(summary['skip_reasons'])}")
    if psnr.get("n") or psnr.get("infinite"):
        line = (f"  PSNR: mean {_num(psnr.get('mean'), '.2f', ' dB')}, "
                f"min {_num(psnr.get('min'), '.2f', ' dB')}")
        if psnr.get("infinite"):
            line += f" ({psnr['infinite']:,} unchanged)"
        lines.append(line)
    exact = [f"{_plain(name)} {_pct(views[name].get('exact_rate'), 2)}"
             for name in view_names(summary) if views[name].get("with_payload")]
    if exact:
        lines.append(f"  exact payload: {' | '.join(exact)}")
    json_path, html_path = report_paths(output)
    lines.append(f"  outputs: {_plain(output)}")
    lines.append(f"  report: {_plain(html_path)}, {_plain(json_path)}")
    return "\n".join(lines)
