"""Optional LLM rewriting of the template answers of the instruction data, cached, never required.

Why: template answers repeat a handful of phrasings, and a model fine-tuned on them learns the
templates. An LLM behind an OpenAI-compatible endpoint (or the local LLaVA) rephrases each answer;
each rewrite is checked before it replaces the template: it must keep the leading Yes/No, every
location word and every number of the original, and stay within a sane length. Anything else (a
failed request, a rejected rewrite) keeps the template answer, so the data set is always complete.
Rewrites are cached in a JSON-lines file keyed by model, prompt version, question and answer, so a
rerun (or another seed over the same images) asks the model only for what is new.

The model comes in as a chat function (a brain's `chat_text`): this layer never builds a brain.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from instruct_data.answers import parse_yes_no
from instruct_data.instruct.conversations import IMAGE_TOKEN
from prompts import load_prompts
from tools.regions import LOCATION_WORDS

_NUMBER = re.compile(r"\d+(?:\.\d+)?")

#: (prompt, earlier (user, assistant) turns) -> reply: the shape of `agent.brains.base.TextChat`, declared
#: here because this layer takes it in and cannot import it. Raising counts as a failed request.
Chat = Callable[[str, list[tuple[str, str]]], str]


class RewriteCache:
    """Rewrites by key in a JSON-lines file; appended and flushed as they come (a killed run keeps them)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.data: dict[str, str] = {}
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.data[str(row["key"])] = str(row["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line from a killed run
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def put(self, key: str, text: str) -> None:
        self.data[key] = text
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"key": key, "text": text}) + "\n")


def facts_kept(original: str, rewrite: str) -> str | None:
    """None when `rewrite` keeps the facts of `original`, else what it lost (one short phrase)."""
    text = rewrite.strip()
    if not text:
        return "empty rewrite"
    if len(text) > 3 * len(original) + 80:
        return "rewrite much longer than the answer"
    lead = parse_yes_no(original)
    if lead is not None and parse_yes_no(text) is not lead:
        return f"leading '{'Yes' if lead else 'No'}' changed"
    low_o, low_r = original.lower(), text.lower()
    for word in LOCATION_WORDS:
        if re.search(rf"\b{re.escape(word)}\b", low_o) and not re.search(rf"\b{re.escape(word)}\b", low_r):
            return f"location '{word}' dropped"
    missing = [n for n in _NUMBER.findall(original) if n not in _NUMBER.findall(text)]
    if missing:
        return f"number {missing[0]} dropped"
    return None


@dataclass
class RewriteStats:
    rewritten: int = 0
    from_cache: int = 0
    kept_detection: int = 0  # one-word Yes/No answers are never rewritten (the strict benchmark format)
    rejected: int = 0
    failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rewritten": self.rewritten,
            "from_cache": self.from_cache,
            "kept_detection": self.kept_detection,
            "rejected": self.rejected,
            "failed": self.failed,
            "reasons": dict(sorted(self.reasons.items())),
        }


class AnswerRewriter:
    """Rewrites gpt turns of LLaVA-JSON items in place through `chat` (see the module docstring)."""

    def __init__(
        self, chat: Chat, model_id: str, cache: RewriteCache, prompts: str = "instruct_rewrite"
    ) -> None:
        self.chat = chat
        self.model_id = model_id
        self.cache = cache
        self.t = load_prompts(prompts)
        self.stats = RewriteStats()
        self._down: str | None = None  # after the endpoint failed, stop asking (the rest keep templates)

    def key(self, question: str, answer: str) -> str:
        raw = json.dumps([self.model_id, self.t.get("version", 1), question, answer])
        return hashlib.sha256(raw.encode("utf-8")).hexdigest()

    def rewrite(self, question: str, answer: str) -> str:
        """The rewritten answer, or `answer` itself (detection answers, failures, rejected rewrites)."""
        if answer.strip().rstrip(".").lower() in ("yes", "no"):
            self.stats.kept_detection += 1
            return answer
        key = self.key(question, answer)
        cached = self.cache.get(key)
        if cached is not None:
            self.stats.from_cache += 1
            return cached
        if self._down is not None:
            self.stats.failed += 1
            return answer
        prompt = self.t["system"].strip() + "\n\n" + self.t["user"].format(question=question, answer=answer)
        try:
            text = self.chat(prompt, []).strip()
        except Exception as err:  # noqa: BLE001 - a failed request keeps the templates, never stops the build
            self._down = str(err)
            self.stats.failed += 1
            return answer
        problem = facts_kept(answer, text)
        if problem is not None:
            self.stats.rejected += 1
            reason = problem.split()[0]  # "leading", "location", "number", "empty", "rewrite"
            self.stats.reasons[reason] = self.stats.reasons.get(reason, 0) + 1
            return answer
        self.cache.put(key, text)
        self.stats.rewritten += 1
        return text

    def rewrite_items(
        self, items: list[dict[str, Any]], progress: Callable[[int], None] | None = None
    ) -> None:
        """Rewrite every gpt turn of `items` in place (the question is the human turn before it)."""
        for item in items:
            turns = item["conversations"]
            for i in range(1, len(turns), 2):
                question = turns[i - 1]["value"].replace(IMAGE_TOKEN, "").strip()
                turns[i]["value"] = self.rewrite(question, turns[i]["value"])
            if progress:
                progress(1)

    @property
    def endpoint_error(self) -> str | None:
        return self._down


def rewrite_answers(
    items: list[dict[str, Any]], chat: Chat, model: dict[str, Any], cache: str | Path
) -> dict[str, Any]:
    """Rephrase the answers of `items` in place through `chat` (`model`: its settings, which key the
    cache file `cache`); returns the counts, the model and the cache path."""
    store = RewriteCache(cache)
    rewriter = AnswerRewriter(chat, json.dumps(model, sort_keys=True), store)
    rewriter.rewrite_items(items)
    result = rewriter.stats.as_dict()
    result["model"] = model
    result["cache"] = str(store.path)
    if rewriter.endpoint_error:
        result["endpoint_error"] = rewriter.endpoint_error
    return result


__all__ = ["AnswerRewriter", "Chat", "RewriteCache", "RewriteStats", "facts_kept", "rewrite_answers"]
