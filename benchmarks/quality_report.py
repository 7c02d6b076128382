"""Tables, figure and files of the quality benchmark (`benchmarks/quality.py`): per-attack
summaries over the photos, the Markdown report (also spliced into docs/quality.md), the bit
accuracy figure, and quality.json."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from benchmarks.common import mean, median
from benchmarks.quality_methods import FILIGREE, PEER_BITS
from benchmarks.visibility import summarise_visibility
from filigree.attacks import Attack
from filigree.payload import binomial_tail

# What each attack kind does, for the docs and the JSON (filigree/attacks.py is the code).
ATTACK_DESCRIPTIONS = {
    "none": "clean: the marked image after a lossless PNG round trip, nothing else",
    "jpeg": "JPEG round trip at quality Q (Pillow/libjpeg defaults: 4:2:0 chroma subsampling, "
            "standard IJG tables scaled by Q)",
    "resize": "bicubic resize of both sides by S (Pillow, antialiased when shrinking); NOT "
              "resized back, the extractor sees the smaller image",
    "crop": "centre crop keeping fraction F of the area (each side times sqrt(F))",
    "noise": "additive Gaussian noise, standard deviation S on the [0, 1] scale, per channel and "
             "pixel, seeded, clipped and rounded to 8 bits",
    "blur": "Gaussian blur with standard deviation S pixels (Pillow ImageFilter.GaussianBlur)",
    "brightness": "Pillow ImageEnhance.Brightness(F): every channel multiplied by F, clipped",
    "contrast": "Pillow ImageEnhance.Contrast(F): deviations from the image's mean grey level "
                "multiplied by F, clipped",
    "saturation": "Pillow ImageEnhance.Color(F): deviations from the pixel's grey level "
                  "multiplied by F, clipped",
    "combo": "the listed attacks applied in order",
}


def attack_label(name: str) -> str:
    """Short human label for an attack's canonical spec."""
    if name == "none":
        return "clean PNG"
    if name.startswith("combo:"):
        return "combo " + " → ".join(attack_label(part) for part in name[6:].split("+"))
    kind, _, param = name.partition(":")
    value = float(param) if param else 0.0
    if kind == "jpeg":
        return f"JPEG q{param}"
    if kind == "resize":
        return f"resize {value * 100:g}%"
    if kind == "crop":
        return f"crop {value * 100:g}% area"
    if kind == "noise":
        return f"noise σ={param}"
    if kind == "blur":
        return f"blur σ={param}px"
    if kind in ("brightness", "contrast", "saturation"):
        return f"{kind} ×{param}"
    return name


def short_label(name: str) -> str:
    """ASCII label for the figure (Pillow's default font has no σ or ×)."""
    if name.startswith("combo:"):
        return "combo"
    label = attack_label(name).replace(" area", "")
    return label.replace("σ=", "").replace("×", "x")


def attack_record(attack: Attack) -> dict[str, Any]:
    stages = attack.name[6:].split("+") if attack.name.startswith("combo:") else [attack.name]
    parsed = []
    for stage in stages:
        kind, _, param = stage.partition(":")
        parsed.append({"kind": kind, "param": float(param) if param else None,
                       "description": ATTACK_DESCRIPTIONS.get(kind, "")})
    return {"spec": attack.name, "label": attack_label(attack.name), "stages": parsed}


