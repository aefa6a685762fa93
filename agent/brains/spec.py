"""`--brain` values -> brains: `rule | llava:<id-or-folder>[?options] | openai:<base-url>#<model>[?options]`.

    rule                                  the RuleBrain (default; templates, no weights)
    llava                                 LlavaBrain with the default LLaVA-OneVision-0.5B id
    llava:/models/anomaly-ov              LlavaBrain from a local folder or hub id
    llava:/models/anomaly-ov?device=cuda&dtype=bf16&quant=4bit&attn=sdpa
    openai:http://127.0.0.1:8000/v1#Qwen/Qwen2-VL-2B-Instruct
    openai:http://127.0.0.1:8000/v1#qwen2-vl?views=on
    openai                                OpenAIBrain from LOOKTWICE_OPENAI_* environment variables
    openai:http://127.0.0.1:8000          model from LOOKTWICE_OPENAI_MODEL

Options of `llava:` (`tools.ltfm.options` spells them for every command): `device` (auto, cpu, cuda,
cuda:N; default auto: CUDA when present, else the CPU in float32), `dtype` (auto, bf16, fp16, fp32),
`quant` (none, 4bit, 8bit), `attn` (sdpa, eager, flash_attention_2), `expert` (auto, none, or an
expert file: see `tools.ltfm.checkpoints.select_expert`). Option of `openai:`: `views` (on/off, default
off: the second look's crops are sent after the image). An unknown option or value is a `BrainError`
naming it and what is allowed (the commands end it as a usage error).

Any other plain name is looked up in `agent.brains.BRAINS`.
"""

from __future__ import annotations

import urllib.parse

from agent.brains import BRAINS, Brain
from agent.brains.common import BrainError

LLAVA_OPTIONS = ("device", "dtype", "quant", "attn", "expert")
OPENAI_OPTIONS = ("views",)
_ON = {"on": True, "1": True, "true": True, "yes": True, "off": False, "0": False, "false": False, "no": False}


def _query(kind: str, text: str, allowed: tuple[str, ...], spec: str) -> dict[str, str]:
    """`key=value&...` options of a spec, checked against `allowed`."""
    options: dict[str, str] = {}
    for part in filter(None, text.split("&")):
        key, eq, value = part.partition("=")
        key = urllib.parse.unquote(key).strip().lower()
        if not eq or not key:
            raise BrainError(f"--brain {spec!r}: option {part!r} is not KEY=VALUE; allowed keys: {', '.join(allowed)}")
        if key not in allowed:
            raise BrainError(f"--brain {spec!r}: unknown {kind} option {key!r}; allowed: {', '.join(allowed)}")
        options[key] = urllib.parse.unquote(value).strip()
    return options


def parse_brain_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`(kind, options)` for a spec; raises `BrainError` for an empty or malformed one (an unknown option
    or a value that is not allowed included)."""
    text = (spec or "").strip()
    if not text:
        raise BrainError("empty --brain: use rule, llava:<id-or-folder> or openai:<base-url>#<model>")
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    if kind == "llava":
        model, _, query = rest.partition("?")
        options = _query("llava", query, LLAVA_OPTIONS, text)
        _check_llava_values(options, text)
        if model.strip():
            options["model"] = model.strip()
        return "llava", options
    if kind == "openai":
        url, _, model = rest.partition("#")
        model, _, query = model.partition("?")
        options = _query("openai", query, OPENAI_OPTIONS, text)
        if "views" in options and options["views"].lower() not in _ON:
            raise BrainError(f"--brain {text!r}: views {options['views']!r} is not allowed; use on or off")
        if url.strip():
            options["base_url"] = url.strip()
        if model.strip():
            options["model"] = model.strip()
        return "openai", options
    if rest:
        raise BrainError(
            f"brain {kind!r} takes no ':' argument; use rule, llava:<id-or-folder> or openai:<url>#<model>"
        )
    return kind, {}


def _check_llava_values(options: dict[str, str], spec: str) -> None:
    from tools.ltfm.options import (
        OptionError,
        normalize_attn,
        normalize_device,
        normalize_dtype,
        normalize_quant,
    )

    checks = {"device": normalize_device, "dtype": normalize_dtype, "quant": normalize_quant, "attn": normalize_attn}
    for key, check in checks.items():
        if key in options:
            try:
                check(options[key])
            except OptionError as err:
                raise BrainError(f"--brain {spec!r}: {err}") from None


def build_brain(spec: str) -> Brain:
    """Build the brain a `--brain` value names. Models load when `load()` is called or on first use."""
    kind, options = parse_brain_spec(spec)
    if kind == "llava":
        from agent.brains.llava import LlavaBrain

        return LlavaBrain(**options)
    if kind == "openai":
        from agent.brains.openai import OpenAIBrain

        views = _ON[options.pop("views").lower()] if "views" in options else False
        return OpenAIBrain(**options, send_views=views)
    try:
        return BRAINS.build(kind)
    except KeyError as err:
        raise BrainError(f"{err}; or use llava:<id-or-folder> / openai:<base-url>#<model>") from None


__all__ = ["LLAVA_OPTIONS", "OPENAI_OPTIONS", "BrainError", "build_brain", "parse_brain_spec"]
