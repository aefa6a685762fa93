"""One GPU check: the GPU figures of the LLaVA path that BENCHMARKS.md lists as unmeasured, in one
run, as one JSON file and one markdown table, and a check that fails when the model path does not work.

    bash evals/gpu_check.sh [OUT] [--model FOLDER-OR-ID]           # on a GPU machine: under 8 minutes
    python -m evals.gpu_check --device cuda --model /models/anomaly-ov --out gpu_check/
    python -m evals.gpu_check --device cpu --tiny --out /tmp/gc     # dry run: same code, tiny models

`--model` runs a real LLaVA-OneVision (+ expert) folder or hub id; without it the 0.5B architecture
(or, with --tiny, the tiny test model) is built with random weights and a random expert, marked so
that its tokens are timed too (random weights give the compute cost, not meaningful answers).

Sections, each timed on its own (a failing one is recorded and the next one runs; one that would
start past `--budget-s` is skipped and says so):

- winclip, sam: WinCLIP zero-/4-shot images/s and SAM (random weights);
- ask_bf16, ask_4bit: `looktwice ask` per image with the LLaVA brain (look, match, decide, P(Yes),
  explanation, answer): seconds per image p50/p95, generated tokens/s, peak GPU memory, and how many
  brain calls fell back to the rule brain or failed;
- report: `looktwice report` on a folder with the LLaVA brain, through the command: p50/p95 per image;
- expert: the Look-Twice expert's forward alone, and its share of the vision tower;
- train_stage1, train_stage2_lora, train_stage2_qlora: one optimizer step each (model load included),
  peak memory and seconds;
- vllm: images/s and tokens/s through vLLM with the LookTwice plugin, when vLLM is installed.

Exit code 1 when any section failed or any brain call fell back or failed (`fallbacks` per section in
gpu_check.json); 0 otherwise.
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

from evals import gpu_check_sections as sections

JSON_NAME = "gpu_check.json"
MD_NAME = "gpu_check.md"
SECTIONS = (
    "winclip",
    "sam",
    "ask_bf16",
    "ask_4bit",
    "report",
    "expert",
    "train_stage1",
    "train_stage2_lora",
    "train_stage2_qlora",
    "vllm",
)
QUESTION = "Is there any defect in this image? Where is it?"


# ---------------------------------------------------------------------------------------------- models


def write_llava_folder(folder: Path, tiny: bool, device: str = "cpu", dtype: str = "bfloat16") -> Path:
    """A LLaVA-OneVision folder `load_model` reads: the 0.5B architecture (or the tiny test one) with
    random weights, its processor and tokenizer, and a random expert, marked as the one the LLM reads
    (so that its tokens are timed; the weights are random either way). The 0.5B weights are
    initialised on `device` (seconds on a GPU, minutes on a CPU)."""
    import torch

    from tools.ltfm.checkpoints import EXPERT_FILENAME
    from tools.ltfm.expert import AnomalyExpert, ExpertConfig
    from tools.ltfm.expert_io import save_expert
    from tools.ltfm.expert_marker import mark_trained_with_expert

    torch.manual_seed(0)
    if tiny:
        from agent.mllm.testing import build_tiny_llava

        build_tiny_llava(folder, text_hidden_size=128, speaks=True)  # 4-bit layers: sides multiple of 64
        from transformers import AutoConfig

        vision_config = AutoConfig.from_pretrained(folder).vision_config
    else:
        from transformers import LlavaOnevisionForConditionalGeneration

        from agent.mllm.model import LookTwiceModel
        from agent.mllm.testing import build_bpe_tokenizer, llava_ov_05b_config, ov_image_processor

        config = llava_ov_05b_config()
        with torch.device(device):
            llava = LlavaOnevisionForConditionalGeneration(config).to(getattr(torch, dtype)).eval()
        tokenizer = build_bpe_tokenizer()
        llava.generation_config.pad_token_id = tokenizer.pad_token_id
        LookTwiceModel(llava, ov_image_processor(), tokenizer).save_pretrained(str(folder))
        vision_config = config.vision_config
        del llava
    save_expert(AnomalyExpert(ExpertConfig.from_vision_config(vision_config)).eval(), folder / EXPERT_FILENAME)
    mark_trained_with_expert(folder, EXPERT_FILENAME, "gpu_check: random weights, to time the expert's tokens")
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


def run_expert(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """The expert's forward alone on the tower's features, best of `--repeats`, and its share of the tower."""
    import torch

    from agent.mllm.loading import load_model
    from evals.bench.runner import synthetic_images

    cuda = args.device.startswith("cuda")
    model = load_model(str(folder), dtype="bfloat16" if cuda else "float32", device_map={"": args.device})
    expert = model.expert
    if expert is None:
        return {"not_run": f"{folder} has no expert ({model.expert_note})"}
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
    what = "gpu check (issue 24)" + (" -- DRY RUN with tiny models" if args.tiny else "")
    result: dict[str, Any] = {
        "what": what,
        "tiny": bool(args.tiny),
        "model": args.model or ("tiny random LLaVA-OneVision" if args.tiny else "llava-onevision-qwen2-0.5b-ov (random)"),
        "environment": environment(args.device),
        "sections": {},
        "errors": {},
        "skipped": [],
    }
    with tempfile.TemporaryDirectory(prefix="looktwice-gpu-check-") as tmp:
        folder: Path | None = None
        data: dict[str, Path] = {}

        def llava_folder() -> Path:
            nonlocal folder
            if folder is None:
                if args.model:
                    from tools.ltfm.checkpoints import resolve_model_path

                    folder = Path(resolve_model_path(args.model))
                else:
                    t = time.perf_counter()
                    folder = write_llava_folder(Path(tmp) / "llava", args.tiny, args.device)
                    result["llava_folder_write_s"] = round(time.perf_counter() - t, 2)
            return folder

        def training_data() -> dict[str, Path]:
            if not data:
                data.update(sections.training_data(Path(tmp) / "train"))
            return data

        plan: dict[str, Callable[[], dict[str, Any]]] = {
            "winclip": lambda: run_winclip(args),
            "sam": lambda: run_sam(args),
            "ask_bf16": lambda: sections.run_ask(args, llava_folder(), None),
            "ask_4bit": lambda: sections.run_ask(args, llava_folder(), "4bit"),
            "report": lambda: sections.run_report(args, llava_folder()),
            "expert": lambda: run_expert(args, llava_folder()),
            "train_stage1": lambda: sections.run_train(args, llava_folder(), "expert", None, training_data),
            "train_stage2_lora": lambda: sections.run_train(args, llava_folder(), "llm", "lora", training_data),
            "train_stage2_qlora": lambda: sections.run_train(args, llava_folder(), "llm", "qlora", training_data),
            "vllm": lambda: sections.run_vllm(args, llava_folder()),
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
            fell = section.get("fallbacks", 0) + section.get("brain_errors", 0)
            print(f"gpu_check: {name} done in {section['seconds']} s" + (f" ({fell} brain calls fell back)" if fell else ""), flush=True)
    result["fallbacks"] = {n: s["fallbacks"] for n, s in result["sections"].items() if "fallbacks" in s}
    result["seconds"] = round(time.perf_counter() - t_start, 2)
    return result


def failed(result: dict[str, Any]) -> list[str]:
    """Why the check fails: sections that raised, and sections whose brain calls fell back or failed."""
    why = [f"{n}: {e}" for n, e in result["errors"].items() if not n.endswith("_traceback")]
    for name, s in result["sections"].items():
        fell = int(s.get("fallbacks", 0)) + int(s.get("brain_errors", 0))
        if fell:
            why.append(f"{name}: {fell} of {s.get('brain_calls', '?')} brain calls fell back or failed")
    return why


def markdown_table(result: dict[str, Any]) -> str:
    """The numbers of one run as a markdown table (what, setting, value)."""
    env = result["environment"]
    where = env.get("gpu") or f"CPU ({env['cpu_threads']} threads)"
    lines = [
        f"### {result['what']}: {where}, torch {env['torch']}, model {result['model']}, {result['seconds']} s in all",
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
    for key in ("ask_bf16", "ask_4bit", "report"):
        if key in s and "seconds_per_image_p50" in s[key]:
            m = s[key]
            mem = _memory(m)
            toks = f", {m['tokens_per_second']} tokens/s" if m.get("tokens_per_second") else ""
            setting = f"{m.get('quantization', 'none')}, {m.get('images')} images{mem}{toks}"
            lines.append(
                f"| {key.replace('_', ' ')} (LLaVA brain) | {setting} | p50 {m['seconds_per_image_p50']} s, "
                f"p95 {m['seconds_per_image_p95']} s / image; fallbacks {m['fallbacks']} of {m['brain_calls']} |"
            )
    if "expert" in s and "expert_s" in s["expert"]:
        e = s["expert"]
        lines.append(f"| Look-Twice expert forward | {e['crops']} crops, {e['expert_dtype']} | {e['expert_s']} s |")
        lines.append(f"| ... share of the vision tower | tower {e['vision_tower_s']} s | {e['expert_share_of_tower_pct']} % |")
    for key in ("train_stage1", "train_stage2_lora", "train_stage2_qlora"):
        if key in s:
            t = s[key]
            lines.append(f"| {key.replace('_', ' ')}: one step ({t['config']}) | {t['seconds_with_load']} s with the load | {_memory(t, lead='')} |")
    if "vllm" in s:
        v = s["vllm"]
        value = v.get("not_run") or f"{v['images_per_second']} images/s, {v['tokens_per_second']} tokens/s"
        lines.append(f"| vLLM with the LookTwice plugin | {v.get('images', '-')} images | {value} |")
    for name, err in result["errors"].items():
        if not name.endswith("_traceback"):
            lines.append(f"| {name} | FAILED | {err} |")
    for name in result["skipped"]:
        lines.append(f"| {name} | skipped: over the time budget | - |")
    return "\n".join(lines) + "\n"


def _memory(m: dict[str, Any], lead: str = ", ") -> str:
    if "cuda_peak_MB" in m:
        return f"{lead}CUDA peak {m['cuda_peak_MB']} MB"
    if "peak_rss_MB" in m:
        return f"{lead}process peak RSS {m['peak_rss_MB']} MB"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:1, ... or cpu (default cuda)")
    ap.add_argument("--model", help="a LLaVA-OneVision (+ expert) folder or hub id to run (default: random weights)")
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny random models (for a CPU, in seconds)")
    ap.add_argument("--out", default="gpu_check", help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--budget-s", type=float, default=420.0, help="start no section after this many seconds")
    ap.add_argument("--winclip-images", type=int, default=None, help="images per WinCLIP run (256; tiny 4)")
    ap.add_argument("--winclip-batch", type=int, default=None, help="WinCLIP batch (64; tiny 2)")
    ap.add_argument("--loop-images", type=int, default=None, help="images per ask / report / vLLM section (16; tiny 2)")
    ap.add_argument("--new-tokens", type=int, default=None, help="explanation tokens per image (64; tiny 8)")
    ap.add_argument("--repeats", type=int, default=5, help="best of N for the expert forward")
    args = ap.parse_args(argv)
    defaults = {"winclip_images": (256, 4), "winclip_batch": (64, 2), "loop_images": (16, 2), "new_tokens": (64, 8)}
    for key, (full, tiny) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, tiny if args.tiny else full)
    args.question = QUESTION
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; for a dry run use --device cpu --tiny")
            return 2
    result = run_check(args)
    why = failed(result)
    result["failed"] = why
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(result, indent=2), encoding="utf-8")
    table = markdown_table(result)
    (out / MD_NAME).write_text(table, encoding="utf-8")
    print(table)
    for line in why:
        print(f"gpu_check: FAILED {line}")
    return 1 if why else 0


if __name__ == "__main__":
    raise SystemExit(main())
