"""Calibration of `detected`: false positives on unmarked photos, TPR at a fixed FPR on marked ones.

    PYTHONPATH=. .venv/bin/python benchmarks/calibration.py [--reads 1200] [--search-reads 400]
        [--photos DIR ...] [--marked DIR ...] [--out out/calibration] [--docs docs/quality.md]

**Empirical null.** ``--reads`` reads of unmarked photos (every photo of the ``--photos`` folders;
default: the training folder and the held-out photos). Read i is a random view of photo
``i mod #photos``, drawn from ``numpy.random.default_rng([seed, i])``: a crop keeping 30-100 % of
the area (aspect ratio within 2:1 of the photo's, random position; one read in ten keeps the
whole photo), mirrored half the time, resized by 25-100 % half the time, JPEG-compressed at
quality 30-95 half the time. Each read is priced as `Watermarker.extract` prices it, with a
random expected payload for the informed reads:

* straight: the marking grid's shortcut read and the read of every grid (`read_pixels`); its
  p-value is the smallest ``--fpr`` at which the read would be detected, min of the two;
* with the re-framing search (the first ``--search-reads`` reads): also every grid of every
  centred framing, priced as `Watermarker.search` prices them; p-value the min of the straight
  and the search p-values (detected at ``--fpr F`` exactly when that min is <= F).

The table gives P(p < a) and the detected share at ``--fpr F`` with counts and 95 % Clopper-Pearson
intervals, and how many reads had some hypothesis that BCH accepted.

**TPR at a fixed FPR.** Every photo of the ``--marked`` folders (default: the held-out photos
and the validation split) gets a random payload, embedded with `Watermarker.embed`, and each
attack of the default suite (plus the clean image) is read blind and informed with the search
(the search runs when the straight read is above 1e-6). TPR at FPR F is the share of reads with
p <= F; at 1e-3 the null above measures the FPR, at 1e-6 it cannot (it would need millions of
reads) and rests on the p-values' derivation. `--check N` replays the first N marked reads
through `Watermarker.extract` and stops if its verdict differs from the benchmark's pricing.

Logits are cached per read under ``OUT/cache`` (keyed by the model, the seed and the read), so
re-pricing after a change to the payload layer takes seconds; the pricing always runs with the
code checked out.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
for folder in (REPO, REPO / "benchmarks"):
    if str(folder) not in sys.path:  # `python benchmarks/calibration.py` without PYTHONPATH
        sys.path.insert(0, str(folder))

from quality import list_photos, load_rgb, redact  # noqa: E402
from quality_methods import attack_seed, png_roundtrip  # noqa: E402
from quality_report import attack_label, update_docs  # noqa: E402

from filigree.attacks import DEFAULT_SUITE_SPEC, parse_suite  # noqa: E402
from filigree.payload import ReadResult, format_payload  # noqa: E402
from filigree.reframe import SearchConfig, centred_framings, framed_tile_views  # noqa: E402
from filigree.tiling import decode_grid, grid_logits, tile_views  # noqa: E402

LEVELS = (0.1, 0.01, 0.001)
FPRS = (0.05, 0.01, 1e-3)
TPR_FPRS = (1e-3, 1e-6)
DEFAULT_PHOTOS = (REPO.parent / "shared" / "data" / "photos", REPO / "benchmarks" / "photos")
DEFAULT_MARKED = (REPO / "benchmarks" / "photos", REPO / "benchmarks" / "photos-val")
SEARCH_BATCH = 8
"""Framings per extractor call in a search (8 x 55 views)."""


# ---------------------------------------------------------------------------------------------
# statistics


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P[Binom(n, p) <= k]."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
            + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def _bisect(fn, lo: float = 0.0, hi: float = 1.0, steps: int = 60) -> float:
    """Root of a function that is positive at `lo` and negative at `hi`."""
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fn(mid) > 0 else (lo, mid)
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial confidence interval of k successes in n trials."""
    tail = (1.0 - confidence) / 2
    lo = 0.0 if k == 0 else _bisect(lambda p: tail - (1.0 - binomial_cdf(k - 1, n, p)))
    hi = 1.0 if k == n else _bisect(lambda p: binomial_cdf(k, n, p) - tail)
    return lo, hi


def share(count: int, total: int) -> dict[str, Any]:
    lo, hi = clopper_pearson(count, total) if total else (0.0, 1.0)
    return {"count": count, "n": total, "share": count / total if total else None, "ci95": [lo, hi]}


