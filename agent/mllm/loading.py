"""Load LLaVA-OneVision (+ the LTFM expert) from a hub id or a local folder.

- `load_model("llava-hf/llava-onevision-qwen2-0.5b-ov-hf")` or `load_model("/models/llava-ov-0.5b")`.
- dtype ("auto", "bfloat16", torch.float16, ...), `device_map` (accelerate), SDPA attention by default
  (flash-attention 2 when `flash_attn` is installed and the model is on a GPU).
- `quantization="4bit"` / `"8bit"` through bitsandbytes; the vision tower, the projector and the LM head
  are left unquantized (`llm_int8_skip_modules` with full prefixes), and the expert is a separate module
  that is never quantized.
- `HF_HUB_OFFLINE=1` is honoured at call time (only the local cache is read). A model that cannot be
  found raises `ModelNotFoundError`, whose message is one line: the model id, where it looked, and how
  to fetch it. No traceback reaches the user from here.
- Expert: `expert=` a safetensors file from `save_expert`, an official `pretrained_expert_*.pth`, an
  `AnomalyExpert`, "random" (untrained, for tests and benchmarks), or None. By default a file named
  `ltfm_expert.safetensors` inside the model folder is used when present.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from agent.mllm.expert import AnomalyExpert, ExpertConfig

DEFAULT_MODEL_ID = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
EXPERT_FILENAME = "ltfm_expert.safetensors"
QUANT_SKIP_MODULES = ["model.vision_tower", "model.multi_modal_projector", "lm_head"]
_TRUE = {"1", "true", "yes", "on"}


class ModelNotFoundError(FileNotFoundError):
    """The model could not be found locally (or on the hub); `str()` is one line saying what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set to a true value now."""
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except Exception:  # pragma: no cover - huggingface_hub always ships with transformers
        return os.path.join(os.environ.get("HF_HOME", "~/.cache/huggingface"), "hub")


def _looks_like_path(model: str) -> bool:
    """A hub id is `name` or `org/name`; anything else (absolute, relative, ~, deeper) is a path."""
    return (
        model.startswith((".", "/", "~", "\\")) or model.count("/") > 1 or (os.sep != "/" and os.sep in model)
    )


def _not_found(model: str, detail: str = "") -> ModelNotFoundError:
    if _looks_like_path(model):
        where = f"no such folder {Path(model).expanduser()}"
    else:
        mode = "offline (HF_HUB_OFFLINE=1)" if hub_offline() else "online"
        where = f"not a local folder, not in the Hugging Face cache {_hub_cache_dir()} ({mode})"
    extra = f" [{detail}]" if detail else ""
    return ModelNotFoundError(
        f"model {model!r} not found: {where}{extra}. Fetch it on a machine with internet with "
        f"`huggingface-cli download {model} --local-dir <folder>`, copy the folder here and pass its path."
    )


def resolve_model_path(model: str | os.PathLike[str] = DEFAULT_MODEL_ID) -> str:
    """A local folder for `model`: the folder itself, or the hub snapshot (downloaded only when online)."""
    name = str(model)
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder {p} has no config.json; is it a transformers model folder?"
            )
        return str(p)
    if _looks_like_path(name):
        raise _not_found(name)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=hub_offline())
    except Exception as err:  # missing cache entry, no network, bad id: all end in the same advice
        raise _not_found(name, type(err).__name__) from None


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
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
    expert: str | os.PathLike[str] | AnomalyExpert | None,
    vision_config: Any,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    **config_overrides: Any,
) -> AnomalyExpert | None:
    """Resolve the `expert` argument of `load_model` into a module (or None)."""
    if expert is None or isinstance(expert, AnomalyExpert):
        return expert.to(device) if isinstance(expert, AnomalyExpert) else None
    from agent.mllm.expert_io import load_expert, load_official_expert

    if str(expert) == "random":
        cfg = ExpertConfig.from_vision_config(vision_config, **config_overrides)
        module = AnomalyExpert(cfg).eval()
        return module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
    path = Path(expert).expanduser()
    if path.suffix in (".pth", ".pt", ".bin"):
        cfg = ExpertConfig.from_vision_config(vision_config, **config_overrides)
        return load_official_expert(path, config=cfg, device=device, dtype=dtype).eval()
    return load_expert(path, device=device, dtype=dtype).eval()


def load_model(
    model: str | os.PathLike[str] = DEFAULT_MODEL_ID,
    expert: str | os.PathLike[str] | AnomalyExpert | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: Any = None,
    quantization: str | None = None,
    attn_implementation: str | None = None,
    expert_dtype: torch.dtype | None = torch.float32,
    cache_size: int = 32,
) -> Any:
    """Load LLaVA-OneVision (+ expert) as a `LookTwiceModel`.

    Args:
        model: hub id or local folder.
        expert: "auto" (the folder's `ltfm_expert.safetensors` if present, else none), a file path,
            an `AnomalyExpert`, "random", or None.
        dtype: weights dtype of the unquantized parts ("auto" = as saved).
        device_map: accelerate device map ("auto", "cpu", "cuda:0", dict); None = CPU.
        quantization: None, "4bit" or "8bit" (bitsandbytes; vision tower / projector / head unquantized).
        attn_implementation: default SDPA, flash-attention 2 when installed and on a GPU.
        expert_dtype: dtype of the expert (float32 by default; it is small).
    """
    from transformers import AutoImageProcessor, AutoTokenizer, LlavaOnevisionForConditionalGeneration

    from agent.mllm.model import LookTwiceModel

    folder = resolve_model_path(model)
    torch_dtype = _dtype(dtype)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "attn_implementation": _attention(attn_implementation, device_map),
    }
    qconfig = quantization_config(
        quantization, torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.bfloat16
    )
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
        kwargs["device_map"] = device_map or ("auto" if torch.cuda.is_available() else "cpu")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    local = {"local_files_only": True}
    try:
        llava = LlavaOnevisionForConditionalGeneration.from_pretrained(folder, **kwargs, **local).eval()
        image_processor = AutoImageProcessor.from_pretrained(folder, **local)
        tokenizer = AutoTokenizer.from_pretrained(folder, **local)
    except OSError as err:
        raise _not_found(str(model), str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if expert == "auto":
        candidate = Path(folder) / EXPERT_FILENAME
        expert = candidate if candidate.is_file() else None
    vision_param = next(llava.model.vision_tower.parameters())
    module = load_expert_for(
        expert, llava.config.vision_config, device=vision_param.device, dtype=expert_dtype
    )
    return LookTwiceModel(llava, image_processor, tokenizer, expert=module, cache_size=cache_size)
