"""`--brain` values -> brains: `rule | llava:<id-or-folder> | openai:<base-url>#<model>`.

    rule                                  the RuleBrain (default; templates, no weights)
    llava                                 LlavaBrain with the default LLaVA-OneVision-0.5B id
    llava:/models/anomaly-ov              LlavaBrain from a local folder or hub id
    openai:http://127.0.0.1:8000/v1#Qwen/Qwen2-VL-2B-Instruct
    openai                                OpenAIBrain from LOOKTWICE_OPENAI_* environment variables
    openai:http://127.0.0.1:8000          model from LOOKTWICE_OPENAI_MODEL

Any other plain name is looked up in `agent.brains.BRAINS`.
"""

from __future__ import annotations

from agent.brains import BRAINS, Brain
from agent.brains.common import BrainError


def parse_brain_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`(kind, options)` for a spec; raises `BrainError` for an empty or malformed one."""
    text = (spec or "").strip()
    if not text:
        raise BrainError("empty --brain: use rule, llava:<id-or-folder> or openai:<base-url>#<model>")
    kind, _, rest = text.partition(":")
    kind = kind.strip().lower()
    rest = rest.strip()
    if kind == "llava":
        return "llava", ({"model": rest} if rest else {})
    if kind == "openai":
        url, _, model = rest.partition("#")
        options: dict[str, str] = {}
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


def build_brain(spec: str) -> Brain:
    """Build the brain a `--brain` value names. Models load lazily (on the first question)."""
    kind, options = parse_brain_spec(spec)
    if kind == "llava":
        from agent.brains.llava import LlavaBrain

        return LlavaBrain(**options)
    if kind == "openai":
        from agent.brains.openai import OpenAIBrain

        return OpenAIBrain(**options)
    try:
        return BRAINS.build(kind)
    except KeyError as err:
        raise BrainError(f"{err}; or use llava:<id-or-folder> / openai:<base-url>#<model>") from None


__all__ = ["BrainError", "build_brain", "parse_brain_spec"]
