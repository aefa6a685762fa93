"""The flags that say how to inspect (`--brain`, `--detector`, `--resolution`, `--config`, `--model`, `--device`,
`--object`, `--set KEY=VALUE`, `--false-alarm-rate`, `--no-review`, `--calibration`) and the one
settings object they give (`inspection_settings`).

Why in the agent core: `looktwice` commands and the scripts of `evals` (`python -m evals.bench_ask`)
take the same flags, and `evals` sits below the applications, so the flags live where both can import
them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.inspection.settings import CALIBRATION_MODES

if TYPE_CHECKING:
    from agent.inspection.settings import DecisionSettings, InspectionSettings


def add_detector_args(p: argparse.ArgumentParser) -> None:
    """Add the detector flags to `p`."""
    p.add_argument(
        "--detector",
        default="auto",
        help="detector name (see `looktwice detectors`); default auto: refmatch with 2 or more references; "
        "the batch detector for 8 or more images with fewer; refmatch with one; else selfsim",
    )
    p.add_argument("--resolution", type=int, help="working resolution of the detector (multiple of 32)")
    p.add_argument("--config", help="YAML/JSON file of detector settings")
    p.add_argument("--model", help="model of model-based detectors: hub id or local folder (see `looktwice models`)")
    p.add_argument(
        "--device",
        help="auto (default: CUDA when present, else the CPU), cpu, cuda, cuda:N; with --brain llava on the "
        "same checkpoint the detector uses the brain's model and device",
    )
    p.add_argument(
        "--fallback", action="store_true",
        help="when an explicitly named detector or brain cannot be loaded, go on with the embedded detector / "
        "the rule brain (said once) instead of stopping with a usage error",
    )
    p.add_argument("--object", help="object name for text prompts of CLIP detectors, e.g. 'metal plate'")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="one detector setting, e.g. --set blur_sigma=3 (repeatable)"
    )


BRAIN_HELP = (
    "rule | llava:<id-or-folder>[?device=auto|cpu|cuda[:N]&dtype=auto|bf16|fp16|fp32&quant=none|4bit|8bit"
    "&attn=sdpa|eager|flash_attention_2&expert=auto|none|FILE] | openai:<base-url>#<model>[?views=on] "
    "(default rule; device auto: CUDA when present, else the CPU in float32)"
)


def add_brain_arg(p: argparse.ArgumentParser, help_text: str = BRAIN_HELP) -> None:
    """`--brain` (a brain spec, default rule); `help_text` says what the brain does in the command."""
    p.add_argument("--brain", default="rule", help=help_text)


#: keys of the `--config` file that set the decision or the loop rather than the detector
DECISION_KEYS = ("false_alarm_rate", "review", "calibration")
LOOP_KEYS = (
    "zoom_recheck", "look_twice", "match", "brain_weight", "show_verdict_to_brain", "first_opinion", "trace", "fallback",
)
#: old names of `--config` sections -> their names now (accepted, with a note)
DEPRECATED_SECTIONS = {"look_twice": "zoom_recheck"}


def add_decision_args(p: argparse.ArgumentParser, calibration: bool = False) -> None:
    """`--false-alarm-rate`, `--no-review` (and `--calibration` where a command offers both modes),
    and `--trace` (how much of the loop runs and is recorded)."""
    p.add_argument(
        "--false-alarm-rate", type=float, metavar="RATE",
        help="share of good parts allowed to be called defective (default 0.05); the boundary is set "
        "from the references (or the batch) to keep it",
    )
    p.add_argument("--no-review", action="store_true", help="no 'review' band: every part is good or defective")
    if calibration:
        p.add_argument(
            "--calibration", choices=CALIBRATION_MODES,
            help="where good scores come from: the references (leave-one-out) or the batch itself, "
            "robustly (default batch)",
        )
    p.add_argument(
        "--trace", choices=("brief", "full"),
        help="full: also run and record the steps that do not change the answer (the part match with "
        "weight 0); default brief",
    )


def decision_settings(args: argparse.Namespace) -> DecisionSettings:
    from agent.inspection.settings import DecisionSettings

    """The decision flags, over the `--config` file's `false_alarm_rate` / `review` / `calibration`."""
    config = _config_file(args)
    rate = getattr(args, "false_alarm_rate", None)
    rate = config.get("false_alarm_rate", 0.05) if rate is None else rate
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate < 1:
        raise ValueError(f"false-alarm rate {rate!r}: expected a number between 0 and 1, e.g. 0.05")
    review = bool(config.get("review", True)) and not getattr(args, "no_review", False)
    mode = getattr(args, "calibration", None) or config.get("calibration")
    if mode is not None and mode not in CALIBRATION_MODES:
        raise ValueError(f"calibration {mode!r}: expected references or batch")
    return DecisionSettings(float(rate), review, mode)


