"""Helpers several test modules share: a parser with only the commands under test, a fresh
interpreter's output, synthetic float images as PIL images, and a resumable run killed mid-way."""

from __future__ import annotations

import argparse
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image


def run_commands(argv: list[str], *modules: ModuleType) -> int:
    """Parse `argv` with a `looktwice` parser holding only the commands of `modules` (each has
    `add_parser(sub)`) and run it; the exit code. Cheaper than the full parser, which imports every
    command module."""
    parser = argparse.ArgumentParser(prog="looktwice")
    sub = parser.add_subparsers(dest="command")
    for module in modules:
        module.add_parser(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


def fresh_python(code: str) -> str:
    """The stripped stdout of `python -c code` in a new interpreter: what an import pulls in shows only
    in a process that has not imported it yet."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def to_pil(arr: np.ndarray) -> Image.Image:
    """A float image in [0, 1] (what `brushed_plate` draws) as an 8-bit PIL image."""
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))


def committed_rows(out: Path, columns: str = "path, status, finished_at, stem") -> list[tuple]:
    """`columns` of the inputs a resumable run (`report`, `audit run`) has committed to
    `out/results.db`, read-only; [] while there is no database yet."""
    if not (out / "results.db").exists():
        return []
    try:
        with sqlite3.connect(f"file:{out / 'results.db'}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(f"SELECT {columns} FROM inputs").fetchall()
    except sqlite3.Error:
        return []


def kill_after_commits(proc: subprocess.Popen, out: Path, commits: int, timeout: float) -> None:
    """SIGKILL `proc` once it has committed `commits` inputs to `out/results.db` (or after `timeout`
    seconds, or at once when it has ended), and wait for it: a crash in the middle of a run."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if len(committed_rows(out)) >= commits:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)


def plate(seed: int, size: int, scratch: bool = False) -> Image.Image:
    """A brushed-steel plate drawn with `seed`, scratched when asked (the report tests' images)."""
    from instruct_data.synthesis.demo_case import brushed_plate, draw_scratch

    rng = np.random.default_rng(seed)
    img = brushed_plate(rng, size)
    if scratch:
        img, _ = draw_scratch(img, rng)
    return to_pil(img)


def demo_case(root: Path, size: int) -> Path:
    """The demo case (3 references, seed 1) at `size` px under `root`."""
    from instruct_data.synthesis.demo_case import make_demo_case

    make_demo_case(root, n_references=3, seed=1, size=size)
    return root
