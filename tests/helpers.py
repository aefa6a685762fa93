"""Helpers several test modules share: a parser with only the commands under test, a fresh
interpreter's output, and synthetic float images as PIL images."""

from __future__ import annotations

import argparse
import subprocess
import sys
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
