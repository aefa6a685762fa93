"""`looktwice report`: store, resume after SIGKILL, escaping, bad inputs, empty and read-only output
folders, two reports at once, and a 10,000-row page. Tiny 96 px plates keep it fast."""

from __future__ import annotations

import csv
import fcntl
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from agent.commands.report import build_parser, main
from agent.inspection import InspectionSettings
from agent.report.html import json_for_script, render_html
from agent.report.runner import ReportSettings, ReportUsageError, run_report
from agent.report.store import STATUS_DONE, STATUS_FAILED, Row
from tests.helpers import demo_case, kill_after_commits, plate

SIZE = 96
FAST = ["--resolution", "96", "--quiet"]
ROOT = Path(__file__).resolve().parents[2]


def _plate(seed: int, scratch: bool = False) -> Image.Image:
    return plate(seed, SIZE, scratch)


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return demo_case(tmp_path_factory.mktemp("report-case"), SIZE)


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> Path:
    """A folder of 14 plates (every third one scratched), one in a subfolder."""
    root = tmp_path_factory.mktemp("plates")
    for i in range(14):
        folder = root / "sub" if i == 13 else root
        folder.mkdir(exist_ok=True)
        _plate(100 + i, scratch=i % 3 == 0).save(folder / f"plate_{i:02d}.png")
    return root


def _rows(out: Path) -> list[dict]:
    with sqlite3.connect(out / "results.db") as conn:
        cur = conn.execute("SELECT path, status, sha256, finished_at, error, stem FROM inputs ORDER BY seq")
        return [
            dict(zip(("path", "status", "sha256", "finished_at", "error", "stem"), r, strict=True))
            for r in cur
        ]


def _report(argv: list[str]) -> int:
    return main(["report", *argv])


def _subprocess_report(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "agent.commands.report", *argv],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # Ctrl-C must reach the report as it would from a terminal: a test run may have left SIGINT
        # ignored in this process, and an ignored signal is inherited (Python then never interrupts)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


