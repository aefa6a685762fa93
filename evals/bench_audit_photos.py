"""Logical audits on real photos: the juice-bottle validation set, several draws of references.

The shared good photos are split in two halves: references are drawn from the first half, and the
validation images (the good photos of the second half, plus one edit of each per logical anomaly kind,
`instruct_data.synthesis.logical_photos`) are made from the second half only, so no reference is ever
audited. For every draw (a seed): 8 references, the spec drafted with the defaults (`audit run`'s
drafting), the decision set on the references held out, every validation image audited. Reported per
draw and as mean / worst / spread over the draws:

- image AUROC of the audit score (all anomalies against the good images, and per kind);
- recall at the boundary (verdict `defective`; `review` does not count as caught), and the measured
  false-alarm rate on the good images against the promised one;
- the share of caught anomalies whose record has a failed rule, and of those whose explanation names
  that rule with a measured and an expected value (a number);
- what the drafted spec kept (components with a presence rule, fill rules, pair rules).

    python -m evals.bench_audit_photos --data ../shared/data/juice_bottle --draws 3 \\
        [--detector none|refmatch] [--folder /tmp/jb_val] [--json out.json] [--speed 20]

`--speed N` also times `looktwice audit run` (drafting, the structural detector and the report
included) on N validation photos at their full size, and reports images per second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from evals.metrics import image_auroc

N_REFS = 8


def photo_halves(data: Path) -> tuple[list[Path], list[Path]]:
    """(reference pool, validation photos): the sorted good photos split in two halves."""
    photos = sorted((data / "train" / "good").glob("*.png"))
    if len(photos) < 2 * N_REFS:
        raise SystemExit(f"{data}: needs at least {2 * N_REFS} good photos in train/good, found {len(photos)}")
    half = len(photos) // 2
    return photos[:half], photos[half:]


def validation_set(photos: list[Path], folder: Path, seed: int = 0) -> dict[str, dict]:
    """The validation set in `folder` (written once, reused when its labels.json is there)."""
    from instruct_data.synthesis.logical_photos import write_logical_photo_set

    labels_path = folder / "labels.json"
    if labels_path.is_file():
        labels = json.loads(labels_path.read_text())
    else:
        labels = write_logical_photo_set(photos, folder, seed=seed)
    labels.pop("skipped", None)
    return labels


_NUMBER = re.compile(r"\d")


def names_rule(explanation: str, rule: str) -> bool:
    """Whether an explanation names the failed rule's part and gives a measured and an expected value."""
    part = rule.removeprefix("pair:").split("~")[0].rsplit(".", 1)[0]
    return part.lower() in explanation.lower() and len(_NUMBER.findall(explanation)) >= 2 or "combination" in explanation


def run_draw(seed: int, pool: list[Path], labels: dict[str, dict], folder: Path, detector: str) -> dict[str, Any]:
    from PIL import Image

    from agent.audit.check import audit_image
    from agent.audit.decision import AuditDecision, held_out_logical, structural_held_out
    from agent.audit.draft import draft_spec
    from tools.image_io import load_image

    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(pool), N_REFS, replace=False).tolist())
    refs = [load_image(pool[i]) for i in picks]
    names = [pool[i].name for i in picks]
    t0 = time.perf_counter()
    spec = draft_spec(refs, names)
    draft_seconds = time.perf_counter() - t0
    inspector = None
    if detector != "none":
        from agent.audit.runner import structural_options
        from agent.inspection import InspectionSettings, MatchSettings, Pipeline
        from agent.inspection.settings import DecisionSettings

        settings = InspectionSettings(detector, structural_options(detector, {}), match=MatchSettings(enabled=False),
                                      decision=DecisionSettings(0.05, True, "references"))
        inspector = Pipeline(settings, warn=lambda m: None).fit(refs, n_images=1)
    logical, how = held_out_logical(spec, refs, (lambda rest: draft_spec(rest)) if spec.segmenter != "regions" else None)
    structural = structural_held_out(inspector.good_samples, len(refs), inspector.calibration) if inspector else None
    decision = AuditDecision.fit(logical, how, structural, 0.05, 2.0)
    rows = []
    seconds = 0.0
    for rel, gt in labels.items():
        with Image.open(folder / rel) as im:
            image = im.convert("RGB")
        t = time.perf_counter()
        s = None
        if inspector is not None:
            rec = inspector.inspect(rel, image)
            s = (rec.pred_score, rec.threshold)
        result = audit_image(image, spec, s)
        _, verdict, _, text = decision.decide(result)
        seconds += time.perf_counter() - t
        failed = [r.rule for r in result.violations]
        rows.append({
            "kind": gt["kind"], "label": gt["label"], "score": result.score, "verdict": verdict,
            "failed": failed, "named": bool(failed) and names_rule(text, failed[0]), "explanation": text,
        })
    comps = [c.name for c in spec.components if c.count is not None]
    return {
        "seed": seed, "references": names, "segmenter": spec.segmenter or "colour",
        "presence_rules": comps, "fill_rules": [c.name for c in spec.components if c.fill is not None],
        "pair_rules": [f"{p.a}~{p.b}.{p.attribute}" for p in spec.pairs], "dropped": len(spec.dropped),
        "promised_false_alarm_rate": decision.calibration.false_alarm_rate, "rows": rows,
        "seconds_per_image": seconds / max(1, len(rows)), "draft_seconds": draft_seconds,
    }


