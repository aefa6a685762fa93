"""Speed and memory of a detector: images per second of `predict` and peak resident memory.

    python -m evals.bench_detector --data ../shared/data/magnetic_tile --shots 4 --images 200

Images are read and decoded before timing (inference only, as `eval` reports it). Peak memory is the
process's maximum resident set size (includes the Python runtime and torch, about 0.4 GB alone).
Runs on synthetic plates when `--data` is not given.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _synthetic(n: int, seed: int) -> list[Image.Image]:
    from instruct_data.synthesis.demo_case import brushed_plate

    rng = np.random.default_rng(seed)
    return [Image.fromarray((brushed_plate(rng, 256) * 255).astype(np.uint8)) for _ in range(n)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="MVTec-layout root; references from train/good, queries from test/")
    p.add_argument("--category", default=None)
    p.add_argument("--detector", default="refmatch")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--images", type=int, default=200, help="number of query images timed")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--repeat", type=int, default=2, help="timed passes; the best is reported")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)

    import yaml

    from evals.detection import draw_references
    from instruct_data.datasets import open_dataset
    from tools.detectors import DETECTORS
    from tools.image_io import load_image

    if args.threads:
        torch.set_num_threads(args.threads)
    options = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    options.setdefault("batch_size", args.batch_size)
    if args.data:
        ds = open_dataset(args.data)
        cat = args.category or ds.categories()[0]
        refs = [load_image(q) for q in draw_references(ds, cat, args.shots, 0)]
        queries = [load_image(s.image_path) for s in ds.test_samples(cat)[: args.images]]
    else:
        refs, queries = _synthetic(args.shots, 0), _synthetic(args.images, 1)
    det = DETECTORS.build(args.detector, **options)
    t0 = time.perf_counter()
    det.fit(refs)
    fit_s = time.perf_counter() - t0
    batch_s = 0.0
    if det.needs_batch:  # a batch detector learns from the queries first; counted, as `eval` does
        t = time.perf_counter()
        det.fit_batch(queries)
        batch_s = time.perf_counter() - t
    det.predict(queries[: args.batch_size])  # warm-up
    best = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        det.predict(queries)
        best = min(best, time.perf_counter() - t)
    best += batch_s
    result = {
        "detector": args.detector,
        "shots": args.shots,
        "images": len(queries),
        "images_per_second": round(len(queries) / best, 2),
        "fit_seconds": round(fit_s, 2),
        "batch_fit_seconds": round(batch_s, 2),  # included in images_per_second
        "peak_rss_MB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "data": str(Path(args.data)) if args.data else "synthetic 256x256 plates",
        "settings": det.settings(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
