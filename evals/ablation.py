"""Ablation runs: detector variants x categories x seeds, through the same code as `looktwice eval`.

    python -m evals.ablation --data val/ --categories magnetic_tile,weave,bracket --seeds 0,1,2 \\
        --variant base: --variant no-views:augment=[] --json ablation.json

Each `--variant NAME:KEY=VALUE,KEY=VALUE` is a set of detector settings (YAML values; `--detector` for
all, or `detector=NAME` inside a variant). Prints one markdown row per variant: image AUROC, pixel
AUROC and AUPRO as the mean over seeds for each category, then the mean over categories; the JSON
keeps every run with its per-image scores, so `python -m evals.redecide ablation.json` can study the
decisions (false-alarm rate promised and measured per reference draw) without scoring again. This is
how settings are chosen on validation sets and then reported once on test.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """'name:key=value,key=value' -> (name, settings). Values are YAML (lists in brackets are kept whole)."""
    import yaml

    name, _, rest = text.partition(":")
    settings: dict[str, Any] = {}
    depth, item, items = 0, "", []
    for ch in rest:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            items.append(item)
            item = ""
        else:
            item += ch
    if item:
        items.append(item)
    for it in items:
        key, eq, value = it.partition("=")
        if not eq:
            raise ValueError(f"variant {name!r}: expected KEY=VALUE, got {it!r}")
        settings[key.strip()] = yaml.safe_load(value)
    return name.strip() or "default", settings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--categories", required=True, help="comma-separated")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--detector", default="refmatch")
    p.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... (repeatable)")
    p.add_argument("--metric-size", type=int, default=128)
    p.add_argument("--json", help="write every run here")
    args = p.parse_args(argv)

    from evals.detection import DetectionBenchmarkSettings, evaluate_category
    from instruct_data.datasets import open_dataset

    dataset = open_dataset(args.data)
    cats = [c.strip() for c in args.categories.split(",") if c.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [parse_variant(v) for v in (args.variant or ["default:"])]
    runs: list[dict[str, Any]] = []
    print("| variant | " + " | ".join(cats) + " | mean image | mean pixel | mean AUPRO | img/s |")
    print("|---" * (len(cats) + 5) + "|")
    for name, options in variants:
        options = dict(options)
        detector = options.pop("detector", args.detector)
        per_cat: dict[str, list[dict[str, float]]] = {c: [] for c in cats}
        for cat in cats:
            for seed in seeds:
                settings = DetectionBenchmarkSettings(
                    data=args.data, category=cat, shots=args.shots, seed=seed, detector=detector,
                    detector_options=options, metric_size=args.metric_size,
                )
                r = evaluate_category(dataset, cat, settings, warn=lambda _m: None)
                row = {k: r[k] for k in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "throughput_ips")}
                per_cat[cat].append(row)
                runs.append({"variant": name, "category": cat, "seed": seed, **row,
                             "per_defect_image_AUROC": r["per_defect_image_AUROC"],
                             # per-image scores and held-out good scores: `evals.redecide` decides again
                             **{k: r[k] for k in ("images", "good_samples", "good_samples_exchangeable")}})
        img = [float(np.mean([r["image_AUROC"] for r in per_cat[c]])) for c in cats]
        px = float(np.mean([r["pixel_AUROC"] for c in cats for r in per_cat[c]]))
        pro = float(np.mean([r["pixel_AUPRO"] for c in cats for r in per_cat[c]]))
        ips = float(np.mean([r["throughput_ips"] for c in cats for r in per_cat[c]]))
        cells = " | ".join(f"{v:.3f}" for v in img)
        print(f"| {name} | {cells} | {np.mean(img):.3f} | {px:.3f} | {pro:.3f} | {ips:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"data": args.data, "shots": args.shots, "seeds": seeds, "runs": runs}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