def summarise(per_photo: list[dict[str, Any]], attacks: Sequence[Attack],
              filigree: bool) -> dict[str, Any]:
    photos = [r for r in per_photo if not r.get("refused_embed")]
    summary: dict[str, Any] = {
        "photos": len(photos), "refused_embed": len(per_photo) - len(photos),
        "psnr_mean": mean([r["psnr"] for r in photos]),
        "psnr_min": min((r["psnr"] for r in photos if r["psnr"] is not None), default=None),
        "ssim_mean": mean([r["ssim"] for r in photos]),
        "ssim_min": min((r["ssim"] for r in photos), default=None),
        "embed_s_median": median([r["embed_s"] for r in photos]),
        "embed_s_per_mp_median": median([r["embed_s_per_mp"] for r in photos]),
        "extract_s_median": median([r["extract_s"] for r in photos]),
        "extract_s_per_mp_median": median([r["extract_s_per_mp"] for r in photos]),
        "visibility": summarise_visibility([r.get("visibility") for r in photos]),
        "attacks": {},
    }
    for attack in attacks:
        reads = [r["attacks"][attack.name] for r in photos]
        if not reads:
            continue
        entry = {
            "n": len(reads),
            "bit_acc_mean": mean([x["bit_acc"] for x in reads]),
            "bit_acc_min": min(x["bit_acc"] for x in reads),
            "exact_rate": sum(bool(x["exact"]) for x in reads) / len(reads),
            "detection_rate": sum(bool(x["detected"]) for x in reads) / len(reads),
            "p_value_median": median([x["p_value"] for x in reads]),
        }
        if filigree:
            entry["detection_rate_informed"] = (
                sum(bool(x["detected_informed"]) for x in reads) / len(reads))
            entry["p_value_informed_median"] = median([x["p_value_informed"] for x in reads])
        else:
            entry["refused"] = sum(bool(x["refused"]) for x in reads)
        summary["attacks"][attack.name] = entry
    unmarked = [u for r in photos for u in r["unmarked"].values()]
    fp: dict[str, Any] = {
        "reads": len(unmarked),
        "detected": sum(bool(u["detected"]) for u in unmarked),
        "min_p_value": min((u["p_value"] for u in unmarked), default=None),
        "max_bit_acc": max((u["bit_acc"] for u in unmarked), default=None),
        "mean_bit_acc": mean([u["bit_acc"] for u in unmarked]),
    }
    fp["rate"] = fp["detected"] / fp["reads"] if fp["reads"] else None
    if filigree:
        fp["decoded_some_payload"] = sum(u["decoded"] is not None for u in unmarked)
        fp["detected_informed"] = sum(bool(u["detected_informed"]) for u in unmarked)
        fp["min_p_value_informed"] = min((u["p_value_informed"] for u in unmarked), default=None)
    else:
        fp["refused"] = sum(bool(u["refused"]) for u in unmarked)
    summary["false_positives"] = fp
    return summary


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.0f}%"


def _p(value: float | None) -> str:
    return "—" if value is None else f"{value:.2g}"


VISIBILITY_HEADING = "## Visibility: SSIMULACRA2 and PSNR in two views"


