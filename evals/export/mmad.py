"""Answers of an `eval-dr` run in MMAD's result format.

MMAD (Jiang et al., 2024) stores a model's answers as a JSON list of
`{image, question, question_type, correct_answer, gpt_answer}`. From the run's `samples.jsonl`:

- the detection question of each image becomes a record of type "Anomaly Detection" with
  `correct_answer` "Yes" or "No" and `gpt_answer` the parsed leading Yes/No of the answer (the
  same strict parsing as `eval-dr`); an unparsable answer is kept verbatim, so it never equals
  the correct answer and counts wrong, as in `eval-dr`;
- each reasoning turn becomes a record with the question's type (question 1 "Defect Description",
  question 2 "Defect Analysis", later ones "Defect Analysis"), the reference answer as
  `correct_answer` and the brain's answer as `gpt_answer` (free text: MMAD's own questions are
  multiple choice, so these records are for reading and for text metrics, not for its accuracy).

`image` is the path as written in the QA set (relative to its data root), optionally prefixed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from instruct_data.answers import parse_yes_no

SAMPLES_FILE = "samples.jsonl"
DETECTION_TYPE = "Anomaly Detection"
QUESTION_TYPES = ("Defect Description", "Defect Analysis")
MMAD_KEYS = ("image", "question", "question_type", "correct_answer", "gpt_answer")


class ExportError(ValueError):
    """The run folder or its samples file is missing or unreadable."""


def read_run_samples(run: str | Path) -> list[dict[str, Any]]:
    """Rows of `<run>/samples.jsonl` (or of the JSONL file given), read only; a torn line is skipped."""
    path = Path(run)
    if path.is_dir():
        path = path / SAMPLES_FILE
    if not path.is_file():
        raise ExportError(f"no samples file at '{path}': run `looktwice eval-dr --out DIR` first")
    rows: dict[str, dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("image"), str):
            rows[row["image"]] = row
    return list(rows.values())


def question_type(index: int) -> str:
    """MMAD question type of the reasoning question at `index` (0-based)."""
    return QUESTION_TYPES[min(index, len(QUESTION_TYPES) - 1)]


def _yes_no(answer: str) -> str:
    parsed = parse_yes_no(answer)
    if parsed is None:
        return answer
    return "Yes" if parsed else "No"


def mmad_records(rows: list[dict[str, Any]], image_prefix: str = "") -> list[dict[str, str]]:
    """MMAD records of `eval-dr` sample rows (detection first, then the reasoning turns, per image)."""
    out: list[dict[str, str]] = []
    for row in rows:
        image = f"{image_prefix}{row['image']}"
        det = row.get("detection")
        if det:
            out.append(
                {
                    "image": image,
                    "question": str(det.get("question", "")),
                    "question_type": DETECTION_TYPE,
                    "correct_answer": "Yes" if row.get("anomaly") else "No",
                    "gpt_answer": _yes_no(str(det.get("answer") or "")),
                }
            )
        for i, turn in enumerate(row.get("reasoning") or []):
            out.append(
                {
                    "image": image,
                    "question": str(turn.get("question", "")),
                    "question_type": question_type(i),
                    "correct_answer": str(turn.get("reference", "")),
                    "gpt_answer": str(turn.get("answer") or ""),
                }
            )
    return out


def export_mmad(run: str | Path, out_file: str | Path, image_prefix: str = "") -> list[dict[str, str]]:
    """Write the MMAD answers JSON of an `eval-dr` run folder; returns the records."""
    records = mmad_records(read_run_samples(run), image_prefix)
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    return records
