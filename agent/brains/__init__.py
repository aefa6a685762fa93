"""Brain registry: interchangeable back ends that turn inspection evidence into words.

Entries are lazy, so choosing the rule brain never imports transformers or an HTTP client. Add a brain
by writing a `Brain` subclass in its own module and one `register_lazy` line here.
"""

from __future__ import annotations

from agent.brains.base import Brain
from tools.registry import Registry

BRAINS: Registry[Brain] = Registry("brain")

BRAINS.register_lazy(
    "rule",
    "agent.brains.rule:RuleBrain",
    "templates from prompts/rule_brain.yaml over the measured regions; no weights, works offline",
)
BRAINS.register_lazy(
    "llava",
    "agent.brains.llava:LlavaBrain",
    "the local LLaVA-OneVision (+ anomaly expert) via agent.mllm; --brain llava:<id-or-folder>",
)
BRAINS.register_lazy(
    "openai",
    "agent.brains.openai:OpenAIBrain",
    "any OpenAI-compatible server (vLLM); --brain openai:<base-url>#<model> or LOOKTWICE_OPENAI_* variables",
)

__all__ = ["BRAINS", "Brain"]