def _config_file(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    if not getattr(args, "config", None):
        return {}
    path = Path(args.config)
    if not path.is_file():
        raise ValueError(f"config file '{path}' does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"config file '{path}' must hold a mapping of settings")
    return data


def inspection_settings(args: argparse.Namespace, brain: str | None = None) -> InspectionSettings:
    """Everything the flags and the `--config` file say about how to inspect, as one settings object.
    The file may hold detector settings and the sections `zoom_recheck:` (old name `look_twice:`) and
    `match:` (their fields, see `agent.inspection.settings`); a `ValueError` names each bad key."""
    from agent.inspection.settings import InspectionSettings, MatchSettings, ZoomRecheckSettings

    config = dict(_config_file(args))
    for old, new in DEPRECATED_SECTIONS.items():
        if old in config:
            if new in config:
                raise ValueError(f"config keys {old} and {new}: give only {new} ({old} is its old name)")
            print(f"note: config key {old}: is now called {new}:", file=sys.stderr)
            config[new] = config.pop(old)
    loop: dict[str, Any] = {}
    for key, kind in (("zoom_recheck", ZoomRecheckSettings), ("match", MatchSettings)):
        section = config.get(key) or {}
        if not isinstance(section, dict):
            raise ValueError(f"config key {key}: expected a mapping of its settings")
        known = {f.name for f in fields(kind)}
        bad = sorted(set(section) - known)
        if bad:
            raise ValueError(f"config key {key}: unknown settings {bad}; known: {sorted(known)}")
        loop[key] = kind(**section)
    for key in ("brain_weight", "show_verdict_to_brain", "first_opinion", "trace"):
        if key in config:
            loop[key] = config[key]
    if getattr(args, "trace", None):
        loop["trace"] = args.trace
    if loop.get("trace", "brief") not in ("brief", "full"):
        raise ValueError(f"trace {loop['trace']!r}: expected brief or full")
    if "fallback" in config or getattr(args, "fallback", False):
        loop["fallback"] = bool(config.get("fallback", False)) or bool(getattr(args, "fallback", False))
    spec = brain or getattr(args, "brain", None) or "rule"
    detector = getattr(args, "detector", None) or "auto"
    _check_brain(spec)
    if not loop.get("fallback"):
        _require_models(None, {}, spec)  # before the detector settings import the detectors (and torch)
    options = detector_options(args)
    if not loop.get("fallback"):
        _require_models(detector, options, "rule")
    return InspectionSettings(
        detector=detector,
        detector_options=options,
        brain=spec,
        decision=decision_settings(args),
        **loop,
    )


def _check_brain(spec: str) -> None:
    """A malformed `--brain` (an unknown option or value included) as a `ValueError` (a usage error)."""
    from agent.brains.spec import BrainError, parse_brain_spec

    try:
        parse_brain_spec(spec)
    except BrainError as err:
        raise ValueError(str(err)) from None


def _require_models(detector: str | None, options: dict[str, Any], brain: str) -> None:
    """The models an explicitly named detector or a LLaVA brain loads, found now (local folder or cache,
    else one short hub request; no torch imported): a missing one is a usage error, within seconds,
    with one complete message (`tools.model_catalog.require_detector_model`, `require_llava`)."""
    from agent.brains.spec import parse_brain_spec
    from tools.model_catalog import require_detector_model, require_llava
    from tools.models import ModelNotAvailableError

    kind, brain_options = parse_brain_spec(brain)
    try:
        if detector:
            require_detector_model(detector, options)
        if kind == "llava" and "loaded" not in brain_options:
            from agent.brains.llava import DEFAULT_LLAVA

            require_llava(brain_options.get("model") or DEFAULT_LLAVA)
    except ModelNotAvailableError as err:
        raise ValueError(str(err)) from None


def detector_options(args: argparse.Namespace) -> dict[str, Any]:
    """Detector settings from --config (YAML/JSON mapping), then --resolution, then --set KEY=VALUE,
    checked against what the --detector declares (`tools.settings`): a `ValueError` holds one line per
    bad setting (name, value given, what is allowed)."""
    import yaml

    opts: dict[str, Any] = {k: v for k, v in _config_file(args).items() if k not in DECISION_KEYS + LOOP_KEYS}
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
    check_settings(getattr(args, "detector", None), opts)
    return opts


def check_settings(detector: str | None, opts: dict[str, Any]) -> None:
    """Raise `ValueError` (one line per problem) when `opts` does not fit what `detector` declares."""
    from tools.detectors import DETECTORS
    from tools.settings import setting_problems

    shown = detector
    if detector == "auto":  # check against the union of what auto may choose: batch takes refmatch's too
        detector, shown = "batch", "detector"
    if not detector or detector not in DETECTORS:
        return  # an unknown name is reported where the detector is built, with the list of names
    try:
        factory = DETECTORS.get(detector)
    except ImportError:
        return  # its extra is missing: building it says which
    problems = setting_problems(shown or detector, factory, opts)
    if problems:
        raise ValueError("\n".join(problems))