# ---------------------------------------------------------------------------------------------
# reads of unmarked photos


@dataclass(frozen=True)
class NullView:
    """How one unmarked read's image is made from its photo (fractions of the photo's sides)."""

    photo: int
    left: float
    top: float
    width: float
    height: float
    mirror: bool
    scale: float | None
    jpeg: int | None


def draw_view(rng: np.random.Generator, photo: int) -> NullView:
    """A random crop / mirror / resize / JPEG of `photo` (see the module docstring)."""
    if rng.random() < 0.1:
        width = height = 1.0
    else:
        area = rng.uniform(0.3, 1.0)
        aspect = math.exp(rng.uniform(-math.log(2), math.log(2)))
        width = min(1.0, math.sqrt(area * aspect))
        height = min(1.0, area / width)
    return NullView(photo=photo, left=float(rng.uniform(0, 1 - width)), top=float(rng.uniform(0, 1 - height)),
                    width=float(width), height=float(height), mirror=bool(rng.random() < 0.5),
                    scale=float(rng.uniform(0.25, 1.0)) if rng.random() < 0.5 else None,
                    jpeg=int(rng.integers(30, 96)) if rng.random() < 0.5 else None)


def apply_view(image: Image.Image, view: NullView) -> Image.Image:
    w, h = image.size
    box = (round(view.left * w), round(view.top * h), round((view.left + view.width) * w),
           round((view.top + view.height) * h))
    out = image.crop(box)
    if view.mirror:
        out = ImageOps.mirror(out)
    if view.scale is not None:
        size = (max(16, round(out.width * view.scale)), max(16, round(out.height * view.scale)))
        out = out.resize(size, Image.BICUBIC)
    if view.jpeg is not None:
        buffer = io.BytesIO()
        out.save(buffer, "JPEG", quality=view.jpeg)
        out = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return out


# ---------------------------------------------------------------------------------------------
# hypotheses and their pricing


def straight_logits(wm, image: Image.Image) -> dict[str, np.ndarray]:
    """The logits a straight read (`Watermarker.read_pixels`) prices: the marking grid's tile
    mean ("shortcut", [L]) and every grid's tile mean ("grids", [G, L])."""
    pixels = np.asarray(image)
    grid = wm.tiling.grid_for(*pixels.shape[:2])
    shortcut = wm.logits(tile_views(pixels, grid, wm.working_size))
    return {"shortcut": shortcut.mean(axis=0), "grid": np.array(grid),
            "grids": grid_logits(wm.read_logits(pixels), wm.tiling)}


def search_logits(wm, image: Image.Image, config: SearchConfig) -> np.ndarray:
    """[F, G, L]: every grid of every centred framing of the search (`Watermarker.search`)."""
    candidates = centred_framings(config)
    out = []
    for start in range(0, len(candidates), SEARCH_BATCH):
        chunk = candidates[start:start + SEARCH_BATCH]
        logits = wm.logits(framed_tile_views(image, chunk, wm.tiling, wm.working_size))
        out.extend(grid_logits(part, wm.tiling) for part in np.split(logits, len(chunk)))
    return np.stack(out)


def price_straight(wm, hyp: dict[str, np.ndarray], expected: str | None) -> ReadResult:
    """The straight read's result with the smaller p-value of its two stages (fpr 1: priced only)."""
    shortcut = decode_grid(wm.codec, hyp["shortcut"][None], int(hyp["grid"]), wm.tiling, expected, 1.0)
    _, full = wm.codec.decode_best(hyp["grids"], expected=expected, fpr=1.0)  # as `decode_tiles`
    return shortcut if shortcut.p_value <= full.p_value else full


def price_search(wm, search: np.ndarray, expected: str | None) -> ReadResult:
    grids = len(wm.tiling.read_grids)
    _, read = wm.codec.decode_best(search.reshape(-1, search.shape[-1]), expected=expected, fpr=1.0,
                                   tried=search.shape[0] * grids + grids)
    return read


def price_read(wm, hyp: dict[str, np.ndarray], search: np.ndarray | None, expected: str | None) -> ReadResult:
    """The read `extract` would return at the smallest `--fpr` that detects it: the stage
    (straight or search) with the smaller p-value."""
    read = price_straight(wm, hyp, expected)
    if search is None:
        return read
    searched = price_search(wm, search, expected)
    return searched if searched.p_value < read.p_value else read


