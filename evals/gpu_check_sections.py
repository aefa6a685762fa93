"""The sections of the GPU check (`evals.gpu_check`), one function each, returning JSON-ready figures.

Each brain section counts its brain calls and how many of them fell back to the rule brain or failed
(`brain_failures` over the records' traces): the check exists to show that the LLaVA path works on the
machine, so a section whose model calls fell back is a failure, not a pass with the rule brain's text.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: the steps of a trace in which the brain is called (`agent.inspection`)
BRAIN_STEPS = ("explain", "answer", "first_opinion", "brain_judgement", "propose_rules")


def brain_failures(traces: Sequence[Sequence[dict[str, Any]]]) -> dict[str, int]:
    """Brain calls in `traces`, how many fell back to the rule brain and how many gave no answer."""
    calls = fallbacks = errors = 0
    for trace in traces:
        for entry in trace:
            if entry.get("step") not in BRAIN_STEPS or entry.get("skipped"):
                continue
            calls += 1
            if entry.get("fallback"):
                fallbacks += 1
            elif entry.get("error"):
                errors += 1
    return {"brain_calls": calls, "fallbacks": fallbacks, "brain_errors": errors}


def percentiles(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(list(seconds), dtype=float)
    if not values.size:
        return {}
    return {
        "seconds_per_image_p50": round(float(np.percentile(values, 50)), 4),
        "seconds_per_image_p95": round(float(np.percentile(values, 95)), 4),
        "seconds_per_image_mean": round(float(values.mean()), 4),
    }


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class Memory:
    """Peak CUDA memory of a block (reset at the start), or the process's peak RSS on a CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def __enter__(self) -> Memory:
        if self.cuda:
            import torch

            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def figures(self) -> dict[str, float]:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return {"cuda_peak_MB": round(torch.cuda.max_memory_allocated() / 2**20, 1)}
        return {"peak_rss_MB": peak_rss_mb(), "memory_note": "CPU: the process's peak resident memory so far"}


def brain_spec(folder: Path, device: str, quant: str | None = None) -> str:
    spec = f"llava:{folder}?device={device}&dtype=auto"
    return spec + (f"&quant={quant}" if quant else "")


def case_images(n: int, size: int, seed: int) -> list[Any]:
    from evals.bench.runner import synthetic_images

    return synthetic_images(n, size, seed=seed, scratch_every=3)


# ------------------------------------------------------------------------------------------ sections


def run_ask(args: argparse.Namespace, folder: Path, quant: str | None) -> dict[str, Any]:
    """`looktwice ask` per image with the LLaVA brain: the loop (refmatch look, match, decision), P(Yes),
    the explanation and the answer; seconds per image, generated tokens/s, peak memory, fallbacks."""
    from agent.brains.spec import build_brain
    from agent.inspection import InspectionSettings, Pipeline

    size = 96 if args.tiny else 512
    images = case_images(args.loop_images, size, seed=1)
    refs = case_images(4, size, seed=0)
    brain = build_brain(brain_spec(folder, args.device, quant))
    brain.max_new_tokens = args.new_tokens
    with Memory(args.device) as memory:
        t0 = time.perf_counter()
        model = brain.load()
        load_s = time.perf_counter() - t0
        settings = InspectionSettings("refmatch", {"device": args.device}, brain_weight=0.0)
        pipeline = Pipeline(settings, warn=lambda _m: None, brain=brain).fit(refs, n_images=1)
        pipeline.inspect("warmup.png", images[0], question=args.question)  # kernels, allocations
        seconds, traces, tokens, token_s = [], [], 0, 0.0
        for i, image in enumerate(images):
            t = time.perf_counter()
            record = pipeline.inspect(f"image_{i:03d}.png", image, question=args.question)
            seconds.append(time.perf_counter() - t)
            traces.append(record.trace)
            for entry in record.trace:
                call = entry.get("model_call") or {}
                if call.get("new_tokens"):
                    tokens += int(call["new_tokens"])
                    token_s += float(call.get("seconds") or 0.0)
    out: dict[str, Any] = {
        "model": str(folder),
        "quantization": quant or "none",
        "device": str(model.device),
        "dtype": str(model.embed_dtype),
        "expert_tokens": bool(model.expert_tokens),
        "images": len(images),
        "new_tokens": args.new_tokens,
        "load_seconds": round(load_s, 3),
        **percentiles(seconds),
        "tokens_per_second": round(tokens / token_s, 2) if token_s > 0 else None,
        **memory.figures(),
        **brain_failures(traces),
    }
    del pipeline, brain, model
    _free(args.device)
    return out


