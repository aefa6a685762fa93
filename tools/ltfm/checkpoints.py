"""LLaVA-OneVision checkpoints (whose vision tower the expert reads) from a hub id or a local folder.

- `load_llava("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")` or `load_llava("/models/llava-ov-0.5b")`:
  the model, its image processor and the expert, as a `LlavaCheckpoint`.
- dtype ("auto", "bfloat16", torch.float16, ...), `device_map` (accelerate), SDPA attention by default
  (flash-attention 2 when `flash_attn` is installed and the model is on a GPU).
- `quantization="4bit"` / `"8bit"` through bitsandbytes; the vision tower, the projector and the LM head
  are left unquantized (`llm_int8_skip_modules` with full prefixes), and the expert is a separate module
  that is never quantized.
- A model that is not on disk raises `ModelNotFoundError` within seconds (`tools.models.require_model`:
  the local folder or cache, then at most one short request to the hub unless `HF_HUB_OFFLINE` is set);
  its message is one line: the model id, where it looked, and how to fetch it.
- Expert: `expert=` a safetensors file from `save_expert`, an official `pretrained_expert_*.pth`, an
  `AnomalyExpert`, "random" (untrained, for tests and benchmarks), or None. By default ("auto") the one
  the folder's marker names (`tools.ltfm.expert_marker`: the LLM was trained with it), else the folder's
  `ltfm_expert.safetensors` if any.
- The expert's tokens go to the LLM (`LlavaCheckpoint.expert_tokens`) only when the LLM learned them:
  the folder's marker vouches for that expert file, or the caller attaches a module or "random" on
  purpose (stage-2 training, tests). Otherwise the LLM runs as plain LLaVA-OneVision and the expert
  serves as a detector only (`expert_note` says which, for the trace).

torch is imported here, transformers only inside the loaders.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tools.ltfm.expert import AnomalyExpert, ExpertConfig
from tools.models import hf_cache_dir, hub_offline

DEFAULT_MODEL_ID = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
EXPERT_FILENAME = "ltfm_expert.safetensors"
QUANT_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]

#: What `expert=` accepts: "auto", "random", a weights file, a module, or None.
ExpertSource = str | os.PathLike[str] | AnomalyExpert | None


class ModelNotFoundError(FileNotFoundError):
    """The model could not be found locally (or on the hub); `str()` is one line saying what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass
class LlavaCheckpoint:
    """A loaded LLaVA-OneVision folder: the model, its image processor and the expert (or None)."""

    folder: str
    llava: Any  # transformers LlavaOnevisionForConditionalGeneration
    image_processor: Any
    expert: AnomalyExpert | None
    expert_tokens: bool = False  # the LLM reads the expert's tokens (it was trained with them)
    expert_note: str = ""  # why the expert is (not) attached, and whether its tokens reach the LLM
    expert_source: str = ""  # the expert's file ("" for none, a module or random weights)


@dataclass(frozen=True)
class ExpertChoice:
    """Which expert a folder gets for an `expert=` value, and whether the LLM reads its tokens."""

    source: ExpertSource  # a path, a module, "random", or None
    tokens: bool
    note: str


