"""Do two installs give the same scores? `run` scores a data set with the embedded detector in this
Python environment; `compare` checks two such files against a tolerance.

Why: the light install (CPU-only torch, no torchvision) must not change what `inspect` says. Run the
same command with each environment's Python on the same data and compare:

    /venv-full/bin/python -m evals.score_parity run --data DATA --out full.json
    /venv-light/bin/python -m evals.score_parity run --data DATA --out light.json
    python -m evals.score_parity compare full.json light.json --tol 1e-4

`run` scores every test image of an MVTec-layout data set (`--data`, never copied anywhere) with the
embedded detector (refmatch, under the image limits `looktwice inspect` uses), against `--shots` good
references drawn from train/good with `--seed` (as `looktwice eval` draws them), and writes each
image's `pred_score` with the environment (torch version and build). `compare` prints the largest
absolute difference and exits 1 when it is not below the tolerance, 2 when the files do not cover the
same images.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any


def score_dataset(data: str, shots: int = 4, seed: int = 0, category: str | None = None) -> dict[str, Any]:
    """{"scores": {relative image path: pred_score}, "environment": ..., ...} for every test image."""
    import torch

    from agent.images import ImageLimits
    from evals.detection import draw_references
    from instruct_data.datasets import open_dataset
    from tools.detectors import DETECTORS

    dataset = open_dataset(data)
    root = Path(data).resolve()
    limits = ImageLimits()
    scores: dict[str, float] = {}
    references: dict[str, list[str]] = {}
    t0 = time.perf_counter()
    for cat in [category] if category else dataset.categories():
        ref_paths = draw_references(dataset, cat, shots, seed)
        references[cat] = [str(Path(p).resolve().relative_to(root)) for p in ref_paths]
        detector = DETECTORS.build("refmatch")
        detector.fit(limits.references(ref_paths, warn=print))
        for sample in dataset.test_samples(cat):
            path = Path(sample.image_path)
            out = detector.predict([limits.load(path)])[0]
            scores[str(path.resolve().relative_to(root))] = float(out.pred_score)
    return {
        "data": str(root),
        "shots": shots,
        "seed": seed,
        "references": references,
        "scores": scores,
        "seconds": round(time.perf_counter() - t0, 2),
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_cuda_build": torch.version.cuda,
            "executable": sys.executable,
        },
    }


def compare_scores(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Largest and mean absolute `pred_score` difference over the images both files hold."""
    sa, sb = a["scores"], b["scores"]
    if set(sa) != set(sb):
        raise ValueError(f"the files score different images ({len(set(sa) ^ set(sb))} differ)")
    diffs = {k: abs(sa[k] - sb[k]) for k in sa}
    worst = max(diffs, key=diffs.__getitem__) if diffs else ""
    return {
        "images": len(diffs),
        "max_abs_diff": diffs.get(worst, 0.0),
        "mean_abs_diff": sum(diffs.values()) / max(1, len(diffs)),
        "worst_image": worst,
        "same_verdicts": sum((sa[k] > 0.5) == (sb[k] > 0.5) for k in sa),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="score the test images of a data set in this environment")
    r.add_argument("--data", required=True, help="MVTec-layout data set root")
    r.add_argument("--category", help="one category (default: all)")
    r.add_argument("--shots", type=int, default=4)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True, help="JSON file to write")
    c = sub.add_parser("compare", help="compare two score files")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tol", type=float, default=1e-4, help="largest allowed absolute difference")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        result = score_dataset(args.data, args.shots, args.seed, args.category)
        Path(args.out).write_text(json.dumps(result, indent=1), encoding="utf-8")
        env = result["environment"]
        print(f"{len(result['scores'])} images scored in {result['seconds']} s with torch {env['torch']}; {args.out}")
        return 0
    a, b = (json.loads(Path(p).read_text(encoding="utf-8")) for p in (args.a, args.b))
    try:
        summary = compare_scores(a, b)
    except ValueError as err:
        print(f"score_parity: {err}", file=sys.stderr)
        return 2
    summary.update(tol=args.tol, a_torch=a["environment"]["torch"], b_torch=b["environment"]["torch"])
    print(json.dumps(summary, indent=1))
    return 0 if summary["max_abs_diff"] < args.tol else 1


if __name__ == "__main__":
    raise SystemExit(main())
