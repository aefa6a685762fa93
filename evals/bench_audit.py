"""Benchmark of the logical-anomaly audit on generated LOCO-like scenes.

For each scene (tray, box, cable) it writes a set with `instruct_data.synthesis.scenes.write_scene_set` (half
good, half anomalous, spread over all kinds), drafts a spec from the 4 good references with no hand
edits, audits every test image and reports:

- image AUROC (`evals.metrics.image_auroc`) of the audit score, over all images and per kind (that
  kind's anomalies against all good images), and the verdict's detection rate and false-positive rate;
- "right component": of the detected anomalies, how often the most severe violated rule marks the
  anomalous component (its offending blobs or empty places overlap the ground-truth mask), and how often
  any violated rule does.

    python -m evals.bench_audit --n 160 --seed 0 [--hard] [--structural] [--detector refmatch] [--json out.json]

Image AUROC is reported over all anomalies, per family (`logical`, `structural`) and per kind, each
against all good images.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from evals.metrics import image_auroc


def run(
    n: int,
    seed: int,
    detector: str = "none",
    folder: str | None = None,
    hard: bool = False,
    structural: bool = False,
) -> dict[str, Any]:
    from agent.audit.check import audit_image
    from agent.audit.draft import draft_spec
    from instruct_data.synthesis.scenes import SCENES, write_scene_set
    from tools.image_io import load_image, load_mask

    tmp = None
    if folder is None:
        tmp = tempfile.TemporaryDirectory()
        folder = tmp.name
    root = Path(folder)
    labels = write_scene_set(root, n, seed=seed, hard=hard, structural=structural)
    rows: list[dict[str, Any]] = []
    seconds = 0.0
    drafts: dict[str, Any] = {}
    for scene in SCENES:
        ref_paths = sorted((root / scene / "refs").glob("*.png"))
        refs = [load_image(p) for p in ref_paths]
        spec = draft_spec(refs, [p.name for p in ref_paths])
        drafts[scene] = {
            "components": [c.name for c in spec.components],
            "pairs": len(spec.pairs),
            "dropped": spec.dropped,
        }
        inspector = None
        if detector != "none":
            from agent.inspection import InspectionSettings, MatchSettings, Pipeline

            settings = InspectionSettings(detector, match=MatchSettings(enabled=False))
            inspector = Pipeline(settings, warn=lambda m: None).fit(refs, n_images=1)
        for rel, gt in labels.items():
            if gt["scene"] != scene:
                continue
            image = load_image(root / rel)
            t = time.perf_counter()
            structural = None
            if inspector is not None:
                rec = inspector.inspect(rel, image)
                structural = (rec.pred_score, rec.threshold)
            result = audit_image(image, spec, structural)
            seconds += time.perf_counter() - t
            row = {"scene": scene, "kind": gt["kind"], "family": gt.get("family"), "label": gt["label"]}
            row["score"] = result.score
            row["detected"] = result.anomalous
            if gt["label"] and result.anomalous:
                mask = load_mask(root / gt["mask"], image.size)
                viol = result.violations
                top = result.offending_mask(image.size, viol[:1])
                every = result.offending_mask(image.size, viol)
                row["top_right"] = bool((top & mask).any())
                row["any_right"] = bool((every & mask).any())
                row["top_rule"] = viol[0].rule if viol else "structural detector only"
            rows.append(row)
    if tmp is not None:
        tmp.cleanup()
    return {"rows": rows, "seconds": seconds, "drafts": drafts}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    def block(sel: list[dict[str, Any]], goods: list[dict[str, Any]]) -> dict[str, Any]:
        bad = [r for r in sel if r["label"]]
        detected = [r for r in bad if r["detected"]]
        labels = [0] * len(goods) + [1] * len(bad)
        scores = [r["score"] for r in goods] + [r["score"] for r in bad]
        return {
            "n_anomalous": len(bad),
            "auroc": round(float(image_auroc(labels, scores)), 4),
            "detected": round(len(detected) / max(1, len(bad)), 4),
            "top_rule_right_component": round(np.mean([r["top_right"] for r in detected]), 4)
            if detected
            else None,
            "any_rule_right_component": round(np.mean([r["any_right"] for r in detected]), 4)
            if detected
            else None,
        }

    goods = [r for r in rows if not r["label"]]
    out: dict[str, Any] = {
        "n_images": len(rows),
        "n_good": len(goods),
        "false_positive_rate": round(sum(r["detected"] for r in goods) / max(1, len(goods)), 4),
        "all": block(rows, goods),
    }
    for family in ("logical", "structural"):
        sel = [r for r in rows if r.get("family") == family]
        if sel:
            out[family] = block(sel, goods)
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_scene_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        if r["label"]:
            by_kind[r["kind"]].append(r)
            by_scene_kind[f"{r['scene']}/{r['kind']}"].append(r)
    out["per_kind"] = {k: block(v, goods) for k, v in sorted(by_kind.items())}
    out["per_scene_kind"] = {
        k: block(v, [g for g in goods if g["scene"] == k.split("/")[0]])
        for k, v in sorted(by_scene_kind.items())
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=160, help="test images per scene (half anomalous)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--detector", default="none", help="structural detector to fuse (default none: rules only)"
    )
    ap.add_argument("--folder", help="keep the generated set here (default: a temporary folder)")
    ap.add_argument("--hard", action="store_true", help="harder scenes: jitter, uneven light, more noise")
    ap.add_argument(
        "--structural",
        action="store_true",
        help="also structural defects (scratch, stain) among the anomalies",
    )
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    res = run(args.n, args.seed, args.detector, args.folder, args.hard, args.structural)
    summary = summarize(res["rows"])
    summary["drafts"] = res["drafts"]
    summary["settings"] = {
        "n_per_scene": args.n,
        "seed": args.seed,
        "detector": args.detector,
        "refs": 4,
        "hard": args.hard,
        "structural": args.structural,
    }
    summary["seconds_per_image"] = round(res["seconds"] / max(1, len(res["rows"])), 5)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
