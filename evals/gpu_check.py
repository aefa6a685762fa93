"""One GPU check: the GPU numbers BENCHMARKS.md lists as unmeasured, in one run, as one JSON file and
one markdown table.

    bash evals/gpu_check.sh [OUT]                                # on a GPU machine: under 8 minutes
    python -m evals.gpu_check --device cuda --out gpu_check/     # the same, without the time guard
    python -m evals.gpu_check --device cpu --tiny --out /tmp/gc  # dry run: same code, tiny random models

Sections, each timed on its own (a failing one is recorded and the next one runs; one that would
start past `--budget-s` is skipped and says so):

- winclip: WinCLIP zero-shot and 4-shot images/s (ViT-B-16-plus-240 with random weights, bf16 on a GPU)
- sam: SAM ViT-B image embedding and region refinement (random weights, 1024 px)
- mllm_loop_bf16, mllm_loop_4bit: the match-of-thought loop (`looktwice ask`: refmatch look, the
  LLaVA brain's Yes/No and explanation) in seconds per image on LLaVA-OneVision-0.5B with random
  weights, bf16 and bitsandbytes 4-bit NF4
- expert: the Look-Twice expert forward alone on the vision tower's features, and its share of the tower

Random weights give the real compute cost, not meaningful answers. Nothing is downloaded: the
0.5B architecture is built from its config and saved to a temporary folder, which the brain loads
through the same `load_model` path as a real checkpoint.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

JSON_NAME = "gpu_check.json"
MD_NAME = "gpu_check.md"
SECTIONS = ("winclip", "sam", "mllm_loop_bf16", "mllm_loop_4bit", "expert")


# ---------------------------------------------------------------------------------------------- models


def write_llava_folder(folder: Path, tiny: bool, device: str = "cpu", dtype: str = "bfloat16") -> Path:
    """A LLaVA-OneVision folder `load_model` reads: the 0.5B architecture (or the tiny test one) with
    random weights, its image processor and tokenizer, and a random `ltfm_expert.safetensors`. The
    0.5B weights are initialised on `device` (seconds on a GPU, minutes on a CPU)."""
    import torch

    from tools.ltfm.checkpoints import EXPERT_FILENAME
    from tools.ltfm.expert import AnomalyExpert, ExpertConfig
    from tools.ltfm.expert_io import save_expert

    torch.manual_seed(0)
    if tiny:
        from agent.mllm.testing import build_tiny_llava

        build_tiny_llava(folder, text_hidden_size=128)  # 4-bit layers need sides that are multiples of 64
        from transformers import AutoConfig

        vision_config = AutoConfig.from_pretrained(folder).vision_config
    else:
        from transformers import LlavaOnevisionForConditionalGeneration

        from agent.mllm.testing import build_bpe_tokenizer, llava_ov_05b_config, ov_image_processor

        config = llava_ov_05b_config()
        with torch.device(device):
            llava = LlavaOnevisionForConditionalGeneration(config).to(getattr(torch, dtype)).eval()
        tokenizer = build_bpe_tokenizer()
        llava.generation_config.pad_token_id = tokenizer.pad_token_id
        llava.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        ov_image_processor().save_pretrained(folder)
        vision_config = config.vision_config
        del llava
    save_expert(AnomalyExpert(ExpertConfig.from_vision_config(vision_config)).eval(), folder / EXPERT_FILENAME)
    return folder


# ---------------------------------------------------------------------------------------------- sections


def run_winclip(args: argparse.Namespace) -> dict[str, Any]:
    from evals.bench_winclip import bench_winclip

    if args.tiny:
        from tools.tiny_models import register_tiny_clip

        model, size = register_tiny_clip(), 48
    else:
        model, size = "ViT-B-16-plus-240", 240
    ns = argparse.Namespace(
        model=model,
        device=args.device,
        images=args.winclip_images,
        batch=args.winclip_batch,
        size=size,
        shots=[0, 4],
        precision="bf16" if args.device.startswith("cuda") else "fp32",
        token_budget=None,
    )
    return {"runs": bench_winclip(ns)}


def run_sam(args: argparse.Namespace) -> dict[str, Any]:
    from evals.bench_winclip import bench_sam

    ns = argparse.Namespace(device=args.device, sam_regions=4)
    if args.tiny:
        from tools.tiny_models import tiny_sam

        model, processor = tiny_sam()
        return bench_sam(ns, model=model.to(args.device), processor=processor, size=64)
    return bench_sam(ns)


def run_mllm_loop(args: argparse.Namespace, folder: Path, quantization: str | None) -> dict[str, Any]:
    """Seconds per image of the match-of-thought loop with the LLaVA brain (`evals.bench.runner`)."""
    import torch

    from agent.brains.llava import LlavaBrain
    from evals.bench.runner import run_bench, synthetic_images

    cuda = args.device.startswith("cuda")
    brain = LlavaBrain(
        model=str(folder),
        dtype="bfloat16",
        device_map=args.device if cuda else None,
        quantization=quantization,
        max_new_tokens=args.new_tokens,
    )
    t = time.perf_counter()
    model = brain.model  # load now, so the timed loop does not include it
    load_s = time.perf_counter() - t
    size = 96 if args.tiny else 512
    result = run_bench(
        synthetic_images(args.loop_images, size, seed=1, scratch_every=3),
        synthetic_images(4, size, seed=0),
        detector="refmatch",
        detector_options={"device": args.device},
        brain=brain,
        device=args.device,
        loop=True,
        warmup=1,
        repeat=1,
        source=f"synthetic {args.loop_images} brushed plates {size}x{size}",
        warn=lambda msg: None,
    )
    keep = (
        "end_to_end_mean_seconds",
        "end_to_end_p95_seconds",
        "images_per_second",
        "detector_predict_mean_seconds",
        "steps",
        "tokens_per_second",
        "cuda_peak_MB",
        "peak_rss_MB",
    )
    out = {k: result[k] for k in keep if k in result}
    out.update(
        model="tiny LLaVA-OneVision (test config)" if args.tiny else "llava-onevision-qwen2-0.5b-ov (random)",
        quantization=quantization or "none (bf16)",
        load_seconds=round(load_s, 3),
        new_tokens=args.new_tokens,
        images=args.loop_images,
    )
    del model, brain
    if cuda:
        torch.cuda.empty_cache()
    return out


def run_expert(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """The expert's forward alone on the tower's features, best of `--repeats`, and its share of the tower."""
    import torch

    from agent.mllm.loading import load_model
    from evals.bench.runner import synthetic_images

    cuda = args.device.startswith("cuda")
    model = load_model(str(folder), dtype="bfloat16", device_map=args.device if cuda else None)
    expert = model.expert
    image = synthetic_images(1, 96 if args.tiny else 768, seed=2)[0]

    def timed(fn: Callable[[], Any]) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t)
        return best

    with torch.no_grad():
        feats = model.vision.features([image])  # warm-up
        tower_s = timed(lambda: model.vision.features([image]))
        levels = feats.levels(expert.config.layer_indices)
        expert_s = timed(lambda: expert(feats.final, levels, feats.split_sizes))
    return {
        "crops": int(sum(feats.split_sizes)),
        "vision_tower_s": round(tower_s, 5),
        "expert_s": round(expert_s, 5),
        "expert_share_of_tower_pct": round(100 * expert_s / max(tower_s, 1e-9), 2),
        "expert_dtype": str(next(expert.parameters()).dtype),
    }


# ---------------------------------------------------------------------------------------------- run


def environment(device: str) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "device": device,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    try:
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    except ImportError:
        env["bitsandbytes"] = None
    return env


def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Run every section within the budget; returns the JSON-ready result."""
    t_start = time.perf_counter()
    result: dict[str, Any] = {
        "what": "gpu check (issue 18)" + (" -- DRY RUN with tiny random models" if args.tiny else ""),
        "tiny": bool(args.tiny),
        "environment": environment(args.device),
        "sections": {},
        "errors": {},
        "skipped": [],
    }
    with tempfile.TemporaryDirectory(prefix="looktwice-gpu-check-") as tmp:
        folder: Path | None = None

        def llava_folder() -> Path:
            nonlocal folder
            if folder is None:
                t = time.perf_counter()
                folder = write_llava_folder(Path(tmp) / "llava", args.tiny, args.device)
                result["llava_folder_write_s"] = round(time.perf_counter() - t, 2)
            return folder

        plan: dict[str, Callable[[], dict[str, Any]]] = {
            "winclip": lambda: run_winclip(args),
            "sam": lambda: run_sam(args),
            "mllm_loop_bf16": lambda: run_mllm_loop(args, llava_folder(), None),
            "mllm_loop_4bit": lambda: run_mllm_loop(args, llava_folder(), "4bit"),
            "expert": lambda: run_expert(args, llava_folder()),
        }
        for name in args.sections:
            if time.perf_counter() - t_start > args.budget_s:
                result["skipped"].append(name)
                continue
            t = time.perf_counter()
            try:
                section = plan[name]()
            except KeyboardInterrupt:  # Ctrl-C, or the time guard of gpu_check.sh: keep what is done
                result["errors"][name] = "interrupted (time limit or Ctrl-C)"
                break
            except Exception as err:  # record and go on: one broken section must not cost the others
                result["errors"][name] = f"{type(err).__name__}: {err}".splitlines()[0]
                result["errors"][name + "_traceback"] = traceback.format_exc(limit=6)
                continue
            section["seconds"] = round(time.perf_counter() - t, 2)
            result["sections"][name] = section
            print(f"gpu_check: {name} done in {section['seconds']} s", flush=True)
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The numbers of one run as a markdown table (what, setting, value)."""
    env = result["environment"]
    where = env.get("gpu") or f"CPU ({env['cpu_threads']} threads)"
    lines = [
        f"### {result['what']}: {where}, torch {env['torch']}, {result['seconds']} s in all",
        "",
        "| what | setting | value |",
        "|---|---|---:|",
    ]
    s = result["sections"]
    for run in s.get("winclip", {}).get("runs", []):
        lines.append(f"| {run['what']} | batch, {run['images']} images | {run['images_per_s']} images/s |")
    if "sam" in s:
        sam = s["sam"]
        lines.append(f"| {sam['what']} | image embedding | {sam['image_embedding_s']} s |")
        lines.append(f"| {sam['what']} | per region after embedding | {sam['per_region_s_after_embedding']} s |")
    for key in ("mllm_loop_bf16", "mllm_loop_4bit"):
        if key in s:
            m = s[key]
            mem = f", CUDA peak {m['cuda_peak_MB']} MB" if "cuda_peak_MB" in m else ""
            lines.append(
                f"| match-of-thought loop, {m['model']} | {m['quantization']}, {m['new_tokens']} new tokens"
                f"{mem} | {m['end_to_end_mean_seconds']} s / image |"
            )
    if "expert" in s:
        e = s["expert"]
        lines.append(f"| Look-Twice expert forward | {e['crops']} crops, {e['expert_dtype']} | {e['expert_s']} s |")
        lines.append(f"| ... share of the vision tower | tower {e['vision_tower_s']} s | {e['expert_share_of_tower_pct']} % |")
    for name, err in result["errors"].items():
        if not name.endswith("_traceback"):
            lines.append(f"| {name} | FAILED | {err} |")
    for name in result["skipped"]:
        lines.append(f"| {name} | skipped: over the time budget | - |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu (default cuda)")
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny random models (for a CPU, in seconds)")
    ap.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no section after this many seconds")
    ap.add_argument("--winclip-images", type=int, default=None, help="images per WinCLIP run (256; tiny 4)")
    ap.add_argument("--winclip-batch", type=int, default=None, help="WinCLIP batch (64; tiny 2)")
    ap.add_argument("--loop-images", type=int, default=None, help="images through the loop (16; tiny 2)")
    ap.add_argument("--new-tokens", type=int, default=None, help="explanation tokens per image (64; tiny 8)")
    ap.add_argument("--repeats", type=int, default=5, help="best of N for the expert forward")
    args = ap.parse_args(argv)
    defaults = {"winclip_images": (256, 4), "winclip_batch": (64, 2), "loop_images": (16, 2), "new_tokens": (64, 8)}
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; for a dry run use --device cpu --tiny")
            return 2
    result = run_check(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(result, indent=2), encoding="utf-8")
    table = markdown_table(result)
    (out / MD_NAME).write_text(table, encoding="utf-8")
    print(table)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
