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

__all__ = ["BRAINS", "Brain"]
