"""The training loop both stages share: accelerate, gradient accumulation, schedule, checkpoints.

Why one loop: stage 1 and stage 2 differ only in what a batch's loss is and what is exported at the
end (`StageTask`); the rest (devices, DDP under `accelerate launch`, mixed precision, accumulation,
clipping, logging, checkpoints, resuming) is the same and is written once.

Batches come from `data.micro_batches` (a seeded permutation per epoch), and the position in that
stream is a function of the optimizer step, so a run resumed from step N sees exactly the batches an
uninterrupted run would have seen from step N on.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from agent.mllm.train.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
from agent.mllm.train.config import CommonSettings, config_to_dict
from agent.mllm.train.data import micro_batches
from agent.mllm.train.losses import lr_lambda

LOG_FILE = "log.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"


class StageTask(Protocol):
    """What a training stage supplies to the loop."""

    module: nn.Module  # holds every trainable parameter; DDP wraps it; checkpoints save its trainables

    def num_samples(self) -> int: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def loss(self, model: nn.Module, indices: list[int]) -> Tensor: ...

    def export(self, out: Path) -> dict[str, str]: ...


@dataclass
class TrainResult:
    """What a run did (also written to `<out>/summary.json`)."""

    stage: str
    out: str
    steps: int
    start_step: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    artifacts: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def loss_start_end(self) -> tuple[float, float]:
        """Mean loss of the first and of the last 5 % of the steps (at least 5, at most half)."""
        if not self.losses:
            return math.nan, math.nan
        w = max(1, min(max(5, len(self.losses) // 20), len(self.losses) // 2 or 1))
        return sum(self.losses[:w]) / w, sum(self.losses[-w:]) / w

    def to_json(self) -> dict[str, Any]:
        start, end = self.loss_start_end()
        return {
            "stage": self.stage,
            "out": self.out,
            "steps": self.steps,
            "resumed_from_step": self.start_step,
            "loss_start": start,
            "loss_end": end,
            "seconds": round(self.seconds, 2),
            "artifacts": self.artifacts,
            **self.extra,
        }


def make_accelerator(cfg: CommonSettings) -> Any:
    """An `Accelerator` for the config's device and precision (one process here, or one per GPU under
    `accelerate launch`)."""
    try:
        from accelerate import Accelerator
    except ImportError:
        raise ImportError('training needs accelerate and peft: pip install "looktwice[train]"') from None
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {cfg.device!r} asked for, but torch sees no CUDA GPU; use device: cpu or auto")
    if cfg.device.startswith("cuda:"):  # one process on a chosen GPU (accelerate uses the current one)
        torch.cuda.set_device(int(cfg.device.split(":", 1)[1]))
    cpu = cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available())
    if cpu and cfg.mixed_precision == "fp16":
        raise RuntimeError("mixed_precision 'fp16' needs a GPU; use 'no' or 'bf16' on the CPU")
    handlers = []
    if cfg.stage == "llm":  # under DDP: a text-only batch leaves the projector without gradients
        from accelerate.utils import DistributedDataParallelKwargs

        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision, kwargs_handlers=handlers)


def _stream(n: int, cfg: CommonSettings, world: int, rank: int, start: int) -> Iterator[list[int]]:
    """Micro-batches from stream position `start` on, epoch after epoch."""
    per_epoch = len(micro_batches(n, cfg.batch_size, 0, cfg.seed, world, rank))
    pos = start
    while True:
        epoch, k = divmod(pos, per_epoch)
        batches = micro_batches(n, cfg.batch_size, epoch, cfg.seed, world, rank)
        for b in batches[k:]:
            yield b
            pos += 1


def total_steps(n: int, cfg: CommonSettings, world: int) -> int:
    """Optimizer steps of the run: `max_steps`, else `epochs` passes over the data."""
    if cfg.max_steps is not None:
        return int(cfg.max_steps)
    micro = math.ceil(n / (cfg.batch_size * world))
    return max(1, math.ceil(cfg.epochs * micro / cfg.grad_accum))


def run_training(
    task: StageTask,
    cfg: CommonSettings,
    accelerator: Any,
    resume: str | bool | None = None,
    log: Any = None,
) -> TrainResult:
    """Train `task` as `cfg` says; checkpoints, log and summary go to `cfg.out`. `log(str)` gets
    one-line progress messages (main process only)."""
    from tqdm.auto import tqdm

    out = Path(cfg.out)
    main = accelerator.is_main_process
    say = (log or (lambda _msg: None)) if main else (lambda _msg: None)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _write_config(out / CONFIG_FILE, cfg)
    world, rank = accelerator.num_processes, accelerator.process_index
    n = task.num_samples()
    total = total_steps(n, cfg, world)
    warmup = int(round(cfg.warmup_ratio * total))
    optimizer = torch.optim.AdamW(task.param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, warmup, cfg.scheduler))
    model, optimizer = accelerator.prepare(task.module, optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    start, losses = 0, []
    checkpoint = resolve_resume(out, resume)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, task.module, optimizer, scheduler, cfg.stage)
        start, losses = state.step, state.losses[: state.step]
        if main:
            _truncate_log(out / LOG_FILE, start)
        say(f"resumed from {checkpoint} at step {start} of {total}")
    result = TrainResult(stage=cfg.stage, out=str(out), steps=start, start_step=start, losses=list(losses))
    began = time.perf_counter()
    stream = _stream(n, cfg, world, rank, start * cfg.grad_accum)
    bar = tqdm(
        total=total,
        initial=start,
        desc=f"train {cfg.stage}",
        unit="step",
        disable=not (cfg.progress and main),
        dynamic_ncols=True,
    )
    task.module.train()
    with bar, open(out / LOG_FILE, "a", encoding="utf-8") if main else contextlib.nullcontext() as logf:
        for step in range(start, total):
            micro: list[Tensor] = []
            for a in range(cfg.grad_accum):
                indices = next(stream)
                sync = a == cfg.grad_accum - 1
                with contextlib.nullcontext() if sync else accelerator.no_sync(model):
                    with accelerator.autocast():
                        loss = task.loss(model, indices)
                    accelerator.backward(loss / cfg.grad_accum)
                micro.append(loss.detach().float())
            if cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step_loss = float(accelerator.reduce(torch.stack(micro).mean(), reduction="mean"))
            losses.append(step_loss)
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if main and (done % cfg.log_every == 0 or done == total or done == start + 1):
                lr = scheduler.get_last_lr()[0]
                logf.write(
                    json.dumps(
                        {
                            "step": done,
                            "loss": step_loss,
                            "lr": lr,
                            "seconds": round(time.perf_counter() - began, 3),
                        }
                    )
                    + "\n"
                )
                logf.flush()
            if done % cfg.save_every == 0 or done == total:
                accelerator.wait_for_everyone()
                if main:
                    save_checkpoint(
                        out,
                        done,
                        task.module,
                        optimizer,
                        scheduler,
                        cfg.stage,
                        config_to_dict(cfg),
                        losses,
                        cfg.keep_checkpoints,
                    )
    task.module.eval()
    result.steps = total
    result.losses = losses
    result.seconds = time.perf_counter() - began
    accelerator.wait_for_everyone()
    if main:
        result.artifacts = task.export(out)
        write_summary(out, result)
    return result


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines of steps after `step` (written by the interrupted run, about to be redone)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")


def write_summary(out: Path, result: TrainResult) -> None:
    (out / SUMMARY_FILE).write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")


def _write_config(path: Path, cfg: CommonSettings) -> None:
    import yaml

    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
