"""Tables of the throughput benchmark (`benchmarks/throughput.py`): side by side against the codec
and the peers, per stage, and against the speed and memory targets."""

from __future__ import annotations

TARGETS = {"embed": (1.5, 2.0), "extract": 1.0, "peer_speedup": 10.0, "memory": 3.0, "blind_read_ms": 150.0,
           "job_over_api": 1.3}
BLIND_READ_MP = 2.0
"""The photo size the blind-read budget applies to."""


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}" if seconds >= 0.0995 else f"{seconds * 1000:.1f}"


def print_report(results: list[dict], memory: dict, clock: str) -> None:
    key = "cpu" if clock == "cpu" else "wall"
    total = f"{key}_total"
    print(f"\n### Side by side ({'CPU' if key == 'cpu' else 'wall-clock'} ms per photo, median)\n")
    peers = sorted({p for r in results for p in r["peers"]})
    head = ["photo", "codec", "embed", "embed/codec", "extract", "extract/codec", "extract draft"]
    head += [f"{p}" for p in peers] + (["dwtDctSvd/embed"] if "dwtDctSvd" in peers else [])
    head += ["peak embed MB (x decoded)", "peak extract MB (x)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in results:
        p = r["paths"]
        codec, embed, extract = p["codec"][total], p["embed"][total], p["extract"][total]
        cells = [f"{r['megapixels']:g} MP {r['width']}x{r['height']}", fmt_ms(codec), fmt_ms(embed),
                 f"{embed / codec:.2f}", fmt_ms(extract), f"{extract / codec:.2f}",
                 fmt_ms(p["extract_draft"][total])]
        for peer in peers:
            stats = r["peers"].get(peer)
            cells.append(fmt_ms(stats[total]) if stats else "-")
        if "dwtDctSvd" in peers:
            stats = r["peers"].get("dwtDctSvd")
            cells.append(f"{stats[total] / embed:.0f}x" if stats else "-")
        for kind in ("embed", "extract"):
            m = memory.get((r["megapixels"], kind))
            cells.append(f"{m['peak_mb']:.0f} ({m['peak_mb'] / m['decoded_mb']:.2f}x)" if m else "-")
        print("| " + " | ".join(cells) + " |")


def print_stages(results: list[dict]) -> None:
    print("\n### Per stage (ms per photo, median; wall / CPU)\n")
    stages = ["decode", "resize", "inference", "upsample+add", "encode", "write", "verify"]
    print("| photo | path | " + " | ".join(stages) + " | total |")
    print("|" + "---|" * (len(stages) + 3))
    for r in results:
        for path in ("codec", "embed", "extract", "extract_draft", "extract_unmarked", "embed_api",
                     "pipeline_step"):
            s = r["paths"][path]
            cells = []
            for stage in stages:
                if stage in s["wall"]:
                    cells.append(f"{fmt_ms(s['wall'][stage])} / {fmt_ms(s['cpu'][stage])}")
                else:
                    cells.append("")
            if path == "embed_api":
                cells[2] = f"(embed call) {fmt_ms(s['wall']['embed'])} / {fmt_ms(s['cpu']['embed'])}"
            cells.append(f"{fmt_ms(s['wall_total'])} / {fmt_ms(s['cpu_total'])}")
            print(f"| {r['megapixels']:g} MP | {path} | " + " | ".join(cells) + " |")


def print_targets(results: list[dict], memory: dict, sweep: list[dict] | None = None) -> None:
    print("\n### Targets\n")
    for r in results:
        p = r["paths"]
        line = [f"{r['megapixels']:g} MP:"]
        if r["megapixels"] == BLIND_READ_MP:
            marked, unmarked = (1000 * p[k]["cpu_total"] for k in ("extract", "extract_unmarked"))
            worst = max(marked, unmarked)
            line.append(f"blind read CPU {marked:.0f} ms marked, {unmarked:.0f} ms unmarked (target <= "
                        f"{TARGETS['blind_read_ms']:g}: {'met' if worst <= TARGETS['blind_read_ms'] else 'MISSED'})")
            if sweep:
                api = p["embed_api"]["cpu_total"] + p["extract"]["cpu_total"]
                job = sweep[-1]["cpu_s_per_image"]
                line.append(f"job CPU per image {1000 * job:.0f} ms (DirectRunner, batch {sweep[-1]['batch_size']}) / "
                            f"API embed + verify {1000 * api:.0f} ms = {job / api:.2f} (target <= "
                            f"{TARGETS['job_over_api']}: {'met' if job / api <= TARGETS['job_over_api'] else 'MISSED'})")
        for clock in ("cpu", "wall"):
            t = f"{clock}_total"
            e, x = p["embed"][t] / p["codec"][t], p["extract"][t] / p["codec"][t]
            line.append(f"{clock}: embed/codec {e:.2f} (target <= {TARGETS['embed'][0]}, accepted <= "
                        f"{TARGETS['embed'][1]}: {'met' if e <= TARGETS['embed'][0] else 'accepted' if e <= TARGETS['embed'][1] else 'MISSED'}),"
                        f" extract/codec {x:.2f} ({'met' if x <= TARGETS['extract'] else 'MISSED'})")
        peer = r["peers"].get("dwtDctSvd")
        if peer:
            speedup = peer["cpu_total"] / p["embed"]["cpu_total"]
            line.append(f"dwtDctSvd/embed {speedup:.0f}x ({'met' if speedup >= TARGETS['peer_speedup'] else 'MISSED'})")
        m = memory.get((r["megapixels"], "embed"))
        if m:
            ratio = m["peak_mb"] / m["decoded_mb"]
            line.append(f"peak embed {ratio:.2f}x decoded ({'met' if ratio <= TARGETS['memory'] else 'MISSED'})")
        da = r.get("draft_agreement")
        if da:
            line.append(f"draft vs full extraction: {100 * da['bits_equal']:.1f}% equal bits, BER "
                        f"{da['ber_full']:.3f} vs {da['ber_draft']:.3f}")
        print("- " + "; ".join(line))
