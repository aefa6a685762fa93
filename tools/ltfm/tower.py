"""The vision tower of a LLaVA-OneVision checkpoint alone: what the `ltfm` detector and stage-1 training
need, without reading a byte of the language model.

Why: the expert reads the SigLIP tower's hidden states and nothing else, and the LLM is 15x (0.5B) to
15 GB (7B) larger than the tower. `load_vision_tower` builds the tower from the folder's config and
reads only its tensors from the safetensors files (through the shard index, opening only the shards
that hold them), so loading the detector costs the tower's memory and time, not the whole model's.

Checkpoint key layouts read: `vision_tower.vision_model.*` (the llava-hf hub checkpoints),
`vision_tower.*` (what transformers 5 saves) and `model.vision_tower.*` (transformers' in-memory names).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tools.ltfm.checkpoints import (
    ExpertSource,
    load_expert_for,
    model_not_found,
    resolve_model_path,
    select_expert,
)
from tools.ltfm.vision import ExpertVision, LlavaVision

SAFETENSORS_INDEX = "model.safetensors.index.json"
SAFETENSORS_SINGLE = "model.safetensors"


def tower_key(key: str) -> str | None:
    """The tower parameter name a checkpoint key holds (`encoder.layers.0.mlp.fc1.weight`), or None for
    every key that is not the vision tower's (the LLM, the projector)."""
    bare = key.removeprefix("model.")
    if not bare.startswith("vision_tower."):
        return None
    name = bare[len("vision_tower.") :]
    return name.removeprefix("vision_model.")


def checkpoint_files(folder: str | os.PathLike[str]) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it, from the shard index (no tensor is read)."""
    from safetensors import safe_open

    root = Path(folder)
    index = root / SAFETENSORS_INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return {key: root / name for key, name in weight_map.items()}
    single = root / SAFETENSORS_SINGLE
    if not single.is_file():
        raise model_not_found(str(root), f"no {SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX}")
    with safe_open(str(single), framework="pt") as f:
        return {key: single for key in list(f.keys())}


@dataclass
class TensorsRead:
    """What `read_tensors` read: the tensors by their new names, and the files it opened."""

    tensors: dict[str, torch.Tensor]
    files: list[str] = field(default_factory=list)


def read_tensors(folder: str | os.PathLike[str], rename: Callable[[str], str | None]) -> TensorsRead:
    """The tensors whose key `rename` maps to a name (the others are never read): opens only the
    shards that hold some of them."""
    from safetensors import safe_open

    wanted: dict[Path, list[tuple[str, str]]] = {}
    for key, path in checkpoint_files(folder).items():
        name = rename(key)
        if name is not None:
            wanted.setdefault(path, []).append((key, name))
    out = TensorsRead({})
    for path, keys in sorted(wanted.items()):
        with safe_open(str(path), framework="pt") as f:
            for key, name in keys:
                out.tensors[name] = f.get_tensor(key)
        out.files.append(path.name)
    return out


def load_vision_tower(
    model: str | os.PathLike[str], dtype: str = "float32", device: str = "cpu"
) -> LlavaVision:
    """The frozen vision tower of a LLaVA-OneVision folder or hub id, with its AnyRes preprocessing.

    Reads the config, the image processor and the tower's tensors only. Raises `ModelNotFoundError`
    when the model is not here and `ValueError` when the tower's tensors do not match its config."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel
    from transformers.initialization import no_init_weights

    from tools.ltfm.checkpoints import torch_dtype

    folder = resolve_model_path(model)
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except OSError as err:
        raise model_not_found(str(model), str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    read = read_tensors(folder, tower_key)
    weights_dtype = torch_dtype(dtype)
    with torch.device(device), no_init_weights():
        tower = AutoModel.from_config(config.vision_config)
    own = tower.state_dict()
    missing = sorted(set(own) - set(read.tensors))
    unexpected = sorted(set(read.tensors) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{folder}: the vision tower's weights do not match its config "
            f"({len(missing)} missing, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    tower.load_state_dict(read.tensors, strict=True)
    if isinstance(weights_dtype, torch.dtype):
        tower.to(weights_dtype)
    tower.eval().requires_grad_(False)
    return LlavaVision(tower, config, image_processor)


def load_expert_vision(
    model: str | os.PathLike[str],
    expert: ExpertSource = "auto",
    dtype: str = "float32",
    device: str = "cpu",
) -> ExpertVision | None:
    """The tower and the expert of a LLaVA-OneVision checkpoint, no language model; None when no expert
    weights were found for it (`expert="auto"`: the one the folder's marker names, else the folder's
    `ltfm_expert.safetensors`)."""
    vision = load_vision_tower(model, dtype=dtype, device=device)
    choice = select_expert(resolve_model_path(model), expert)
    module = load_expert_for(choice.source, vision.config, device=device, dtype=torch.float32)
    if module is None:
        return None
    return ExpertVision(vision, module)


__all__ = ["checkpoint_files", "load_expert_vision", "load_vision_tower", "read_tensors", "tower_key"]
