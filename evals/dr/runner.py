"""Run the D&R benchmark: every image through the match-of-thought loop and the brain.

Per image (one `agent.inspection.Pipeline.inspect`, the loop `ask` uses):
- detection, for images of test_data.json: the VisA-D&R prompt; the answer is parsed strictly
  (`parse_yes_no`) and an unparsable answer counts as wrong (a miss on an anomalous image, an
  overkill on a good one); `pred_score` of the record feeds image AUROC;
- reasoning, for images of dr.json: the questions in order, the history of this image's earlier
  questions and answers kept; ROUGE-L and SBERT cosine against the reference answers.

One JSON line per image goes to `<out>/samples.jsonl` as soon as it is done; a rerun with the same
`--out` skips the images already there (resumable), and the aggregate (`results.json`,
`results.md`) is always computed from the JSONL lines of the selected images. When the brain fails
(an error, or no text) the loop answers with the RuleBrain; such answers are flagged (`fallback`),
counted, kept as `fallback_text`, and scored as empty answers (unparsable = wrong; ROUGE-L and SBERT
0), because they are not the brain's; `score_fallback` scores the stand-in text instead.

Beside ROUGE-L and SBERT, `rouge_l_control` and `sbert_control` score each reasoning answer of another
image of the same class (seeded) against this image's reference: what the shared template wording
scores without knowing the image (`evals.dr.control`; the pairs and their scores in `control.jsonl`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from evals.dr.control import CONTROL_FILE, control_items, score_sbert, summarize
from evals.dr.judge import LLMJudge
from evals.dr.metrics import detection_metrics
from evals.dr.text import SbertScorer, rouge_l
from instruct_data.answers import parse_yes_no
from instruct_data.qa.reader import QAImage, QASet, load_qa_set

SAMPLES_FILE, RESULTS_FILE, TABLE_FILE = "samples.jsonl", "results.json", "results.md"
SUMMARY_KEYS = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "miss_rate",
    "overkill_rate",
    "image_AUROC",
    "rouge_l",
    "sbert",
    "rouge_l_control",
    "sbert_control",
)
JUDGE_KEY = "judge"  # in results.json only when a judge was used


def detection_question() -> str:
    from prompts import load_prompts

    return load_prompts("qa_templates")["detection_question"]


@dataclass
class DRSettings:
    qa: str
    out: str
    brain: str = "rule"
    detector: str = "auto"
    detector_options: dict[str, Any] = field(default_factory=dict)
    refs_from: str | None = None  # MVTec-layout root; references drawn from <class>/train/good
    shots: int = 4
    seed: int = 0
    limit: int | None = None  # evaluate a seeded sample of this many images
    sbert: bool = True
    data_root: str | None = None  # overrides meta.json's data_root
    judge: str | None = None  # openai:<base-url>#<model>: 1-10 LLM scores of the reasoning answers
    score_fallback: bool = False  # score the RuleBrain's stand-in answers instead of "" (product view)


def select_images(qa: QASet, limit: int | None, seed: int) -> list[QAImage]:
    """All images, or `limit` of them drawn with `seed` (kept in file order)."""
    images = qa.images
    if limit is None or limit >= len(images):
        return list(images)
    if limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    keep = set(random.Random(seed).sample(range(len(images)), limit))
    return [im for i, im in enumerate(images) if i in keep]


def read_samples(path: Path) -> dict[str, dict[str, Any]]:
    """Rows of a samples JSONL by image; a torn last line (an interrupted run) is dropped and the
    file rewritten without it, so appending stays valid."""
    if not path.is_file():
        return {}
    rows: dict[str, dict[str, Any]] = {}
    bad = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[row["image"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            bad = True
    if bad:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows.values()), encoding="utf-8")
    return rows


def _clean(x: Any) -> Any:
    """NaN/inf -> None, recursively, so the JSON is strict."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _mean(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return sum(vals) / len(vals) if vals else math.nan


