"""Speed and memory of LLaVA-OneVision + the LTFM expert, full-size architecture with random weights.

    python -m agent.mllm.bench --size 1024 --new-tokens 64                   # CPU, float32
    python -m agent.mllm.bench --device cuda --dtype bfloat16 --batch 1 8    # GPU

Measures, per image: vision tower, expert (alone, on the tower's features), encode (tower + projector
+ expert + packing), prefill of the detection question, decode tokens/s, and end to end
"detect (P(Yes)) + N-token explanation", with and without the expert; peak memory. Random weights
give the real compute cost (no checkpoint needed), not meaningful text. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from collections.abc import Callable
from typing import Any

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def build_full_size(device: str = "cpu", dtype: torch.dtype = torch.float32) -> Any:
    """A `LookTwiceModel` with the llava-onevision-qwen2-0.5b-ov architecture and a random expert."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from agent.mllm.model import LookTwiceModel
    from agent.mllm.testing import build_bpe_tokenizer, llava_ov_05b_config, ov_image_processor
    from tools.ltfm.expert import AnomalyExpert, ExpertConfig

    config = llava_ov_05b_config()
    torch.manual_seed(0)
    with torch.device(device):
        llava = LlavaOnevisionForConditionalGeneration(config).to(dtype).eval()
        expert = AnomalyExpert(ExpertConfig.from_vision_config(config.vision_config)).to(dtype).eval()
    tokenizer = build_bpe_tokenizer()
    llava.generation_config.pad_token_id = tokenizer.pad_token_id
    llava.generation_config.eos_token_id = None  # decode exactly new_tokens tokens
    return LookTwiceModel(llava, ov_image_processor(), tokenizer, expert=expert)


def run(
    size: int = 1024,
    new_tokens: int = 64,
    device: str = "cpu",
    dtype: str = "float32",
    batches: tuple[int, ...] = (1,),
    repeats: int = 1,
) -> dict[str, Any]:
    """Time every stage for one `size` x `size` image (and batches of them); returns a dict."""
    import numpy as np
    from PIL import Image

    from agent.mllm.chat_format import format_question

    torch_dtype = getattr(torch, dtype)
    dev = torch.device(device)
    t_build = time.perf_counter()
    model = build_full_size(device, torch_dtype)
    build_s = time.perf_counter() - t_build
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8"))
    question = format_question("Are there any defects in the image? Answer Yes or No.")
    explain = format_question("Describe the defect, its location and a likely cause.")
    gen = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "dtype": dtype,
        "image_px": size,
        "new_tokens": new_tokens,
        "build_s": round(build_s, 2),
    }
    with torch.no_grad():
        model.vision.features([image])  # warm-up (allocations, kernels)
        t_tower, feats = _timed(lambda: model.vision.features([image]), dev, repeats)
        expert = model.expert
        assert expert is not None
        levels = feats.levels(expert.config.layer_indices)
        t_expert, _ = _timed(lambda: expert(feats.final, levels, feats.split_sizes), dev, repeats)
        result.update(
            crops=sum(feats.split_sizes),
            grid=feats.grid_shapes[0],
            vision_tower_s=round(t_tower, 4),
            expert_s=round(t_expert, 4),
            expert_overhead_pct=round(100 * t_expert / t_tower, 2),
        )

        def encode() -> Any:
            model.clear_cache()
            return model.encode_images([image])[0]

        t_encode, enc = _timed(encode, dev, repeats)
        result["encode_s"] = round(t_encode, 4)
        result["visual_tokens"] = int(enc.visual_embeds.shape[0])
        result["anomaly_tokens"] = int(enc.anomaly_embeds.shape[0])

        for use_expert in (True, False):
            tag = "with_expert" if use_expert else "without_expert"
            inputs = model.build_inputs([question], [[image]], use_expert=use_expert)
            t_prefill, _ = _timed(lambda inputs=inputs: model.forward(inputs, logits_to_keep=1), dev, repeats)
            t_gen, _ = _timed(
                lambda use_expert=use_expert: model.generate(
                    [explain], [[image]], use_expert=use_expert, **gen
                ),
                dev,
                repeats,
            )
            decode_s = max(t_gen - t_prefill, 1e-9)

            def end_to_end(use_expert: bool = use_expert) -> None:
                model.clear_cache()
                model.yes_probability([image], use_expert=use_expert)
                model.generate([explain], [[image]], use_expert=use_expert, **gen)

            t_e2e, _ = _timed(end_to_end, dev, repeats)
            result[tag] = {
                "sequence_tokens": int(inputs.attention_mask.sum()),
                "prefill_s": round(t_prefill, 4),
                "prefill_tok_s": round(int(inputs.attention_mask.sum()) / t_prefill, 1),
                "decode_tok_s": round(new_tokens / decode_s, 2),
                "end_to_end_s": round(t_e2e, 3),
            }

        throughput = {}
        for b in batches:
            if b <= 1:
                continue
            images = [Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")) for _ in range(b)]

            def batch_run(images: list[Any] = images) -> None:
                model.clear_cache()
                model.yes_probability(images)
                model.generate([explain] * len(images), [[im] for im in images], **gen)

            t_b, _ = _timed(batch_run, dev, 1)
            throughput[str(b)] = round(b / t_b, 3)
        if throughput:
            result["images_per_s_by_batch"] = throughput

    if dev.type == "cuda":
        result["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="square test image side in px")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, nargs="*", default=[1], help="batch sizes for images/s")
    parser.add_argument("--repeats", type=int, default=1, help="best of N per measurement")
    args = parser.parse_args(argv)
    print(
        json.dumps(run(args.size, args.new_tokens, args.device, args.dtype, tuple(args.batch), args.repeats))
    )


if __name__ == "__main__":
    main()
