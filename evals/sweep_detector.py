"""Quick detector comparisons on a subsample of the test set: the loop used to tune `refmatch`.

    python -m evals.sweep_detector --data ../shared/data/magnetic_tile --seed 0 --every 2 \\
        --set resolution=192 --set reflect_pad=32

Scores every `--every`-th test image (all of them with 1), reports image AUROC, pixel AUROC and AUPRO
(maps and masks at a long side of `--metric-size`), per-defect image AUROC and accuracy / precision /
recall at the calibrated threshold, as one JSON line. Faster than `looktwice eval` and meant for
relative comparisons; the numbers in BENCHMARKS.md that are marked "half" come from this script with
`--every 2 --metric-size 128` and one torch thread per run (two runs side by side).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MVTec-layout root")
    p.add_argument("--category", default=None, help="default: the first category")
    p.add_argument("--detector", default="refmatch")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--every", type=int, default=2, help="score every N-th test image")
    p.add_argument("--metric-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="detector setting")
    args = p.parse_args(argv)

    import yaml

    from evals.detection import _auroc_by_defect, _resize_for_metrics, draw_references
    from evals.metrics import binary_scores_at, image_auroc, pixel_metrics
    from instruct_data.datasets import open_dataset
    from tools.detectors import DETECTORS
    from tools.image_io import load_image

    torch.set_num_threads(args.threads)
    options = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    ds = open_dataset(args.data)
    cat = args.category or ds.categories()[0]
    refs = [load_image(q) for q in draw_references(ds, cat, args.shots, args.seed)]
    samples = ds.test_samples(cat)[:: args.every]
    det = DETECTORS.build(args.detector, **options)
    det.fit(refs)
    scores, labels, preds, maps, masks = [], [], [], [], []
    seconds = 0.0
    for i in range(0, len(samples), 8):
        batch = samples[i : i + 8]
        images = [load_image(s.image_path) for s in batch]
        t = time.perf_counter()
        outputs = det.predict(images)
        seconds += time.perf_counter() - t
        for s, im, o in zip(batch, images, outputs, strict=True):
            scores.append(o.raw_score)
            labels.append(s.gt_label)
            preds.append(o.pred_score > det.threshold)
            gt = s.load_mask(im.size)
            if gt is None:
                gt = np.full(im.size[::-1], bool(s.gt_label))
            maps.append(_resize_for_metrics(o.anomaly_map, args.metric_size, nearest=False))
            masks.append(_resize_for_metrics(gt, args.metric_size, nearest=True))
    px = pixel_metrics(masks, maps)
    at = binary_scores_at(np.array(labels), np.array(preds))
    result = {
        "settings": options,
        "seed": args.seed,
        "images": len(samples),
        "image_AUROC": round(image_auroc(labels, scores), 4),
        "pixel_AUROC": round(px["pixel_auroc"], 4),
        "pixel_AUPRO": round(px["pixel_aupro"], 4),
        "per_defect_image_AUROC": {k: round(v, 3) for k, v in _auroc_by_defect(samples, np.array(scores)).items()},
        "at_threshold": {k: round(at[k], 3) for k in ("accuracy", "precision", "recall")},
        "images_per_second": round(len(samples) / seconds, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
