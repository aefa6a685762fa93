"""Quality of `looktwice ask` on an MVTec-layout set, per variant of the loop.

For every test image (or `--per-type` of each defect type and of good, drawn with the seed) it runs
the inspection pipeline exactly as `ask` does (one image at a time, K good references), asks
"Is there any defect in this image? Answer Yes or No." and, for defective images, the QA set's two
reasoning questions (`instruct_data.qa`: describe the defect; its cause and prevention), whose
reference answers come from the ground truth. Variants (`--variants`):

- `look`: the detector alone (no second look, no part matching);
- `look+twice`: with the second look;
- `look+match`: with part matching and rules, without the second look (to measure the match alone);
- `look+twice+match`: every step on (`ask` runs this with the second look off, its default).

Per variant, under `variants`:
- `balanced_accuracy` (mean of recall on defective images and specificity on good ones; an answer
  that is not a clear Yes or No, "Not sure" included, counts as wrong), `f1`, and
  `mean_accuracy_over_types` (good counted as one type, the VisA-D&R averaging, which rewards
  always saying Yes when most types are defects);
- `location_hit_rate`: on defective images, the record's first region overlaps the defect (no region:
  a miss); `localization_hit_rate`: the place the loop found most suspicious overlaps the defect,
  whatever the verdict (the loop's own contribution, independent of the threshold);
- `rouge_l`, `sbert`: the answers to the reasoning questions against the reference answers, over all
  defective images;
- `seconds_per_image`.

    python -m evals.bench_ask --data ../shared/data/magnetic_tile --shots 4 --seed 0 \\
        --variants look,look+twice,look+twice+match --json ask.json
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
VARIANTS = ("look", "look+twice", "look+match", "look+twice+match")


def top_region_hits(record: Any, gt_mask: np.ndarray) -> bool:
    """Whether the record's first region (its most suspicious) overlaps `gt_mask` (bool HxW)."""
    if not record.regions:
        return False
    x0, y0, x1, y1 = record.regions[0].bbox
    gt = gt_mask[y0:y1, x0:x1]
    if record.pred_mask is not None and record.pred_mask.shape == gt_mask.shape:
        return bool((record.pred_mask[y0:y1, x0:x1] & gt).any())
    return bool(gt.any())


def most_suspicious_place(record: Any) -> tuple[int, int, int, int] | None:
    """The box the loop found most suspicious: the second look's top place when it ran, else the
    box around the first map's peak."""
    for entry in record.trace:
        if entry.get("step") == "zoom_recheck" and entry.get("looks"):
            return tuple(entry["looks"][0]["place"])
    if record.anomaly_map is None:
        return None
    from tools.region_views import suspicious_places

    places = suspicious_places(np.asarray(record.anomaly_map), 1, 32)
    return places[0][0] if places else None


def place_hits(box: tuple[int, int, int, int] | None, gt_mask: np.ndarray) -> bool:
    if box is None:
        return False
    x0, y0, x1, y1 = box
    return bool(gt_mask[y0:y1, x0:x1].any())


def variant_settings(name: str, base: Any) -> Any:
    """The inspection settings of a variant, from `base` (the flags)."""
    from dataclasses import replace

    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; available: {', '.join(VARIANTS)}")
    twice = "twice" in name
    match = "match" in name
    return replace(
        base,
        zoom_recheck=replace(base.zoom_recheck, enabled=twice),
        match=replace(base.match, enabled=match),
    )


def choose_samples(dataset: Any, category: str, per_type: int | None, seed: int) -> list[Any]:
    by_type: dict[str, list[Any]] = defaultdict(list)
    for s in dataset.test_samples(category):
        by_type[s.defect_type].append(s)
    rng = random.Random(seed)
    chosen = []
    for t in sorted(by_type):
        pool = sorted(by_type[t], key=lambda s: str(s.image_path))
        chosen += pool if per_type is None or per_type >= len(pool) else rng.sample(pool, per_type)
    return chosen


