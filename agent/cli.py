"""`looktwice` command line. Heavy modules (torch, models) are imported inside the commands, so
`looktwice --help` answers at once.

Exit codes: 0 everything done; 1 some inputs failed (the others are still done); 2 usage errors;
130 interrupted; 141 stdout was closed early (`looktwice inspect ... --json | head -1`), as for coreutils.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

from agent.console import EXIT_OK, EXIT_USAGE, info_line, usage_error
from agent.detector_flags import add_decision_args, add_detector_args, decision_settings, detector_options

#: Modules that add further subcommands with `add_parser(subparsers)`; they import nothing heavy at top.
COMMAND_MODULES: tuple[str, ...] = (
    "agent.commands.inspect",
    "agent.commands.feedback",
    "agent.commands.synth",
    "agent.commands.ask",
    "agent.commands.chat",
    "agent.commands.report",
    "agent.commands.eval_dr",
    "agent.commands.audit",
    "agent.commands.export",
    "agent.commands.build_instruct",
    "agent.commands.bench",
    "agent.commands.serve",
    "agent.commands.train",
    "agent.commands.data",
)

DESCRIPTION = """\
LookTwice: a local defect-inspection agent. Give it product images and a few images of good parts;
it finds defects, outlines them and explains them in plain words. Everything runs offline.
`looktwice COMMAND --help` shows each command's options and examples."""

QUICK_START = (
    "looktwice demo                                     # make a small case, inspect it, show the outputs",
    "looktwice inspect part.png --refs good/ --out results/",
    'looktwice ask part.png "Is there a defect? Where?" --refs good/',
    "looktwice report line3/ --refs good/ --out report/   # HTML report of a folder",
)



# ---------------------------------------------------------------------------------------------- eval
def _format_table(result: dict[str, Any]) -> str:
    keys = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Max", "pixel_F1Max", "throughput_ips")
    lines = ["category".ljust(20) + "".join(k.rjust(16) for k in keys)]
    for c in result["categories"]:
        lines.append(c["category"][:20].ljust(20) + "".join(f"{c[k]:16.3f}" for k in keys))
    if len(result["categories"]) > 1:
        lines.append("mean".ljust(20) + "".join(f"{result[k]:16.3f}" for k in keys))
    for c in result["categories"]:
        per = ", ".join(f"{d} {v:.3f}" for d, v in c["per_defect_image_AUROC"].items())
        lines.append(f"{c['category']}: image AUROC per defect type: {per}")
        at, cal = c["at_threshold"], c["calibration"]
        promised = cal.get("false_alarm_rate")
        lines.append(
            f"{c['category']}: {c['detector']}, boundary from {cal.get('method', '?')}: recall {at['recall']:.3f}, "
            f"false alarms {at['false_alarm_rate']:.3f} (promised {'?' if promised is None else f'{promised:.3f}'}), "
            f"balanced accuracy {at['balanced_accuracy']:.3f}, review {at['review_rate']:.3f}"
        )
        if cal.get("note"):
            lines.append(f"{c['category']}: {cal['note']}")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from agent.commands.common import settings_from_args
    from agent.progress import wants_progress
    from evals.detection import DetectionBenchmarkSettings, run_detection_benchmark
    from instruct_data.datasets import DatasetError
    from tools.detectors import DetectorError

    try:
        decision = decision_settings(args)
        settings = settings_from_args(
            DetectionBenchmarkSettings,
            args,
            detector_options=detector_options(args),
            calibration=decision.calibration,
            false_alarm_rate=decision.false_alarm_rate,
            review=decision.review,
        )
        bar = wants_progress(not args.quiet)
        result = run_detection_benchmark(settings, show_progress=bar, progress_lines=not bar and not args.quiet)
    except (DatasetError, DetectorError, ValueError, KeyError) as err:
        return usage_error(err)
    print(_format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        info_line(f"wrote {out}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- detectors
def cmd_detectors(args: argparse.Namespace) -> int:
    from tools.detectors import DETECTORS

    for name in DETECTORS.names():
        print(f"{name:12s} {DETECTORS.describe(name)}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from tools.model_catalog import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    pad = " " * 19
    for r in rows:
        state = f"here: {r['where']}" if r["available"] else f"not here; looked in: {r['where']}"
        print(f"{r['name']:18s} {r['id']}")
        print(f"{pad}{r['description']} ({r['size']})")
        print(f"{pad}{state}")
        if not r["available"] and r.get("fetch"):
            print(f"{pad}get it: {r['fetch']}")
    print(
        "\nThe default (refmatch with the rule brain) needs only efficientnet-lite0, which ships with LookTwice. "
        "Hub models: fetch them on a machine with internet, copy the Hugging Face cache (or a save_pretrained "
        "folder) here, and pass the folder (--model, --sam, --brain llava:<folder>) or set LOOKTWICE_MODEL_CLIP / "
        "LOOKTWICE_MODEL_SAM."
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from agent.commands import with_examples

    parser = argparse.ArgumentParser(prog="looktwice", **with_examples(DESCRIPTION, QUICK_START))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(sub)

    p = sub.add_parser(
        "eval",
        help="detection benchmark on an MVTec-layout data set (AUROC, AUPRO, F1-max, throughput)",
        **with_examples(
            "k-shot references are drawn from train/good with --seed; all test images (or a stratified "
            "--limit of them) are inspected and decided as `report` does for a folder.",
            [
                "looktwice eval --data mvtec_root --category bottle --shots 4 --seed 0 --out bottle.json",
                "looktwice eval --data mvtec_root --shots 4 --limit 100      # a quick look: 100 images in all",
                "looktwice eval --data mvtec_root --shots 1 --set augment=[hflip,vflip] --quiet",
                "looktwice eval --data mvtec_root --shots 0                 # zero-shot: the batch detector",
                "looktwice eval --data mvtec_root --detector refmatch --calibration references --false-alarm-rate 0.1",
            ],
        ),
    )
    p.add_argument("--data", required=True, help="data set root (MVTec layout, or good/ + bad/ folders)")
    p.add_argument("--category", help="one category (default: all categories under the root)")
    p.add_argument("--shots", type=int, default=4, help="number of good references (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the references (default 0)")
    p.add_argument("--metric-size", type=int, default=256, help="long side of maps/masks for pixel metrics")
    p.add_argument("--limit", type=int, metavar="N",
                   help="N test images in all: a seeded sample spread over categories, good and each defect type")
    p.add_argument("--out", help="write the full results as JSON here")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (a bar on a terminal, else a line every 10%%)")
    add_detector_args(p)
    add_decision_args(p, calibration=True)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "detectors",
        help="list the available detectors",
        **with_examples("The detectors --detector accepts, with a line on each.", ["looktwice detectors"]),
    )
    p.set_defaults(func=cmd_detectors)

    p = sub.add_parser(
        "models",
        help="list every model LookTwice can use, where each is looked for and how to get it",
        **with_examples(
            "Every model LookTwice can use: the embedded EfficientNet-Lite (shipped), CLIP, SAM, LLaVA-OneVision, "
            "the Look-Twice expert weights and the SBERT model of eval-dr; whether each is on this machine, "
            "where it was looked for, and how to get it.",
            ["looktwice models", "looktwice models --json"],
        ),
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """`parser.parse_args`, except that unknown flags after a command (`inspect --refz x`) are reported
    with that command's usage, not the top-level one (argparse hands them up to the top parser)."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        commands = next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})
        (commands.get(getattr(args, "command", None) or "") or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from agent.commands import run_command

    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
