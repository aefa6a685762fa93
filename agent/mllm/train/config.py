"""Training settings as data: one YAML file per run, checked field by field, overridable from the CLI.

Why a checker of its own: a typo in a training config should stop the run before any model loads,
with one line that names the file and the field (`llm.yaml: field 'lora.r': expected an integer,
got 'sixteen'`), not a traceback ten minutes into loading weights.

- `load_config(path_or_name, overrides)`: a YAML file, or the name of a shipped config
  (`agent/mllm/train/configs/<name>.yaml`, e.g. `expert`, `llm-lora`); `overrides` are dotted
  `key=value` settings (`lora.r=8`) applied on top, as `--set` does.
- Paths in a config are used as written (relative ones against the current folder), like the CLI's.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union

STAGES = ("expert", "llm")
METHODS = ("full", "lora", "qlora")
SCHEDULERS = ("cosine", "linear", "constant")
PRECISIONS = ("no", "bf16", "fp16")


class TrainConfigError(ValueError):
    """A training config is missing or wrong; `str()` is one line naming the file and the field."""


@dataclass
class LoraSettings:
    """peft LoRA on the LLM's linear layers (the vision tower, projector and expert get none)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class CommonSettings:
    """Fields both stages share: where from, where to, how long, how fast, how often to save."""

    stage: str = "expert"
    model: str = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"  # hub id or folder (the base model)
    data: list[str] = field(default_factory=list)  # stage 1: data sets / synth folders; stage 2: LLaVA JSON
    out: str = "runs/train"
    seed: int = 0
    epochs: float = 1.0
    max_steps: int | None = None  # optimizer steps; overrides epochs
    batch_size: int = 8  # per device
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    scheduler: str = "cosine"
    max_grad_norm: float = 1.0
    dtype: str = "float32"  # weights of the loaded model: auto (bf16 on a GPU, fp32 on the CPU), bf16, fp16, fp32
    mixed_precision: str = "no"  # accelerate autocast: no, bf16, fp16
    device: str = "auto"  # auto (GPU when there is one), cpu, cuda, cuda:N (`tools.ltfm.options` spellings)
    save_every: int = 500  # optimizer steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True


@dataclass
class ExpertTrainConfig(CommonSettings):
    """Stage 1: the anomaly expert alone on image labels; the vision tower is frozen."""

    stage: str = "expert"
    init_expert: str | None = None  # start from an expert file (save_expert or official .pth)
    expert: dict[str, Any] = field(default_factory=dict)  # ExpertConfig overrides, e.g. embedding_dim
    categories: list[str] | None = None  # only these categories of MVTec-layout data
    anyres: bool = True  # all AnyRes crops (as at inference) or the base crop alone
    cache_features: bool = False  # keep tower outputs in memory across epochs (small sets only)
    mask_loss_weight: float = 0.0  # > 0: also supervise the base-crop anomaly map with the masks
    lr: float = 1e-4


@dataclass
class LLMTrainConfig(CommonSettings):
    """Stage 2: projector + LLM on LLaVA-JSON conversations; the tower and the expert are frozen."""

    stage: str = "llm"
    expert: str | None = "auto"  # expert file, "auto" (the model folder's), or none
    image_folder: str | None = None  # default: the folder of each JSON file
    method: str = "full"  # full, lora or qlora (4-bit base through bitsandbytes)
    train_projector: bool = True
    train_llm: bool = True  # full: train the LLM weights; lora/qlora: the adapters
    projector_lr: float | None = None  # default: lr
    lora: LoraSettings = field(default_factory=LoraSettings)
    system: str | None = "You are a helpful assistant."
    gradient_checkpointing: bool = False
    export_dtype: str = "auto"  # weights of the merged model folder: auto (= dtype), bfloat16, ...
    eval_data: list[str] = field(default_factory=list)  # held-out LLaVA JSON: detection accuracy
    eval_limit: int | None = None
    lr: float = 1e-5
    epochs: float = 1.0


CONFIG_TYPES: dict[str, type[CommonSettings]] = {"expert": ExpertTrainConfig, "llm": LLMTrainConfig}


def shipped_configs() -> list[str]:
    """Names of the configs shipped with the package."""
    root = resources.files(__package__).joinpath("configs")
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def _locate(name: str) -> tuple[str, str]:
    """(display name, YAML text) of a file path or a shipped config name."""
    path = Path(name).expanduser()
    if path.is_file():
        return str(path), path.read_text(encoding="utf-8")
    if "/" not in name and "\\" not in name and not name.endswith((".yaml", ".yml")):
        res = resources.files(__package__).joinpath("configs", f"{name}.yaml")
        if res.is_file():
            return f"{name} (shipped)", res.read_text(encoding="utf-8")
    raise TrainConfigError(
        f"config '{name}' not found: no such file, and not a shipped config ({', '.join(shipped_configs())})"
    )