def render_visibility(report: dict[str, Any]) -> list[str]:
    """The visibility section: both views per method (means, worst), the JPEG q90 reference,
    the seam ratio, and every photo's scores."""
    methods = report["methods"]
    names = [n for n in methods if (methods[n]["summary"].get("visibility") or {}).get("photos")]
    if not names:
        return []
    lines = [VISIBILITY_HEADING, "",
             "On the 8-bit marked output (after the PNG round trip) against the original. "
             "**screen**: the whole image resized (Lanczos) to a long side of 1600 px; "
             "**flat crop**: the 512×512 crop at native resolution whose 16×16 blocks have "
             "the lowest mean luma standard deviation (sky, skin, walls), the same crop for "
             "every method. SSIMULACRA2 (`filigree.imaging.metrics.ssimulacra2`): 100 = "
             "identical, ≥ 90 visually lossless at 100 %, about 70 like a JPEG q70 re-save, "
             "≤ 50 clearly visible. Mean over photos, worst (lowest) in brackets.", "",
             "| method | photos | PSNR dB, full image | screen PSNR dB | screen SSIMULACRA2 | "
             "flat crop PSNR dB | flat crop SSIMULACRA2 |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        s = methods[name]["summary"]
        v = s["visibility"]
        lines.append(
            f"| {name} | {v['photos']} | {_fmt(s['psnr_mean'], 2)} ({_fmt(s['psnr_min'], 2)}) | "
            f"{_fmt(v['screen']['psnr_mean'], 2)} ({_fmt(v['screen']['psnr_min'], 2)}) | "
            f"**{_fmt(v['screen']['ssimulacra2_mean'], 1)}** "
            f"({_fmt(v['screen']['ssimulacra2_min'], 1)}) | "
            f"{_fmt(v['flat']['psnr_mean'], 2)} ({_fmt(v['flat']['psnr_min'], 2)}) | "
            f"**{_fmt(v['flat']['ssimulacra2_mean'], 1)}** "
            f"({_fmt(v['flat']['ssimulacra2_min'], 1)}) |")
    refs = [p["jpeg_reference"] for p in report["photos"] if p.get("jpeg_reference")]
    if refs:
        scores = [r["ssimulacra2"] for r in refs]
        psnrs = [r["psnr"] for r in refs if r["psnr"] is not None]
        lines.append(
            f"| JPEG q{refs[0]['quality']} re-save of the flat crop (reference) | {len(refs)} | "
            f"— | — | — | {_fmt(mean(psnrs), 2)} ({_fmt(min(psnrs, default=None), 2)}) | "
            f"{_fmt(mean(scores), 1)} ({_fmt(min(scores), 1)}) |")
    seams = report.get("seams")
    if seams:
        lines += [""]
        if seams.get("ratio_mean") is None:
            lines.append(f"Tile seams: {seams['layout']}; nothing to measure.")
        else:
            run = seams["runs"][0]
            lines.append(
                f"Tile seams: a smooth {seams['size'][0]}×{seams['size'][1]} colour gradient "
                f"marked by Filigree with {seams['payloads']} random payloads; in its residual "
                f"(marked − original, 8-bit levels), the mean absolute 1-pixel step across the "
                f"borders of its layout ({seams['layout']}; the steps within the upsampling "
                f"spread of a border) over the mean step inside (steps more than half a spread "
                f"+ 1 px from any border), horizontal and vertical pooled: **ratio "
                f"{seams['ratio_mean']:.2f}** mean, {seams['ratio_max']:.2f} largest (1 = no "
                f"seam). First payload: border step {run['border_step']:.3f}, inside step "
                f"{run['inside_step']:.3f} levels, residual RMS {run['residual_rms']:.2f}.")
    lines += ["", "Per photo, SSIMULACRA2 screen / flat crop (flat crop: left, top of its "
              "512×512 box):", "",
              "| photo | flat crop at | " + " | ".join(names) + " | JPEG q90 flat |",
              "|---|---|" + "---|" * (len(names) + 1)]
    per_file = {n: {r["file"]: r.get("visibility") for r in methods[n]["per_photo"]}
                for n in names}
    for photo in report["photos"]:
        cells = []
        for name in names:
            v = per_file[name].get(photo["file"])
            cells.append("—" if not v else
                         f"{v['screen']['ssimulacra2']:.1f} / {v['flat']['ssimulacra2']:.1f}")
        ref = photo.get("jpeg_reference")
        box = ref["box"] if ref else None
        lines.append(f"| {photo['file']} | {'—' if not box else f'{box[0]}, {box[1]}'} | "
                     + " | ".join(cells) + f" | {_fmt(ref and ref['ssimulacra2'], 1)} |")
    lines.append("")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    methods = report["methods"]
    names = list(methods)
    attacks = report["attacks"]
    model = report["model"]
    photos = report["photos"]
    mps = [p["megapixels"] for p in photos]
    lines = ["# Watermark quality benchmark", ""]
    lines.append(
        f"Model **{model['name']}** ({model['created']}, {model['training_steps']} training "
        f"steps; card PSNR {(model.get('metrics') or {}).get('psnr', '—')}): "
        f"{model['data_bits']} data bits in {model['payload_bits']} raw bits "
        f"(BCH m={model['ecc']['m']}, t={model['ecc']['t']}), working size "
        f"{model['working_size']} px, strength {model['strength']:g}, key: {report['key']}.")
    lines.append("")
    lines.append(
        f"{len(photos)} photos from `{report['images']}` ({min(mps):.2f}–{max(mps):.2f} MP, native "
        f"resolution), seed {report['seed']}, target FPR {report['target_fpr']:g}. "
        + (f"Peers: invisible-watermark {report.get('peer_version') or '—'}, "
           f"{PEER_BITS}-bit payloads, detected when ≥ {report['peer_tau']}/{PEER_BITS} bits "
           f"match (P[Binom({PEER_BITS}, ½) ≥ {report['peer_tau']}] = "
           f"{binomial_tail(PEER_BITS, report['peer_tau']):.2g})."
           if len(names) > 1 else "No peers."))
    if report.get("peers_note"):
        lines.append(f"Note: {report['peers_note']}.")
    lines += ["", f"Command: `{report['command']}`", ""]

    lines += ["## Image quality and speed", "",
              "| method | payload | photos | PSNR dB mean (min) | SSIM mean (min) | embed s/MP | "
              "extract s/MP | embed s |",
              "|---|---|---|---|---|---|---|---|"]
    for name in names:
        s = methods[name]["summary"]
        payload = (f"{model['data_bits']} bits + BCH" if name == FILIGREE
                   else f"{PEER_BITS} bits, no ECC")
        lines.append(
            f"| {name} | {payload} | {s['photos']} | "
            f"{_fmt(s['psnr_mean'], 2)} ({_fmt(s['psnr_min'], 2)}) | "
            f"{_fmt(s['ssim_mean'], 4)} ({_fmt(s['ssim_min'], 4)}) | "
            f"{_fmt(s['embed_s_per_mp_median'], 3)} | {_fmt(s['extract_s_per_mp_median'], 3)} | "
            f"{_fmt(s['embed_s_median'], 2)} |")
    host = report.get("host", {})
    records = [r for m in methods.values() for r in m["per_photo"]]
    loads = [r["loadavg"][0] for r in records if r.get("loadavg")]
    load = ""
    if report.get("retimed") and host.get("loadavg_start") and host.get("loadavg_end"):
        load = (f" Times re-measured in the report's run, all methods back to back per photo; "
                f"1-minute load average {host['loadavg_start'][0]:g} at its start and "
                f"{host['loadavg_end'][0]:g} at its end, on {host.get('cpus')} CPUs.")
    elif loads:
        load = (f" 1-minute load average {min(loads):g}–{max(loads):g} when the records were "
                f"computed, on {host.get('cpus')} CPUs.")
    if load and (max(loads, default=0) > (host.get("cpus") or 1)
                 or max((host.get("loadavg_end") or [0])[:1]) > (host.get("cpus") or 1)):
        load += " Times on a busy machine are inflated."
    lines += ["", "Times: medians over photos of one call, seconds per megapixel of the photo "
              f"(extract: the blind read of the clean PNG); benchmark compute "
              f"{report.get('compute_s', report['wall_time_s']):.0f} s in all."
              + load, ""]

    lines += render_visibility(report)
    on_subsets = methods.get(FILIGREE, {}).get("on_subsets") or {}

    def summary_of(name: str) -> dict[str, Any]:
        if name.startswith("@"):
            return on_subsets[name[1:]]
        return methods[name]["summary"]

    def attack_table(title: str, note: str, cell: Callable[[str, dict[str, Any]], str],
                     columns: list[tuple[str, str]]) -> None:
        lines.extend([f"## {title}", "", note, "",
                      "| attack | " + " | ".join(label for _, label in columns) + " |",
                      "|---|" + "---|" * len(columns)])
        for attack in attacks:
            cells = []
            for name, _ in columns:
                entry = summary_of(name)["attacks"].get(attack["spec"])
                cells.append("—" if entry is None else cell(name, entry))
            lines.append(f"| {attack['label']} | " + " | ".join(cells) + " |")
        lines.append("")

    columns = [(n, n) for n in names]
    subset_columns = [(f"@{peer}", f"Filigree on {peer}'s {summary['photos']} photos")
                      for peer, summary in on_subsets.items()]
    subset_note = "".join(
        f" {peer} ran on {methods[peer]['summary']['photos']} of the {len(photos)} photos "
        f"(index mod {report['peer_subsets'][peer].split('/')[1]} = "
        f"{report['peer_subsets'][peer].split('/')[0]}) to bound CPU time; the column "
        f"'Filigree on {peer}'s photos' is Filigree on the same ones."
        for peer in on_subsets if peer in methods)
    attack_table(
        "Bit accuracy",
        "Mean over photos (minimum in brackets). Filigree: its raw bits before error correction"
        + ("." if len(names) == 1 else
           "; peers: their 32 payload bits. A read the peer library refuses (image under "
           "256×256 in area) counts as 0.5.") + subset_note,
        lambda n, e: f"{e['bit_acc_mean']:.3f} ({e['bit_acc_min']:.2f})"
        + (f" [{e['refused']} refused]" if e.get("refused") else ""),
        columns + subset_columns)
    attack_table(
        "Exact payload recovery",
        f"Share of photos whose whole payload comes back: Filigree after BCH decoding "
        f"({model['data_bits']} bits), peers all {PEER_BITS} bits right (no ECC).",
        lambda n, e: _pct(e["exact_rate"]), columns + subset_columns)
    attack_table(
        f"Detection at FPR ≤ {report['target_fpr']:g}",
        "Share of marked photos detected. Filigree (blind): `extract(image)` without the "
        "payload, BCH decodes with a blind p-value ≤ the target. Filigree (informed): "
        "`extract(image, expected)`, binomial test of its raw bits against the embedded "
        f"payload. Peers: ≥ {report['peer_tau']}/{PEER_BITS} bits right (informed, like "
        "Filigree's informed read).",
        lambda n, e: _pct(e["detection_rate"]) + (
            f" / {_pct(e['detection_rate_informed'])}" if "detection_rate_informed" in e else ""),
        [(n, f"{n} (blind / informed)" if n == FILIGREE else n) for n in names]
        + [(c, f"{label} (blind / informed)") for c, label in subset_columns])

    lines += ["## False positives on unmarked photos", "",
              f"Every unmarked original and each of its {len(attacks)} attacked versions "
              "(the same attacks and seeds), read with the same key. Filigree blind: "
              "detected / decoded to some payload / smallest blind p-value; informed: "
              "against the payload the photo was given."
              + ("" if len(names) == 1 else
                 f" Peers: reads with ≥ {report['peer_tau']}/{PEER_BITS} bits matching the "
                 "photo's peer payload"
                 + (" (clean unmarked originals only)." if report.get("peer_unmarked") == "clean"
                    else ", all versions.")), "",
              "| method | reads | detected (blind) | FPR | smallest p-value | "
              "decoded some payload | detected (informed) | smallest informed p | "
              "max bit acc |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        fp = methods[name]["summary"]["false_positives"]
        if name == FILIGREE:
            lines.append(
                f"| {name} | {fp['reads']} | {fp['detected']} | {_pct(fp['rate'])} | "
                f"{_p(fp['min_p_value'])} | {fp['decoded_some_payload']} | "
                f"{fp['detected_informed']} | {_p(fp['min_p_value_informed'])} | "
                f"{_fmt(fp['max_bit_acc'], 2)} |")
        else:
            lines.append(
                f"| {name} | {fp['reads']} | — | — | — | — | {fp['detected']} | "
                f"{_p(fp['min_p_value'])} | {_fmt(fp['max_bit_acc'], 2)} |")
    lines += ["", "## Photos", "",
              "| photo | size | MP |", "|---|---|---|"]
    for photo in photos:
        lines.append(f"| {photo['file']} | {photo['width']}×{photo['height']} | "
                     f"{photo['megapixels']:.2f} |")
    lines.append("")
    return "\n".join(lines)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def render_figure(report: dict[str, Any], path: Path) -> None:
    methods = list(report["methods"])
    attacks = report["attacks"]
    width, height = max(900, 110 * len(attacks) + 160), 520
    left, right, top, bottom = 70, 20, 64, 110
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small, title_font = _font(15), _font(13), _font(18)
    plot_w, plot_h = width - left - right, height - top - bottom

    def y_of(value: float) -> float:
        return top + plot_h * (1.0 - value)

    for tick in np.linspace(0, 1, 11):
        y = y_of(tick)
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225))
        draw.text((left - 8, y), f"{tick:.1f}", fill="black", font=small, anchor="rm")
    draw.line([(left, top), (left, top + plot_h)], fill="black")
    draw.line([(left, top + plot_h), (width - right, top + plot_h)], fill="black")
    group_w = plot_w / max(1, len(attacks))
    bar_w = group_w * 0.8 / max(1, len(methods))
    for i, attack in enumerate(attacks):
        x0 = left + i * group_w + group_w * 0.1
        for k, name in enumerate(methods):
            entry = report["methods"][name]["summary"]["attacks"].get(attack["spec"])
            if entry is None:
                continue
            value = float(entry["bit_acc_mean"])
            bx = x0 + k * bar_w
            draw.rectangle([bx, y_of(value), bx + bar_w - 2, y_of(0)], fill=PALETTE[k % 6])
        label = short_label(attack["spec"])
        text = Image.new("RGBA", (int(draw.textlength(label, font=font)) + 4, 20), (0, 0, 0, 0))
        ImageDraw.Draw(text).text((2, 2), label, fill="black", font=font)
        text = text.rotate(35, expand=True, resample=Image.BICUBIC)
        cx = left + (i + 0.5) * group_w
        image.paste(text, (int(cx - text.width + 8), top + plot_h + 6), text)
    chance = y_of(0.5)
    for x in range(left, width - right, 12):
        draw.line([(x, chance), (x + 6, chance)], fill=(90, 90, 90), width=2)
    draw.text((left + 4, chance - 2), "chance", fill=(60, 60, 60), font=small, anchor="lb")
    draw.text((left, 14), "Bit accuracy per attack (mean over photos; Filigree: raw bits, "
              f"peers: {PEER_BITS} payload bits)", fill="black", font=title_font)
    lx = left + 10
    total = len(report["photos"])
    for k, method in enumerate(methods):
        count = report["methods"][method]["summary"]["photos"]
        name = method if count == total else f"{method} ({count} of {total} photos)"
        draw.rectangle([lx, 38, lx + 14, 50], fill=PALETTE[k % 6])
        draw.text((lx + 20, 44), name, fill="black", font=font, anchor="lm")
        lx += 40 + int(draw.textlength(name, font=font))
    image.save(path, "PNG", optimize=True)


