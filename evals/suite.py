"""The detection suite: every product under a root, several shot counts and reference draws, one table
that shows the worst product as plainly as the mean.

    python -m evals.suite --data ../shared/data --shots 0,1,4 --seeds 0,1,2 --json suite.json --md suite.md
    python -m evals.suite --data val/ --shots 4 --limit 120          # quicker, for choosing settings
    python -m evals.suite --data ../shared/data --shots 4 --peer     # anomalib PatchCore beside it

Each product (an MVTec-layout category) is inspected as `report` would (`evals.detection`, through
`evals.ablation.run_grid`); folders without test images (good references only, such as a product
kept for audits) are skipped and named. Per product and shot count, over the seeds: image and pixel
AUROC and AUPRO (means), the false-alarm rate measured on the good test images against the one the
records promised (the worst seed), balanced accuracy at the boundary (the worst seed) and seconds per
megapixel. Then, per shot count, the mean over products and the worst product. With `--peer`,
anomalib PatchCore on the same backbone and the same reference draws (`evals.peer_patchcore`, the
`peer` extra) is run in the same process, and the ratios are of figures measured in one run.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

COLUMNS = ("product", "shots", "detector", "image AUROC", "pixel AUROC", "AUPRO", "false alarms (worst seed)",
           "promised", "balanced acc. (worst seed)", "s / MP")


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One product x shots cell of the table from its seeds' runs."""
    at = [r["at_threshold"] for r in runs]
    return {
        "detector": ",".join(sorted({r["detector"] for r in runs})),
        "image_AUROC": float(np.mean([r["image_AUROC"] for r in runs])),
        "pixel_AUROC": float(np.nanmean([r["pixel_AUROC"] for r in runs])),
        "pixel_AUPRO": float(np.nanmean([r["pixel_AUPRO"] for r in runs])),
        "false_alarm_rate_worst": float(np.nanmax([a["false_alarm_rate"] for a in at])),
        "promised": float(np.nanmax([a["estimated_false_alarm_rate"] for a in at])),
        "excess_worst": float(np.nanmax([a["false_alarm_rate"] - a["estimated_false_alarm_rate"] for a in at])),
        "balanced_accuracy_worst": float(np.nanmin([a["balanced_accuracy"] for a in at])),
        "seconds_per_megapixel": float(np.nanmean([r["seconds_per_megapixel"] for r in runs])),
        "seeds": [r["seed"] for r in runs],
        "per_seed": [{k: r[k] for k in ("seed", "image_AUROC", "pixel_AUROC", "pixel_AUPRO")} | {
            "false_alarm_rate": r["at_threshold"]["false_alarm_rate"],
            "promised": r["at_threshold"]["estimated_false_alarm_rate"],
            "balanced_accuracy": r["at_threshold"]["balanced_accuracy"],
            "recall": r["at_threshold"]["recall"],
            "calibration": r["calibration"].get("method"),
        } for r in runs],
    }


def _row(name: str, shots: int, s: dict[str, Any]) -> str:
    return (f"| {name} | {shots} | {s['detector']} | {s['image_AUROC']:.3f} | {s['pixel_AUROC']:.3f} | {s['pixel_AUPRO']:.3f} | "
            f"{s['false_alarm_rate_worst']:.3f} | {s['promised']:.3f} | {s['balanced_accuracy_worst']:.3f} | "
            f"{s['seconds_per_megapixel']:.3f} |")


