"""One call per training stage: config in, trained artifacts and a summary out.

This is the orchestration the CLI (`looktwice train expert|llm`) and the tests share: make the
accelerator, seed, build the stage, optionally measure held-out detection before and after (stage 2,
`eval_data`), run the loop, write `summary.json`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.mllm.train.config import ExpertTrainConfig, LLMTrainConfig
from agent.mllm.train.loop import TrainResult, make_accelerator, run_training, write_summary


def train_stage(
    cfg: ExpertTrainConfig | LLMTrainConfig,
    resume: str | bool | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train one stage as `cfg` says (see `agent/mllm/train/configs/`)."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)
    say = log if (log and accelerator.is_main_process) else (lambda _m: None)
    if isinstance(cfg, ExpertTrainConfig):
        from agent.mllm.train.expert_stage import ExpertStage

        task: Any = ExpertStage(cfg, accelerator.device)
        say(
            f"stage 1 (expert): {task.num_samples()} images from {', '.join(cfg.data)} on {accelerator.device}"
        )
    else:
        from agent.mllm.train.llm_stage import LLMStage

        task = LLMStage(cfg, accelerator.device)
        trainable = sum(p.numel() for p in task.module.parameters() if p.requires_grad)
        say(
            f"stage 2 (llm, {cfg.method}): {task.num_samples()} conversations, "
            f"{trainable / 1e6:.2f} M trainable parameters on {accelerator.device}"
        )
    held_out = _held_out(cfg)
    before = None
    if held_out and not resume and accelerator.is_main_process:
        before = _evaluate(task.model, held_out, cfg)
        say(
            f"held-out detection before training: accuracy {before['accuracy']:.3f} "
            f"(P(Yes) accuracy {before['accuracy_p_yes']:.3f}) on {before['n']} images"
        )
    result = run_training(task, cfg, accelerator, resume=resume, log=say)
    if held_out and accelerator.is_main_process:
        after = _evaluate(task.model, held_out, cfg)
        result.extra = {"eval_before": before, "eval_after": after}
        say(
            f"held-out detection after training: accuracy {after['accuracy']:.3f} "
            f"(P(Yes) accuracy {after['accuracy_p_yes']:.3f}, AUROC {after['auroc_p_yes']})"
        )
        write_summary(Path(cfg.out), result)
    return result


def _held_out(cfg: ExpertTrainConfig | LLMTrainConfig) -> list[Any]:
    if not isinstance(cfg, LLMTrainConfig) or not cfg.eval_data:
        return []
    from agent.mllm.train.data import read_llava_json

    return [c for source in cfg.eval_data for c in read_llava_json(source)]


def _evaluate(model: Any, conversations: list[Any], cfg: LLMTrainConfig) -> dict[str, Any]:
    from agent.mllm.train.evaluate import evaluate_detection

    was_training = model.llava.training
    model.llava.eval()
    try:
        return evaluate_detection(model, conversations, system=cfg.system, limit=cfg.eval_limit)
    finally:
        model.llava.train(was_training)
