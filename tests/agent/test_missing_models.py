"""A requested model that is not there fails loudly (issue 25, item 2): an explicitly named detector or
brain that cannot be loaded is a usage error (exit 2) with one complete message (what was asked, where
it was looked for, how to get it), after at most one short request to the hub, whether HF_HUB_OFFLINE
is set or not; `--fallback` gives the old behaviour, said once. The time it takes (under 5 s) is
measured in a benchmark (`evals/bench_missing_model.py`, BENCHMARKS.md), not here.

The hub is a local server that counts the connections it gets and drops each one (`HF_ENDPOINT`): no
network is needed, and every attempt to reach "the hub" is counted.
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout

import pytest

from agent.cli import main
from tests.agent import agent_case as case


class UnreachableHub:
    """A TCP server on 127.0.0.1 that accepts and at once closes every connection, counting them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hub(monkeypatch, tmp_path) -> Iterator[UnreachableHub]:
    server = UnreachableHub()
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    for var in ("HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME", "HOME"):
        monkeypatch.setenv(var, str(tmp_path / "empty-home"))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.delenv("LOOKTWICE_MODEL_CLIP", raising=False)
    monkeypatch.setenv("LOOKTWICE_MODELS_FILE", str(tmp_path / "no-models.yaml"))
    (tmp_path / "no-models.yaml").write_text("{}\n")
    yield server
    server.close()


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def one_message(err: str) -> str:
    """The one error line (progress lines of the stages may come before it; no warning does)."""
    errors = [line for line in err.splitlines() if line.startswith("looktwice: error:")]
    others = [line for line in err.splitlines() if line.strip() and line not in errors and ": " not in line[:20]]
    assert len(errors) == 1 and not others, err
    assert not any("warning" in line.lower() or "retry" in line.lower() for line in err.splitlines()), err
    return errors[0]


def test_missing_detector_model_is_a_usage_error(hub, tmp_path):
    pytest.importorskip("open_clip")
    files = case.write_case(tmp_path / "case")
    code, out, err = run(["inspect", str(files["scratch"]), "--refs", str(files["refs"]), "--detector", "winclip",
                          "--out", str(tmp_path / "o")])
    assert code == 2 and out == ""
    line = one_message(err)
    assert "ViT-B-16-plus-240" in line  # what was asked
    assert "Looked in:" in line and "huggingface-cli download timm/vit_base_patch16_plus_clip_240" in line
    assert "the hub did not answer" in line
    assert hub.connections <= 1


def test_missing_llava_brain_is_a_usage_error(hub, tmp_path):
    files = case.write_case(tmp_path / "case")
    code, out, err = run(["ask", str(files["scratch"]), "Is there a defect?", "--refs", str(files["refs"]),
                          "--brain", "llava:looktwice-test/no-such-llava", "--out", str(tmp_path / "o")])
    assert code == 2 and out == ""
    line = one_message(err)
    assert "looktwice-test/no-such-llava" in line and "Looked in:" in line
    assert "huggingface-cli download looktwice-test/no-such-llava" in line and line.endswith("with --detector ltfm)).")
    assert hub.connections <= 1


def test_offline_asks_no_hub_at_all(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = case.write_case(tmp_path / "case")
    code, _, err = run(["ask", str(files["scratch"]), "Is there a defect?", "--brain", "llava:looktwice-test/no-such-llava",
                        "--out", str(tmp_path / "o")])
    assert code == 2 and "HF_HUB_OFFLINE is set" in one_message(err)
    assert hub.connections == 0


def test_fallback_keeps_the_old_behaviour_said_once(hub, tmp_path):
    files = case.write_case(tmp_path / "case")
    code, out, err = run(["ask", str(files["scratch"]), "Is there a defect?", "--refs", str(files["refs"]),
                          "--brain", "llava:looktwice-test/no-such-llava", "--fallback", "--json",
                          "--out", str(tmp_path / "o"), "--resolution", "96"])
    assert code == 0
    record = json.loads(out)
    assert record["brain"] == "rule" and record["answer"]
    said = [line for line in err.splitlines() if "looktwice-test/no-such-llava" in line]
    assert len(said) == 1 and "Going on with the rule brain (--fallback)" in said[0]
    assert hub.connections <= 1


def test_fallback_for_a_detector(hub, tmp_path):
    pytest.importorskip("open_clip")
    files = case.write_case(tmp_path / "case")
    code, out, err = run(["inspect", str(files["scratch"]), "--refs", str(files["refs"]), "--detector", "winclip+",
                          "--fallback", "--json", "--out", str(tmp_path / "o")])
    assert code == 0 and json.loads(out)["detector"] == "refmatch"
    assert err.count("huggingface-cli download") == 1 and "--fallback" in err
