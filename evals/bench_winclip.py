"""Speed of WinCLIP zero-shot / few-shot (full-size ViT-B-16-plus-240, random weights) and SAM refinement.

Speed does not depend on weight values, so no checkpoint is needed: the architecture is built with
random weights (`ViT-B-16-plus-240:none`). Prints one JSON object.

    python evals/bench_winclip.py --device cpu --images 4 --shots 0 4
    python evals/bench_winclip.py --device cuda --images 512 --batch 64 --precision bf16 --sam
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import numpy as np
import torch
from PIL import Image


def _images(n: int, size: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_winclip(args: argparse.Namespace) -> list[dict]:
    from tools.detectors.winclip import WinCLIPDetector, WinCLIPPlusDetector

    model_id = f"{args.model}:none"
    results = []
    for shots in args.shots:
        t0 = time.perf_counter()
        cls = WinCLIPPlusDetector if shots else WinCLIPDetector
        det = cls(
            model=model_id,
            device=args.device,
            object_name="object",
            batch_size=args.batch,
            precision=args.precision,
            token_budget=args.token_budget,
        )
        det.fit(_images(shots, args.size, 1))
        load_s = time.perf_counter() - t0
        det.predict(_images(min(args.batch, args.images), args.size, 2))  # warm-up
        images = _images(args.images, args.size, 3)
        _sync(args.device)
        t = time.perf_counter()
        det.predict(images)
        _sync(args.device)
        dt = time.perf_counter() - t
        results.append(
            {
                "what": f"winclip {'zero-shot' if not shots else f'{shots}-shot'}",
                "images": args.images,
                "seconds": round(dt, 3),
                "images_per_s": round(args.images / dt, 3),
                "fit_s": round(load_s, 2),  # the first includes building the model and the text embeddings
            }
        )
    return results


def bench_sam(args: argparse.Namespace, model: Any = None, processor: Any = None, size: int = 1024) -> dict:
    """SAM image embedding and region refinement; default sam-vit-base sizes with random weights
    (`model`/`processor`: another SAM, e.g. the tiny one of a dry run, at `size` px)."""
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.image_processing_sam import SamImageProcessor

    from tools.sam import SamTool

    if model is None:
        torch.manual_seed(0)
        model = SamModel(SamConfig())  # sam-vit-base sizes, random weights
        processor = SamProcessor(image_processor=SamImageProcessor())
    tool = SamTool(sam_model=model, processor=processor, device=args.device)
    image = _images(1, size, 4)[0]
    t = time.perf_counter()
    tool.embed(image)
    _sync(args.device)
    embed_s = time.perf_counter() - t
    mask = np.zeros((size, size), bool)
    box = max(4, size // 25)
    for k in range(args.sam_regions):
        y, x = (60 + 90 * k) * size // 1024, (80 + 70 * k) * size // 1024
        mask[y : y + box, x : x + box] = True
    t = time.perf_counter()
    tool.refine(image, mask)
    _sync(args.device)
    refine_s = time.perf_counter() - t
    return {
        "what": f"sam refine (random weights, {size} px)",
        "image_embedding_s": round(embed_s, 3),
        "regions": args.sam_regions,
        "refine_all_regions_s_after_embedding": round(refine_s, 4),
        "per_region_s_after_embedding": round(refine_s / max(1, args.sam_regions), 4),
    }


def main() -> None:
    from tools.detectors.winclip import resolve_precision

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16-plus-240")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--shots", type=int, nargs="*", default=[0, 4], help="0 = zero-shot; none = skip WinCLIP")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument(
        "--token-budget", type=int, default=None, help="tokens per transformer call (default by device)"
    )
    ap.add_argument("--sam", action="store_true", help="also time SAM-base region refinement")
    ap.add_argument("--sam-regions", type=int, default=4)
    args = ap.parse_args()
    env = {
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "precision": resolve_precision(args.precision, args.device),
        "batch": args.batch,
    }
    out = {"env": env, "winclip": bench_winclip(args)}
    if args.sam:
        out["sam"] = bench_sam(args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
