"""RuleBrain: explanations and answers written from measured regions with templates, no weights.

Why it exists: it is the default when no model is configured, so chat, reports and the D&R benchmark
work offline on any machine, and it is the baseline any MLLM brain has to beat. It only reports what
the evidence shows: the score against the threshold and the regions in `record.regions` (location,
size, shape, tone); likely causes are looked up per shape, and said to be inferred.

Every user-visible sentence comes from `prompts/rule_brain.yaml`; this module picks and fills them.
Questions are matched to intents by keywords (also from the YAML); answers are deterministic.
`intensity_contrast == 0.0` exactly is read as "not measured" (no image was given to the region
measurer), so no tone is claimed for it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from agent.brains.base import Brain
from prompts import load_prompts
from tools.record import InspectionRecord, Region
from tools.regions import classify_shape

#: Intents by precedence (for two matches at the same position); "verdict" only when nothing else matched.
INTENTS: tuple[str, ...] = ("describe", "cause", "count", "size", "kind", "where", "verdict")
_VOWELS = frozenset("aeiou")


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


class RuleBrain(Brain):
    """Template-based brain over measured regions (no model, offline, deterministic)."""

    name: ClassVar[str] = "rule"

    def __init__(self, prompts: str = "rule_brain") -> None:
        self.prompt_name = prompts
        self.t: dict[str, Any] = load_prompts(prompts)
        self.qa: dict[str, Any] = load_prompts("qa_templates")  # the defect types, their causes and prevention
        missing = [key for key in ("verdict", "regions", "shapes", "intents", "answers") if key not in self.t]
        if missing:
            raise ValueError(f"prompts/{prompts}.yaml lacks the sections {missing}")
        self._intent_patterns: list[tuple[str, re.Pattern[str]]] = []
        for intent in INTENTS:
            words = self.t["intents"].get(intent) or []
            if words:
                alternatives = "|".join(re.escape(str(w).lower()).replace(r"\ ", r"\s+") for w in words)
                self._intent_patterns.append((intent, re.compile(rf"\b(?:{alternatives})")))
        openers = "|".join(re.escape(str(w).lower()) for w in self.t.get("yes_no_openers", []))
        self._yes_no = re.compile(rf"^(?:{openers})\b|\byes or no\b|(?:^|[.?!]\s*)(?:{openers})\b") if openers else re.compile(r"\byes or no\b")

    def settings(self) -> dict[str, Any]:
        return {"brain": self.name, "prompts": self.prompt_name}

    # ------------------------------------------------------------------------------------------------
    # the interface

    def explain(self, record: InspectionRecord) -> str:
        """The verdict with the score, and for a defective (or uncertain) part the most salient regions."""
        nums = self._numbers(record)
        t = self.t["verdict"]
        if record.verdict == "good":
            return self._fill(t["good"], **nums)
        regions = self._salient(record)
        if record.verdict == "review":
            if not regions:
                return self._fill(t["review_spread"], **nums)
            return self._fill(t["review"], regions=self._regions_phrase(regions), **nums)
        if not regions:
            return self._fill(t["defective_spread"], **nums)
        return self._fill(t["defective"], regions=self._regions_phrase(regions), **nums)

    def answer(
        self, question: str, record: InspectionRecord, history: list[tuple[str, str]] | None = None
    ) -> str:
        """Answer by keyword intents; unknown questions get the explanation and what can be asked.

        `history` is accepted for the common interface; rule answers depend only on the question and
        the record.
        """
        intents = self.intents(question)
        if not intents:
            return self._fill(self.t["answers"]["fallback"], explanation=self.explain(record))
        if self.asks_yes_no(question) and "verdict" not in intents:
            intents = ["verdict", *intents]  # "Is there a defect? Where?": Yes or No first, then the place
        if (record.verdict == "good" and record.suspicious_place is None) or (record.verdict != "good" and not record.regions):
            intents = intents[:1]  # nothing to describe: one "no defect" / "spread out" sentence is enough
        parts: list[str] = []
        for intent in intents:
            text = getattr(self, f"_answer_{intent}")(record)
            if text not in parts:  # a good part answers several intents with the same sentence
                parts.append(text)
        return " ".join(parts)

    def asks_yes_no(self, question: str) -> bool:
        """Whether the question wants a Yes or No (it opens with an auxiliary verb, or says so)."""
        q = " ".join(question.lower().split())
        return bool(self._yes_no.search(q))

    def intents(self, question: str) -> list[str]:
        """The intents a question asks for, in the order the question asks them ("verdict" only alone)."""
        q = " ".join(question.lower().split())
        found: list[tuple[int, int, str]] = []
        for rank, (intent, pattern) in enumerate(self._intent_patterns):
            match = pattern.search(q)
            if match:
                found.append((match.start(), rank, intent))
        names = [intent for _, _, intent in sorted(found)]
        if len(names) > 1 and "verdict" in names:
            names.remove("verdict")
        if "describe" in names:  # a description already says what, where and how big
            names = [n for n in names if n not in ("where", "kind", "size")]
        return names

    # ------------------------------------------------------------------------------------------------
    # answers per intent

    def _answer_verdict(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["verdict"]
        nums = self._numbers(record)
        if record.verdict == "good":
            return self._fill(a["good"], **nums)
        regions = self._salient(record)
        if record.verdict == "review":
            if not regions:
                return self._fill(a["review_spread"], **nums)
            return self._fill(a["review"], regions=self._regions_phrase(regions), **nums)
        if not regions:
            return self._fill(a["defective_spread"], **nums)
        return self._fill(a["defective"], regions=self._regions_phrase(regions), **nums)

    def _answer_where(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["where"]
        nums = self._numbers(record)
        regions = self._salient(record)
        if record.verdict == "good":
            if record.suspicious_place is not None:
                return self._fill(a["good_suspect"], location=self._location(record.suspicious_place), **nums)
            return self._fill(a["good"], **nums)
        if not regions:
            return self._fill(self.t["answers"]["spread"], **nums)
        if len(regions) == 1:
            r = regions[0]
            x0, y0, x1, y1 = r.bbox
            return self._fill(
                a["one"],
                location=self._location(r),
                x=r.centroid[0],
                y=r.centroid[1],
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
            )
        items = [
            self._fill(a["item"], location=self._location(r), **self._bbox(r), capitalize=False)
            for r in regions
        ]
        return self._fill(a["several"], count=self._count(len(regions)), listed=self._join(items))

    def _answer_describe(self, record: InspectionRecord) -> str:
        """What the defect is, where, how big and how it looks, in one or two sentences; for a part that
        passed, its most suspicious place."""
        a = self.t["answers"]["describe"]
        nums = self._numbers(record)
        regions = self._salient(record)
        if record.verdict == "good" or not regions:
            place = record.suspicious_place
            if record.verdict == "good" and place is not None:
                return self._fill(a["good_suspect"], description=self._description(place), **nums)
            early = self._no_region_answer(record)
            return early if early is not None else self._fill(a["spread"], **nums)
        lead = a["review"] if record.verdict == "review" else ""
        if len(regions) == 1:
            r = regions[0]
            kind = self._kind_word(r)
            return lead + self._fill(a["one"], article=self._article(kind), kind=kind, description=self._description(r))
        items = [f"{self._article(d)} {d}" for d in (self._description(r) for r in regions)]
        return lead + self._fill(a["several"], count=self._count(len(regions)), listed=self._join(items))

    def _answer_kind(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["kind"]
        early = self._no_region_answer(record)
        if early is not None:
            return early
        regions = self._salient(record)
        if len(regions) == 1:
            r = regions[0]
            shape = self._shape_texts(r)
            kind = self._kind_word(r)
            fields = {
                "kind_noun": f"{self._article(kind)} {kind}",
                "location": self._location(r),
                "detail": self._fill(
                    shape["detail"],
                    elongation=r.elongation,
                    area=self._area(r.area_fraction),
                    capitalize=False,
                ),
            }
            tone = self._tone(r)
            if tone is None:
                return self._fill(a["one"], **fields)
            return self._fill(a["one_with_tone"], tone=tone["phrase"], **fields)
        items = [self._kind_item(a["item"], r) for r in regions]
        return self._fill(a["several"], count=self._count(len(regions)), listed=self._join(items))

    def _answer_size(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["size"]
        early = self._no_region_answer(record)
        if early is not None:
            return early
        regions = self._salient(record)
        largest = max(regions, key=lambda r: r.area_px)
        x0, y0, x1, y1 = largest.bbox
        fields = {
            "size": self._size_word(largest.area_fraction),
            "area": self._area(largest.area_fraction),
            "w": x1 - x0,
            "h": y1 - y0,
            "area_px": largest.area_px,
            "location": self._location(largest),
        }
        if len(regions) == 1:
            return self._fill(a["one"], **fields)
        total = self._fill(
            self.t["area"]["total"],
            percent=self._percent(sum(r.area_fraction for r in regions)),
            capitalize=False,
        )
        return self._fill(a["several"], count=self._count(len(regions)), total=total, **fields)

    def _answer_count(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["count"]
        nums = self._numbers(record)
        if not record.pred_label:
            return self._fill(a["none"], **nums)
        regions = self._salient(record)
        if not regions:
            return self._fill(a["spread"], **nums)
        if len(regions) == 1:
            return self._fill(a["one"], item=self._kind_item(a["item"], regions[0]))
        items = [self._kind_item(a["item"], r) for r in regions]
        return self._fill(a["several"], count=self._count(len(regions)), listed=self._join(items))

    def _answer_cause(self, record: InspectionRecord) -> str:
        """The likely cause and its prevention for each kind of defect seen (the project's one table of
        defect types, `prompts/qa_templates.yaml`), said to be inferred."""
        a = self.t["answers"]["cause"]
        nums = self._numbers(record)
        regions = self._salient(record)
        if record.verdict == "good":
            place = record.suspicious_place
            if place is None:
                return self._fill(a["good"], **nums)
            kind = self._kind_word(place)
            return self._fill(a["good_suspect"], article=self._article(kind), kind=kind, location=self._location(place),
                              cause=self._cause(place), **nums)
        if not regions:
            return self._fill(a["spread"], **nums)
        sentences = [self._fill(a["flagged" if record.verdict == "defective" else "review"], regions=self._regions_phrase(regions), **nums)]
        seen: list[str] = []
        for r in regions:
            kind = self._kind_word(r)
            if kind not in seen:
                seen.append(kind)
                sentences.append(self._cause(r))
        sentences.append(self._fill(a["caveat"]))
        return " ".join(sentences)

    def _cause(self, r: Region) -> str:
        """'<cause> <prevention>' for the region's defect word, or for its shape when the word has no entry."""
        from instruct_data.qa.builder import defect_entry

        entry = defect_entry(self._kind_word(r), self.qa) if r.kind else None
        if entry is None:
            texts = self.t["shapes"][self._shape_key(r)]
            return f"{self._fill(texts['cause'])} {self._fill(texts['suggestion'])}"
        return f"{entry['cause']} {entry['prevention']}"

    def _no_region_answer(self, record: InspectionRecord) -> str | None:
        """The shared answer when there is nothing to describe (good part, or no distinct region)."""
        nums = self._numbers(record)
        if record.verdict == "good":
            return self._fill(self.t["answers"]["good"], **nums)
        if not self._salient(record):
            return self._fill(self.t["answers"]["spread"], **nums)
        return None

    # ------------------------------------------------------------------------------------------------
    # phrases

    def _regions_phrase(self, regions: list[Region]) -> str:
        """'one elongated dark mark in the upper-left, ...' or 'three marks: an ...; a ...; and a ...'."""
        t = self.t["regions"]
        if len(regions) == 1:
            return self._fill(t["one"], description=self._description(regions[0]), capitalize=False)
        items = [f"{self._article(d)} {d}" for d in (self._description(r) for r in regions)]
        return self._fill(
            t["several"], count=self._count(len(regions)), listed=self._join(items), capitalize=False
        )

    def _description(self, r: Region) -> str:
        """'small elongated crack in the upper-left, darker than its surroundings, covering about 1.2%
        of the surface (40 x 6 pixels), darker than every reference there' (no article)."""
        shape = self._shape_texts(r)
        tone = self._tone(r)
        x0, y0, x1, y1 = (int(v) for v in r.bbox)
        return self._fill(
            self.t["regions"]["description"],
            size=self._size_word(r.area_fraction),
            shape=shape["adjective"],
            kind=self._kind_word(r),
            location=self._location(r),
            tone=f", {tone['phrase']}" if tone else "",
            area=self._area(r.area_fraction),
            w=x1 - x0,
            h=y1 - y0,
            reference=self._reference_clause(r),
            capitalize=False,
        )

    def _kind_word(self, r: Region) -> str:
        """The defect word from measurements (`tools.regions.defect_word`), or the shape's noun when the
        tone was not measured."""
        return r.kind or self._shape_texts(r)["noun"]

    def _reference_clause(self, r: Region) -> str:
        c = r.reference_contrast
        t = self.t["regions"]
        if c is None or abs(c) < float(t.get("reference_threshold", 0.02)):
            return ""
        return t["reference_darker"] if c < 0 else t["reference_brighter"]

    def _kind_item(self, template: str, r: Region) -> str:
        kind = self._kind_word(r)
        return self._fill(template, kind_noun=f"{self._article(kind)} {kind}", location=self._location(r), capitalize=False)

    def _join(self, items: list[str]) -> str:
        """Lists the first `max_listed` items; the rest become '... and N more'."""
        t = self.t["regions"]
        limit = max(1, int(t.get("max_listed", 3)))
        shown = list(items[:limit])
        if len(items) > limit:
            shown.append(self._fill(t["more"], count=self._count(len(items) - limit), capitalize=False))
        if len(shown) == 1:
            return shown[0]
        return t["separator"].join(shown[:-1]) + t["last_separator"] + shown[-1]

    def _salient(self, record: InspectionRecord) -> list[Region]:
        """Regions, most suspicious first: the record's order (the loop ranks them by its evidence)."""
        return list(record.regions)

    def _shape_key(self, r: Region) -> str:
        if r.shape in self.t["shapes"]:
            return r.shape
        return classify_shape(r.elongation, r.area_fraction)

    def _shape_texts(self, r: Region) -> dict[str, str]:
        return self.t["shapes"][self._shape_key(r)]

    def _tone(self, r: Region) -> dict[str, str] | None:
        """The tone entry (darker / brighter / similar), or None when contrast was not measured."""
        c = float(r.intensity_contrast)
        if c == 0.0 or c != c:  # 0.0 exactly: no image was given; NaN: unknown
            return None
        t = self.t["tone"]
        threshold = float(t.get("threshold", 0.05))
        if c <= -threshold:
            return t["darker"]
        if c >= threshold:
            return t["brighter"]
        return t["similar"]

    def _location(self, r: Region) -> str:
        phrases = self.t["locations"]
        if r.location in phrases and r.location != "other":
            return phrases[r.location]
        return self._fill(phrases["other"], location=r.location, capitalize=False)

    @staticmethod
    def _percent(fraction: float) -> str:
        pct = 100.0 * float(fraction)
        if pct >= 0.95:
            return f"{pct:.0f}%"
        return f"{max(pct, 0.1):.1f}%"

    def _area(self, fraction: float) -> str:
        t = self.t["area"]
        if 100.0 * fraction < 0.05:
            return self._fill(t["under"], percent=self._percent(fraction), capitalize=False)
        return self._fill(t["about"], percent=self._percent(fraction), capitalize=False)

    def _size_word(self, fraction: float) -> str:
        sizes = self.t["sizes"]
        for entry in sizes:
            if entry.get("below") is None or fraction < float(entry["below"]):
                return str(entry["word"])
        return str(sizes[-1]["word"])

    def _count(self, n: int) -> str:
        words = self.t.get("count_words") or []
        return str(words[n]) if 0 <= n < len(words) else str(n)

    def _article(self, phrase: str) -> str:
        t = self.t["articles"]
        return t["before_vowel"] if phrase[:1].lower() in _VOWELS else t["default"]

    @staticmethod
    def _numbers(record: InspectionRecord) -> dict[str, float]:
        return {"score": float(record.pred_score), "threshold": float(record.threshold)}

    @staticmethod
    def _bbox(r: Region) -> dict[str, int]:
        x0, y0, x1, y1 = (int(v) for v in r.bbox)
        return {"x0": x0, "y0": y0, "x1": x1, "y1": y1}

    @staticmethod
    def _fill(template: str, capitalize: bool = True, **fields: Any) -> str:
        text = " ".join(str(template).split()).format(**fields)  # folded YAML may carry newlines
        return _capitalize(text) if capitalize else text
