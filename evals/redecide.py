"""Decide a finished `looktwice eval` again at other false-alarm rates or calibration modes, without
scoring the images again.

Why: the scores do not depend on the rate asked for, only the boundary does, and scoring a large test
set is the slow part. This reads the per-image raw scores and content keys that `eval --out` saves and
decides with the code `inspect`, `report` and `eval` decide with (`agent.inspection.decision`: the
references held out, or the same seeded sample of the batch, checked against the references), then
computes the same decision metrics (`evals.metrics.decision_scores`) as `eval`.

    python -m evals.redecide k4_s0.json --false-alarm-rate 0.05,0.2 --calibration batch,references
    python -m evals.redecide ablation.json --calibration references   # every run of an ablation
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from agent.inspection.decision import batch_calibration, calibration_sample, reference_calibration
from agent.inspection.settings import CALIBRATION_MODES, DecisionSettings
from evals.metrics import decision_scores


def redecide(category: dict[str, Any], mode: str, rate: float, review: bool = True) -> dict[str, Any]:
    """`at_threshold` of one category of an eval result, for calibration `mode` at `rate`."""
    images = category.get("images")
    if not images:
        raise ValueError(f"{category.get('category')}: no per-image scores (run `looktwice eval --out` again)")
    if mode not in CALIBRATION_MODES:
        raise ValueError(f"unknown calibration mode {mode!r}; available: {', '.join(CALIBRATION_MODES)}")
    raw = np.array([i["raw_score"] for i in images], dtype=np.float64)
    labels = np.array([i["defect_type"] != "good" for i in images], dtype=bool)
    good = np.array(category.get("good_samples", []), dtype=np.float64)
    d = DecisionSettings(rate, review, mode)
    if mode == "batch" and len(raw) >= 3:
        if any("key" not in i for i in images):
            raise ValueError(f"{category.get('category')}: no content keys saved (run `looktwice eval --out` again)")
        sample = calibration_sample([i["key"] for i in images], int(category.get("calibration_seed", 0)))
        known = good if category.get("good_samples_exchangeable") else None
        cal = batch_calibration(raw[sample], d, known, good)
    else:
        cal = reference_calibration(good, d, "references (leave-one-out)")
    if cal is None:
        raise ValueError(f"{category.get('category')}: {mode} calibration needs good samples, and there are none")
    verdicts = [cal.verdict(float(r)) for r in raw]
    return {"calibration": mode, "requested_false_alarm_rate": rate, "method": cal.method,
            **decision_scores(labels, verdicts, cal.false_alarm_rate)}


def _entries(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The categories of an eval result, or the runs of an ablation (`evals.ablation --json`)."""
    return list(result.get("categories") or result.get("runs") or [])


def _run_of(entry: dict[str, Any]) -> dict[str, Any]:
    """An ablation run's variant and seed (nothing for an eval category)."""
    return {k: entry[k] for k in ("variant", "seed") if k in entry}


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m evals.redecide", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("results", nargs="+", help="JSON files written by `looktwice eval --out` or `evals.ablation --json`")
    p.add_argument("--false-alarm-rate", default="0.05", help="comma-separated rates (default 0.05)")
    p.add_argument("--calibration", default="batch", help=f"comma-separated, of {', '.join(CALIBRATION_MODES)}")
    p.add_argument("--no-review", action="store_true")
    p.add_argument("--json", help="write all rows here")
    args = p.parse_args(argv)
    rows = []
    for path in args.results:
        try:
            result = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            print(f"error: {path}: {err}", file=sys.stderr)
            return 2
        for category in _entries(result):
            for mode in args.calibration.split(","):
                for rate in _floats(args.false_alarm_rate):
                    try:
                        row = {"file": path, "category": category["category"], **_run_of(category),
                               **redecide(category, mode.strip(), rate, not args.no_review)}
                    except ValueError as err:
                        print(f"error: {path}: {err}", file=sys.stderr)
                        return 2
                    rows.append(row)
                    run = " ".join(f"{k} {v}" for k, v in _run_of(category).items())
                    print(f"{path} {row['category']}{' ' + run if run else ''} {mode}@{rate:g}: recall {row['recall']:.3f}, false alarms "
                          f"{row['false_alarm_rate']:.3f} (promised {row['estimated_false_alarm_rate']:.3f}), balanced accuracy {row['balanced_accuracy']:.3f}, review {row['review_rate']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
