"""Save and load the anomaly expert alone, and convert the official Anomaly-OV expert checkpoints.

- `save_expert` / `load_expert`: one safetensors file with the weights and the expert's config in the
  file's metadata, loaded strictly (a missing or extra tensor is an error, never silently skipped).
- `convert_official_state_dict` / `load_official_expert`: the official `pretrained_expert_05b.pth` /
  `_7b.pth` files use the key names of the Anomaly-OV code; they are renamed to this module's names, and
  every missing or unexpected key is listed in one error. Files are read with `map_location="cpu"` and
  `weights_only=True` (no pickled code runs).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tools.ltfm.expert import OFFICIAL_LAYER_INDICES, AnomalyExpert, ExpertConfig

EXPERT_FORMAT = "looktwice-ltfm-expert"
EXPERT_FORMAT_VERSION = "1"


class ExpertWeightsError(ValueError):
    """An expert weights file is missing, unreadable or does not match the expert's layout."""


# official key prefix -> this module's prefix (suffix after it is kept: weight / bias / index.weight ...)
_OFFICIAL_RENAMES: tuple[tuple[str, str], ...] = (
    ("positive_embedding", "normal_prompt"),
    ("negative_embedding", "anomalous_prompt"),
    ("pooling_layer.0.", "token_pool."),
    ("class_predictor.", "class_head."),
    ("siglip_adaptors.", "feature_adapters."),
    ("prompt_adaptors.", "prompt_adapters."),
    ("final_predictor.", "score_head."),
    ("q_former.query_proj.", "selector.query_proj."),
    ("q_former.key_proj.", "selector.key_proj."),
)
_WRAPPER_PREFIX = re.compile(r"^(module\.)")


def save_expert(expert: AnomalyExpert, path: str | os.PathLike[str]) -> Path:
    """Write the expert's weights and config to one safetensors file; returns the path."""
    from safetensors.torch import save_file

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in expert.state_dict().items()}
    metadata = {
        "format": EXPERT_FORMAT,
        "format_version": EXPERT_FORMAT_VERSION,
        "config": json.dumps(expert.config.to_dict()),
    }
    save_file(tensors, str(out), metadata=metadata)
    return out


def read_expert_config(path: str | os.PathLike[str]) -> ExpertConfig:
    """The config stored in a file written by `save_expert`."""
    from safetensors import safe_open

    p = _existing(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        raise ExpertWeightsError(f"{p}: not a safetensors file ({_first_line(err)})") from err
    if metadata.get("format") != EXPERT_FORMAT or "config" not in metadata:
        raise ExpertWeightsError(f"{p}: not an expert file written by save_expert (no expert config)")
    return ExpertConfig.from_dict(json.loads(metadata["config"]))


def load_expert(
    path: str | os.PathLike[str],
    config: ExpertConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> AnomalyExpert:
    """Build an expert from a file written by `save_expert`, strictly.

    `config` defaults to the one stored in the file; passing one checks the file against it.
    """
    from safetensors.torch import load_file

    p = _existing(path)
    cfg = config or read_expert_config(p)
    state = load_file(str(p), device="cpu")
    expert = AnomalyExpert(cfg)
    load_state_dict_strict(expert, state, source=str(p))
    return expert.to(device=device, dtype=dtype) if dtype is not None else expert.to(device)


def convert_official_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename the official Anomaly-OV expert keys to `AnomalyExpert` keys.

    Raises `ExpertWeightsError` listing every key that does not belong to the official layout.
    A `module.` prefix (DataParallel) is stripped.
    """
    converted: dict[str, Tensor] = {}
    unknown: list[str] = []
    for key, value in state.items():
        bare = _WRAPPER_PREFIX.sub("", key)
        for old, new in _OFFICIAL_RENAMES:
            if bare == old or (old.endswith(".") and bare.startswith(old)):
                converted[new + bare[len(old) :]] = value
                break
        else:
            unknown.append(key)
    if unknown:
        raise ExpertWeightsError(
            "not an official Anomaly-OV expert state dict; unexpected keys: " + ", ".join(sorted(unknown))
        )
    return converted


def infer_official_config(state: Mapping[str, Tensor], **overrides: Any) -> ExpertConfig:
    """Expert sizes read off an official (or converted) state dict's tensor shapes."""
    conv = convert_official_state_dict(state) if "positive_embedding" in state else dict(state)
    try:
        num_patches = int(conv["token_pool.weight"].shape[1])
        hidden = int(conv["class_head.0.weight"].shape[1])
        class_dim = int(conv["class_head.0.weight"].shape[0])
        emb = int(conv["normal_prompt"].shape[-1])
        attn = int(conv["selector.query_proj.weight"].shape[0])
        pred = int(conv["score_head.0.weight"].shape[0])
    except KeyError as err:
        raise ExpertWeightsError(f"cannot infer expert sizes: key {err.args[0]!r} is missing") from err
    grid = int(round(num_patches**0.5))
    if grid * grid != num_patches:
        raise ExpertWeightsError(f"token pooling covers {num_patches} tokens, not a square grid")
    levels = len({k.split(".")[1] for k in conv if k.startswith("feature_adapters.")})
    values: dict[str, Any] = {
        "hidden_size": hidden,
        "grid_size": grid,
        "embedding_dim": emb,
        "class_dim": class_dim,
        "attention_dim": attn,
        "predictor_dim": pred,
    }
    if "layer_indices" not in overrides:
        if levels != len(OFFICIAL_LAYER_INDICES):
            raise ExpertWeightsError(
                f"the weights have {levels} feature levels; pass layer_indices (or a config) to say which"
            )
        values["layer_indices"] = OFFICIAL_LAYER_INDICES
    values.update(overrides)
    return ExpertConfig(**values)


def load_official_expert(
    path: str | os.PathLike[str],
    config: ExpertConfig | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> AnomalyExpert:
    """Load an official `pretrained_expert_*.pth` strictly into an `AnomalyExpert`.

    `config` should come from the vision tower the checkpoint was trained with
    (`ExpertConfig.from_vision_config`); without it the sizes are read off the tensors and the official
    layer indices (7, 13, 19, 25) are assumed.
    """
    p = _existing(path)
    try:
        raw = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ExpertWeightsError(f"{p}: cannot read as a torch checkpoint ({_first_line(err)})") from err
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise ExpertWeightsError(f"{p}: expected a state dict, found {type(raw).__name__}")
    converted = convert_official_state_dict(raw)
    cfg = config or infer_official_config(converted)
    expert = AnomalyExpert(cfg)
    load_state_dict_strict(expert, converted, source=str(p))
    return expert.to(device=device, dtype=dtype) if dtype is not None else expert.to(device)


def load_state_dict_strict(expert: AnomalyExpert, state: Mapping[str, Tensor], source: str = "") -> None:
    """`load_state_dict` that names every missing / unexpected / mis-shaped key in one error."""
    own = expert.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if shapes:
        problems.append("shape mismatch: " + ", ".join(shapes))
    if problems:
        where = f"{source}: " if source else ""
        raise ExpertWeightsError(f"{where}expert weights do not match the expert; " + "; ".join(problems))
    expert.load_state_dict(dict(state), strict=True)


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ExpertWeightsError(f"expert weights file not found: {p}")
    return p


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
