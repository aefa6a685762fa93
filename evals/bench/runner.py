"""Per-stage and end-to-end timings of one inspection set-up (`looktwice bench`).

Measures, in one process:
- load: the brain (`brain_load_seconds`) and the detector's build + fit on the references
  (`detector_load_seconds`, of which `detector_fit_seconds`);


  end-to-end seconds; `images_per_second` over the timed runs;
- generation tokens/s when the brain reports the tokens it generated (`last_call`), else omitted;
- peak resident memory of the process (`resource`), and the CUDA peak when run on a GPU.
Warm-up runs (`warmup`) are run first and left out of every count and time. Each run is appended as one
JSON line (with a machine description) to a JSONL file, and a markdown summary is written next to it.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

DEFAULT_QUESTION = "Is there any defect in this image?"


def synthetic_images(n: int, size: int = 256, seed: int = 0, scratch_every: int = 0) -> list[Image.Image]:
    """`n` brushed plates (`instruct_data.synthesis.demo_case`); every `scratch_every`-th has a scratch."""
    from instruct_data.synthesis.demo_case import brushed_plate, draw_scratch

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = brushed_plate(rng, size)
        if scratch_every and i % scratch_every == 0:
            img, _ = draw_scratch(img, rng)
        out.append(Image.fromarray((img * 255).astype(np.uint8)))
    return out


def cpu_model() -> str | None:
    """The CPU's model name from /proc/cpuinfo, or None where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")) and ":" in line:
            return line.split(":", 1)[1].strip() or None
    return None


def machine_description(device: str | None = None) -> dict[str, Any]:
    """CPU model, cores, torch threads and version, and the CUDA device name when `device` is CUDA."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model() or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if device and device.startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info


def peak_rss_mb() -> float:
    """The process's maximum resident set size in MB (ru_maxrss is KB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if platform.system() == "Darwin" else 1024), 1)


def generated_tokens(model_call: dict[str, Any]) -> int | None:
    """Tokens a brain generated in one call, from its `last_call` (OpenAI `usage` or `new_tokens`)."""
    usage = model_call.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int | float):
        return int(usage["completion_tokens"])
    for key in ("new_tokens", "generated_tokens", "completion_tokens"):
        if isinstance(model_call.get(key), int | float):
            return int(model_call[key])
    return None