def select_expert(folder: str, expert: ExpertSource, tokens: bool | None = None) -> ExpertChoice:
    """The expert for `folder` and whether its tokens go to the LLM (see the module docstring);
    `tokens` forces the second answer (stage-2 training attaches an expert to teach the LLM)."""
    from tools.ltfm.expert_marker import check_expert_marker

    check = check_expert_marker(folder)

    def decide(source: ExpertSource, default: bool, note: str) -> ExpertChoice:
        on = default if tokens is None else bool(tokens)
        if source is None:
            on = False
        return ExpertChoice(source, on, note)

    if expert is None or (isinstance(expert, str) and expert.lower() == "none"):
        return decide(None, False, "no expert (expert=none): plain LLaVA-OneVision")
    if isinstance(expert, AnomalyExpert) or str(expert) == "random":
        what = "an untrained (random) expert" if str(expert) == "random" else "the expert given"
        return decide(expert, True, f"{what}, its tokens given to the LLM")
    if str(expert) == "auto":
        if check.marker is not None:
            return decide(check.expert_path, True, f"expert {check.marker.expert_file}: {check.why}")
        candidate = Path(folder) / EXPERT_FILENAME
        if candidate.is_file():
            return decide(
                candidate,
                False,
                f"{EXPERT_FILENAME} used as a detector only, the LLM runs as plain LLaVA-OneVision ({check.why})",
            )
        return decide(None, False, f"no expert in the folder: plain LLaVA-OneVision ({check.why})")
    path = Path(expert).expanduser()
    trained = check.expert_path is not None and path.is_file() and path.resolve() == check.expert_path.resolve()
    if trained:
        return decide(path, True, f"expert {path.name}: {check.why}")
    return decide(
        path,
        False,
        f"expert {path.name} used as a detector only: the LLM was not trained with it ({check.why})",
    )


def _looks_like_path(model: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, relative, ~, deeper) is a path."""
    return (
        model.startswith((".", "/", "~", "\\")) or model.count("/") > 1 or (os.sep != "/" and os.sep in model)
    )


def model_not_found(model: str, detail: str = "") -> ModelNotFoundError:
    """The one-line error for a model that is not here: where it was looked for and how to fetch it."""
    if _looks_like_path(model):
        where = f"no such folder {Path(model).expanduser()}"
    else:
        mode = "offline (HF_HUB_OFFLINE=1)" if hub_offline() else "online"
        where = f"not a local folder, not in the Hugging Face cache {hf_cache_dir()} ({mode})"
    extra = f" [{detail}]" if detail else ""
    return ModelNotFoundError(
        f"model {model!r} not found: {where}{extra}. Fetch it on a machine with internet with "
        f"`huggingface-cli download {model} --local-dir <folder>`, copy the folder here and pass its path."
    )


#: how a user gives a LLaVA-OneVision folder to each command (the end of the missing-model message)
LLAVA_USE = "--brain 'llava:<folder>' (or --model <folder> with --detector ltfm)"


def resolve_model_path(model: str | os.PathLike[str] = DEFAULT_MODEL_ID) -> str:
    """A local folder for `model`: the folder itself, or the hub snapshot.

    Not on disk: with `HF_HUB_OFFLINE` set, or when one short request to the hub finds it unreachable
    or without the repository (`tools.models.require_model`), `ModelNotFoundError` at once; only a hub
    that has it is downloaded from."""
    from tools.models import ModelNotAvailableError, require_model

    name = str(model)
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder {p} has no config.json; is it a transformers model folder?"
            )
        return str(p)
    if _looks_like_path(name):
        raise model_not_found(name)
    try:
        found = require_model("llava", name, use=LLAVA_USE)
    except ModelNotAvailableError as err:
        raise ModelNotFoundError(str(err)) from None
    if found.available:
        return found.location
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name)
    except Exception as err:  # the download broke off: the same advice
        raise model_not_found(name, type(err).__name__) from None


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """A torch dtype from a name ("bfloat16", "bf16", "fp32", ...), or "auto" (as saved)."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32"}
    value = getattr(torch, names.get(dtype, dtype), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use bfloat16, float16, float32 or auto")
    return value


def quantization_config(quantization: str | None, compute_dtype: torch.dtype = torch.bfloat16) -> Any:
    """A `BitsAndBytesConfig` for "4bit" / "8bit" (None for no quantization)."""
    if quantization in (None, "", "none"):
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError("4/8-bit loading needs bitsandbytes: pip install 'looktwice[quant]'")
    from transformers import BitsAndBytesConfig

    if quantization in ("4bit", "nf4", "int4"):
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=list(QUANT_SKIP_MODULES),
        )
    if quantization in ("8bit", "int8"):
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=list(QUANT_SKIP_MODULES))
    raise ValueError(f"unknown quantization {quantization!r}; use '4bit', '8bit' or None")


