"""Feedback end to end: a false alarm joins the references and is not flagged again; a missed defect is
kept beside them; the web chat's two buttons do the same per session."""

from __future__ import annotations

from PIL import Image

from agent.cli import main
from agent.feedback import GOOD_FOLDER, add_feedback, store_folder
from tests.agent import agent_case as case

FAST = ["--resolution", "96", "--detector", "refmatch"]


def _odd_good_part() -> Image.Image:
    """A good plate slightly out of focus: its texture is unlike the references', so it is flagged."""
    good = case.good(seed=7)
    return good.resize((24, 24), Image.BILINEAR).resize(good.size, Image.BILINEAR)


def test_a_false_alarm_joins_the_references_and_is_not_flagged_again(tmp_path, capsys):
    files = case.write_case(tmp_path)
    part = tmp_path / "odd.png"
    _odd_good_part().save(part)
    assert main(["inspect", str(part), "--refs", str(files["refs"]), "--out", str(tmp_path / "o1"), "--json", *FAST]) == 0
    import json

    before = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert before["verdict"] != "good", "the odd part should be a false alarm before the feedback"

    assert main(["feedback", str(part), "--good", "--refs", str(files["refs"]), *FAST]) == 0
    err = capsys.readouterr().err
    assert "kept as good" in err and "with it among the references: good" in err
    stored = list((files["refs"] / GOOD_FOLDER).glob("*.png"))
    assert len(stored) == 1

    assert main(["inspect", str(part), "--refs", str(files["refs"]), "--out", str(tmp_path / "o2"), "--json", *FAST]) == 0
    after = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert after["verdict"] == "good"
    assert after["decision"]["good_samples"] > before["decision"]["good_samples"]  # re-estimated on more

    # the same image again is stored once
    assert main(["feedback", str(part), "--good", "--refs", str(files["refs"]), *FAST]) == 0
    assert "already kept" in capsys.readouterr().err
    assert len(list((files["refs"] / GOOD_FOLDER).glob("*.png"))) == 1


def test_a_missed_defect_is_kept_beside_the_references(tmp_path, capsys):
    files = case.write_case(tmp_path)
    assert main(["feedback", str(files["scratch"]), "--defective", "--refs", str(files["refs"]), *FAST]) == 0
    kept = list(store_folder(files["refs"], "defective").glob("*.png"))
    assert len(kept) == 1 and not (files["refs"] / GOOD_FOLDER).exists()
    assert "kept as defective" in capsys.readouterr().err


def test_feedback_usage_errors(tmp_path, capsys):
    files = case.write_case(tmp_path)
    assert main(["feedback", str(tmp_path / "nope.png"), "--good", "--refs", str(files["refs"])]) == 2
    assert "nope.png" in capsys.readouterr().err
    assert main(["feedback", str(files["good"]), "--good", "--refs", str(files["good"])]) == 2
    assert "must be a folder" in capsys.readouterr().err


def test_add_feedback_names_by_content(tmp_path):
    refs = tmp_path / "refs"
    refs.mkdir()
    a, new = add_feedback(case.good(), "good", refs, "part 1!")
    b, again = add_feedback(case.good(), "good", refs, "part 1!")
    assert new and not again and a == b and a.name.startswith("part_1_-")


def test_web_chat_buttons(tmp_path):
    from agent.serve.session import ChatSession, Engine, SessionError

    def make(references, warn):
        return case.pipeline(refs=references)

    engine = Engine(make, case.references())
    session = ChatSession(engine, tmp_path / "work")
    part = tmp_path / "odd.png"
    _odd_good_part().save(part)
    session.set_image(part)
    first = session.ask("Is there any defect?")
    assert not first.verdict.startswith("good")
    text = session.feedback("good")
    assert "joins the references (3 now)" in text
    second = session.ask("Is there any defect?")
    assert second.verdict.startswith("good")
    assert "keeps" not in session.feedback("defective") and list((session.folder / "feedback-defective").glob("*.png"))
    try:
        session.feedback("maybe")
    except SessionError as err:
        assert "good or defective" in str(err)
    else:
        raise AssertionError("a bad label must be refused")