def load_config(
    name: str, overrides: list[str] | None = None, stage: str | None = None
) -> ExpertTrainConfig | LLMTrainConfig:
    """Read, check and override a training config; `stage` (from the command) must match the file's."""
    import yaml

    where, text = _locate(name)
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise TrainConfigError(f"{where}: not valid YAML{line}") from None
    if not isinstance(raw, dict):
        raise TrainConfigError(f"{where}: must hold a mapping of settings, found {type(raw).__name__}")
    file_stage = raw.get("stage", stage or "expert")
    if file_stage not in STAGES:
        raise TrainConfigError(
            f"{where}: field 'stage': must be one of {', '.join(STAGES)}, got {file_stage!r}"
        )
    if stage is not None and file_stage != stage:
        raise TrainConfigError(f"{where}: field 'stage': this is a '{file_stage}' config, not '{stage}'")
    for item in overrides or []:
        if "=" not in item:
            raise TrainConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value), where="--set")
    raw["stage"] = file_stage
    cls = CONFIG_TYPES[file_stage]
    cfg = _build(cls, raw, where, prefix="")
    _check_choices(cfg, where)
    return cfg


def apply_overrides(cfg: Any, values: dict[str, Any], where: str = "command line") -> Any:
    """Set fields from the command line's flags (None values are skipped), checked like the file."""
    current = dataclasses.asdict(cfg)
    for key, value in values.items():
        if value is not None:
            _set_dotted(current, key, value, where=where)
    new = _build(type(cfg), current, where, prefix="")
    _check_choices(new, where)
    return new


def _set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise TrainConfigError(f"{where}: field '{key}': '{p}' is not a group of settings")
        node = nxt
    node[parts[-1]] = value


def _build(cls: type, raw: dict[str, Any], where: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise TrainConfigError(
            f"{where}: unknown field '{prefix}{unknown[0]}' (known: {', '.join(sorted(names))})"
        )
    values = {k: _coerce(hints[k], v, where, f"{prefix}{k}") for k, v in raw.items()}
    return cls(**values)


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(args[0], value, where, name)
    bad = TrainConfigError(f"{where}: field '{name}': expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise bad
        return _build(tp, value, where, prefix=f"{name}.")
    if origin is list:
        (item,) = typing.get_args(tp)
        items = [value] if isinstance(value, (str, int, float)) and not isinstance(value, bool) else value
        if not isinstance(items, (list, tuple)):
            raise bad
        return [_coerce(item, v, where, f"{name}[{i}]") for i, v in enumerate(items)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise bad
        return str(value)
    if tp is Any:
        return value
    raise bad  # pragma: no cover - every field type is handled above


def _check_choices(cfg: CommonSettings, where: str) -> None:
    from tools.ltfm.options import OptionError, normalize_device, normalize_dtype

    try:  # the spellings every command takes (bf16, cuda:1, ...), stored in one form
        cfg.device = normalize_device(cfg.device, "field 'device':")
        cfg.dtype = normalize_dtype(cfg.dtype, "field 'dtype':")
        if isinstance(cfg, LLMTrainConfig) and cfg.export_dtype != "auto":
            cfg.export_dtype = normalize_dtype(cfg.export_dtype, "field 'export_dtype':")
    except OptionError as err:
        raise TrainConfigError(f"{where}: {err}") from None
    choices: dict[str, tuple[str, ...]] = {
        "scheduler": SCHEDULERS,
        "mixed_precision": PRECISIONS,
    }
    if isinstance(cfg, LLMTrainConfig):
        choices["method"] = METHODS
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise TrainConfigError(
                f"{where}: field '{name}': must be one of {', '.join(allowed)}, got {getattr(cfg, name)!r}"
            )
    positive = {
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "save_every": cfg.save_every,
        "log_every": cfg.log_every,
        "keep_checkpoints": cfg.keep_checkpoints,
    }
    if cfg.max_steps is not None:
        positive["max_steps"] = cfg.max_steps
    for name, value in positive.items():
        if value < 1:
            raise TrainConfigError(f"{where}: field '{name}': must be at least 1, got {value}")
    if cfg.lr <= 0 or cfg.epochs <= 0:
        bad = "lr" if cfg.lr <= 0 else "epochs"
        raise TrainConfigError(f"{where}: field '{bad}': must be positive, got {getattr(cfg, bad)}")
    if not 0 <= cfg.warmup_ratio < 1:
        raise TrainConfigError(f"{where}: field 'warmup_ratio': must be in [0, 1), got {cfg.warmup_ratio}")
    if isinstance(cfg, ExpertTrainConfig):
        from tools.ltfm.expert import ExpertConfig

        known = {f.name for f in dataclasses.fields(ExpertConfig)} - {"hidden_size", "grid_size"}
        unknown = sorted(set(cfg.expert) - known)
        if unknown:
            raise TrainConfigError(
                f"{where}: unknown field 'expert.{unknown[0]}' (known: {', '.join(sorted(known))})"
            )
        if cfg.mask_loss_weight < 0:
            raise TrainConfigError(
                f"{where}: field 'mask_loss_weight': must be >= 0, got {cfg.mask_loss_weight}"
            )
    if isinstance(cfg, LLMTrainConfig) and not (cfg.train_projector or cfg.train_llm):
        raise TrainConfigError(
            f"{where}: fields 'train_projector' and 'train_llm' are both false: nothing to train"
        )


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain data (for `config.yaml` in the output folder and checkpoint state)."""
    return dataclasses.asdict(cfg)