def aggregate(rows: list[dict[str, Any]], control: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summary metrics from per-image rows (see the module docstring); `control` is the vocabulary
    control's summary (`evals.dr.control.summarize`), None when it was not computed."""
    det = [r for r in rows if r.get("detection")]
    classes = [r["class"] for r in det]
    labels = [bool(r["anomaly"]) for r in det]
    parsed = [r["detection"]["parsed"] for r in det]
    preds = [p if p is not None else (not y) for p, y in zip(parsed, labels, strict=True)]
    scores = [float(r["detection"]["pred_score"]) for r in det]
    result: dict[str, Any] = detection_metrics(classes, labels, preds, scores)
    sources = sorted({r["detection"].get("score_source", "detector and loop score") for r in det})
    result["auroc_score"] = " + ".join(sources) if sources else None
    turns = [t for r in rows for t in r.get("reasoning", [])]
    result["rouge_l"] = _mean([t["rouge_l"] for t in turns])
    sb = [t.get("sbert") for t in turns]
    result["sbert"] = _mean(sb) if any(v is not None for v in sb) else None
    judged = [t.get("judge") for t in turns if "judge" in t]
    if judged:
        result[JUDGE_KEY] = _mean(judged)
    n_q = max((len(r.get("reasoning", [])) for r in rows), default=0)
    result["by_question"] = [
        {
            "question": i,
            "rouge_l": _mean([r["reasoning"][i]["rouge_l"] for r in rows if len(r.get("reasoning", [])) > i]),
            "sbert": _mean([r["reasoning"][i].get("sbert") for r in rows if len(r.get("reasoning", [])) > i]),
        }
        for i in range(n_q)
    ]
    result["counts"] = {
        "images": len(rows),
        "detection": len(det),
        "unparsed": sum(1 for p in parsed if p is None),
        "reasoning_items": sum(1 for r in rows if r.get("reasoning")),
        "questions": len(turns),
        "judge_scored": sum(1 for v in judged if v is not None),
        "judge_failed": sum(1 for v in judged if v is None),
        "fallback_answers": sum(1 for r in det if r["detection"].get("fallback"))
        + sum(1 for t in turns if t.get("fallback")),
    }
    result.update(control or {"rouge_l_control": None, "sbert_control": None})
    secs = [r.get("seconds") for r in rows]
    result["seconds_per_image"] = _mean(secs)
    return result


def markdown_table(result: dict[str, Any], title: str = "D&R benchmark") -> str:
    """The summary as a markdown table (metric | value)."""
    lines = [f"### {title}", "", "| metric | value |", "|---|---:|"]
    for k in (*SUMMARY_KEYS, JUDGE_KEY):
        if k == JUDGE_KEY and k not in result:
            continue
        lines.append(f"| {k} | {_fmt(result.get(k))} |")
    c = result.get("counts", {})
    lines += [
        "",
        f"{c.get('detection', 0)} detection images ({c.get('unparsed', 0)} unparsable answers, counted wrong), "
        f"{c.get('reasoning_items', 0)} reasoning items / {c.get('questions', 0)} questions; "
        f"{c.get('fallback_answers', 0)} answers from the RuleBrain fallback.",
    ]
    ctl = result.get("control")
    if ctl:
        lines.append(
            f"Control (`*_control`): each reasoning answer scored against the reference of another image of "
            f"its class (seed {ctl['seed']}; {ctl['questions']} questions): what shared wording alone scores."
        )
    per = result.get("per_class") or {}
    if len(per) > 1:
        keys = ("accuracy", "precision", "recall", "f1", "image_AUROC")
        lines += ["", "| class | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for cls, v in per.items():
            lines.append(f"| {cls} | " + " | ".join(_fmt(v.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float | int) else str(v)


def compare_table(a: dict[str, Any], b: dict[str, Any], names: tuple[str, str] = ("A", "B")) -> str:
    """Side-by-side markdown table of two results.json dicts, with B - A."""
    lines = [f"| metric | {names[0]} | {names[1]} | {names[1]} - {names[0]} |", "|---|---:|---:|---:|"]
    for k in (*SUMMARY_KEYS, JUDGE_KEY):
        if k == JUDGE_KEY and k not in a and k not in b:
            continue
        va, vb = a.get(k), b.get(k)
        delta = vb - va if isinstance(va, int | float) and isinstance(vb, int | float) else None
        lines.append(f"| {k} | {_fmt(va)} | {_fmt(vb)} | {'n/a' if delta is None else f'{delta:+.3f}'} |")
    return "\n".join(lines) + "\n"


def _fell_back(record: Any) -> bool:
    for entry in reversed(record.trace):
        if entry.get("step") == "answer":
            return bool(entry.get("fallback"))
    return False


class _Loops:
    """One fitted loop per class (references drawn per class), built on first use."""

    def __init__(self, settings: DRSettings, warn: Callable[[str], None]) -> None:
        from agent.brains.spec import build_brain

        self.settings = settings
        self.warn = warn
        self.brain = build_brain(settings.brain)
        self.dataset = None
        if settings.refs_from:
            from instruct_data.datasets import open_dataset

            self.dataset = open_dataset(settings.refs_from)
        self.references: dict[str, list[str]] = {}
        self._loops: dict[str, Any] = {}

    def get(self, cls: str) -> Any:
        if cls in self._loops:
            return self._loops[cls]
        from agent.inspection import InspectionSettings, Pipeline
        from evals.detection import draw_references
        from tools.image_io import load_image_set

        s = self.settings
        refs = []
        if self.dataset is not None:
            known = self.dataset.categories()
            category = cls if cls in known else (known[0] if len(known) == 1 else None)
            if category is None:
                raise ValueError(
                    f"class {cls!r} is not a category of '{s.refs_from}' (known: {', '.join(known)})"
                )
            paths = draw_references(self.dataset, category, s.shots, s.seed)
            self.references[cls] = [str(p) for p in paths]
            refs = load_image_set([str(p) for p in paths], "reference", warn=self.warn)
        # evaluation: the brain is not told the detector's verdict (it would only repeat it)
        settings = InspectionSettings(s.detector, s.detector_options, s.brain, show_verdict_to_brain=False)
        pipeline = Pipeline(settings, warn=self.warn, brain=self.brain).fit(refs, n_images=1)
        self._loops[cls] = pipeline
        return pipeline


def _scored(answer: str, fell_back: bool, score_fallback: bool) -> str:
    """The answer to score: the brain's own. When the brain failed, the loop showed the RuleBrain's
    text instead; a benchmark of the brain scores that as an empty answer unless asked otherwise."""
    return answer if (score_fallback or not fell_back) else ""


def judge_turns(judge: LLMJudge, turns: list[dict[str, Any]]) -> None:
    """Add `judge` (1-10 or None) and `judge_error` to reasoning turns that have no verdict yet."""
    for t in turns:
        if t.get("judge") is not None:
            continue
        verdict = judge.score(t["question"], t["reference"], t["answer"])
        t["judge"] = verdict.score
        t["judge_error"] = verdict.error


def evaluate_image(
    loop: Any,
    item: QAImage,
    question: str,
    sbert: SbertScorer | None,
    judge: LLMJudge | None = None,
    score_fallback: bool = False,
) -> dict[str, Any]:
    """One JSONL row: detection and reasoning of one image (raises ImageLoadError)."""
    from tools.image_io import load_image

    t_start = time.perf_counter()
    image = load_image(item.path)
    t0 = time.perf_counter()
    record = loop.inspect(str(item.path), image, question=question)
    row: dict[str, Any] = {
        "image": item.image,
        "class": item.cls,
        "anomaly": item.anomaly if item.anomaly is not None else True,
        "defect_type": item.defect_type,
        "pred_score": float(record.pred_score),
        "pred_label": bool(record.pred_label),
    }
    if item.in_detection:
        fell_back = _fell_back(record)
        answer = _scored(record.answer or "", fell_back, score_fallback)
        parsed = parse_yes_no(answer)
        row["detection"] = {
            "question": question,
            "answer": answer,
            "parsed": parsed,
            "correct": parsed is not None and parsed == item.anomaly,
            # image AUROC from the brain's own P(Yes) when it gives one (Anomaly-OV's protocol), else
            # from the loop's calibrated score; `score_source` says which
            "pred_score": float(record.decision.get("brain_p_yes", record.pred_score)),
            "score_source": (
                f"brain P(Yes) ({record.decision['brain_p_yes_from']})" if "brain_p_yes" in record.decision
                else "detector and loop score"
            ),
            "fallback": fell_back,
            "seconds": round(time.perf_counter() - t0, 4),
        }
        if fell_back and not score_fallback:
            row["detection"]["fallback_text"] = record.answer or ""
    turns: list[dict[str, Any]] = []
    history: list[tuple[str, str]] = []
    for q, ref in zip(item.questions, item.answers, strict=True):
        t1 = time.perf_counter()
        shown = loop.answer(q, record, list(history))
        fell_back = _fell_back(record)
        ans = _scored(shown, fell_back, score_fallback)
        history.append((q, ans))
        turn = {
            "question": q,
            "answer": ans,
            "reference": ref,
            "rouge_l": round(rouge_l(ans, ref)["f"], 6),
            "sbert": None,
            "fallback": fell_back,
            "seconds": round(time.perf_counter() - t1, 4),
        }
        if fell_back and not score_fallback:
            turn["fallback_text"] = shown
        turns.append(turn)
    if turns and sbert is not None:
        sims = sbert.similarities([t["answer"] for t in turns], [t["reference"] for t in turns])
        for t, s in zip(turns, sims, strict=True):
            t["sbert"] = round(s, 6) if t["answer"].strip() else 0.0
    if judge is not None:
        judge_turns(judge, turns)
    if item.questions:
        row["reasoning"] = turns
    row["seconds"] = round(time.perf_counter() - t_start, 4)
    return row


def rejudge_done(judge: LLMJudge, rows: list[dict[str, Any]]) -> int:
    """Judge the answers of earlier runs that have no score yet (run without a judge, or the judge
    failed then); returns how many were sent to the judge."""
    todo = [t for r in rows for t in r.get("reasoning", []) if t.get("judge") is None]
    for r in rows:
        judge_turns(judge, r.get("reasoning", []))
    return len(todo)


def run_dr_benchmark(
    settings: DRSettings, show_progress: bool = True, warn: Callable[[str], None] = print
) -> tuple[dict[str, Any], list[str]]:
    """Evaluate, write samples.jsonl / results.json / results.md under `settings.out`.

    Returns (results, failures). Raises QASetError, DatasetError, DetectorError, BrainError,
    SbertUnavailable or ValueError for setup problems (before any image is evaluated).
    """
    from agent.progress import progress_bar
    from tools.image_io import ImageLoadError

    qa = load_qa_set(settings.qa, settings.data_root)
    images = select_images(qa, settings.limit, settings.seed)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    samples_path = out / SAMPLES_FILE
    done = read_samples(samples_path)
    todo = [im for im in images if im.image not in done]
    sbert = SbertScorer() if settings.sbert else None
    if sbert is not None and any(im.questions for im in todo):
        sbert._load()  # fail before the long part when the extra is missing
    question = detection_question()
    judge = LLMJudge.from_spec(settings.judge) if settings.judge else None
    if judge is not None:
        rejudged = rejudge_done(judge, [done[im.image] for im in images if im.image in done])
        if rejudged:
            samples_path.write_text(
                "".join(json.dumps(_clean(r)) + "\n" for r in done.values()), encoding="utf-8"
            )
            warn(f"judged {rejudged} answers of images done in an earlier run")
    loops = _Loops(settings, warn) if todo else None
    failures: list[str] = []
    t_run = time.perf_counter()
    with (
        samples_path.open("a", encoding="utf-8") as fh,
        progress_bar(len(todo), "eval-dr", show_progress) as bar,
    ):
        for item in todo:
            loop = loops.get(item.cls)
            try:
                row = evaluate_image(loop, item, question, sbert, judge, settings.score_fallback)
            except (ImageLoadError, OSError) as err:
                failures.append(f"{item.image}: {err}")
                warn(f"skipped: {err}")
                bar.update(1)
                continue
            done[item.image] = row
            fh.write(json.dumps(_clean(row)) + "\n")
            fh.flush()
            bar.update(1)
    rows = [done[im.image] for im in images if im.image in done]
    control = control_items(rows, settings.seed)
    if sbert is not None:
        score_sbert(control, sbert)
    (out / CONTROL_FILE).write_text("".join(json.dumps(_clean(c)) + "\n" for c in control), encoding="utf-8")
    result = aggregate(rows, summarize(control, settings.seed))
    result["settings"] = {
        **asdict(settings),
        "brain_settings": loops.brain.settings() if loops else None,
        "judge_settings": judge.settings() if judge else None,
        "references": loops.references if loops else None,
        "detection_question": question,
        "qa_meta": qa.meta,
    }
    result["n_failed"] = len(failures)
    result["failed"] = failures
    result["skipped_as_done"] = len(images) - len(todo)
    result["run_seconds"] = round(time.perf_counter() - t_run, 3)
    result = _clean(result)
    (out / RESULTS_FILE).write_text(json.dumps(result, indent=2), encoding="utf-8")
    (out / TABLE_FILE).write_text(
        markdown_table(result, f"D&R benchmark: brain {settings.brain}"), encoding="utf-8"
    )
    return result, failures