def _replace_block(text: str, block: str, body: str, doc: Path) -> str:
    begin, end = f"<!-- quality:{block}:begin -->", f"<!-- quality:{block}:end -->"
    if begin not in text or end not in text:
        raise SystemExit(f"--docs {doc}: no {begin} ... {end} block")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def split_visibility(markdown: str) -> tuple[str, str, str]:
    """(preamble before the first section, the markdown without the visibility section, the
    visibility section or "")."""
    preamble = markdown.split("\n## ", 1)[0]
    if VISIBILITY_HEADING not in markdown:
        return preamble, markdown, ""
    head, rest = markdown.split(VISIBILITY_HEADING, 1)
    section, sep, tail = rest.partition("\n## ")
    return preamble, head + (f"## {tail}" if sep else ""), VISIBILITY_HEADING + section


def _docs_body(markdown: str) -> str:
    body = markdown.replace("# Watermark quality benchmark\n", "", 1).strip()
    return re.sub(r"^(#+) ", r"#\1 ", body, flags=re.M)


def update_docs(doc: Path, block: str, markdown: str, figure: Path) -> Path | None:
    """Replace the marked block of `doc` with `markdown` (headings one level down); for the
    ``heldout`` block also copy the figure beside it as quality.png and link it (returned).

    The ``visibility`` block gets the visibility section alone (with the run's preamble): with
    ``block == "visibility"`` only that block changes; a ``heldout`` run whose `doc` has a
    visibility block moves its visibility section there."""
    text = doc.read_text(encoding="utf-8")
    preamble, rest, visibility = split_visibility(markdown)
    has_visibility_block = "<!-- quality:visibility:begin -->" in text
    if block == "visibility":
        if not visibility:
            raise SystemExit("--docs-block visibility: the run has no visibility results")
        doc.write_text(_replace_block(text, block, _docs_body(f"{preamble}\n{visibility}"), doc),
                       encoding="utf-8")
        return None
    if block == "heldout" and has_visibility_block and visibility:
        text = _replace_block(text, "visibility", _docs_body(f"{preamble}\n{visibility}"), doc)
        markdown = rest
    body = _docs_body(markdown)
    if block == "heldout":
        body = f"{body}\n\n![Bit accuracy per attack](quality.png)"
    doc.write_text(_replace_block(text, block, body, doc), encoding="utf-8")
    if block != "heldout":
        return None
    target = doc.parent / "quality.png"
    target.write_bytes(figure.read_bytes())
    return target


def write_outputs(report: dict[str, Any], out: Path, docs: str | None, block: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    (out / "quality.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n",
                                      encoding="utf-8")
    (out / "quality.md").write_text(markdown, encoding="utf-8")
    render_figure(report, out / "quality.png")
    if docs:
        update_docs(Path(docs), block, markdown, out / "quality.png")
    print(markdown)
    return 0
