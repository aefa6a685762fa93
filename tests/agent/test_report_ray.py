"""`looktwice report --ray`: the same scores as a local run (the batch stages included), a worker
killed mid-run costs nothing, a killed driver resumes with nothing lost or doubled, actors calling an
OpenAI-compatible server, and the one line without the extra. Tiny 96 px plates keep it fast; one
Ray instance (2 CPUs, no dashboard) serves the in-process runs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from agent.commands.report import main
from agent.inspection import InspectionSettings
from agent.report.runner import ReportSettings, ReportSummary, run_report
from agent.report.store import STATUS_DONE
from tests.helpers import demo_case, plate
from tests.openai_server import ScriptedServer, completion

pytestmark = pytest.mark.slow

SIZE = 96
N_PLATES = 16
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return demo_case(tmp_path_factory.mktemp("ray-case"), SIZE)


@pytest.fixture(scope="module")
def plates(tmp_path_factory) -> Path:
    """16 plates, every third one scratched: 8 or more, so with the batch detector (asked for in
    `_settings`) both batch stages (partner pool, calibration sample) run."""
    root = tmp_path_factory.mktemp("ray-plates")
    for i in range(N_PLATES):
        plate(200 + i, SIZE, scratch=i % 3 == 0).save(root / f"plate_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def ray_instance():
    """One Ray for the in-process runs, its session folder in a folder of its own, removed after (no
    session folder is left in the system's temporary folder)."""
    ray = pytest.importorskip("ray")
    folder = tempfile.mkdtemp(prefix="looktwice-ray-test-")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", _temp_dir=folder)
    yield ray
    ray.shutdown()
    shutil.rmtree(folder, ignore_errors=True)


def _settings(plates: Path, case: Path, out: Path, **kw) -> ReportSettings:
    inspection = kw.pop("inspection", None) or InspectionSettings(detector="batch", detector_options={"resolution": SIZE})
    return ReportSettings([str(plates)], out, refs=str(case / "references"), inspection=inspection, progress=False, **kw)


def _on_ray(s: ReportSettings, workers: int = 2) -> ReportSummary:
    from agent.report.ray_runner import RaySettings, ray_inspector

    return run_report(s, info=lambda m: None, inspector=ray_inspector(RaySettings(workers=workers)))


def _records(out: Path) -> dict[str, dict]:
    lines = (out / "results.jsonl").read_text().splitlines()
    return {row["image_path"]: row for row in map(json.loads, lines)}


def _rows(out: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(f"file:{out / 'results.db'}?mode=ro", uri=True, timeout=5) as conn:
        return list(conn.execute("SELECT path, status, finished_at FROM inputs ORDER BY seq"))


def _committed(out: Path) -> int:
    if not (out / "results.db").exists():
        return 0
    try:
        return len(_rows(out))
    except sqlite3.Error:
        return 0


def _every_image_once(out: Path) -> None:
    rows = _rows(out)
    assert len(rows) == N_PLATES and len({r[0] for r in rows}) == N_PLATES
    assert all(r[1] == STATUS_DONE for r in rows), rows
    assert len(_records(out)) == N_PLATES == len((out / "results.jsonl").read_text().splitlines())
    assert len(list((out / "thumbs").iterdir())) == N_PLATES


def test_ray_and_local_give_the_same_scores_and_verdicts(tmp_path, case, plates, ray_instance):
    """Both inspectors over the same todos; the scores compared before the store rounds them."""
    from agent.report.inputs import collect_inputs
    from agent.report.ray_runner import RayInspector, RaySettings
    from agent.report.runner import LocalInspector
    from agent.report.step import Todo

    s = _settings(plates, case, tmp_path / "unused")
    items = collect_inputs(s.inputs)
    todos = [Todo(item, f"s{i}", i, 0, "", 0.0) for i, item in enumerate(items)]
    local = {t.item.key: r for t, r in LocalInspector(s, items).run(iter(todos), lambda m: None)}
    ray = RayInspector(RaySettings(workers=2), s, items)
    remote = {t.item.key: r for t, r in ray.run(iter(todos), lambda m: None)}
    assert set(local) == set(remote) and len(local) == N_PLATES and ray.retried == 0
    a = {k: r.record for k, r in local.items()}
    b = {k: r.record for k, r in remote.items()}
    assert all(rec is not None for rec in (*a.values(), *b.values()))
    assert next(iter(a.values())).decision["method"].startswith("batch")  # the batch stages ran
    assert next(iter(a.values())).detector == "batch"
    diff = max(abs(a[k].pred_score - b[k].pred_score) for k in a)
    assert diff < 1e-6, diff
    assert [a[k].verdict for k in a] == [b[k].verdict for k in a]
    assert [a[k].explanation for k in a] == [b[k].explanation for k in a]
    assert {a[k].verdict for k in a} >= {"good", "defective"}


def test_a_killed_worker_costs_only_its_images_in_flight(tmp_path, case, plates, ray_instance):
    out = tmp_path / "out"
    killed: list[int] = []

    def kill_one_worker() -> None:
        """Once two images are committed: SIGKILL one actor's process (its pid asked from inside it)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _committed(out) < 2:
            time.sleep(0.02)
        names = [a["name"] for a in ray_instance.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith("looktwice-report-")]
        if names:
            actor = ray_instance.get_actor(sorted(names)[0])
            pid = ray_instance.get(actor.pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    summary = _on_ray(_settings(plates, case, out))
    killer.join(timeout=30)
    assert killed, "no worker was killed"
    assert summary.retried >= 1, "the killed worker had images in flight; they must have been sent again"
    assert summary.processed == N_PLATES and summary.failed == 0
    _every_image_once(out)


def test_a_killed_driver_resumes_with_nothing_lost_or_doubled(tmp_path, case, plates, ray_instance):
    out = tmp_path / "out"
    argv = [str(plates), "--refs", str(case / "references"), "--out", str(out), "--resolution", str(SIZE),
            "--quiet", "--ray", "--workers", "2", "--detector", "batch"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # the killed driver cannot remove its Ray's session folder: it goes in a short folder of the test's
    # own (Ray's socket paths must stay under 107 characters), removed at the end
    scratch = tempfile.mkdtemp(prefix="lt-")
    proc = subprocess.Popen([sys.executable, "-m", "agent.commands.report", *argv], cwd=ROOT,
                            env=dict(env, PYTHONPATH=str(ROOT), TMPDIR=scratch), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240  # Ray starting on a loaded 2-core machine takes a while
        while time.monotonic() < deadline and proc.poll() is None and _committed(out) < 3:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
        time.sleep(2)  # the killed driver's Ray processes notice and exit
        shutil.rmtree(scratch, ignore_errors=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    before = {r[0]: r for r in _rows(out)}
    assert 3 <= len(before) < N_PLATES, "the kill should land in the middle of the run"

    summary = _on_ray(_settings(plates, case, out, resume=True))
    assert summary.skipped == len(before) and summary.processed == N_PLATES - len(before)
    _every_image_once(out)
    after = {r[0]: r for r in _rows(out)}
    for path, row in before.items():
        assert after[path][2] == row[2], "a committed image was redone"


def test_actors_call_an_openai_compatible_server_instead_of_loading_a_model(tmp_path, case, plates, ray_instance):
    server = ScriptedServer()
    server.responder = lambda body: (200, completion("A thin scratch across the plate, from handling."), 0.0)
    try:
        inspection = InspectionSettings(
            detector_options={"resolution": SIZE}, brain=f"openai:{server.url}#tiny-vlm", brain_weight=0.0
        )
        summary = _on_ray(_settings(plates, case, tmp_path / "out", inspection=inspection))
    finally:
        server.close()
    assert summary.processed == N_PLATES and summary.failed == 0
    records = _records(tmp_path / "out")
    assert {r["record"]["brain"] for r in records.values()} == {"openai"}
    assert {r["record"]["explanation"] for r in records.values()} == {"A thin scratch across the plate, from handling."}
    bodies = [r["body"] for r in server.requests if r["path"] == "/v1/chat/completions"]
    assert len(bodies) >= N_PLATES and {b["model"] for b in bodies} == {"tiny-vlm"}
    images = [p for b in bodies for m in b["messages"] if isinstance(m["content"], list) for p in m["content"]
              if p.get("type") == "image_url"]
    assert len(images) >= N_PLATES  # each actor sent its images to the server


def test_without_the_extra_ray_is_one_line_and_exit_2(tmp_path, plates, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    out = tmp_path / "out"
    assert main(["report", str(plates), "--out", str(out), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'looktwice[scale]'" in err
    assert not out.exists()