def summarize_traces(
    traces: Sequence[Sequence[dict[str, Any]]],
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per step: calls, total seconds and mean seconds per run; and the generation totals (may be empty)."""
    runs = max(len(traces), 1)
    steps: dict[str, dict[str, Any]] = {}
    tokens, token_seconds = 0, 0.0
    for trace in traces:
        for entry in trace:
            s = steps.setdefault(entry["step"], {"calls": 0, "total_seconds": 0.0})
            s["calls"] += 1
            s["total_seconds"] += float(entry.get("seconds", 0.0))
            call = entry.get("model_call")
            if isinstance(call, dict):
                n = generated_tokens(call)
                if n is not None:
                    tokens += n
                    token_seconds += float(call.get("seconds") or entry.get("seconds") or 0.0)
    for s in steps.values():
        s["mean_seconds"] = round(s["total_seconds"] / runs, 5)
        s["total_seconds"] = round(s["total_seconds"], 5)
    gen: dict[str, Any] = {}
    if tokens and token_seconds > 0:
        gen = {"generated_tokens": tokens, "tokens_per_second": round(tokens / token_seconds, 2)}
    return steps, gen


def run_bench(
    images: Sequence[Image.Image],
    references: Sequence[Image.Image],
    *,
    detector: str = "refmatch",
    detector_options: dict[str, Any] | None = None,
    brain: str | Any = "rule",
    device: str | None = None,
    loop: bool = False,
    warmup: int = 2,
    repeat: int = 1,
    question: str = DEFAULT_QUESTION,
    source: str = "",
    warn: Callable[[str], None] = print,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Time the set-up and `repeat` passes over `images` (after `warmup` untimed runs); one result dict.

    `brain` is a `--brain` spec, or a built brain (e.g. a LlavaBrain on a GPU with 4-bit weights).
    Raises the brain's / detector's set-up errors (`BrainError`, `DetectorError`, ValueError, KeyError).
    """
    import torch

    from agent.brains.spec import build_brain
    from agent.inspection import InspectionSettings, MatchSettings, Pipeline, ZoomRecheckSettings

    if not images:
        raise ValueError("no images to time")
    options = dict(detector_options or {})
    cuda = bool(device and device.startswith("cuda"))
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    t_all = time.perf_counter()
    t = time.perf_counter()
    the_brain = build_brain(brain) if isinstance(brain, str) else brain  # or a built one (GPU check)
    brain_load = time.perf_counter() - t
    t = time.perf_counter()
    settings = InspectionSettings(
        detector, options, zoom_recheck=ZoomRecheckSettings(enabled=loop), match=MatchSettings(enabled=loop),
        trace="full" if loop else "brief",
    )
    pipeline = Pipeline(settings, warn=warn, brain=the_brain).fit(references, n_images=1)
    detector_load = time.perf_counter() - t

    def one(i: int) -> list[dict[str, Any]]:
        return pipeline.inspect(f"image_{i:05d}", images[i], question=question if loop else None).trace

    load_seconds = time.perf_counter() - t_all

    for w in range(warmup):
        one(w % len(images))
        if progress is not None:
            progress(1)

    traces, per_image = [], []
    t_timed = time.perf_counter()
    for _ in range(repeat):
        for i in range(len(images)):
            t = time.perf_counter()
            traces.append(one(i))
            per_image.append(time.perf_counter() - t)
            if progress is not None:
                progress(1)  # a bar's update costs microseconds, next to milliseconds per image
    timed = time.perf_counter() - t_timed
    if cuda:
        torch.cuda.synchronize()

    steps, gen = summarize_traces(traces)
    look = [sum(float(e["seconds"]) for e in tr if e["step"] == "look") for tr in traces]
    result: dict[str, Any] = {
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "loop" if loop else "inspect",
        "detector": pipeline.detector.name,
        "detector_requested": detector,
        "detector_options": options,
        "brain": getattr(the_brain, "name", brain),
        "brain_spec": brain if isinstance(brain, str) else the_brain.settings(),
        "device": device or "cpu",
        "source": source,
        "images": len(images),
        "references": len(references),
        "warmup_runs": warmup,
        "repeat": repeat,
        "timed_runs": len(traces),
        "load_seconds": round(load_seconds, 4),
        "brain_load_seconds": round(brain_load, 4),
        "detector_load_seconds": round(detector_load, 4),
        "detector_fit_seconds": round(float(pipeline.fit_seconds), 4),
        "detector_predict_mean_seconds": round(float(np.mean(look)), 5),
        "end_to_end_mean_seconds": round(float(np.mean(per_image)), 5),
        "end_to_end_p95_seconds": round(float(np.percentile(per_image, 95)), 5),
        "timed_seconds": round(timed, 4),
        "images_per_second": round(len(traces) / max(timed, 1e-9), 3),
        "steps": steps,
        **gen,
        "peak_rss_MB": peak_rss_mb(),
    }
    if cuda:
        result["cuda_peak_MB"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    result["machine"] = machine_description(device)
    return result


def markdown_summary(result: dict[str, Any]) -> str:
    """A markdown table of one result: set-up, per-step and end-to-end seconds, throughput, memory."""
    m = result.get("machine", {})
    lines = [
        f"### bench {result['timestamp']}: {result['mode']}, detector {result['detector']}, "
        f"brain {result['brain']}, {result['device']}",
        "",
        f"{result['images']} images ({result['source']}), {result['references']} references, "
        f"{result['warmup_runs']} warm-up run(s) excluded, {result['timed_runs']} timed run(s). "
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('torch_threads')} torch threads, "
        f"torch {m.get('torch')}" + (f", {m['cuda_device']}" if m.get("cuda_device") else "") + ".",
        "",
        "| stage | calls | mean s / image | total s |",
        "|---|---:|---:|---:|",
        f"| brain load | 1 | - | {result['brain_load_seconds']:.4f} |",
        f"| detector load + fit | 1 | - | {result['detector_load_seconds']:.4f} |",
    ]
    for name, s in result["steps"].items():
        lines.append(f"| {name} | {s['calls']} | {s['mean_seconds']:.5f} | {s['total_seconds']:.4f} |")
    lines.append(
        f"| **end to end** | {result['timed_runs']} | {result['end_to_end_mean_seconds']:.5f} | "
        f"{result['timed_seconds']:.4f} |"
    )
    lines += ["", "| images/s | peak RSS MB | tokens/s |", "|---:|---:|---:|"]
    tok = result.get("tokens_per_second")
    cuda = f" (CUDA {result['cuda_peak_MB']})" if "cuda_peak_MB" in result else ""
    lines.append(f"| {result['images_per_second']} | {result['peak_rss_MB']}{cuda} | {tok if tok else '-'} |")
    return "\n".join(lines) + "\n"


def save_result(result: dict[str, Any], out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Append `result` as one JSON line to `out` and its markdown summary to `out` with `.md`."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    md = path.with_suffix(".md")
    with md.open("a", encoding="utf-8") as f:
        f.write(markdown_summary(result) + "\n")
    return path, md