def _attention(attn_implementation: str | None, device_map: Any) -> str:
    if attn_implementation:
        return attn_implementation
    on_gpu = torch.cuda.is_available() and device_map not in (None, "cpu")
    if on_gpu and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def load_expert_for(
    expert: ExpertSource,
    vision_config: Any,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **config_overrides: Any,
) -> AnomalyExpert | None:
    """Resolve an `expert=` value (other than "auto") into a module (or None) sized for `vision_config`."""
    if expert is None or isinstance(expert, AnomalyExpert):
        return expert.to(device) if isinstance(expert, AnomalyExpert) else None
    from tools.ltfm.expert_io import load_expert, load_official_expert

    if str(expert) == "random":
        cfg = ExpertConfig.from_vision_config(vision_config, **config_overrides)
        module = AnomalyExpert(cfg).eval()
        return module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
    path = Path(expert).expanduser()
    if path.suffix in (".pth", ".pt", ".bin"):
        cfg = ExpertConfig.from_vision_config(vision_config, **config_overrides)
        return load_official_expert(path, config=cfg, device=device, dtype=dtype).eval()
    return load_expert(path, device=device, dtype=dtype).eval()


def load_llava(
    model: str | os.PathLike[str] = DEFAULT_MODEL_ID,
    expert: ExpertSource = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: Any = None,
    quantization: str | None = None,
    attn_implementation: str | None = None,
    expert_dtype: torch.dtype | None = torch.float32,
    expert_tokens: bool | None = None,
) -> LlavaCheckpoint:
    """Load LLaVA-OneVision, its image processor and the expert from a hub id or a local folder.

    Args:
        model: hub id or local folder.
        expert: "auto" (the marker's expert, else the folder's `ltfm_expert.safetensors`, else none), a
            file path, an `AnomalyExpert`, "random", or None.
        dtype: weights dtype of the unquantized parts ("auto" = as saved).
        device_map: accelerate device map ("auto", "cpu", "cuda:0", {"": "cuda:1"}, ...); None = CPU.
        quantization: None, "4bit" or "8bit" (bitsandbytes; vision tower / projector / head unquantized).
        attn_implementation: default SDPA, flash-attention 2 when installed and on a GPU.
        expert_dtype: dtype of the expert (float32 by default; it is small).
        expert_tokens: force whether the LLM reads the expert's tokens (default: `select_expert`).
    """
    from transformers import AutoImageProcessor, LlavaOnevisionForConditionalGeneration

    folder = resolve_model_path(model)
    choice = select_expert(folder, expert, expert_tokens)
    weights_dtype = torch_dtype(dtype)
    kwargs: dict[str, Any] = {
        "dtype": weights_dtype,
        "attn_implementation": _attention(attn_implementation, device_map),
    }
    qconfig = quantization_config(
        quantization, weights_dtype if isinstance(weights_dtype, torch.dtype) else torch.bfloat16
    )
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = device_map or ("auto" if torch.cuda.is_available() else "cpu")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    try:
        llava = LlavaOnevisionForConditionalGeneration.from_pretrained(
            folder, **kwargs, local_files_only=True
        ).eval()
        image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    except OSError as err:
        raise model_not_found(str(model), str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    vision_param = next(llava.model.vision_tower.parameters())
    module = load_expert_for(
        choice.source, llava.config.vision_config, device=vision_param.device, dtype=expert_dtype
    )
    source = str(choice.source) if isinstance(choice.source, (str, os.PathLike)) and str(choice.source) != "random" else ""
    return LlavaCheckpoint(
        folder, llava, image_processor, module, choice.tokens and module is not None, choice.note, source
    )


__all__ = [
    "DEFAULT_MODEL_ID",
    "EXPERT_FILENAME",
    "QUANT_SKIP_MODULES",
    "ExpertChoice",
    "ExpertSource",
    "LLAVA_USE",
    "LlavaCheckpoint",
    "ModelNotFoundError",
    "load_expert_for",
    "load_llava",
    "model_not_found",
    "quantization_config",
    "resolve_model_path",
    "select_expert",
    "torch_dtype",
]
