"""Prompt templates as data: `prompts/<name>.yaml`, shipped as package data.

Why YAML files and not strings in code: wording is tuned (and translated) by people who do not read
the Python, and the evals compare wordings; keeping every user-visible sentence here lets that happen
without touching logic.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from importlib import resources
from typing import Any

import yaml

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class PromptError(ValueError):
    """A prompt file is missing or malformed; the message names the file."""


def available_prompts() -> list[str]:
    """Names (without `.yaml`) of the prompt files shipped in this package."""
    root = resources.files(__name__)
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


@cache
def _load(name: str) -> dict[str, Any]:
    if not _NAME.match(name) or name.endswith(".yaml"):
        raise PromptError(f"invalid prompt name {name!r}: give the file name without folder or '.yaml'")
    resource = resources.files(__name__).joinpath(f"{name}.yaml")
    where = f"prompts/{name}.yaml"
    if not resource.is_file():
        known = ", ".join(available_prompts()) or "none"
        raise PromptError(f"prompt file '{where}' not found; available: {known}")
    try:
        data = yaml.safe_load(resource.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise PromptError(f"prompt file '{where}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PromptError(f"prompt file '{where}' must hold a mapping at the top level")
    return data


def load_prompts(name: str) -> dict[str, Any]:
    """The parsed `prompts/<name>.yaml`; parsed once per process, each caller gets its own copy."""
    return copy.deepcopy(_load(name))


__all__ = ["PromptError", "available_prompts", "load_prompts"]
