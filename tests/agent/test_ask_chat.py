"""`ask` and `chat` end to end through their parsers: the RuleBrain, an OpenAI-compatible server
(scripted, over HTTP) and the tiny random LLaVA-OneVision behind LlavaBrain."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from agent.commands import ask, chat
from tests.agent import agent_case as case
from tests.helpers import run_commands
from tests.openai_server import ScriptedServer, completion

FAST = ["--resolution", "96"]


def run(argv: list[str]) -> int:
    return run_commands(argv, ask, chat)


def ask_json(files: dict[str, Path], question: str, out: Path, brain: str) -> int:
    """`ask --json` about the scratched part, against the case's references, with `brain`."""
    argv = ["ask", str(files["scratch"]), question, "--json", "--refs", str(files["refs"]), "--out", str(out)]
    return run([*argv, "--brain", brain, *FAST])


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return case.write_case(tmp_path_factory.mktemp("agent_case"))


def test_ask_with_rule_brain(files, tmp_path, capsys):
    out = tmp_path / "out"
    code = run(
        [
            "ask",
            str(files["scratch"]),
            "Is there any defect in this image? Answer Yes or No.",
            "--refs",
            str(files["refs"]),
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Yes") and lines[1].startswith("verdict: defective")
    assert (out / "scratch_overlay.png").is_file() and (out / "scratch.json").is_file()
    trace = json.loads((out / "scratch_trace.json").read_text())
    assert [e["step"] for e in trace][-1] == "conclude"
    saved = json.loads((out / "scratch.json").read_text())
    assert saved["answer"].startswith("Yes") and saved["trace"] == trace


def test_ask_json_with_openai_brain(files, tmp_path, capsys):
    server = ScriptedServer()
    server.script = [
        (200, completion('{"rules": [{"kind": "count", "colour_class": 0, "min": 0, "max": 20}]}'), 0.0),
        (200, completion("Yes"), 0.0),  # P(Yes): no logprobs from this server, so the parsed answer
        (200, completion("Defective: one scratch."), 0.0),  # explanation
        (200, completion("Yes"), 0.0),  # answer
    ]
    try:
        code = ask_json(files, "Is there any defect in this image? Answer Yes or No.", tmp_path, f"openai:{server.url}#tiny")
    finally:
        server.close()
    assert code == 0
    captured = capsys.readouterr()
    data = json.loads(captured.out)  # exactly one JSON object, nothing else on stdout
    assert captured.out.count("\n") == 1
    assert data["answer"] == "Yes" and data["explanation"] == "Defective: one scratch."
    assert data["pred_label"] is True and data["pred_score"] > 0.5 and data["regions"]
    assert data["brain"] == "openai" and (tmp_path / data["overlay"]).is_file()
    steps = [e["step"] for e in data["trace"]]
    assert "propose_rules" in steps and "zoom_recheck" in steps and "match" in steps and "brain_judgement" in steps
    judged = next(e for e in data["trace"] if e["step"] == "brain_judgement")
    assert judged["source"] == "parsed answer" and judged["p_yes"] == 1.0
    assert server.requests[-1]["body"]["model"] == "tiny"


def test_ask_errors(files, tmp_path, capsys):
    assert run(["ask", str(files["broken"]), "Any defect?", "--json", "--out", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "broken.png" in json.loads(captured.out)["error"] and "error" in captured.err
    assert run(["ask", str(files["scratch"]), "Any defect?", "--brain", "gpt4", "--out", str(tmp_path)]) == 2
    assert "unknown brain 'gpt4'" in capsys.readouterr().err
    assert (
        run(
            [
                "ask",
                str(files["scratch"]),
                "Any defect?",
                "--refs",
                str(tmp_path / "none"),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_chat_session(files, tmp_path, monkeypatch, capsys):
    script = "\n".join(
        [
            "Is there a defect?",
            "/heatmap",
            "",
            "Where is it?",
            "/bogus",
            f"/image {files['broken']}",
            f"/image {files['good']}",
            "Is there a defect?",
            "/image",
            f"/save {tmp_path / 'chat.txt'}",
            f"/save {tmp_path / 'chat.json'}",
            "/quit",
            "never read",
        ]
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(script + "\n"))
    out = tmp_path / "chat"
    assert run(["chat", str(files["scratch"]), "--refs", str(files["refs"]), "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"{files['scratch']}: defective")
    answers = [ln for ln in lines if ln.startswith("looktwice> ")]
    assert (
        len(answers) == 3
        and answers[0].startswith("looktwice> Yes")
        and answers[2].startswith("looktwice> No")
    )
    assert str(out / "scratch_overlay.png") in lines and (out / "scratch_overlay.png").is_file()
    assert any("unknown command /bogus" in ln for ln in lines)
    assert "broken.png" in captured.err and any("still talking about" in ln for ln in lines)
    assert any(ln.startswith(f"{files['good']}: good") for ln in lines)
    assert "usage: /image PATH" in lines
    text = (tmp_path / "chat.txt").read_text()
    assert "you: Where is it?" in text and "[image]" in text
    transcript = json.loads((tmp_path / "chat.json").read_text())
    assert [e["event"] for e in transcript] == ["image", "turn", "turn", "image", "turn"]
    assert "never read" not in captured.out


def test_chat_ends_at_end_of_input(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.StringIO("How many marks?\n"))
    assert (
        run(["chat", str(files["good"]), "--out", str(tmp_path), *FAST]) == 0
    )  # no refs: zero-shot fallback
    out = capsys.readouterr().out
    assert out.count("looktwice> ") == 1


# ---------------------------------------------------------------------------------------------- LlavaBrain


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory) -> Path:
    pytest.importorskip("transformers")
    import torch

    from agent.mllm.testing import build_tiny_llava

    torch.set_num_threads(1)
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


def test_llava_brain_with_tiny_model(tiny_llava, tmp_path):
    from agent.brains.common import BrainError
    from agent.brains.llava import LlavaBrain
    from tools.record import InspectionRecord

    brain = LlavaBrain(str(tiny_llava), expert="random", dtype="float32", max_new_tokens=4)
    brain.use_image("p.png", case.scratched())
    record = InspectionRecord("p.png", 0.9, True, 0.5, image_size=(96, 96))
    assert isinstance(brain.explain(record), str)
    history = [("Is it defective?", "Yes.")]
    assert isinstance(brain.answer("Where?", record, history), str)
    assert history == [("Is it defective?", "Yes.")]
    assert 0.0 <= brain.yes_probability(case.scratched()) <= 1.0
    with pytest.raises(BrainError, match="--brain llava: model .* not found: no such folder"):
        LlavaBrain(str(tmp_path / "no_model")).explain(record)


def test_ask_with_llava_brain(files, tiny_llava, tmp_path, capsys):
    code = ask_json(files, "Where is the defect?", tmp_path, f"llava:{tiny_llava}")
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["brain"] == "llava" and isinstance(data["answer"], str) and data["trace"]
    # the model was asked (a random tiny model may say nothing: then the RuleBrain's text is used)
    steps = {e["step"]: e for e in data["trace"]}
    assert steps["explain"]["brain"] == "llava" and steps["answer"]["brain"] == "llava"
    assert steps["propose_rules"]["status"] in ("accepted", "repaired", "rejected")