# ---------------------------------------------------------------------------------------------- happy path
def test_report_with_bad_inputs_list_file_resume_and_changed_file(tmp_path, case, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for q in sorted((case / "queries").iterdir()):
        (inputs / q.name).write_bytes(q.read_bytes())
    (inputs / "zero.png").write_bytes(b"")
    (inputs / "text.png").write_text("not an image")
    (inputs / "notes.md").write_text("ignored: not an image extension")
    jpeg = inputs / "trunc.jpg"
    _plate(7).save(jpeg, quality=90)
    jpeg.write_bytes(jpeg.read_bytes()[:300])
    listed = tmp_path / "list.txt"
    listed.write_text("# more inputs\nextra/listed.png\n\nmissing.png\n")
    (tmp_path / "extra").mkdir()
    _plate(8).save(tmp_path / "extra" / "listed.png")
    out = tmp_path / "out"

    argv = [str(inputs), f"@{listed}", "--refs", str(case / "references"), "--out", str(out), *FAST]
    assert _report(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "report done" in err
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert set(rows) == {
        "plate_good.png",
        "plate_scratch.png",
        "plate_stain.png",
        "zero.png",
        "text.png",
        "trunc.jpg",
        "listed.png",
        "missing.png",
    }
    for bad in ("zero.png", "text.png", "trunc.jpg", "missing.png"):
        assert rows[bad]["status"] == STATUS_FAILED and bad in rows[bad]["error"]
        assert len([ln for ln in err.splitlines() if bad in ln and "error" in ln]) == 1
    assert "file not found" in rows["missing.png"]["error"]
    assert "empty file" in rows["zero.png"]["error"]

    # exports and page
    lines = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 8
    done = [x for x in lines if x["status"] == STATUS_DONE]
    assert len(done) == 4
    for x in done:
        rec = x["record"]
        assert rec["verdict"] in ("good", "defective") and "explanation" in rec and "regions" in rec
        for rel in x["files"].values():
            assert (out / rel).is_file()
        assert (out / x["files"]["thumbnail"]).stat().st_size < 20_000
    scratch = next(x for x in done if x["image_path"].endswith("plate_scratch.png"))
    assert scratch["record"]["verdict"] == "defective" and scratch["record"]["regions"]
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 8 and {r["status"] for r in table} == {"done", "failed"}
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "missing.png" in page and "file not found" in page
    assert "<svg" in page and "defect rate" in page
    assert not (out / ".staging").exists()

    # without --resume: refused, nothing touched
    before = _rows(out)
    code = _report([str(inputs), "--refs", str(case / "references"), "--out", str(out), *FAST])
    assert code == 2 and "--resume" in capsys.readouterr().err
    assert _rows(out) == before

    # --resume: done images are kept, not redone; a changed file is redone
    _plate(55, scratch=True).save(inputs / "plate_good.png")
    assert _report([*argv, "--resume"]) == 1
    after = {Path(r["path"]).name: r for r in _rows(out)}
    for name in ("plate_scratch.png", "plate_stain.png", "listed.png"):
        assert after[name]["finished_at"] == rows[name]["finished_at"], f"{name} was redone"
    assert after["plate_good.png"]["sha256"] != rows["plate_good.png"]["sha256"]
    assert after["plate_good.png"]["finished_at"] > rows["plate_good.png"]["finished_at"]
    assert "1 failed" not in capsys.readouterr().err

    # other settings on resume: refused
    code = _report(
        [
            str(inputs),
            "--refs",
            str(case / "references"),
            "--out",
            str(out),
            "--resolution",
            "128",
            "--resume",
        ]
    )
    assert code == 2 and "other settings" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- kill -9
def test_resume_after_sigkill_loses_nothing_and_redoes_nothing(tmp_path, case, plates):
    out = tmp_path / "out"
    argv = [str(plates), "--refs", str(case / "references"), "--out", str(out), *FAST]
    proc = _subprocess_report(argv)
    kill_after_commits(proc, out, 3, timeout=240)  # the batch set-up on a loaded 2-core machine takes a while
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    before = {r["path"]: r for r in _rows(out)}
    assert 3 <= len(before) < 14, "the kill should land in the middle of the run"
    # every committed row points at complete files; nothing half-written outside the staging folder
    for r in before.values():
        assert r["status"] == STATUS_DONE
        assert json.loads((out / "images" / f"{r['stem']}.json").read_text())["verdict"] in (
            "good",
            "defective",
        )
        with Image.open(out / "images" / f"{r['stem']}_overlay.png") as im:
            im.load()
    for p in (out / "images").iterdir():
        assert not p.name.endswith(".tmp")

    summary = run_report(
        ReportSettings(
            [str(plates)],
            out,
            refs=str(case / "references"),
            inspection=InspectionSettings(detector_options={"resolution": 96}),
            resume=True,
            progress=False,
        ),
        info=lambda m: None,
    )
    after = {r["path"]: r for r in _rows(out)}
    assert len(after) == 14 and all(r["status"] == STATUS_DONE for r in after.values())
    assert summary.skipped == len(before) and summary.processed == 14 - len(before)
    for path, r in before.items():
        assert after[path]["finished_at"] == r["finished_at"], "a committed image was redone"
    assert not (out / ".staging").exists()
    assert len((out / "results.jsonl").read_text().splitlines()) == 14
    assert len(list((out / "thumbs").iterdir())) == 14


def test_ctrl_c_writes_the_page_for_what_is_done_and_exits_130(tmp_path, case, plates):
    out = tmp_path / "out"
    # each image scored while the report runs (references mode: no batch stage scores them first) at
    # a larger working size; the interrupt is sent once the report says it is inspecting (files are
    # written by a background writer, so counting them lagged behind and raced the end of the run)
    proc = _subprocess_report([str(plates), "--refs", str(case / "references"), "--out", str(out),
                               "--resolution", "384", "--detector", "refmatch", "--calibration", "references",
                               "--set", "augment=[]"])
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("report: inspecting"):
                time.sleep(0.5)  # a few images in (about 0.25 s each here)
                proc.send_signal(signal.SIGINT)
                break
        _, rest = proc.communicate(timeout=120)
        err = "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    rows = _rows(out)
    assert len(rows) < 14
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows)
    assert len(_page_data((out / "index.html").read_text(encoding="utf-8"))) == len(rows)


# ---------------------------------------------------------------------------------------------- escaping
_EVIL = ["<img src=x onerror=alert(1)>.png", "<script>alert(1)</script>.png"]


def test_hostile_file_names_are_escaped(tmp_path, case, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    _plate(3, scratch=True).save(inputs / _EVIL[0])
    evil_path = inputs / _EVIL[1]  # on Linux: folder "<script>alert(1)<" holding "script>.png"
    evil_path.parent.mkdir()
    evil_path.write_text("not an image either")  # a failed input: its name lands in the error list
    out = tmp_path / "out"
    code = _report(
        [str(inputs / _EVIL[0]), str(evil_path), "--refs", str(case / "references"), "--out", str(out), *FAST]
    )
    assert code == 1
    capsys.readouterr()
    page = (out / "index.html").read_text(encoding="utf-8")
    _assert_no_injection(page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.png" in page  # the failed input, escaped
    data = _page_data(page)
    assert {Path(r["p"]).name for r in data} == {_EVIL[0], "script>.png"}
    assert any(r["p"].endswith(_EVIL[1]) for r in data)
    for r in data:  # output files have safe names only
        for key in ("th", "ov", "rj"):
            assert re.fullmatch(r"[A-Za-z0-9._/-]*", r[key])


def test_hostile_model_output_is_escaped():
    evil = "</script><script>alert(1)</script><!-- & \u2028"
    rec = {"verdict": "defective", "pred_label": True, "pred_score": 0.9, "threshold": 0.5}
    rec.update(explanation=evil, regions=[{"shape": "<b>", "location": "</script>", "area_fraction": 0.1}])
    rows = [
        Row(
            "/a/" + evil, evil, "x", 1, "h", "s", STATUS_DONE, record=rec, files={"thumbnail": "thumbs/x.jpg"}
        )
    ]
    rows.append(Row("/b", "<svg onload=alert(1)>", "y", None, None, "s", STATUS_FAILED, error=evil))
    page = render_html(rows, {"settings": {"detector": "<script>x</script>", "brain": "rule"}})
    _assert_no_injection(page)
    assert "<svg onload" not in page
    data = _page_data(page)
    assert data[0]["e"] == evil and data[1]["p"] == "<svg onload=alert(1)>"
    assert "<" not in json_for_script({"k": "</script>"})


def _assert_no_injection(page: str) -> None:
    scripts = re.findall(r"<script\b[^>]*>", page, re.IGNORECASE)
    assert len(scripts) == 2, scripts  # the JSON data block and the page's own (nonce) script
    assert scripts[0] == '<script type="application/json" id="report-data">'
    assert re.fullmatch(r'<script nonce="[A-Za-z0-9_-]+">', scripts[1])
    assert "<img src=x" not in page and "alert(1)</script>" not in page
    assert "innerHTML" not in page


def _page_data(page: str) -> list[dict]:
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert block
    return json.loads(block.group(1))


# ---------------------------------------------------------------------------------------------- folders
def test_empty_input_folder_is_a_clear_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = _report([str(tmp_path / "empty"), "--out", str(tmp_path / "out"), *FAST])
    assert code == 2
    assert "no input images found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_that_cannot_be_created_is_a_clear_error(tmp_path, case, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    code = _report([str(case / "queries"), "--out", str(blocker / "out"), *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "not writable" in err and "Traceback" not in err


def test_read_only_output_folder_is_a_clear_error(tmp_path, case, capsys, monkeypatch):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # root writes through folder permissions: make the write fail the way a read-only folder does
        real = Path.write_bytes

        def refuse(self: Path, data: bytes) -> int:
            if self.parent == out:
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", refuse)
    try:
        code = _report([str(case / "queries"), "--out", str(out), *FAST])
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and "not writable: Permission denied" in err and "Traceback" not in err
    assert not any(out.iterdir())


def test_a_folder_in_use_by_another_report_is_refused(tmp_path, case):
    out = tmp_path / "busy"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(ReportUsageError, match="another report is running"):
            run_report(ReportSettings([str(case / "queries")], out, progress=False), info=lambda m: None)
    finally:
        os.close(fd)


def test_two_reports_into_two_folders_at_once(tmp_path, case):
    outs = [tmp_path / "one", tmp_path / "two"]
    procs = [
        _subprocess_report(
            [str(case / "queries"), "--refs", str(case / "references"), "--out", str(o), *FAST]
        )
        for o in outs
    ]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err
    for o in outs:
        rows = _rows(o)
        assert len(rows) == 3 and all(r["status"] == STATUS_DONE for r in rows)
        assert (o / "index.html").is_file()


# ---------------------------------------------------------------------------------------------- scale, parser
def test_page_for_10000_images_is_paginated_and_compact():
    rec = {"verdict": "good", "pred_label": False, "pred_score": 0.1, "threshold": 0.5, "regions": []}
    rows = [
        Row(
            f"/d/img_{i}.png",
            f"d/img_{i}.png",
            f"img_{i}",
            10,
            "h",
            "s",
            STATUS_DONE,
            record=dict(rec, explanation="No defect found."),
        )
        for i in range(10_000)
    ]
    t = time.perf_counter()
    page = render_html(rows, {"settings": {}})
    assert time.perf_counter() - t < 5
    assert len(page) < 4_000_000
    assert len(_page_data(page)) == 10_000
    assert page.count("<img") == 0  # thumbnails are created page by page, lazily, by the script
    assert 'loading = "lazy"' in page and "id=next" in page


def test_parser_wiring_and_help():
    args = build_parser().parse_args(["report", "a", "b", "--out", "o", "--resume", "--set", "blur_sigma=2"])
    assert args.inputs == ["a", "b"] and args.resume and callable(args.func)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["report", "a"])  # --out is required