def run_report(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """`looktwice report` on a folder with the LLaVA brain, through the report's runner (what the
    command runs): seconds per image from the report's own timings, fallbacks from the records' traces."""
    from agent.inspection import InspectionSettings
    from agent.report.runner import ReportSettings, run_report

    size = 96 if args.tiny else 512
    with tempfile.TemporaryDirectory(prefix="looktwice-gpu-report-") as tmp:
        root = Path(tmp)
        for sub, images in (("queries", case_images(args.loop_images, size, 3)), ("refs", case_images(4, size, 0))):
            (root / sub).mkdir()
            for i, image in enumerate(images):
                image.save(root / sub / f"{sub}_{i:03d}.png")
        inspection = InspectionSettings("refmatch", {"device": args.device}, brain_spec(folder, args.device))
        settings = ReportSettings(
            inputs=[str(root / "queries")], out=root / "out", refs=str(root / "refs"), inspection=inspection,
            progress=False,
        )
        with Memory(args.device) as memory:
            t0 = time.perf_counter()
            summary = run_report(settings, info=lambda _m: None)
            wall = time.perf_counter() - t0
        results = root / "out" / "results.jsonl"
        rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    if summary.failed:
        raise RuntimeError(f"the report failed on {summary.failed} of {summary.inputs} images")
    traces = [(r.get("record") or {}).get("trace") or [] for r in rows]
    seconds = [float(r["timings"]["total"]) for r in rows if (r.get("timings") or {}).get("total") is not None]
    _free(args.device)
    return {
        "model": str(folder),
        "images": len(rows),
        "wall_seconds": round(wall, 2),
        **percentiles(seconds),
        **memory.figures(),
        **brain_failures(traces),
    }


def run_train(args: argparse.Namespace, folder: Path, stage: str, method: str | None, data: Callable[[], dict]) -> dict[str, Any]:
    """One optimizer step of stage 1 (the expert) or stage 2 (LoRA / QLoRA) on a few synthetic plates:
    its peak memory (model load included: what must fit) and seconds."""
    from agent.mllm.train import apply_overrides, load_config, train_stage

    sets = data()
    if stage == "expert":
        name, fields = ("tiny-expert" if args.tiny else "expert"), {"data": [str(sets["plates"])]}
    else:
        name = "tiny-llm" if args.tiny else ("llm-qlora" if method == "qlora" else "llm-lora")
        fields = {"data": [str(sets["instruct"])], "method": method}
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    with tempfile.TemporaryDirectory(prefix="looktwice-gpu-train-") as tmp:
        cfg = apply_overrides(
            load_config(name, stage=stage),
            {"model": str(folder), "out": tmp, "max_steps": 1, "batch_size": 2, "device": device,
             "progress": False, "save_every": 1000, **fields},
        )
        with Memory(args.device) as memory:
            t0 = time.perf_counter()
            result = train_stage(cfg)
            seconds = time.perf_counter() - t0
    _free(args.device)
    return {
        "config": name,
        "method": method or "expert",
        "steps": result.steps,
        "seconds_with_load": round(seconds, 2),
        "loss": round(float(result.losses[-1]), 4) if result.losses else None,
        **memory.figures(),
    }


def training_data(root: Path) -> dict[str, Path]:
    """A few synthetic plates (MVTec layout) and their LLaVA-JSON conversations, made once."""
    from instruct_data.instruct import InstructSettings, build_instruct
    from instruct_data.synthesis.plates import make_plate_dataset

    plates = root / "plates"
    if not (root / "instruct" / "instruct.json").is_file():
        make_plate_dataset(plates, train_good=8, test_good=4, test_bad=8, seed=5)
        build_instruct(InstructSettings(out=str(root / "instruct"), data=str(plates), per_image=1))
    return {"plates": plates, "instruct": root / "instruct" / "instruct.json"}


def run_vllm(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """vLLM throughput on the same folder (the LookTwice plugin keeps the expert's tokens): P(Yes)
    prompts and explanations for `--loop-images` images, images/s and generated tokens/s."""
    if importlib.util.find_spec("vllm") is None:
        return {"not_run": "vLLM is not installed here (pip install vllm, then looktwice with --no-deps)"}
    from vllm import LLM, SamplingParams

    from agent.mllm.chat_format import detection_question, format_question

    images = case_images(args.loop_images, 96 if args.tiny else 512, seed=4)
    llm = LLM(model=str(folder), dtype="auto", max_model_len=8192, gpu_memory_utilization=0.5, limit_mm_per_prompt={"image": 1})
    requests = [{"prompt": format_question(detection_question()), "multi_modal_data": {"image": im}} for im in images]
    params = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    llm.generate(requests[:1], params)  # warm-up
    t0 = time.perf_counter()
    outputs = llm.generate(requests, params)
    seconds = time.perf_counter() - t0
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    del llm
    _free(args.device)
    return {"images": len(images), "seconds": round(seconds, 3), "images_per_second": round(len(images) / seconds, 2),
            "tokens_per_second": round(tokens / seconds, 1), "new_tokens": args.new_tokens}


def _free(device: str) -> None:
    import gc

    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


__all__ = [
    "BRAIN_STEPS",
    "brain_failures",
    "percentiles",
    "run_ask",
    "run_report",
    "run_train",
    "run_vllm",
    "training_data",
]
