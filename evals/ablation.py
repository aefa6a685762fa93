"""Ablation runs: detector variants x categories x shots x seeds, through the same code as `looktwice eval`.

    python -m evals.ablation --data val/ --categories magnetic_tile,weave,bracket --seeds 0,1,2 \\
        --variant base: --variant no-views:augment=[] --json ablation.json

Each `--variant NAME:KEY=VALUE,KEY=VALUE` is a set of detector settings (YAML values; `--detector` for
all, or `detector=NAME` inside a variant). Prints one markdown row per variant: image AUROC, pixel
AUROC and AUPRO as the mean over seeds for each category, then the mean over categories; the JSON
keeps every run with its per-image scores, so `python -m evals.redecide ablation.json` can study the
decisions (false-alarm rate promised and measured per reference draw) without scoring again. This is
how settings are chosen on validation sets and then reported once on test. `evals.suite` runs the
same grid over every product of a root and tabulates it for reporting.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

#: what a run keeps of `evaluate_category`'s result besides the metrics
RUN_KEYS = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "throughput_ips", "seconds_per_megapixel", "at_threshold",
            "per_defect_image_AUROC", "images", "good_samples", "good_samples_exchangeable", "calibration_seed", "detector",
            "calibration")


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


def run_grid(
    data: str,
    categories: Sequence[str],
    seeds: Sequence[int],
    shots: Sequence[int],
    variants: Sequence[tuple[str, dict[str, Any]]],
    detector: str = "auto",
    metric_size: int = 128,
    calibration: str | None = None,
    false_alarm_rate: float = 0.05,
    limit: int | None = None,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Every variant x category x shots x seed through `evals.detection.evaluate_category`; one run dict
    each (variant, category, shots, seed and `RUN_KEYS`), passed to `on_run` as it finishes."""
    from evals.detection import DetectionBenchmarkSettings, evaluate_category, stratified_limit
    from instruct_data.datasets import open_dataset

    dataset = open_dataset(data)
    runs: list[dict[str, Any]] = []
    for name, options in variants:
        options = dict(options)
        det = options.pop("detector", detector)
        for cat in categories:
            for k in shots:
                for seed in seeds:
                    settings = DetectionBenchmarkSettings(
                        data=data, category=cat, shots=k, seed=seed, detector=det, detector_options=options,
                        metric_size=metric_size, calibration=calibration, false_alarm_rate=false_alarm_rate,
                    )
                    samples = stratified_limit({cat: dataset.test_samples(cat)}, limit, seed)[cat]
                    r = evaluate_category(dataset, cat, settings, warn=lambda _m: None, samples=samples)
                    run = {"variant": name, "category": cat, "shots": k, "seed": seed, **{key: r[key] for key in RUN_KEYS}}
                    runs.append(run)
                    if on_run:
                        on_run(run)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--categories", required=True, help="comma-separated")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--detector", default="refmatch")
    p.add_argument("--calibration", choices=("references", "batch"), help="default: as report (batch for a batch detector)")
    p.add_argument("--limit", type=int, help="a stratified sample of this many test images per category")
    p.add_argument("--variant", action="append", default=[], help="NAME:KEY=VALUE,... (repeatable)")
    p.add_argument("--metric-size", type=int, default=128)
    p.add_argument("--json", help="write every run here")
    args = p.parse_args(argv)

    cats = [c.strip() for c in args.categories.split(",") if c.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [parse_variant(v) for v in (args.variant or ["default:"])]
    print("| variant | " + " | ".join(cats) + " | mean image | mean pixel | mean AUPRO | img/s |")
    print("|---" * (len(cats) + 5) + "|")
    runs: list[dict[str, Any]] = []
    for name, options in variants:
        mine = run_grid(args.data, cats, seeds, [args.shots], [(name, options)], args.detector, args.metric_size,
                        args.calibration, limit=args.limit)
        runs.extend(mine)
        img = [float(np.mean([r["image_AUROC"] for r in mine if r["category"] == c])) for c in cats]
        px = float(np.mean([r["pixel_AUROC"] for r in mine]))
        pro = float(np.mean([r["pixel_AUPRO"] for r in mine]))
        ips = float(np.mean([r["throughput_ips"] for r in mine]))
        cells = " | ".join(f"{v:.3f}" for v in img)
        print(f"| {name} | {cells} | {np.mean(img):.3f} | {px:.3f} | {pro:.3f} | {ips:.1f} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"data": args.data, "shots": args.shots, "seeds": seeds, "runs": runs}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
