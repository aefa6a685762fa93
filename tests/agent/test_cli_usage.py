"""What a new user trips over on the command line (issue 18): a closed pipe, paths that do not exist,
the pixel limit flag, very large images, progress bars."""

from __future__ import annotations

import argparse
import fcntl
import io
import itertools
import json
import os
import pty
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.cli import main
from agent.commands import EXIT_CLOSED_PIPE
from agent.images import DEFAULT_MAX_PIXELS, ImageLimits, analysis_side, limits_from_args
from instruct_data.synthesis.demo_case import brushed_plate, make_demo_case
from tools import image_io

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("case")
    make_demo_case(root, n_references=3, seed=2, size=96)
    rng = np.random.default_rng(3)
    more = root / "many"
    more.mkdir()
    for i in range(8):
        Image.fromarray((brushed_plate(rng, 96) * 255).astype(np.uint8)).save(more / f"part_{i}.png")
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "agent.cli", *args]


# ---------------------------------------------------------------------------------------------- pipes


def test_closed_stdout_ends_quietly_like_coreutils(case, tmp_path):
    """`looktwice inspect DIR --refs R --json | head -1`: no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        _cli("inspect", str(case / "many"), "--refs", str(case / "references"), "--json", "--out",
             str(tmp_path / "o"), "--resolution", "64"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after one line
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert json.loads(first)["verdict"] in ("good", "review", "defective")
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err
    assert code == EXIT_CLOSED_PIPE == 141


# ---------------------------------------------------------------------------------------------- paths


@pytest.mark.parametrize(
    "argv",
    [
        ["inspect", "{nope}", "--refs", "{refs}"],
        ["inspect", "{query}", "--refs", "{nope}"],
        ["report", "{nope}", "--refs", "{refs}"],
        ["report", "@{nope}", "--refs", "{refs}"],
        ["audit", "run", "{nope}", "--refs", "{refs}"],
        ["ask", "{nope}", "Is there a defect?", "--refs", "{refs}"],
        ["chat", "{nope}", "--refs", "{refs}"],
    ],
    ids=["inspect", "inspect-refs", "report", "report-list", "audit", "ask", "chat"],
)
def test_missing_path_is_a_usage_error_and_writes_nothing(argv, case, tmp_path, capsys):
    nope = tmp_path / "nope"
    values = {"nope": str(nope), "refs": str(case / "references"), "query": str(case / "queries" / "plate_good.png")}
    out = tmp_path / "out"
    code = main([a.format(**values) for a in argv] + ["--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(nope) in lines[0] and "does not exist" in lines[0], err
    assert not out.exists()


def test_a_missing_file_inside_a_list_stays_a_failed_input(case, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text(f"{case / 'queries' / 'plate_good.png'}\n{tmp_path / 'gone.png'}\n")
    out = tmp_path / "out"
    code = main(["report", f"@{listing}", "--refs", str(case / "references"), "--out", str(out),
                 "--resolution", "64", "--quiet"])
    assert code == 1 and (out / "index.html").is_file()
    assert "gone.png" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- pixel limit


def test_pixel_limit_flag_on_every_command_that_reads_images():
    from agent.cli import build_parser

    parser = build_parser()
    for argv in (["inspect", "x"], ["report", "x", "--out", "o"], ["ask", "x", "q"], ["chat", "x"],
                 ["audit", "run", "x", "--refs", "r", "--out", "o"], ["audit", "draft", "--refs", "r"],
                 ["serve"]):
        args = parser.parse_args(argv + ["--max-megapixels", "2.5"])
        assert limits_from_args(args).max_pixels == 2_500_000, argv
    assert parser.parse_args(["inspect", "x"]).max_megapixels * 1e6 == DEFAULT_MAX_PIXELS
    assert parser.parse_args(["serve"]).max_megapixels == 40  # web uploads keep their lower default
    assert DEFAULT_MAX_PIXELS == image_io.DEFAULT_MAX_PIXELS


def test_image_over_the_limit_names_the_flag(case, tmp_path, capsys):
    query = str(case / "queries" / "plate_good.png")  # 96 x 96 = 9,216 pixels
    refs = str(case / "references")
    code = main(["inspect", query, "--refs", refs, "--out", str(tmp_path / "o"), "--max-megapixels", "0.005",
                 "--resolution", "64"])
    err = capsys.readouterr().err
    # the references are over the limit too: nothing to compare with is a usage error
    assert code == 2 and "no readable reference images" in err and "--max-megapixels, now 0.005" in err
    small = tmp_path / "small"
    small.mkdir()
    Image.open(sorted((case / "references").iterdir())[0]).resize((40, 40)).save(small / "r.png")
    code = main(["inspect", query, "--refs", str(small), "--out", str(tmp_path / "o2"), "--max-megapixels",
                 "0.005", "--resolution", "64"])
    err = capsys.readouterr().err
    assert code == 1
    assert "image too large: 96x96 = 9,216 pixels exceeds the limit of 5,000" in err
    assert "--max-megapixels, now 0.005" in err
    for bad in ("0", "-1", "500"):
        assert main(["inspect", query, "--refs", refs, "--max-megapixels", bad]) == 2
        assert "--max-megapixels must be above 0 and at most 179" in capsys.readouterr().err


def test_large_image_is_analysed_reduced_with_a_line_saying_so(case, tmp_path, capsys):
    rng = np.random.default_rng(0)
    plate = (brushed_plate(rng, 300) * 255).astype(np.uint8)
    wide = Image.fromarray(np.tile(plate, (1, 22, 1))[:, :6500])  # 6500 x 300
    path = tmp_path / "wide.jpg"
    wide.save(path, quality=90)
    out = tmp_path / "o"
    code = main(["inspect", str(path), "--refs", str(case / "references"), "--out", str(out), "--json",
                 "--resolution", "64"])
    captured = capsys.readouterr()
    assert code == 0
    assert f"{path}: 6500x300 px (2 MP), decoding reduced and analysing at 6144x284" in captured.err
    record = json.loads(captured.out)
    assert record["image_size"] == [6144, 284] and record["source_size"] == [6500, 300]
    assert Image.open(out / "wide_overlay.png").size == (6144, 284)
    assert ImageLimits().max_side == analysis_side({"resolution": 256}) == 6144
    assert analysis_side({"resolution": 2048}) == 8192  # refmatch works at up to 4 x its resolution


# ---------------------------------------------------------------------------------------------- progress


def test_progress_bar_on_a_terminal_only(case, tmp_path, capsys):
    args = ["inspect", str(case / "many"), "--refs", str(case / "references"), "--resolution", "64"]
    assert main(args + ["--out", str(tmp_path / "piped")]) == 0
    assert "%|" not in capsys.readouterr().err  # stderr captured, i.e. not a terminal: no bar
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal's size
    proc = subprocess.Popen(
        _cli(*args, "--out", str(tmp_path / "tty")),
        stdout=subprocess.DEVNULL, stderr=follower, env=_env(), cwd=tmp_path,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=120) == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "inspect: 100%|" in shown and "8/8" in shown


# ---------------------------------------------------------------------------------------------- settings


def test_bad_settings_get_one_line_each(case, tmp_path, capsys):
    query = str(case / "queries" / "plate_good.png")
    out = tmp_path / "o"
    code = main(["inspect", query, "--refs", str(case / "references"), "--out", str(out),
                 "--set", "blur_sigma=abc", "--set", "augment=hflip"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert lines == [
        "looktwice: error: detector setting blur_sigma='abc': expected a number; default 4.0",
        "looktwice: error: detector setting augment='hflip': expected one of 'auto' or a list of text, e.g. [a, b]; "
        "default 'auto'",
    ]
    config = tmp_path / "settings.yaml"
    config.write_text("neighbours: 2.5\n")
    assert main(["report", query, "--out", str(tmp_path / "r"), "--detector", "selfsim", "--config", str(config)]) == 2
    assert "selfsim setting neighbours=2.5: expected a whole number; default 3" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- help


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, parser) of every sub-command, nested ones included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def test_every_help_ends_with_runnable_examples():
    from agent.cli import build_parser

    root = build_parser()
    helps = [(("looktwice",), root), *_commands(root)]
    assert len(helps) > 25
    for path, parser in helps:
        text = parser.format_help().rstrip()
        _, sep, block = text.rpartition("\nexamples:\n")
        assert sep, f"{' '.join(path)} --help has no examples"
        lines = block.splitlines()
        assert 1 <= len(lines) <= 6, path
        for line in lines:
            argv = shlex.split(line.split("  #")[0])
            assert argv[0] == "looktwice", line
            argv = list(itertools.takewhile(lambda a: a not in {">", "|", "&&"}, argv[1:]))
            args = root.parse_args(argv)  # an example the parser refuses exits here
            assert callable(args.func), line


def test_the_qa_builder_has_one_name():
    from agent.cli import build_parser

    top = dict(_commands(build_parser()))
    assert ("data", "qa") in top and ("build-qa",) not in top


# ---------------------------------------------------------------------------------------------- bars


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_rule():
    from agent.progress import progress_bar, wants_progress

    assert wants_progress(True, _Terminal()) and not wants_progress(True, io.StringIO())
    assert not wants_progress(False, _Terminal())
    for total, enabled, stream, shown in [
        (3, True, _Terminal(), True),
        (None, True, _Terminal(), True),  # count not known ahead
        (1, True, _Terminal(), False),  # one image: nothing to show
        (3, False, _Terminal(), False),  # --quiet
        (3, True, io.StringIO(), False),  # piped
    ]:
        with progress_bar(total, "x", enabled, stream) as bar:
            bar.update(3)
        assert ("x: " in stream.getvalue()) is shown, (total, enabled, type(stream))


@pytest.mark.parametrize("command", ["synth", "qa"])
def test_data_builders_show_a_bar_on_a_terminal(command, case, tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    if command == "synth":
        argv = ["data", "synth", "--images", str(case / "many"), "--out", str(tmp_path / "s"), "--kinds", "stain"]
    else:
        root = tmp_path / "mvtec"
        for sub in ("train/good", "test/good", "test/stain", "ground_truth/stain"):
            (root / "plate" / sub).mkdir(parents=True)
        images = sorted((case / "many").iterdir())
        for i, p in enumerate(images[:6]):
            dest = ["train/good", "test/good", "test/stain"][i % 3]
            Image.open(p).save(root / "plate" / dest / f"{i}.png")
            if dest == "test/stain":
                Image.new("L", (96, 96), 255).save(root / "plate" / "ground_truth" / "stain" / f"{i}_mask.png")
        argv = ["data", "qa", "--data", str(root), "--out", str(tmp_path / "qa")]
    assert main(argv) == 0
    assert f"{command}: " in terminal.getvalue() and "img" in terminal.getvalue()
    quiet = _Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main([*argv[:-2], "--out", str(tmp_path / "again"), "--quiet"]) == 0
    assert f"{command}: " not in quiet.getvalue()
