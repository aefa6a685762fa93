"""Training checkpoints: what a resumed run needs to continue exactly where the last one stopped.

A checkpoint is a folder `<out>/checkpoints/step-<N>/` holding
- `trainable.safetensors`: only the parameters being trained (the expert; or projector + LLM, or
  projector + LoRA adapters), by their names in the training module; the frozen base is reloaded
  from the config's `model`, so checkpoints stay small with LoRA;
- `optimizer.pt`, `scheduler.pt`: their `state_dict()`s;
- `state.json`: the optimizer step, the stage and the config it was written with;
- `rng.pt`: torch / numpy / python random states.
Only the newest `keep` checkpoints are kept. Writes go to a temporary folder renamed at the end, so an
interrupted save never leaves a half checkpoint that `--resume` would pick.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINTS = "checkpoints"
PREFIX = "step-"


class CheckpointError(ValueError):
    """A checkpoint cannot be found or does not fit the run; one line naming the folder."""


@dataclass
class TrainState:
    """What the loop restores from a checkpoint."""

    step: int
    stage: str
    losses: list[float]


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require gradients, detached on the CPU (shared tensors appear once)."""
    return {n: p.detach().to("cpu").contiguous() for n, p in module.named_parameters() if p.requires_grad}


def load_trainable_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into the trainable parameters of `module`, strictly (names and shapes must match)."""
    own = {n: p for n, p in module.named_parameters() if p.requires_grad}
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        what = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
        raise CheckpointError(
            f"{source}: the trainable parameters do not match this run ({what}; "
            f"{len(missing)} missing, {len(extra)} unexpected): was it written with another method or model?"
        )
    with torch.no_grad():
        for name, param in own.items():
            if tuple(param.shape) != tuple(state[name].shape):
                raise CheckpointError(
                    f"{source}: {name} has shape {tuple(state[name].shape)}, expected {tuple(param.shape)}"
                )
            param.copy_(state[name].to(param.device, param.dtype))


def checkpoint_dirs(out: Path) -> list[Path]:
    """Finished checkpoints under `out`, oldest first."""
    root = out / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [
        p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX) :]))


def resolve_resume(out: Path, resume: str | bool | None) -> Path | None:
    """The checkpoint to resume from: None (fresh run), the newest under `out` (True / "auto"), or a path."""
    if resume in (None, False, ""):
        return None
    if resume is True or resume == "auto":
        found = checkpoint_dirs(out)
        if not found:
            raise CheckpointError(f"nothing to resume: no checkpoint under {out / CHECKPOINTS}")
        return found[-1]
    path = Path(str(resume)).expanduser()
    if not (path / "state.json").is_file():
        raise CheckpointError(f"{path} is not a checkpoint folder (no state.json)")
    return path


def save_checkpoint(
    out: Path,
    step: int,
    module: nn.Module,
    optimizer: Any,
    scheduler: Any,
    stage: str,
    config: dict[str, Any],
    losses: Iterable[float],
    keep: int,
) -> Path:
    """Write checkpoint `step` under `out`, then drop all but the newest `keep`."""
    import numpy as np
    from safetensors.torch import save_file

    root = out / CHECKPOINTS
    final = root / f"{PREFIX}{step:07d}"
    tmp = root / f".tmp-{PREFIX}{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(module), str(tmp / "trainable.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state()}, tmp / "rng.pt")
    np_state = np.random.get_state()
    rng = {
        "numpy": [
            np_state[0],
            np_state[1].tolist(),
            *(float(v) if i == 4 else int(v) for i, v in enumerate(np_state[2:], 2)),
        ],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    state = {"step": step, "stage": stage, "losses": list(losses), "rng": rng, "config": config}
    (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str), encoding="utf-8")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in checkpoint_dirs(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, module: nn.Module, optimizer: Any, scheduler: Any, stage: str) -> TrainState:
    """Restore trainable parameters, optimizer, scheduler and random states from `path`."""
    import numpy as np
    from safetensors.torch import load_file

    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable state.json ({type(err).__name__})") from None
    if state.get("stage") != stage:
        raise CheckpointError(f"{path}: a '{state.get('stage')}' checkpoint cannot resume a '{stage}' run")
    load_trainable_state(module, load_file(str(path / "trainable.safetensors")), str(path))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True))
    torch.set_rng_state(torch.load(path / "rng.pt", map_location="cpu", weights_only=True)["torch"])
    if "rng" in state:
        kind, key, pos, has_gauss, gauss = state["rng"]["numpy"]
        np.random.set_state((kind, np.asarray(key, dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))
        version, internal, py_gauss = state["rng"]["python"]
        random.setstate((version, tuple(internal), py_gauss))
    return TrainState(
        step=int(state["step"]), stage=stage, losses=[float(v) for v in state.get("losses", [])]
    )
