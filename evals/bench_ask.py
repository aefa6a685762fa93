"""Quality of `looktwice ask` on an MVTec-layout set: Yes/No accuracy and the location of the answer.

For every test image (or `--per-type` of each defect type and of good, drawn with the seed) it runs the
match-of-thought loop exactly as `ask` does, with K good references, and asks
"Is there any defect in this image? Answer Yes or No.". It reports:

- accuracy per defect type (good included: there the right answer is No) and their unweighted mean,
  the VisA-D&R way of averaging; an answer without a leading Yes/No counts as wrong;
- location hit rate on defective images: the region with the highest score overlaps the ground-truth
  mask (its pixels of the predicted mask inside its box touch the mask). Counted over all defective
  images (no region = a miss) and over those answered Yes.

    python -m evals.bench_ask --data ../shared/data/magnetic_tile --shots 4 --per-type 20 --seed 0 \
        [--set sigmas=0.5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from typing import Any

import numpy as np

QUESTION = "Is there any defect in this image? Answer Yes or No."


def top_region_hits(record: Any, gt_mask: np.ndarray) -> bool:
    """Whether the highest-scoring region's pixels overlap `gt_mask` (bool HxW at image size)."""
    if not record.regions:
        return False
    top = max(record.regions, key=lambda r: r.max_score)
    x0, y0, x1, y1 = top.bbox
    gt = gt_mask[y0:y1, x0:x1]
    if record.pred_mask is not None and record.pred_mask.shape == gt_mask.shape:
        return bool((record.pred_mask[y0:y1, x0:x1] & gt).any())
    return bool(gt.any())


def run(
    data: str,
    shots: int,
    seed: int,
    per_type: int | None,
    detector: str,
    options: dict[str, Any],
    brain: str = "rule",
) -> dict[str, Any]:
    from tqdm import tqdm

    from agent.brains.spec import build_brain
    from agent.inspector import Inspector, load_references
    from agent.loop import MatchOfThought
    from evals.detection import draw_references
    from instruct_data.answers import parse_yes_no
    from instruct_data.datasets import open_dataset
    from tools.image_io import load_image

    dataset = open_dataset(data)
    category = dataset.categories()[0]
    refs_paths = draw_references(dataset, category, shots, seed)
    refs = load_references([str(p) for p in refs_paths], warn=print)
    t_fit = time.perf_counter()
    inspector = Inspector(detector, refs, options, brain="rule", warn=print)
    loop = MatchOfThought.from_inspector(
        inspector, refs, options, brain=build_brain(brain), requested_detector=detector
    )
    fit_s = time.perf_counter() - t_fit

    by_type: dict[str, list[Any]] = defaultdict(list)
    for s in dataset.test_samples(category):
        by_type[s.defect_type].append(s)
    rng = random.Random(seed)
    chosen = []
    for t in sorted(by_type):
        pool = sorted(by_type[t], key=lambda s: str(s.image_path))
        chosen += pool if per_type is None or per_type >= len(pool) else rng.sample(pool, per_type)

    correct: dict[str, list[bool]] = defaultdict(list)
    hits, hits_yes, unparsed = [], [], 0
    t0 = time.perf_counter()
    for s in tqdm(chosen, desc="ask", unit="img"):
        image = load_image(s.image_path)
        record = loop.run(str(s.image_path), image, question=QUESTION)
        parsed = parse_yes_no(record.answer or "")
        unparsed += parsed is None
        correct[s.defect_type].append(parsed is not None and parsed == s.gt_label)
        if s.gt_label:
            mask = s.load_mask(image.size)
            if mask is None:
                continue
            hit = top_region_hits(record, mask)
            hits.append(hit)
            if parsed:
                hits_yes.append(hit)
    seconds = time.perf_counter() - t0
    per_type_acc = {t: float(np.mean(v)) for t, v in sorted(correct.items())}
    return {
        "data": data,
        "category": category,
        "shots": shots,
        "seed": seed,
        "detector": detector,
        "options": options,
        "brain": brain,
        "question": QUESTION,
        "images": len(chosen),
        "accuracy_by_type": per_type_acc,
        "accuracy_mean_over_types": float(np.mean(list(per_type_acc.values()))),
        "accuracy_overall": float(np.mean([c for v in correct.values() for c in v])),
        "unparsed": unparsed,
        "location_hit_rate": float(np.mean(hits)) if hits else None,
        "location_hit_rate_when_yes": float(np.mean(hits_yes)) if hits_yes else None,
        "defective_with_mask": len(hits),
        "answered_yes_defective": len(hits_yes),
        "fit_seconds": round(fit_s, 2),
        "seconds_per_image": round(seconds / max(1, len(chosen)), 4),
    }


def main(argv: list[str] | None = None) -> int:
    from agent.detector_flags import add_detector_args, detector_options

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MVTec-layout root (one category is used)")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-type", type=int, help="images per defect type (and good); default all")
    p.add_argument("--brain", default="rule", help="rule | llava:<id-or-folder> | openai:<base-url>#<model>")
    add_detector_args(p)
    p.add_argument("--json", help="also write the result here")
    args = p.parse_args(argv)
    result = run(
        args.data, args.shots, args.seed, args.per_type, args.detector, detector_options(args), args.brain
    )
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
