"""RuleBrain: explanations and answers written from measured regions with templates, no weights.

Why it exists: it is the default when no model is configured, so chat, reports and the D&R benchmark
work offline on any machine, and it is the baseline any MLLM brain has to beat. It only reports what
the evidence shows: the score against the threshold and the regions in `record.regions` (location,
size, shape, tone); likely causes are looked up per shape, and said to be inferred.

Every user-visible sentence comes from `prompts/rule_brain.yaml`; this module picks and fills them.
Questions are matched to intents by keywords (also from the YAML); answers are deterministic.

What it says is what the record measured, and never twice in two ways:
- a region's tone comes from one comparison (`tools.regions.region_tone`: its surroundings, or the
  references at the same place), and its defect word from that same tone;
- regions are named by their number (`Region.number`), the number on the overlay and in the tables;
- every mark is listed, or the rest are named by number; a weak, small response at the image's
  edge beside a stronger mark (`tools.regions.edge_response`) is said to be one, not listed as a mark.
`intensity_contrast == 0.0` exactly is read as "not measured" (no image was given to the region
measurer), so no tone is claimed for it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from agent.brains.base import Brain
from prompts import load_prompts
from tools.record import InspectionRecord, Region
from tools.regions import classify_shape, defect_word, edge_response, region_tone

#: Intents by precedence (for two matches at the same position); "verdict" only when nothing else matched.
INTENTS: tuple[str, ...] = ("describe", "suspicious", "compare", "cause", "count", "size", "kind", "where", "verdict")
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
        """The verdict with the score, and for a defective (or uncertain) part the marks by number."""
        nums = self._numbers(record)
        t = self.t["verdict"]
        if record.verdict == "good":
            return self._fill(t["good"], **nums)
        marks = self._salient(record)
        if record.verdict == "review":
            if not marks:
                return self._fill(t["review_spread"], **nums)
            return self._with_edges(self._fill(t["review"], regions=self._regions_phrase(record), **nums), record)
        if not marks:
            return self._fill(t["defective_spread"], **nums)
        return self._with_edges(self._fill(t["defective"], regions=self._regions_phrase(record), **nums), record)

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
        if "suspicious" in names:  # the most suspicious spot is said with its place
            names = [n for n in names if n != "where"]
        return names

    # ------------------------------------------------------------------------------------------------
    # answers per intent

    def _answer_verdict(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["verdict"]
        nums = self._numbers(record)
        if record.verdict == "good":
            return self._fill(a["good"], **nums)
        marks = self._salient(record)
        if record.verdict == "review":
            if not marks:
                return self._fill(a["review_spread"], **nums)
            return self._with_edges(self._fill(a["review"], regions=self._regions_phrase(record), **nums), record)
        if not marks:
            return self._fill(a["defective_spread"], **nums)
        return self._with_edges(self._fill(a["defective"], regions=self._regions_phrase(record), **nums), record)

    def _answer_where(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["where"]
        nums = self._numbers(record)
        marks = self._salient(record)
        if record.verdict == "good":
            if record.suspicious_place is not None:
                return self._fill(a["good_suspect"], location=self._location(record.suspicious_place), **nums)
            return self._fill(a["good"], **nums)
        if not marks:
            return self._fill(self.t["answers"]["spread"], **nums)
        if len(marks) == 1:
            r = marks[0]
            x0, y0, x1, y1 = r.bbox
            text = self._fill(
                a["one"], number=self._number(record, r), location=self._location(r),
                x=r.centroid[0], y=r.centroid[1], x0=x0, y0=y0, x1=x1, y1=y1,
            )
            return self._with_edges(text, record)
        items = [
            self._fill(a["item"], number=self._number(record, r), location=self._location(r), **self._bbox(r), capitalize=False)
            for r in marks
        ]
        text = self._fill(a["several"], count=self._count(len(marks)), listed=self._join(items, self._numbers_of(record, marks)))
        return self._with_edges(text, record)

    def _answer_describe(self, record: InspectionRecord) -> str:
        """What the defect is, where, how big and how it looks, in one or two sentences; for a part that
        passed, its most suspicious place."""
        a = self.t["answers"]["describe"]
        nums = self._numbers(record)
        marks = self._salient(record)
        if record.verdict == "good" or not marks:
            place = record.suspicious_place
            if record.verdict == "good" and place is not None:
                return self._fill(a["good_suspect"], description=self._description(place), **nums)
            early = self._no_region_answer(record)
            return early if early is not None else self._fill(a["spread"], **nums)
        lead = a["review"] if record.verdict == "review" else ""
        if len(marks) == 1:
            r = marks[0]
            kind = self._kind_word(r)
            text = self._fill(a["one"], article=self._article(kind), kind=kind, number=self._number(record, r),
                              description=self._description(r))
            return self._with_edges(lead + text, record)
        items = [self._listed_description(record, r) for r in marks]
        text = self._fill(a["several"], count=self._count(len(marks)), listed=self._join(items, self._numbers_of(record, marks)))
        return self._with_edges(lead + text, record)

    def _answer_suspicious(self, record: InspectionRecord) -> str:
        """The most suspicious spot: the first mark (the loop's ranking), or the place a part that
        passed came closest to failing, with where it is and how high its score peaks there."""
        a = self.t["answers"]["suspicious"]
        nums = self._numbers(record)
        marks = self._salient(record)
        if record.verdict != "good" and marks:
            r = marks[0]
            return self._fill(a["mark"], number=self._number(record, r), **self._place_fields(r), **nums)
        place = record.suspicious_place
        if place is not None:
            return self._fill(a["good" if record.verdict == "good" else "place"], **self._place_fields(place), **nums)
        if record.verdict == "good":
            return self._fill(a["none"], **nums)
        return self._fill(self.t["answers"]["spread"], **nums)

    def _answer_compare(self, record: InspectionRecord) -> str:
        """How the marks (or the most suspicious place) differ from the good references at the same
        place: darker or brighter and by how much, how large, how high the score; without references,
        says so and compares with the surroundings."""
        a = self.t["answers"]["compare"]
        nums = self._numbers(record)
        marks = self._salient(record)
        places = marks if record.verdict != "good" and marks else ([record.suspicious_place] if record.suspicious_place else [])
        if not places:
            return self._no_region_answer(record) or self._fill(self.t["answers"]["spread"], **nums)
        if all(r.reference_contrast is None for r in places):
            lead = a["no_references"]
        else:
            lead = a["good_lead" if record.verdict == "good" else "lead"]
        sentences = [self._fill(lead, **nums)]
        limit = self._max_listed()
        shown = places if len(places) <= limit + 1 else places[:limit]
        for r in shown:
            sentences.append(self._comparison(record, r))
        if len(shown) < len(places):
            sentences.append(self._fill(a["rest"], numbers=self._number_list(self._numbers_of(record, places[len(shown):]))))
        return " ".join(sentences)

    def _comparison(self, record: InspectionRecord, r: Region) -> str:
        a = self.t["answers"]["compare"]
        name = self._name(record, r)
        fields = {**self._place_fields(r), "name": name}
        c = r.reference_contrast
        if c is None:
            tone = region_tone(r)
            if tone is None:
                return self._fill(a["unmeasured"], **fields)
            return self._fill(a["surroundings"], tone=self._tone_phrase(tone), **fields)
        threshold = float(self.t["regions"].get("reference_threshold", 0.02))
        if abs(c) < threshold:
            return self._fill(a["within"], **fields)
        key = "darker" if c < 0 else "brighter"
        return self._fill(a[key], amount=self._percent(abs(c)), **fields)

    def _answer_kind(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["kind"]
        early = self._no_region_answer(record)
        if early is not None:
            return early
        marks = self._salient(record)
        if len(marks) == 1:
            r = marks[0]
            shape = self._shape_texts(r)
            kind = self._kind_word(r)
            fields = {
                "kind_noun": f"{self._article(kind)} {kind}",
                "location": self._location(r),
                "number": self._number(record, r),
                "detail": self._fill(
                    shape["detail"],
                    elongation=r.elongation,
                    area=self._area(r.area_fraction),
                    capitalize=False,
                ),
            }
            tone = region_tone(r)
            if tone is None:
                return self._with_edges(self._fill(a["one"], **fields), record)
            return self._with_edges(self._fill(a["one_with_tone"], tone=self._tone_phrase(tone), **fields), record)
        items = [self._kind_item(a["item"], record, r) for r in marks]
        text = self._fill(a["several"], count=self._count(len(marks)), listed=self._join(items, self._numbers_of(record, marks)))
        return self._with_edges(text, record)

    def _answer_size(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["size"]
        early = self._no_region_answer(record)
        if early is not None:
            return early
        marks = self._salient(record)
        largest = max(marks, key=lambda r: r.area_px)
        x0, y0, x1, y1 = largest.bbox
        fields = {
            "size": self._size_word(largest.area_fraction),
            "area": self._area(largest.area_fraction),
            "w": x1 - x0,
            "h": y1 - y0,
            "area_px": largest.area_px,
            "location": self._location(largest),
            "number": self._number(record, largest),
        }
        if len(marks) == 1:
            return self._fill(a["one"], **fields)
        total = self._fill(
            self.t["area"]["total"],
            percent=self._percent(sum(r.area_fraction for r in marks)),
            capitalize=False,
        )
        return self._fill(a["several"], count=self._count(len(marks)), total=total, **fields)

    def _answer_count(self, record: InspectionRecord) -> str:
        a = self.t["answers"]["count"]
        nums = self._numbers(record)
        if not record.pred_label:
            return self._fill(a["none"], **nums)
        marks = self._salient(record)
        if not marks:
            return self._fill(a["spread"], **nums)
        if len(marks) == 1:
            return self._with_edges(self._fill(a["one"], item=self._kind_item(a["item"], record, marks[0])), record)
        items = [self._kind_item(a["item"], record, r) for r in marks]
        text = self._fill(a["several"], count=self._count(len(marks)), listed=self._join(items, self._numbers_of(record, marks)))
        return self._with_edges(text, record)

    def _answer_cause(self, record: InspectionRecord) -> str:
        """The likely cause and its prevention for each kind of defect seen (the project's one table of
        defect types, `prompts/qa_templates.yaml`), said to be inferred."""
        a = self.t["answers"]["cause"]
        nums = self._numbers(record)
        marks = self._salient(record)
        if record.verdict == "good":
            place = record.suspicious_place
            if place is None:
                return self._fill(a["good"], **nums)
            kind = self._kind_word(place)
            return self._fill(a["good_suspect"], article=self._article(kind), kind=kind, location=self._location(place),
                              cause=self._cause(place), **nums)
        if not marks:
            return self._fill(a["spread"], **nums)
        sentences = [self._fill(a["flagged" if record.verdict == "defective" else "review"], regions=self._regions_phrase(record), **nums)]
        seen: list[str] = []
        for r in marks:
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

    def _regions_phrase(self, record: InspectionRecord) -> str:
        """'mark 1, a medium-sized elongated crack in the upper-left, ...' or 'three marks: (1) a ...;
        (2) a ...; and (3) a ...'."""
        t = self.t["regions"]
        marks = self._salient(record)
        if len(marks) == 1:
            r = marks[0]
            d = self._description(r)
            return self._fill(t["one"], number=self._number(record, r), article=self._article(d), description=d, capitalize=False)
        items = [self._listed_description(record, r) for r in marks]
        return self._fill(
            t["several"], count=self._count(len(marks)), listed=self._join(items, self._numbers_of(record, marks)), capitalize=False
        )

    def _listed_description(self, record: InspectionRecord, r: Region) -> str:
        d = self._description(r)
        return self._fill(self.t["regions"]["item"], number=self._number(record, r), article=self._article(d), description=d,
                          capitalize=False)

    def _with_edges(self, text: str, record: InspectionRecord) -> str:
        """`text`, then one sentence naming the weak responses at the image's edge by number (they are
        outlined on the overlay, so they are accounted for, but not described as marks)."""
        edges = self._edges(record)
        if not edges:
            return text
        t = self.t["regions"]
        numbers = self._numbers_of(record, edges)
        key = "edge_one" if len(edges) == 1 else "edge_several"
        return f"{text} {self._fill(t[key], numbers=self._number_list(numbers), location=self._location(edges[0]))}"

    def _description(self, r: Region) -> str:
        """'small elongated crack in the upper-left, darker than its surroundings, covering about 1.2%
        of the surface (40 x 6 pixels)' (no article); the tone from one comparison only."""
        shape = self._shape_texts(r)
        tone = region_tone(r)
        x0, y0, x1, y1 = (int(v) for v in r.bbox)
        return self._fill(
            self.t["regions"]["description"],
            size=self._size_word(r.area_fraction),
            shape=shape["adjective"],
            kind=self._kind_word(r),
            location=self._location(r),
            tone=f", {self._tone_phrase(tone)}" if tone else "",
            area=self._area(r.area_fraction),
            w=x1 - x0,
            h=y1 - y0,
            capitalize=False,
        )

    def _tone_phrase(self, tone: Any) -> str:
        """The words of a `tools.regions.Tone`: against its surroundings, or the references there."""
        t = self.t["tone"]
        if tone.against == "references":
            return self._fill(t["references"][tone.direction], capitalize=False)
        return str(t[tone.direction]["phrase"])

    def _place_fields(self, r: Region) -> dict[str, Any]:
        """Where a region is and how it looks, for the most-suspicious and comparison answers."""
        d = self._description(r)
        x0, y0, x1, y1 = (int(v) for v in r.bbox)
        return {
            "location": self._location(r), "x": r.centroid[0], "y": r.centroid[1], "peak": float(r.max_score),
            "article": self._article(d), "description": d, "area": self._area(r.area_fraction), "w": x1 - x0, "h": y1 - y0,
        }

    def _kind_word(self, r: Region) -> str:
        """The defect word from measurements (`tools.regions.defect_word`, on the same one tone the
        description gives), or the shape's noun when the tone was not measured."""
        return defect_word(r) if r.kind else self._shape_texts(r)["noun"]

    def _kind_item(self, template: str, record: InspectionRecord, r: Region) -> str:
        kind = self._kind_word(r)
        return self._fill(template, kind_noun=f"{self._article(kind)} {kind}", location=self._location(r),
                          number=self._number(record, r), capitalize=False)

    def _max_listed(self) -> int:
        return max(1, int(self.t["regions"].get("max_listed", 3)))

    def _join(self, items: list[str], numbers: list[int]) -> str:
        """Every item, joined; past `max_listed` + 1 items, the first `max_listed` and the others named
        by their numbers (never a bare 'and one more')."""
        t = self.t["regions"]
        limit = self._max_listed()
        shown = list(items) if len(items) <= limit + 1 else list(items[:limit])
        if len(shown) < len(items):
            shown.append(self._fill(t["rest"], numbers=self._number_list(numbers[limit:]), capitalize=False))
        if len(shown) == 1:
            return shown[0]
        return t["separator"].join(shown[:-1]) + t["last_separator"] + shown[-1]

    def _number_list(self, numbers: list[int]) -> str:
        """'4', '4 and 5', '4, 5 and 7'."""
        words = [str(n) for n in numbers]
        if len(words) <= 1:
            return "".join(words)
        return ", ".join(words[:-1]) + self.t["regions"]["and"] + words[-1]

    def _salient(self, record: InspectionRecord) -> list[Region]:
        """The marks, most suspicious first (the record's order: the loop ranks them by its evidence),
        without the weak responses at the image's edge."""
        regions = list(record.regions)
        if len(regions) < 2:
            return regions
        return [r for r in regions if not edge_response(r, regions[0])]

    def _edges(self, record: InspectionRecord) -> list[Region]:
        regions = list(record.regions)
        return [r for r in regions[1:] if edge_response(r, regions[0])] if len(regions) > 1 else []

    @staticmethod
    def _number(record: InspectionRecord, r: Region) -> int:
        """The region's number (as on the overlay); its place in the record when it was not numbered."""
        if r.number:
            return int(r.number)
        for i, other in enumerate(record.regions, start=1):
            if other is r:
                return i
        return 1

    def _numbers_of(self, record: InspectionRecord, regions: list[Region]) -> list[int]:
        return [self._number(record, r) for r in regions]

    def _name(self, record: InspectionRecord, r: Region) -> str:
        """'mark 2' for a numbered region of the record; 'the most suspicious place' otherwise."""
        if any(other is r for other in record.regions):
            return self._fill(self.t["regions"]["name"], number=self._number(record, r), capitalize=False)
        return str(self.t["regions"]["place_name"])

    def _shape_key(self, r: Region) -> str:
        if r.shape in self.t["shapes"]:
            return r.shape
        return classify_shape(r.elongation, r.area_fraction)

    def _shape_texts(self, r: Region) -> dict[str, str]:
        return self.t["shapes"][self._shape_key(r)]

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
