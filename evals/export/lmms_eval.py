"""An lmms-eval task folder for a D&R QA set, so lmms-eval users can run our benchmark on their models.

`write_lmms_eval_task(qa, out, task)` writes, into `out`:

- `<task>.jsonl`: one document per question. Detection documents (one per image of test_data.json,
  the VisA-D&R prompt, target "Yes"/"No") and reasoning documents (one per question of dr.json,
  target the reference answer; the earlier questions of the image with their *reference* answers
  are the history, because lmms-eval asks one question per document);
- `<task>.yaml`: the task config (`dataset_path: json` with `dataset_kwargs.data_files` pointing at
  the JSONL by absolute path, `output_type: generate_until`, `!function utils.*` hooks,
  `generation_kwargs`, `metric_list`);
- `utils.py`: self-contained hooks (no looktwice import): `doc_to_visual` (PIL), `doc_to_text`,
  `doc_to_target`, `process_results` (the strict leading Yes/No parsing of `eval-dr`, ROUGE-L) and
  the aggregations (detection metrics as the unweighted mean over classes, as `eval-dr` reports them;
  an unparsable answer counts as wrong).

Image paths in the JSONL are absolute; when the data moved, set `LOOKTWICE_DATA_ROOT` and the hooks
resolve the relative `image` against it. AUROC is not exported (a generated text has no score).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from evals.dr.reader import load_qa_set

DEFAULT_TASK = "looktwice_dr"
DETECTION_QUESTION = "Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."
METRICS = (
    ("dr_accuracy", "aggregate_accuracy"),
    ("dr_precision", "aggregate_precision"),
    ("dr_recall", "aggregate_recall"),
    ("dr_f1", "aggregate_f1"),
    ("dr_miss_rate", "aggregate_miss_rate"),
    ("dr_overkill_rate", "aggregate_overkill_rate"),
    ("dr_rouge_l", "aggregate_rouge_l"),
)
LOWER_IS_BETTER = {"dr_miss_rate", "dr_overkill_rate"}
_TASK_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

_UTILS_HEAD = '''"""Hooks of the LookTwice D&R task for lmms-eval (self-contained: no looktwice import).

Written by `looktwice export lmms-eval`. Detection answers are read strictly: only a leading Yes/No
counts ("Yes.", "**No** defects"; not "The eyes ..." or "I think yes"); an unparsable answer counts
as wrong. Detection metrics are per class, then the unweighted mean over classes.
"""

from __future__ import annotations

import math
import os
import re

from PIL import Image

'''

_UTILS_HOOKS = '''
def rouge_l(answer, reference):
    """ROUGE-L F-measure (beta 1) over lower-cased letter/digit tokens."""
    a, r = tokenize(answer), tokenize(reference)
    lcs = lcs_length(a, r)
    if not a or not r or not lcs:
        return 0.0
    p, rec = lcs / len(a), lcs / len(r)
    return 2 * p * rec / (p + rec)


def image_path(doc):
    root = os.environ.get("LOOKTWICE_DATA_ROOT")
    if root:
        return os.path.join(root, doc["image"])
    return doc["image_path"]


def doc_to_visual(doc):
    with Image.open(image_path(doc)) as im:
        return [im.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kw = lmms_eval_specific_kwargs or {}
    parts = []
    for q, a in doc.get("history") or []:
        parts.append("Question: " + q + "\\nAnswer: " + a)
    if parts:
        parts = ["Earlier in this conversation:", *parts, ""]
    text = "\\n".join([*parts, doc["question"]])
    return kw.get("pre_prompt", "") + text + kw.get("post_prompt", "")


def doc_to_target(doc):
    return doc["answer"]


def process_results(doc, results):
    answer = results[0] if results else ""
    answer = answer if isinstance(answer, str) else str(answer)
    payload = {"kind": doc["kind"], "class": doc["class"], "anomaly": bool(doc["anomaly"])}
    if doc["kind"] == "detection":
        payload["parsed"] = parse_yes_no(answer)
    else:
        payload["rouge_l"] = rouge_l(answer, doc["answer"])
    return {
        "dr_accuracy": payload,
        "dr_precision": payload,
        "dr_recall": payload,
        "dr_f1": payload,
        "dr_miss_rate": payload,
        "dr_overkill_rate": payload,
        "dr_rouge_l": payload,
    }


def _class_scores(items):
    tp = fp = fn = tn = 0
    for it in items:
        y = it["anomaly"]
        p = it["parsed"] if it["parsed"] is not None else (not y)  # unparsable = wrong
        tp += y and p
        fp += (not y) and p
        fn += y and not p
        tn += (not y) and not p
    return rates_from_counts(tp, fp, fn, tn)


def _mean_over_classes(items, key):
    by_class = {}
    for it in items:
        if it.get("kind") == "detection":
            by_class.setdefault(it["class"], []).append(it)
    vals = [_class_scores(v)[key] for _, v in sorted(by_class.items())]
    vals = [v for v in vals if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def aggregate_accuracy(items):
    return _mean_over_classes(items, "accuracy")


def aggregate_precision(items):
    return _mean_over_classes(items, "precision")


def aggregate_recall(items):
    return _mean_over_classes(items, "recall")


def aggregate_f1(items):
    return _mean_over_classes(items, "f1")


def aggregate_miss_rate(items):
    return _mean_over_classes(items, "miss_rate")


def aggregate_overkill_rate(items):
    return _mean_over_classes(items, "overkill_rate")


def aggregate_rouge_l(items):
    vals = [it["rouge_l"] for it in items if it.get("kind") == "reasoning"]
    return sum(vals) / len(vals) if vals else math.nan
'''


def utils_py() -> str:
    """The text of the task's `utils.py`. Its Yes/No parsing, tokens, LCS and detection rates are the
    source of the functions `eval-dr` scores with (copied in, as the file must run without
    looktwice), so the two cannot drift apart."""
    import inspect

    from evals.dr import text
    from evals.metrics import rates_from_counts
    from instruct_data import answers

    patterns = (
        f"_LEADING = re.compile({answers._LEADING.pattern!r}, re.IGNORECASE)\n"
        f"_TOKEN = re.compile({text._TOKEN.pattern!r})\n"
    )
    shared = (answers.parse_yes_no, text.tokenize, text.lcs_length, rates_from_counts)
    return _UTILS_HEAD + patterns + "".join("\n\n" + inspect.getsource(f) for f in shared) + "\n" + _UTILS_HOOKS


class LmmsExportError(ValueError):
    """Bad task name or output folder."""


def task_documents(qa: str | Path, data_root: str | Path | None = None) -> list[dict[str, Any]]:
    """The task's documents (detection first per image, then its reasoning questions in order)."""
    qa_set = load_qa_set(qa, data_root)
    question = str(qa_set.meta.get("detection_question") or DETECTION_QUESTION)
    docs: list[dict[str, Any]] = []
    for im in qa_set.images:
        base = {
            "image": im.image,
            "image_path": str(Path(im.path).resolve()),
            "class": im.cls,
            "anomaly": bool(im.anomaly) if im.anomaly is not None else True,
            "defect_type": im.defect_type,
        }
        if im.in_detection:
            docs.append(
                {
                    "id": f"{im.image}#detection",
                    "kind": "detection",
                    **base,
                    "turn": 0,
                    "question": question,
                    "answer": "Yes" if im.anomaly else "No",
                    "history": [],
                }
            )
        for i, (q, a) in enumerate(zip(im.questions, im.answers, strict=True)):
            docs.append(
                {
                    "id": f"{im.image}#q{i + 1}",
                    "kind": "reasoning",
                    **base,
                    "turn": i + 1,
                    "question": q,
                    "answer": a,
                    "history": [[pq, pa] for pq, pa in zip(im.questions[:i], im.answers[:i], strict=True)],
                }
            )
    return docs