def summarize_draw(d: dict[str, Any]) -> dict[str, Any]:
    rows = d["rows"]
    good = [r for r in rows if not r["label"]]
    bad = [r for r in rows if r["label"]]

    def auroc(sel: list[dict]) -> float:
        return round(float(image_auroc([0] * len(good) + [1] * len(sel), [r["score"] for r in good + sel])), 4)

    caught = [r for r in bad if r["verdict"] == "defective"]
    with_rule = [r for r in caught if r["failed"]]
    out = {
        "seed": d["seed"], "auroc": auroc(bad), "recall": round(len(caught) / max(1, len(bad)), 4),
        "false_alarm_rate": round(sum(r["verdict"] == "defective" for r in good) / max(1, len(good)), 4),
        "promised": round(d["promised_false_alarm_rate"], 4),
        "caught_with_failed_rule": round(len(with_rule) / max(1, len(caught)), 4),
        "explanation_names_rule": round(sum(r["named"] for r in with_rule) / max(1, len(with_rule)), 4),
        "per_kind": {},
        "presence_rules": d["presence_rules"], "fill_rules": d["fill_rules"], "pair_rules": d["pair_rules"],
        "seconds_per_image": round(d["seconds_per_image"], 3), "draft_seconds": round(d["draft_seconds"], 1),
        "good_false_alarms": Counter(x for r in good if r["verdict"] == "defective" for x in r["failed"][:1]).most_common(5),
    }
    for kind in sorted({r["kind"] for r in bad}):
        sel = [r for r in bad if r["kind"] == kind]
        out["per_kind"][kind] = {
            "auroc": auroc(sel), "recall": round(sum(r["verdict"] == "defective" for r in sel) / len(sel), 4),
            "top_rules": Counter(r["failed"][0].split(".")[-1] if r["failed"] else "-" for r in sel).most_common(3),
        }
    return out


def spread(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(v.mean()), 4), "worst": round(float(v.min()), 4), "best": round(float(v.max()), 4), "std": round(float(v.std()), 4)}


def speed(photos: list[Path], pool: list[Path], n: int, detector: str) -> dict[str, Any]:
    """`audit run` on n full-size validation photos with 8 references (drafting and setup apart)."""
    import shutil

    from agent.audit.runner import AuditSettings, run_audit

    with tempfile.TemporaryDirectory() as tmp:
        refs = Path(tmp) / "refs"
        test = Path(tmp) / "test"
        refs.mkdir()
        test.mkdir()
        for p in pool[:N_REFS]:
            shutil.copy(p, refs / p.name)
        for p in photos[:n]:  # every kind of edit of a photo has the photo's name: keep them apart
            shutil.copy(p, test / f"{p.parent.name}_{p.name}")
        s = AuditSettings(inputs=[str(test)], out=Path(tmp) / "out", refs=str(refs), detector=detector, progress=False)
        summary = run_audit(s, info=lambda m: None)
    per = summary.seconds - summary.setup_seconds
    done = summary.processed
    return {"images": done, "setup_seconds": round(summary.setup_seconds, 1), "seconds": round(per, 1),
            "images_per_second": round(done / max(per, 1e-9), 2),
            "images_per_second_with_setup": round(done / max(summary.seconds, 1e-9), 2), "detector": detector}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a folder with train/good/*.png (e.g. ../shared/data/juice_bottle)")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--detector", default="none", help="structural detector to fuse (default none: rules only)")
    ap.add_argument("--folder", help="keep the validation set here (written once, then reused)")
    ap.add_argument("--speed", type=int, default=0, help="also time `audit run` on this many full-size photos")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args(argv)
    pool, held = photo_halves(Path(args.data))
    tmp = None if args.folder else tempfile.TemporaryDirectory()
    folder = Path(args.folder or tmp.name)
    labels = validation_set(held, folder)
    draws = [summarize_draw(run_draw(seed, pool, labels, folder, args.detector)) for seed in range(args.draws)]
    out: dict[str, Any] = {
        "settings": {"data": args.data, "draws": args.draws, "references": N_REFS, "detector": args.detector,
                     "validation_images": len(labels), "good": sum(1 for v in labels.values() if not v["label"])},
        "auroc": spread([d["auroc"] for d in draws]), "recall": spread([d["recall"] for d in draws]),
        "false_alarm_rate": spread([d["false_alarm_rate"] for d in draws]),
        "caught_with_failed_rule": spread([d["caught_with_failed_rule"] for d in draws]),
        "kind_recall_worst": {k: min(d["per_kind"][k]["recall"] for d in draws) for k in draws[0]["per_kind"]},
        "draws": draws,
    }
    if args.speed:
        out["speed"] = speed([folder / k for k in labels][: args.speed], pool, args.speed, args.detector)
    if tmp is not None:
        tmp.cleanup()
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
