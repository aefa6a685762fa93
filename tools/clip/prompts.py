"""WinCLIP's compositional prompt ensemble: state words x templates, read from prompts/winclip.yaml.

The file is read here with a small local reader (importlib.resources + yaml.safe_load) so this module
does not depend on anything else in `prompts`. Users may pass their own YAML file with the same keys.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

PROMPT_FILE = "winclip.yaml"
_KEYS = ("normal_states", "anomalous_states", "templates")


class PromptFileError(ValueError):
    """The prompt file is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class PromptSet:
    """State words (with `{}` for the object) and templates (with `{}` for the stated object)."""

    normal_states: tuple[str, ...]
    anomalous_states: tuple[str, ...]
    templates: tuple[str, ...]
    source: str = ""

    def expand(self, object_name: str) -> tuple[list[str], list[str]]:
        """All (normal, anomalous) sentences for `object_name`: every state in every template."""
        obj = clean_object_name(object_name)
        normal = [t.format(s.format(obj)) for s in self.normal_states for t in self.templates]
        anomalous = [t.format(s.format(obj)) for s in self.anomalous_states for t in self.templates]
        return normal, anomalous


def clean_object_name(name: str | None) -> str:
    """A category id as words: "metal_nut" -> "metal nut", "" or None -> "object"."""
    words = re.sub(r"[_\-]+", " ", name or "").strip()
    return re.sub(r"\s+", " ", words) or "object"


def _read_default() -> tuple[str, str]:
    where = f"prompts/{PROMPT_FILE}"
    try:
        resource = resources.files("prompts").joinpath(PROMPT_FILE)
        if resource.is_file():
            return resource.read_text(encoding="utf-8"), where
    except (ModuleNotFoundError, TypeError):
        pass
    fallback = Path(__file__).resolve().parents[2] / "prompts" / PROMPT_FILE  # a source checkout
    if fallback.is_file():
        return fallback.read_text(encoding="utf-8"), str(fallback)
    raise PromptFileError(f"prompt file '{where}' not found")


def load_prompt_set(path: str | os.PathLike[str] | None = None) -> PromptSet:
    """The packaged prompts/winclip.yaml, or a user's YAML file with the same three lists."""
    if path is None:
        text, where = _read_default()
    else:
        p = Path(path).expanduser()
        if not p.is_file():
            raise PromptFileError(f"prompt file '{p}' not found")
        text, where = p.read_text(encoding="utf-8"), str(p)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PromptFileError(f"prompt file '{where}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise PromptFileError(f"prompt file '{where}' must hold a mapping with keys {list(_KEYS)}")
    lists = {}
    for key in _KEYS:
        values = data.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise PromptFileError(f"prompt file '{where}': '{key}' must be a non-empty list of strings")
        for v in values:
            if v.count("{}") != 1:
                raise PromptFileError(f"prompt file '{where}': {key} entry {v!r} needs exactly one '{{}}'")
        lists[key] = tuple(values)
    return PromptSet(lists["normal_states"], lists["anomalous_states"], lists["templates"], where)
