"""LLM judge for the D&R reasoning answers: a 1-10 score from an OpenAI-compatible endpoint.

Why a judge on top of ROUGE-L and SBERT: both reward wording overlap, so a right answer phrased
differently scores low and a fluent wrong one scores high; Anomaly-OV's VisA-D&R uses a GPT-4 score for
that reason. The judge is optional (`eval-dr --judge openai:<base-url>#<model>`), its prompt is data
(`prompts/dr_judge.yaml`), temperature 0. A reply that is not a readable score gets one repair request;
after that the item is unscored (`None`, counted as `judge_failed`), never guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from prompts import load_prompts

SCORE_MIN, SCORE_MAX = 1, 10
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.S)
_SCORE_WORD = re.compile(r"\bscore\b\W{0,3}(\d{1,2})(?:\s*/\s*10)?", re.I)
_OUT_OF_TEN = re.compile(r"\b(\d{1,2})\s*(?:/|out of)\s*10\b", re.I)
_BARE = re.compile(r"^\s*(\d{1,2})\s*[.!]?\s*$")


def parse_judge_score(text: str) -> int | None:
    """The 1-10 score in a judge reply, or None.

    Accepted, in this order: a JSON object with an integer-like `score`; "score: 7" / "Score 7/10";
    "7/10" / "7 out of 10"; a reply that is only a number. Values outside 1-10 are rejected rather
    than clamped (a judge that says 0 or 70 did not follow the scale).
    """
    if not text:
        return None
    for match in _JSON_OBJECT.finditer(text):
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict) and "score" in data:
            return _in_range(data["score"])
    for pattern in (_SCORE_WORD, _OUT_OF_TEN, _BARE):
        m = pattern.search(text)
        if m:
            return _in_range(m.group(1))
    return None


def _in_range(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not number.is_integer() or not SCORE_MIN <= number <= SCORE_MAX:
        return None
    return int(number)


@dataclass
class JudgeVerdict:
    score: int | None
    reply: str
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"score": self.score, "reply": self.reply, "error": self.error}


class LLMJudge:
    """Scores (question, reference, answer) triples with a chat model behind `complete(messages)`."""

    def __init__(self, client: Any, prompts: str = "dr_judge") -> None:
        self.client = client
        self.t = load_prompts(prompts)

    @classmethod
    def from_spec(cls, spec: str, timeout: float = 120.0) -> LLMJudge:
        """`openai:<base-url>#<model>` (or `openai` with LOOKTWICE_OPENAI_*) -> a judge; BrainError
        for anything else, so the CLI reports it as a usage error."""
        from agent.brains.common import BrainError
        from agent.brains.openai import OpenAIBrain
        from agent.brains.spec import parse_brain_spec

        kind, options = parse_brain_spec(spec)
        if kind != "openai":
            raise BrainError(
                f"--judge must be openai:<base-url>#<model> (an OpenAI-compatible server), got {spec!r}"
            )
        return cls(OpenAIBrain(**options, timeout=timeout, max_tokens=128, temperature=0.0))

    def settings(self) -> dict[str, Any]:
        getter = getattr(self.client, "settings", None)
        return getter() if callable(getter) else {"client": type(self.client).__name__}

    def messages(self, question: str, reference: str, answer: str) -> list[dict[str, str]]:
        user = self.t["user"].format(question=question, reference=reference, answer=answer or "(empty)")
        return [{"role": "system", "content": self.t["system"].strip()}, {"role": "user", "content": user}]

    def score(self, question: str, reference: str, answer: str) -> JudgeVerdict:
        """One verdict; server failures become `error` (one line), not exceptions."""
        from agent.brains.common import BrainError

        messages = self.messages(question, reference, answer)
        try:
            reply = self.client.complete(messages)
            score = parse_judge_score(reply)
            if score is None:
                messages += [
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": self.t["repair"].format()},
                ]
                reply = self.client.complete(messages)
                score = parse_judge_score(reply)
        except BrainError as err:
            return JudgeVerdict(None, "", str(err))
        return JudgeVerdict(score, reply, None if score is not None else "reply is not a 1-10 score")


__all__ = ["JudgeVerdict", "LLMJudge", "parse_judge_score"]