def markdown(cells: dict[tuple[str, int], dict[str, Any]], skipped: Sequence[str], peer: dict[tuple[str, int], dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    for shots in sorted({k for _, k in cells}):
        names = [p for p, k in cells if k == shots]
        for name in names:
            lines.append(_row(name, shots, cells[(name, shots)]))
        if len(names) > 1:
            group = [cells[(n, shots)] for n in names]
            mean = {key: float(np.mean([g[key] for g in group])) for key in group[0] if isinstance(group[0][key], float)}
            worst = {key: float((np.max if key in ("false_alarm_rate_worst", "promised", "excess_worst", "seconds_per_megapixel")
                                 else np.min)([g[key] for g in group])) for key in mean}
            lines.append(_row("**mean**", shots, {**mean, "detector": ""}))
            lines.append(_row("**worst**", shots, {**worst, "detector": ""}))
    if peer:
        lines += ["", "| product | shots | PatchCore image | PatchCore pixel | image ratio | pixel ratio | speed ratio (PatchCore s/MP / ours) |",
                  "|---|---|---|---|---|---|---|"]
        for (name, shots), p in sorted(peer.items()):
            ours = cells[(name, shots)]
            lines.append(f"| {name} | {shots} | {p['image_AUROC']:.3f} | {p['pixel_AUROC']:.3f} | "
                         f"{ours['image_AUROC'] / p['image_AUROC']:.3f} | {ours['pixel_AUROC'] / p['pixel_AUROC']:.3f} | "
                         f"{p['seconds_per_megapixel'] / ours['seconds_per_megapixel']:.2f} |")
    if skipped:
        lines += ["", "Skipped (no test images): " + ", ".join(skipped)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evals.suite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="root holding one MVTec-layout folder per product")
    p.add_argument("--products", help="comma-separated (default: every product with test images)")
    p.add_argument("--shots", default="0,1,4")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--detector", default="auto")
    p.add_argument("--calibration", choices=("references", "batch"), help="default: as report")
    p.add_argument("--false-alarm-rate", type=float, default=0.05)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="detector setting (YAML value)")
    p.add_argument("--limit", type=int, help="a stratified sample of this many test images per product")
    p.add_argument("--metric-size", type=int, default=256)
    p.add_argument("--peer", action="store_true", help="also anomalib PatchCore (the `peer` extra), shots > 0")
    p.add_argument("--json", help="every run and every cell")
    p.add_argument("--md", help="the table as markdown")
    args = p.parse_args(argv)

    from evals.ablation import parse_variant, run_grid
    from instruct_data.datasets import categories_with_tests

    found, skipped = categories_with_tests(args.data)
    names = [n.strip() for n in args.products.split(",")] if args.products else found
    shots = [int(s) for s in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    _, options = parse_variant("suite:" + ",".join(args.set))
    for name in skipped:
        print(f"suite: skipped {name}: no test images", file=sys.stderr)

    done: list[dict[str, Any]] = []

    def said(run: dict[str, Any]) -> None:
        done.append(run)
        if args.json:  # every finished run is on disk at once: a long suite cut short keeps its runs
            _write_json(args.json, {"data": args.data, "shots": shots, "seeds": seeds, "settings": options, "runs": done})
        a = run["at_threshold"]
        print(f"suite: {run['category']} shots {run['shots']} seed {run['seed']}: image {run['image_AUROC']:.3f} pixel "
              f"{run['pixel_AUROC']:.3f} AUPRO {run['pixel_AUPRO']:.3f}; false alarms {a['false_alarm_rate']:.3f} "
              f"(promised {a['estimated_false_alarm_rate']:.3f}), balanced accuracy {a['balanced_accuracy']:.3f}; "
              f"{run['detector']}, {run['calibration'].get('method')}", file=sys.stderr, flush=True)

    runs = run_grid(args.data, names, seeds, shots, [("suite", options)], args.detector, args.metric_size,
                    args.calibration, args.false_alarm_rate, args.limit, on_run=said)
    cells = {(n, k): summarize([r for r in runs if r["category"] == n and r["shots"] == k]) for n in names for k in shots}
    peer: dict[tuple[str, int], dict[str, Any]] = {}
    if args.peer:
        from evals.peer_patchcore import run_peer

        for n in names:
            for k in (k for k in shots if k > 0):
                got = [run_peer(args.data, n, k, seed, metric_size=args.metric_size) for seed in seeds]
                peer[(n, k)] = {key: float(np.mean([g[key] for g in got])) for key in ("image_AUROC", "pixel_AUROC", "seconds_per_megapixel")}
    table = markdown(cells, skipped, peer)
    print(table)
    if args.md:
        with open(args.md, "w", encoding="utf-8") as fh:
            fh.write(table)
    if args.json:
        _write_json(args.json, {"data": args.data, "shots": shots, "seeds": seeds, "settings": options, "skipped": skipped,
                                "cells": {f"{n}@{k}": c for (n, k), c in cells.items()},
                                "peer": {f"{n}@{k}": c for (n, k), c in peer.items()}, "runs": runs})
    return 0


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)


if __name__ == "__main__":
    raise SystemExit(main())
