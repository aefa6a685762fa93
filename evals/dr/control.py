"""The vocabulary control of the explanation scores (`rouge_l_control`, `sbert_control`).

Why: the QA set's reference answers and the rule brain's explanations are both built from
`tools.regions.measure_regions` with the same size, shape, location and tone words, so part of their
ROUGE-L and SBERT rewards the shared vocabulary, not what an answer knows about its image. The control
answer for an image A is the answer the same brain gave to the same question about a different image
B of the same class (B drawn with a fixed seed), scored against A's reference. For the rule brain that
is exactly "the same templates filled with the evidence of another image"; the gap between the
brain's scores and the control's is what the explanations know about their own image.

How, and why this way: B's answers are taken from the run's own rows instead of asking the brain again
about B's record. It costs no inference, works the same for every brain (a model brain's answer about
another image is its control too), and uses the answer the benchmark scored for B (an answer scored
as empty because the brain failed stays empty). B is drawn among the images of A's class that have
reasoning answers (the defective images of `dr.json`), so the control keeps the defect vocabulary and
loses only what is specific to A. A turn is paired only when B was asked the same question (sets
from `looktwice data qa` ask the same questions of every image of a class); a class with a single
reasoning image has no control.

The draw: B is the candidate with the smallest `tools.content_key.seeded_rank` of "A -> B" for the
seed, so it does not depend on the order of the rows and changes for A only if a better-ranked
candidate joins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from evals.dr.text import rouge_l
from tools.content_key import seeded_rank

CONTROL_FILE = "control.jsonl"
METHOD = "the same brain's answer to the same question about another image of the class (seeded)"


class Similarities(Protocol):
    def similarities(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]: ...


def control_partner(image: str, candidates: Sequence[str], seed: int) -> str | None:
    """The image whose answers stand in for `image`'s: another of `candidates`, drawn with `seed`."""
    others = [c for c in candidates if c != image]
    if not others:
        return None
    return min(others, key=lambda c: (seeded_rank(f"{image}->{c}", seed), c))


def control_items(rows: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """One item per reasoning image that has a partner: {image, class, control_image, turns}, each
    turn {index (of the question), question, answer (the partner's), reference (this image's),
    rouge_l, sbert: None}."""
    with_answers = [r for r in rows if r.get("reasoning")]
    by_class: dict[str, list[str]] = {}
    for r in with_answers:
        by_class.setdefault(r["class"], []).append(r["image"])
    by_image = {r["image"]: r for r in with_answers}
    items = []
    for row in with_answers:
        partner = control_partner(row["image"], by_class[row["class"]], seed)
        if partner is None:
            continue
        theirs = by_image[partner]["reasoning"]
        turns = []
        for i, mine in enumerate(row["reasoning"]):
            if i >= len(theirs) or "reference" not in mine or "answer" not in theirs[i]:
                continue
            if mine.get("question") != theirs[i].get("question"):
                continue
            answer, reference = theirs[i]["answer"], mine["reference"]
            turns.append(
                {
                    "index": i,
                    "question": mine.get("question"),
                    "answer": answer,
                    "reference": reference,
                    "rouge_l": round(rouge_l(answer, reference)["f"], 6),
                    "sbert": None,
                }
            )
        if turns:
            items.append({"image": row["image"], "class": row["class"], "control_image": partner, "turns": turns})
    return items


def score_sbert(items: list[dict[str, Any]], sbert: Similarities) -> None:
    """Fill each control turn's SBERT cosine (0 for an empty answer, as for the brain's own)."""
    turns = [t for item in items for t in item["turns"]]
    if not turns:
        return
    sims = sbert.similarities([t["answer"] for t in turns], [t["reference"] for t in turns])
    for t, s in zip(turns, sims, strict=True):
        t["sbert"] = round(s, 6) if t["answer"].strip() else 0.0


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else None


def summarize(items: Sequence[dict[str, Any]], seed: int) -> dict[str, Any]:
    """`rouge_l_control`, `sbert_control` (None without SBERT scores), their values per question
    index, and what the control was."""
    turns = [t for item in items for t in item["turns"]]
    by_index: dict[int, list[dict[str, Any]]] = {}
    for t in turns:
        by_index.setdefault(t["index"], []).append(t)
    return {
        "rouge_l_control": _mean([t["rouge_l"] for t in turns]),
        "sbert_control": _mean([t["sbert"] for t in turns]),
        "control_by_question": [
            {
                "question": i,
                "rouge_l_control": _mean([t["rouge_l"] for t in by_index[i]]),
                "sbert_control": _mean([t["sbert"] for t in by_index[i]]),
            }
            for i in sorted(by_index)
        ],
        "control": {"method": METHOD, "seed": seed, "items": len(items), "questions": len(turns)},
    }


__all__ = ["CONTROL_FILE", "METHOD", "control_items", "control_partner", "score_sbert", "summarize"]