def accepted_any(wm, hyp: dict[str, np.ndarray], search: np.ndarray | None) -> bool:
    """Whether BCH accepted some hypothesis of the read (whatever its p-value)."""
    rows = [hyp["shortcut"][None], hyp["grids"]]
    if search is not None:
        rows.append(search.reshape(-1, search.shape[-1]))
    return any(wm.codec.decode(row, fpr=1.0).decoded is not None for row in np.concatenate(rows))


# ---------------------------------------------------------------------------------------------
# cache


class LogitCache:
    """One .npz of logits per read, under a folder named by the model and the seed."""

    def __init__(self, root: Path | None, wm, seed: int):
        card = wm.bundle.card.raw
        tag = hashlib.sha256(json.dumps([card.get("name"), card.get("created"), seed,
                                         wm.codec.scrambler.is_default_key]).encode()).hexdigest()[:12]
        self.folder = None if root is None else root / tag
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, compute) -> dict[str, np.ndarray]:
        path = None if self.folder is None else self.folder / f"{name}.npz"
        if path is not None and path.exists():
            with np.load(path) as data:
                return dict(data)
        arrays = compute()
        if path is not None:
            partial = path.with_suffix(f".partial-{os.getpid()}.npz")
            np.savez_compressed(partial, **arrays)
            os.replace(partial, path)
        return arrays


def _payload(rng: np.random.Generator, data_bits: int) -> str:
    value = int("".join(str(b) for b in rng.integers(0, 2, data_bits)), 2)
    return format_payload(value, data_bits)


