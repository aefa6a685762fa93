"""The detector flags (`--detector`, `--resolution`, `--config`, `--model`, `--device`, `--object`,
`--set KEY=VALUE`) and the settings dict they give.

Why in the agent core: `looktwice` commands and the scripts of `evals` (`python -m evals.bench_ask`)
take the same flags, and `evals` sits below the applications, so the flags live where both can import
them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_detector_args(p: argparse.ArgumentParser) -> None:
    """Add the detector flags to `p`."""
    p.add_argument("--detector", default="refmatch", help="detector name (see `looktwice detectors`); default refmatch")
    p.add_argument("--resolution", type=int, help="working resolution of the detector (multiple of 32)")
    p.add_argument("--config", help="YAML/JSON file of detector settings")
    p.add_argument("--model", help="model of model-based detectors: hub id or local folder (see `looktwice models`)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--object", help="object name for text prompts of CLIP detectors, e.g. 'metal plate'")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="one detector setting, e.g. --set blur_sigma=3 (repeatable)"
    )


def detector_options(args: argparse.Namespace) -> dict[str, Any]:
    """Detector settings from --config (YAML/JSON mapping), then --resolution, then --set KEY=VALUE."""
    import yaml

    opts: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"config file '{path}' does not exist")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file '{path}' must hold a mapping of detector settings")
        opts.update(data)
    if getattr(args, "resolution", None):
        opts["resolution"] = args.resolution
    for flag, key in (("model", "model"), ("device", "device"), ("object", "object_name")):
        if getattr(args, flag, None):
            opts[key] = getattr(args, flag)
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        opts[key.strip()] = yaml.safe_load(value)
    return opts
