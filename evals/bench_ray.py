"""A local `looktwice report` against the same report on Ray (`--ray`): same scores, and how fast.

    python -m evals.bench_ray --inputs ../shared/data/magnetic_tile/test --images 300 \\
        --refs ../shared/data/magnetic_tile/train/good --shots 4 --detector refmatch --workers 2

Takes a seeded sample of `--images` images from the `--inputs` folders (searched recursively), writes
them to a list file, and runs the report twice with the same settings: in this process, then on Ray
(a local instance, or `--address auto` for a running cluster). Checks that every image has the same
verdict and the largest absolute `pred_score` difference (the store keeps 6 decimals, so identical
scores can differ by 1e-6 after rounding). Prints one JSON object:
- `local` / `ray`: wall seconds, setup seconds (references, fitting; on Ray also starting the workers),
  loop images/s after setup (`images_per_second`) and over the whole run (`wall_images_per_second`);
- `ratio`: Ray's loop images/s over the local one (the issue's target: >= 0.8 on 2 workers);
- `overhead_ms_per_image`: Ray's loop seconds per image minus the local ones (negative: Ray faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any


def sample_images(folders: list[str], n: int, seed: int) -> list[Path]:
    """A seeded sample of `n` images from `folders` (all of them when there are fewer)."""
    from tools.image_io import list_images

    found = sorted({p.resolve() for folder in folders for p in list_images(Path(folder), recursive=True)})
    return sorted(random.Random(seed).sample(found, min(n, len(found))))


def reference_folder(refs: str, shots: int, seed: int, root: Path) -> str:
    """`shots` references drawn with the seed, linked into a folder of their own (0: all of `refs`)."""
    if shots <= 0:
        return refs
    chosen = sample_images([refs], shots, seed)
    folder = root / "refs"
    folder.mkdir()
    for p in chosen:
        os.symlink(p, folder / p.name)
    return str(folder)


def run(settings: Any, inspector: Any = None) -> dict[str, Any]:
    from agent.report.runner import run_report

    t0 = time.perf_counter()
    summary = run_report(settings, info=lambda m: None, inspector=inspector)
    if summary.interrupted:  # Ctrl-C or SIGTERM: the report stopped cleanly, so does the benchmark
        raise SystemExit(130)
    wall = time.perf_counter() - t0
    loop = summary.seconds - summary.setup_seconds
    return {
        "wall_seconds": round(wall, 2),
        "setup_seconds": round(summary.setup_seconds, 2),
        "loop_seconds": round(loop, 2),
        "processed": summary.processed,
        "failed": summary.failed,
        "retried": summary.retried,
        "images_per_second": round(summary.processed / loop, 3) if loop > 0 else None,
        "wall_images_per_second": round(summary.processed / wall, 3),
    }


def records(out: Path) -> dict[str, dict[str, Any]]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {row["image_path"]: row.get("record") or {} for row in map(json.loads, lines)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", nargs="+", required=True, help="folders of images (searched recursively)")
    p.add_argument("--images", type=int, default=300, help="images drawn from --inputs with the seed")
    p.add_argument("--refs", required=True, help="folder of good references")
    p.add_argument("--shots", type=int, default=4, help="references drawn from --refs (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detector", default="auto")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="detector setting")
    p.add_argument("--workers", type=int, default=2, help="Ray actors")
    p.add_argument("--address", default=None, help="Ray cluster (auto, HOST:PORT); default: start Ray here")
    p.add_argument("--keep", metavar="DIR", help="keep both reports under DIR (default: a temporary folder)")
    args = p.parse_args(argv)

    import yaml

    from agent.inspection import InspectionSettings
    from agent.report.ray_runner import RaySettings, ray_inspector
    from agent.report.runner import ReportSettings

    options = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-ray-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        images = sample_images(args.inputs, args.images, args.seed)
        listing = root / "images.txt"
        listing.write_text("".join(f"{p}\n" for p in images))
        refs = reference_folder(args.refs, args.shots, args.seed, root)

        def settings(name: str) -> ReportSettings:
            inspection = InspectionSettings(detector=args.detector, detector_options=dict(options))
            return ReportSettings([str(listing)], root / name, refs=refs, inspection=inspection, progress=False)

        local = run(settings("local"))
        ray = run(settings("ray"), ray_inspector(RaySettings(address=args.address, workers=args.workers)))
        a, b = records(root / "local"), records(root / "ray")
        common = sorted(set(a) & set(b))
        diff = max((abs(a[k]["pred_score"] - b[k]["pred_score"]) for k in common if "pred_score" in a[k]), default=None)
        n = len(images)
        result = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "images": n,
            "references": len(os.listdir(refs)) if Path(refs).is_dir() else 1,
            "detector": args.detector,
            "workers": args.workers,
            "local": local,
            "ray": ray,
            "same_images": len(common) == len(a) == len(b) == n,
            "max_abs_score_diff": diff,
            "identical_verdicts": all(a[k].get("verdict") == b[k].get("verdict") for k in common),
            "ratio": round(ray["images_per_second"] / local["images_per_second"], 3)
            if ray["images_per_second"] and local["images_per_second"] else None,
            "wall_ratio": round(local["wall_seconds"] / ray["wall_seconds"], 3),
            "overhead_ms_per_image": round(1000 * (ray["loop_seconds"] - local["loop_seconds"]) / n, 2),
        }
        print(json.dumps(result, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
