"""How a model is loaded (device, dtype, 4/8-bit quantization, attention), spelled one way everywhere.

Why one module: the LLaVA brain (`--brain 'llava:<model>?device=cuda&dtype=bf16&quant=4bit&attn=sdpa'`),
the `ltfm` detector (`--device`, `--set dtype=`) and `looktwice train` (`--device`, `--dtype`) load the
same checkpoints, so they take the same values, checked by the same functions, with the same one-line
error naming the value and what is allowed.

- device: `auto` (CUDA when torch sees a GPU, else the CPU), `cpu`, `cuda`, `cuda:N`.
- dtype: `auto` (bfloat16 on a GPU, float32 on the CPU), `bf16`/`bfloat16`, `fp16`/`float16`/`half`,
  `fp32`/`float32`/`float`.
- quant: `none`, `4bit` (NF4, also `nf4`/`int4`), `8bit` (also `int8`); bitsandbytes.
- attn: `sdpa`, `eager`, `flash_attention_2` (also `flash`, `fa2`); default: flash-attention 2 when it is
  installed and the model is on a GPU, else SDPA.

Nothing here imports torch until a device is resolved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEVICE_VALUES = "auto, cpu, cuda, cuda:N"
DTYPE_VALUES = "auto, bf16 (bfloat16), fp16 (float16), fp32 (float32)"
QUANT_VALUES = "none, 4bit, 8bit"
ATTN_VALUES = "sdpa, eager, flash_attention_2"
DEVICE_HELP = "auto (default: CUDA when present, else the CPU in float32), cpu, cuda, cuda:N"

_DTYPES = {
    "auto": "auto",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "fp32": "float32",
    "float32": "float32",
    "float": "float32",
}
_QUANTS: dict[str, str | None] = {
    "none": None,
    "no": None,
    "": None,
    "4bit": "4bit",
    "nf4": "4bit",
    "int4": "4bit",
    "8bit": "8bit",
    "int8": "8bit",
}
_ATTNS = {
    "sdpa": "sdpa",
    "eager": "eager",
    "flash_attention_2": "flash_attention_2",
    "flash": "flash_attention_2",
    "fa2": "flash_attention_2",
}
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class OptionError(ValueError):
    """A load option has a value that is not allowed; `str()` names it and what is allowed."""


def normalize_device(value: object, what: str = "device") -> str:
    """`auto`, `cpu`, `cuda` or `cuda:N` (case and spaces ignored); raises `OptionError`."""
    text = "auto" if value is None else str(value).strip().lower()
    if not _DEVICE.match(text):
        raise OptionError(f"{what} {value!r} is not allowed; use one of: {DEVICE_VALUES}")
    return text


def normalize_dtype(value: object, what: str = "dtype") -> str:
    """`auto`, `bfloat16`, `float16` or `float32` from any allowed spelling; raises `OptionError`."""
    text = "auto" if value is None else str(value).strip().lower().removeprefix("torch.")
    if text not in _DTYPES:
        raise OptionError(f"{what} {value!r} is not allowed; use one of: {DTYPE_VALUES}")
    return _DTYPES[text]


def normalize_quant(value: object, what: str = "quant") -> str | None:
    """None, `4bit` or `8bit` from any allowed spelling; raises `OptionError`."""
    text = "none" if value is None else str(value).strip().lower()
    if text not in _QUANTS:
        raise OptionError(f"{what} {value!r} is not allowed; use one of: {QUANT_VALUES}")
    return _QUANTS[text]


def normalize_attn(value: object, what: str = "attn") -> str | None:
    """None (the default choice), or an attention implementation transformers knows; raises `OptionError`."""
    if value is None or str(value).strip().lower() in ("", "auto", "default"):
        return None
    text = str(value).strip().lower()
    if text not in _ATTNS:
        raise OptionError(f"{what} {value!r} is not allowed; use one of: {ATTN_VALUES}")
    return _ATTNS[text]


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(device: object) -> str:
    """A concrete device: `auto` becomes `cuda` when torch sees a GPU, else `cpu`. A CUDA device asked
    for on a machine without one raises `OptionError`."""
    text = normalize_device(device)
    if text == "auto":
        return "cuda" if cuda_available() else "cpu"
    if text.startswith("cuda") and not cuda_available():
        raise OptionError(f"device {text!r} asked for, but torch sees no CUDA GPU here; use device=cpu or auto")
    return text


def resolve_dtype(dtype: object, device: str) -> str:
    """A concrete dtype name: `auto` is bfloat16 on a GPU and float32 on the CPU."""
    text = normalize_dtype(dtype)
    if text == "auto":
        return "bfloat16" if str(device).startswith("cuda") else "float32"
    return text


@dataclass(frozen=True)
class LoadOptions:
    """The four load options of a model, normalized (`from_values` checks them)."""

    device: str = "auto"
    dtype: str = "auto"
    quant: str | None = None
    attn: str | None = None

    @classmethod
    def from_values(
        cls, device: object = None, dtype: object = None, quant: object = None, attn: object = None
    ) -> LoadOptions:
        return cls(normalize_device(device), normalize_dtype(dtype), normalize_quant(quant), normalize_attn(attn))

    def resolved(self) -> ResolvedLoad:
        """The device and dtype this machine will use, and the note to print when it is the CPU by
        default."""
        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype, device)
        if self.quant is not None and not device.startswith("cuda"):
            # bitsandbytes runs 4/8-bit on the CPU too (slowly); the compute dtype must be a float type
            dtype = "float32" if self.dtype == "auto" else dtype
        note = None
        if self.device == "auto" and device == "cpu":
            note = f"no CUDA GPU here: the model runs on the CPU in {dtype} (slow); on a GPU machine it uses cuda"
        return ResolvedLoad(device, dtype, self.quant, self.attn, note)


@dataclass(frozen=True)
class ResolvedLoad:
    """Load options with a concrete device and dtype (what `from_pretrained` is given)."""

    device: str
    dtype: str
    quant: str | None
    attn: str | None
    note: str | None = None


__all__ = [
    "ATTN_VALUES",
    "DEVICE_HELP",
    "DEVICE_VALUES",
    "DTYPE_VALUES",
    "QUANT_VALUES",
    "LoadOptions",
    "OptionError",
    "ResolvedLoad",
    "normalize_attn",
    "normalize_device",
    "normalize_dtype",
    "normalize_quant",
    "resolve_device",
    "resolve_dtype",
]