def run_null(wm, photos: Sequence[Path], reads: int, search_reads: int, seed: int,
             cache: LogitCache, config: SearchConfig) -> list[dict[str, Any]]:
    """Priced reads of unmarked views: per read its view, p-values and BCH acceptances."""
    loaded: dict[int, Image.Image] = {}
    records = []
    start = time.time()
    for done, i in enumerate([*range(search_reads, reads), *range(search_reads)]):  # cheap reads first
        rng = np.random.default_rng([seed, i])
        view = draw_view(rng, i % len(photos))
        expected = _payload(rng, wm.data_bits)
        searched = i < search_reads

        def compute() -> dict[str, np.ndarray]:
            if view.photo not in loaded:
                loaded[view.photo] = load_rgb(photos[view.photo])
            image = apply_view(loaded[view.photo], view)
            arrays = straight_logits(wm, image)
            if searched:
                arrays["search"] = search_logits(wm, image, config)
            return arrays

        hyp = cache.get(f"null-{i}{'-search' if searched else ''}", compute)
        search = hyp.get("search")
        record = {"view": asdict(view), "photo": photos[view.photo].name, "set": photos[view.photo].parent.name,
                  "accepted": accepted_any(wm, hyp, search)}
        for mode, want in (("blind", None), ("informed", expected)):
            record[f"{mode}_straight"] = price_read(wm, hyp, None, want).p_value
            if search is not None:
                record[f"{mode}_search"] = price_read(wm, hyp, search, want).p_value
        records.append({"read": i, **record})
        if (done + 1) % 50 == 0:
            print(f"null: {done + 1}/{reads} reads, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    return sorted(records, key=lambda r: r["read"])


def null_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for column, label in (("blind_straight", "blind, straight"), ("informed_straight", "informed, straight"),
                          ("blind_search", "blind, --reframe"), ("informed_search", "informed, --reframe")):
        picked = [r for r in records if column in r]
        p = np.array([r[column] for r in picked])
        rows.append({
            "read": label, "n": len(p),
            "below": {str(a): share(int((p < a).sum()), len(p)) for a in LEVELS},
            "detected": {str(f): share(int((p <= f).sum()), len(p)) for f in FPRS},
            "smallest_p": float(p.min()) if len(p) else None,
            "accepted": share(sum(r["accepted"] for r in picked), len(picked)),
        })
    return rows


# ---------------------------------------------------------------------------------------------
# marked reads


def run_marked(wm, photos: Sequence[Path], seed: int, cache: LogitCache, config: SearchConfig,
               check: int) -> list[dict[str, Any]]:
    attacks = parse_suite("none," + DEFAULT_SUITE_SPEC)
    records, checked = [], 0
    for index, path in enumerate(photos):
        rng = np.random.default_rng([seed, 1_000_003, index])
        payload = _payload(rng, wm.data_bits)
        marked: list[Image.Image] = []
        for j, attack in enumerate(attacks):
            def attacked() -> Image.Image:
                if not marked:
                    marked.append(png_roundtrip(wm.embed(load_rgb(path), payload)))
                return attack(marked[0], seed=attack_seed(seed, index, j))

            name = f"marked-{path.parent.name}-{path.name}-{j}"
            hyp = cache.get(name, lambda: straight_logits(wm, attacked()))
            record = {"photo": path.name, "set": path.parent.name, "attack": attack.name}
            straight = {"blind": price_straight(wm, hyp, None), "informed": price_straight(wm, hyp, payload)}
            search = None
            if max(r.p_value for r in straight.values()) > min(TPR_FPRS):
                search = cache.get(name + "-search", lambda: {"search": search_logits(wm, attacked(), config)})["search"]
            reads = {"blind": price_read(wm, hyp, search, None), "informed": price_read(wm, hyp, search, payload)}
            record.update(blind=reads["blind"].p_value, informed=reads["informed"].p_value,
                          bit_acc=1.0 - float(reads["informed"].ber), exact=reads["blind"].decoded == payload)
            if checked < check:
                _check(wm, attacked(), payload, record, config)
                checked += 1
            records.append(record)
        print(f"marked: {index + 1}/{len(photos)} photos", file=sys.stderr, flush=True)
    return records


def _check(wm, image: Image.Image, payload: str, record: dict[str, Any], config: SearchConfig) -> None:
    """`Watermarker.extract` at the benchmark's smallest TPR level must agree with its pricing:
    the same verdict, and a p-value no smaller than the benchmark's (which is the smallest of
    the stages `extract` may stop at)."""
    saved = wm.fpr
    wm.fpr = min(TPR_FPRS)
    try:
        for mode, want in (("blind", None), ("informed", payload)):
            read = wm.extract(image, expected=want, reframe=config)
            mine = record[mode]
            if read.detected != (mine <= wm.fpr) or read.p_value < mine * (1 - 1e-9):
                raise SystemExit(f"--check: extract disagrees on {record['photo']} {record['attack']} "
                                 f"{mode}: {read.detected} p={read.p_value:.3g}, benchmark p={mine:.3g}")
    finally:
        wm.fpr = saved


def tpr_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for attack in dict.fromkeys(r["attack"] for r in records):
        picked = [r for r in records if r["attack"] == attack]
        row = {"attack": attack, "n": len(picked), "bit_acc": float(np.mean([r["bit_acc"] for r in picked])),
               "exact": share(sum(r["exact"] for r in picked), len(picked))}
        for mode in ("blind", "informed"):
            row[mode] = {str(f): share(sum(r[mode] <= f for r in picked), len(picked)) for f in TPR_FPRS}
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# report


def _cell(entry: dict[str, Any]) -> str:
    lo, hi = entry["ci95"]
    return f"{entry['count']} ({entry['share'] * 100:.2g} %; {lo * 100:.2g}–{hi * 100:.2g} %)"


def _pct(entry: dict[str, Any]) -> str:
    return f"{entry['share'] * 100:.0f} %"


def render(report: dict[str, Any]) -> str:
    lines = [f"Model **{report['model']}**, key: {report['key']}, seed {report['seed']}.", "",
             f"Command: `{report['command']}`", "",
             "## False positives on unmarked photos", "",
             f"{report['null_reads']} random views (crop 30–100 % of the area, mirrored half the time, "
             "resized 25–100 % half the time, JPEG q30–95 half the time) of "
             f"{report['null_photos']} unmarked photos ({report['null_sets']}); the first "
             f"{report['search_reads']} also with the re-framing search. Each cell: reads (share; 95 % "
             "Clopper-Pearson interval). p is the smallest `--fpr` at which the read is detected; "
             "'BCH accepted' counts reads where some hypothesis decoded at all.", "",
             "| read | reads | " + " | ".join(f"P(p < {a:g})" for a in LEVELS) + " | "
             + " | ".join(f"detected at --fpr {f:g}" for f in FPRS) + " | smallest p | BCH accepted |",
             "|---" * (4 + len(LEVELS) + len(FPRS)) + "|"]
    for row in report["null"]:
        cells = [_cell(row["below"][str(a)]) for a in LEVELS] + [_cell(row["detected"][str(f)]) for f in FPRS]
        lines.append(f"| {row['read']} | {row['n']} | " + " | ".join(cells)
                     + f" | {row['smallest_p']:.2g} | {_cell(row['accepted'])} |")
    if report.get("marked"):
        lines += ["", "## TPR at a fixed FPR", "",
                  f"{report['marked_photos']} marked photos ({report['marked_sets']}), each read clean and after "
                  "every attack of the default suite, blind and informed, with the re-framing search. "
                  "TPR at FPR F: share of marked reads with p ≤ F (`detected` at `--fpr F`). The null above "
                  "measures the FPR at 1e-3; 1e-6 is below what it can measure and rests on the p-values' "
                  "derivation (exact for uniformly random raw bits, conservative on the null measured above).", "",
                  "| attack | reads | bit accuracy | exact payload | TPR blind @ FPR 0.1 % | TPR blind @ 1e-6 "
                  "| TPR informed @ 0.1 % | TPR informed @ 1e-6 |", "|---" * 8 + "|"]
        for row in report["marked"]:
            cells = [_pct(row[m][str(f)]) for m in ("blind", "informed") for f in TPR_FPRS]
            lines.append(f"| {attack_label(row['attack'])} | {row['n']} | {row['bit_acc']:.3f} | {_pct(row['exact'])} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _sets(photos: Sequence[Path]) -> str:
    counts: dict[str, int] = {}
    for path in photos:
        counts[str(path.parent)] = counts.get(str(path.parent), 0) + 1
    return ", ".join(f"{n} from `{os.path.relpath(folder, REPO)}`" for folder, n in counts.items())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Filigree calibration: empirical null and TPR at fixed FPR.")
    parser.add_argument("--photos", nargs="+", default=[str(p) for p in DEFAULT_PHOTOS if p.is_dir()],
                        help="folders of unmarked photos for the null (default: training folder, held-out photos)")
    parser.add_argument("--marked", nargs="*", default=[str(p) for p in DEFAULT_MARKED if p.is_dir()],
                        help="folders of photos to mark for TPR (default: held-out and validation photos)")
    parser.add_argument("--reads", type=int, default=1200, help="null reads (default: %(default)s)")
    parser.add_argument("--search-reads", type=int, default=400,
                        help="of those, how many also run the re-framing search (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model bundle (default: bundled)")
    parser.add_argument("--key", default=None, help="key (default: $FILIGREE_KEY, else the public default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", type=int, default=6,
                        help="replay the first N marked reads through Watermarker.extract (default: %(default)s)")
    parser.add_argument("--out", default="out/calibration", help="output folder (default: %(default)s)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the logit cache")
    parser.add_argument("--docs", default=None, help="Markdown file whose calibration block gets the tables")
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipeline import Watermarker
    from filigree.payload import resolve_key

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.reads < 1 or not 0 <= args.search_reads <= args.reads:
        raise SystemExit("--reads must be >= 1 and --search-reads in [0, --reads]")
    key = resolve_key(args.key)
    wm = Watermarker.load(args.model, key)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = LogitCache(None if args.no_cache else out / "cache", wm, args.seed)
    config = SearchConfig()
    null_photos = [p for folder in args.photos for p in list_photos(folder)]
    marked_photos = [p for folder in args.marked for p in list_photos(folder)]
    null = run_null(wm, null_photos, args.reads, args.search_reads, args.seed, cache, config)
    marked = run_marked(wm, marked_photos, args.seed, cache, config, args.check)
    card = wm.bundle.card.raw
    report = {
        "model": f"{card.get('name')} ({card.get('created')})", "seed": args.seed,
        "key": "default (public)" if key is None else "given (not recorded)",
        "command": " ".join(["PYTHONPATH=. .venv/bin/python benchmarks/calibration.py", *redact(argv)]),
        "null_reads": len(null), "search_reads": args.search_reads, "null_photos": len(null_photos),
        "null_sets": _sets(null_photos), "null": null_table(null),
        "marked_photos": len(marked_photos), "marked_sets": _sets(marked_photos),
        "marked": tpr_table(marked) if marked else [],
    }
    markdown = render(report)
    (out / "calibration.json").write_text(json.dumps({**report, "null_records": null, "marked_records": marked},
                                                     indent=1, default=float))
    (out / "calibration.md").write_text("# Calibration\n\n" + markdown)
    if args.docs:
        update_docs(Path(args.docs), "calibration", markdown, None)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
