"""Run report: the summary's HTML page (self-contained: inline CSS, SVG charts, thumbnails as data
URIs), its console text, and the report files under ``OUTPUT/report/``. The summary itself is
built by `pipeline.summary`, the thumbnails by `pipeline.thumbnails`."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

from pipeline.storage import write_atomically
from pipeline.summary import CLEAN, PSNR_HIST_HI, PSNR_HIST_LO, finite, rate, view_names

__all__ = ["format_console_summary", "render_html", "report_paths", "write_summary"]

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


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
    gain = finite(thumb.get("gain"))
    cells = []
    for key, caption in (("original", "original"), ("marked", "marked"),
                         ("residual", f"residual ×{gain:g}" if gain else "residual")):
        uri = _data_uri(thumb.get(key))
        img = (f'<img src="{uri}" alt="{_esc(caption)}">' if uri
               else '<div class="missing">unavailable</div>')
        cells.append(f"<div>{img}<div class=\"caption\">{_esc(caption)}</div></div>")
    name = thumb.get("name") or thumb.get("image") or ""
    title = (f"{name} — PSNR {_num(finite(psnr), '.2f', ' dB')} — SSIMULACRA2 "
             f"{_num(finite(thumb.get('ssimulacra2')), '.1f')}")
    return (f'<figure class="thumb"><div class="triple">{"".join(cells)}</div>'
            f'<figcaption title="{_esc(thumb.get("image", ""))}">{_esc(title)}</figcaption>'
            '</figure>')


def _ssimulacra2_note(thumbnails: list[dict[str, Any]]) -> str:
    scores = [s for s in (finite((t or {}).get("ssimulacra2")) for t in thumbnails or [])
              if s is not None]
    mean = f" Mean over these {len(scores)}: {sum(scores) / len(scores):.1f}." if scores else ""
    return ("<p>SSIMULACRA2 (perceptual; 100 = identical, ≥ 90 visually lossless, about 70 like "
            "a JPEG q70 re-save, ≤ 50 clearly visible) of each output file against its original, "
            "both resized to a long side of 1600 px, as seen whole on a screen. It costs seconds "
            "of CPU per image, so it is computed for these sampled images only, not for every "
            f"image of the run.{mean}</p>")


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
              "shown.</p>" + _ssimulacra2_note(thumbnails) +
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
        f"  {done}: {ok:,}, payload read back: {decoded:,} ({_pct(rate(decoded, ok))})",
    ]
    if counts.get("ignored"):
        lines.append(f"  ignored (not images): {counts['ignored']:,}")
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