def task_yaml(task: str, data_file: Path) -> str:
    """The lmms-eval task config (text: PyYAML cannot emit the `!function` tags lmms-eval reads)."""
    lines = [
        "# lmms-eval task written by `looktwice export lmms-eval`; run with",
        f"#   lmms_eval --model <model> --tasks {task} --include_path <this folder>",
        f"task: {task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data_file))}",
        "test_split: test",
        "output_type: generate_until",
        "doc_to_visual: !function utils.doc_to_visual",
        "doc_to_text: !function utils.doc_to_text",
        "doc_to_target: !function utils.doc_to_target",
        "generation_kwargs:",
        "  max_new_tokens: 256",
        "  temperature: 0",
        "  top_p: 1.0",
        "  num_beams: 1",
        "  do_sample: false",
        "process_results: !function utils.process_results",
        "metric_list:",
    ]
    for metric, fn in METRICS:
        lines += [
            f"  - metric: {metric}",
            f"    aggregation: !function utils.{fn}",
            f"    higher_is_better: {'false' if metric in LOWER_IS_BETTER else 'true'}",
        ]
    lines += [
        "lmms_eval_specific_kwargs:",
        "  default:",
        '    pre_prompt: ""',
        '    post_prompt: ""',
        "metadata:",
        "  version: 0.0",
    ]
    return "\n".join(lines) + "\n"


def write_lmms_eval_task(
    qa: str | Path, out: str | Path, task: str = DEFAULT_TASK, data_root: str | Path | None = None
) -> dict[str, Any]:
    """Write `<task>.yaml`, `utils.py` and `<task>.jsonl` into `out`; returns paths and counts.

    Raises `LmmsExportError` for a bad task name and `QASetError` for a bad QA folder.
    """
    if not _TASK_NAME.match(task):
        raise LmmsExportError(f"task name {task!r}: use letters, digits, '_', '.', '-'")
    docs = task_documents(qa, data_root)
    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder / f"{task}.jsonl"
    data_file.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    yaml_file = folder / f"{task}.yaml"
    yaml_file.write_text(task_yaml(task, data_file), encoding="utf-8")
    utils_file = folder / "utils.py"
    utils_file.write_text(utils_py(), encoding="utf-8")
    return {
        "yaml": yaml_file,
        "utils": utils_file,
        "data": data_file,
        "documents": len(docs),
        "detection": sum(1 for d in docs if d["kind"] == "detection"),
        "reasoning": sum(1 for d in docs if d["kind"] == "reasoning"),
    }
