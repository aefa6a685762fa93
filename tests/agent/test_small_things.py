"""The smaller things a new user met (issue 25, item 6): a typo'd flag shows the command's usage,
an empty folder is named, a lone fake image is said to be unreadable (no promise about a boundary),
`feedback` says what it stored before what it changed, `chat` edits lines with readline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from PIL import Image

from agent.cli import main
from instruct_data.synthesis.demo_case import make_demo_case


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small")
    make_demo_case(root, n_references=3, seed=2, size=96)
    return root


def test_a_typod_flag_shows_the_commands_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["inspect", "part.png", "--refz", "good/"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: looktwice inspect ") and "--fail-on" in err
    assert "looktwice inspect: error: unrecognized arguments: --refz good/" in err
    with pytest.raises(SystemExit):
        main(["report", "in/", "--out", "o", "--resme"])
    assert "looktwice report: error: unrecognized arguments: --resme" in capsys.readouterr().err


def test_an_empty_folder_is_named(tmp_path, capsys):
    empty = tmp_path / "emptydir"
    empty.mkdir()
    assert main(["inspect", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert f"no input images found in: {empty}" in capsys.readouterr().err


def test_a_lone_fake_png_promises_nothing(tmp_path, case, capsys):
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a picture")
    code = main(["inspect", str(fake), "--refs", str(case / "references"), "--out", str(tmp_path / "out"),
                 "--resolution", "96", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "fake.png" in err and "inspected 0 of 1 image(s): none could be read" in err
    assert "boundary" not in err and "false-alarm" not in err


def test_feedback_says_what_it_stored_before_what_it_changed(tmp_path, case, capsys):
    import shutil

    refs = tmp_path / "refs"
    shutil.copytree(case / "references", refs)
    image = case / "queries" / "plate_good.png"
    assert main(["feedback", str(image), "--good", "--refs", str(refs), "--resolution", "96"]) == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    kept = next(i for i, ln in enumerate(lines) if ln.startswith("kept as good:"))
    before = next(i for i, ln in enumerate(lines) if "before the feedback:" in ln)
    after = next(i for i, ln in enumerate(lines) if "with it among the references:" in ln)
    assert kept < before < after
    assert not any(": now " in ln for ln in lines)


def test_chat_uses_readline_on_a_terminal():
    from agent.commands.chat import line_editing

    assert line_editing(interactive=False) is False  # piped input: nothing to edit
    expected = "readline" in sys.modules or _has_readline()
    assert line_editing(interactive=True) is expected
    if expected:
        assert "readline" in sys.modules  # input() now edits lines and keeps a history


def _has_readline() -> bool:
    try:
        import readline  # noqa: F401
    except ImportError:
        return False
    return True


def test_fake_image_in_a_folder_names_the_file(tmp_path, case, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.open(case / "queries" / "plate_good.png").save(folder / "ok.png")
    code = main(["inspect", str(folder), "--refs", str(case / "references"), "--out", str(tmp_path / "out"),
                 "--resolution", "96", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "broken.png" in err and "inspected 1 of 2 image(s)" in err