def run_variant(
    pipeline: Any, samples: list[Any], category: str, sbert: Any, progress: bool = True
) -> dict[str, Any]:
    """One variant over the chosen samples (pipeline fitted)."""
    from tqdm import tqdm

    from evals.dr.text import rouge_l
    from instruct_data.answers import parse_yes_no
    from instruct_data.qa.builder import describe_defect, explain_cause, measure_mask, templates, words_of
    from tools.image_io import load_image

    tpl = templates()
    questions = [q.format(object=words_of(category)) for q in (tpl["questions"]["low_level"], tpl["questions"]["complex"])]
    correct: dict[str, list[bool]] = defaultdict(list)
    tp = fp = tn = fn = unparsed = 0
    hits, places, answers, references = [], [], [], []
    seconds = 0.0
    for s in tqdm(samples, desc="ask", unit="img", disable=not progress, leave=False):
        image = load_image(s.image_path)
        t0 = time.perf_counter()
        record = pipeline.inspect(str(s.image_path), image, question=QUESTION)
        seconds += time.perf_counter() - t0
        parsed = parse_yes_no(record.answer or "")
        unparsed += parsed is None
        correct[s.defect_type].append(parsed is not None and parsed == s.gt_label)
        if s.gt_label:
            tp += parsed is True
            fn += parsed is not True
            mask = s.load_mask(image.size)
            if mask is None:
                continue
            hits.append(top_region_hits(record, mask))
            places.append(place_hits(most_suspicious_place(record), mask))
            regions = measure_mask(mask, np.asarray(image)) if mask.any() else None
            refs = [describe_defect(s.defect_type, category, regions, tpl), explain_cause(s.defect_type, category, regions, tpl)]
            history: list[tuple[str, str]] = []
            for q, ref in zip(questions, refs, strict=True):
                a = pipeline.answer(q, record, list(history))
                history.append((q, a))
                answers.append(a)
                references.append(ref)
        else:
            tn += parsed is False
            fp += parsed is not False
    recall = tp / max(tp + fn, 1)
    specificity = tn / max(tn + fp, 1)
    precision = tp / max(tp + fp, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_type = {t: float(np.mean(v)) for t, v in sorted(correct.items())}
    rouge = [rouge_l(a, r)["f"] for a, r in zip(answers, references, strict=True)]
    sb = sbert.similarities(answers, references) if sbert is not None and answers else []
    return {
        "balanced_accuracy": (recall + specificity) / 2,
        "recall": recall,
        "specificity": specificity,
        "f1": f1,
        "accuracy_per_type": per_type,
        "mean_accuracy_over_types": float(np.mean(list(per_type.values()))) if per_type else float("nan"),
        "unparsed": unparsed,
        "location_hit_rate": float(np.mean(hits)) if hits else float("nan"),
        "localization_hit_rate": float(np.mean(places)) if places else float("nan"),
        "rouge_l": float(np.mean(rouge)) if rouge else float("nan"),
        "sbert": float(np.mean(sb)) if len(sb) else None,
        "seconds_per_image": seconds / max(len(samples), 1),
        "images": len(samples),
    }


def run(
    data: str,
    shots: int,
    seed: int,
    per_type: int | None,
    settings: Any,
    variants: list[str],
    category: str | None = None,
    sbert: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    from agent.inspection import Pipeline
    from evals.detection import draw_references
    from instruct_data.datasets import open_dataset
    from tools.image_io import load_image_set

    dataset = open_dataset(data)
    category = category or dataset.categories()[0]
    refs_paths = draw_references(dataset, category, shots, seed)
    refs = load_image_set([str(p) for p in refs_paths], "reference", print) if refs_paths else []
    samples = choose_samples(dataset, category, per_type, seed)
    scorer = None
    if sbert:
        from evals.dr.text import SbertScorer

        scorer = SbertScorer()
    out: dict[str, Any] = {"data": data, "category": category, "shots": shots, "seed": seed,
                           "question": QUESTION, "variants": {}}
    for name in variants:
        t0 = time.perf_counter()
        pipeline = Pipeline(variant_settings(name, settings), warn=lambda m: None).fit(refs, n_images=1)
        result = run_variant(pipeline, samples, category, scorer, progress)
        result["fit_seconds"] = round(time.perf_counter() - t0 - result["seconds_per_image"] * len(samples), 3)
        result["calibration"] = pipeline.calibration.to_dict() if pipeline.calibration is not None else None
        out["variants"][name] = result
        print(f"{name}: balanced accuracy {result['balanced_accuracy']:.3f}, F1 {result['f1']:.3f}, "
              f"localization {result['localization_hit_rate']:.3f}, ROUGE-L {result['rouge_l']:.3f}, "
              f"SBERT {result['sbert'] if result['sbert'] is None else round(result['sbert'], 3)}, "
              f"{result['seconds_per_image']:.3f} s/image", file=sys.stderr, flush=True)
    out["settings"] = settings.fingerprint()
    return out


def main(argv: list[str] | None = None) -> int:
    from agent.detector_flags import add_decision_args, add_detector_args, inspection_settings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MVTec-layout data root")
    p.add_argument("--category", help="default: the first category")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-type", type=int, help="images per defect type (and of good); default: all")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--brain", default="rule")
    p.add_argument("--no-sbert", action="store_true", help="skip SBERT similarity (no sentence-transformers)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--json", help="write the result here")
    add_detector_args(p)
    add_decision_args(p)
    args = p.parse_args(argv)
    settings = inspection_settings(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; available: {', '.join(VARIANTS)}")
    result = run(args.data, args.shots, args.seed, args.per_type, settings, variants, args.category,
                 sbert=not args.no_sbert, progress=not args.quiet)
    text = json.dumps(result, indent=2, default=float)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
