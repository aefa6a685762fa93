"""`looktwice data synth|instruct|qa|plates ...`: the data-building commands under one word.

`synth` and `instruct` are the `synth` and `build-instruct` commands (same parsers, same functions,
registered a second time under a shorter name; the old names keep working). `qa` has this one name
(the QA-set builder of `agent.commands.build_qa` is not a top-level command any more).
`plates` is new: a small MVTec-layout set of procedural plates with visible synthesized defects, for
training smoke runs (`instruct_data.synthesis.plates`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: (module, the name its add_parser registers, the name under `data`)
DATA_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("agent.commands.synth", "synth", "synth"),
    ("agent.commands.build_instruct", "build-instruct", "instruct"),
    ("agent.commands.build_qa", "build-qa", "qa"),
)


class _Renamed:
    """Stands in for `add_subparsers()`'s object so an existing command's `add_parser(sub)` registers
    its parser under another name, unchanged otherwise."""

    def __init__(self, sub: argparse._SubParsersAction, expected: str, name: str) -> None:
        self._sub, self._expected, self._name = sub, expected, name

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser:
        if name != self._expected:
            raise ValueError(f"expected to register {self._expected!r}, got {name!r}")
        return self._sub.add_parser(self._name, **kwargs)


#: the `data plates` flags that `make_plate_dataset` takes under the same names
PLATES_FLAGS = ("train_good", "test_good", "test_bad", "size", "render_size", "seed", "category")

PLATES_EXAMPLE = "looktwice data plates --out plates/ --train-good 100 --test-bad 100"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `data` group (synth, instruct, qa, plates) to `sub`."""
    import importlib

    from agent.commands import with_examples

    p = sub.add_parser(
        "data",
        help="build data: synth (anomalies), instruct (LLaVA JSON), qa (D&R set), plates (toy set)",
        **with_examples(
            "Data for training and evaluation. `looktwice data WHAT --help` for each.",
            [
                "looktwice data synth --images good_parts/ --out synth/",
                "looktwice data instruct --synth-from mvtec_root --out instruct/",
                "looktwice data qa --data mvtec_root --out qa/ --limit 120 --exclude-from instruct/",
                PLATES_EXAMPLE,
            ],
        ),
    )
    group = p.add_subparsers(dest="data_command", metavar="WHAT", required=True)
    for module, expected, name in DATA_COMMANDS:
        importlib.import_module(module).add_parser(_Renamed(group, expected, name))
    q = group.add_parser(
        "plates",
        help="a small MVTec-layout set of procedural plates with synthesized defects (training smoke runs)",
        **with_examples(
            "Writes <out>/<category>/train/good, test/good, test/<kind> and ground_truth/<kind>/"
            "<name>_mask.png. Defects are drawn at --render-size and shrunk with the plate to --size; ones "
            "that would be invisible at --size are redrawn. The same --seed gives the same files.",
            [PLATES_EXAMPLE, "looktwice data plates --out plates/ --size 64 --kinds hole,stain --seed 2"],
        ),
    )
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument("--train-good", type=int, default=100, help="good training plates (default 100)")
    q.add_argument("--test-good", type=int, default=0, help="good test plates (default 0)")
    q.add_argument("--test-bad", type=int, default=100, help="defective plates (default 100)")
    q.add_argument("--size", type=int, default=40, help="image side in pixels (default 40)")
    q.add_argument("--render-size", type=int, default=128, help="side the plates are drawn at (default 128)")
    q.add_argument(
        "--kinds", nargs="+", metavar="KIND", help="anomaly kinds (default: hole missing spots stain)"
    )
    q.add_argument("--category", default="plate", help="category folder name (default plate)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.set_defaults(func=cmd_plates)


def cmd_plates(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from agent.commands.common import flag_values
    from agent.console import EXIT_OK, usage_error
    from instruct_data.synthesis.plates import VISIBLE_KINDS, make_plate_dataset

    kinds = [k.strip() for v in (args.kinds or []) for k in v.split(",") if k.strip()] or list(VISIBLE_KINDS)
    total = args.train_good + args.test_good + args.test_bad
    try:
        with tqdm(total=total, desc="plates", unit="img", disable=None) as bar:
            counts = make_plate_dataset(
                args.out, kinds=kinds, progress=bar.update, **flag_values(args, PLATES_FLAGS)
            )
    except ValueError as err:
        return usage_error(err)
    bad = ", ".join(f"{k} {n}" for k, n in sorted(counts.test_bad.items()))
    print(
        f"plates in {counts.root}: {counts.train_good} train/good, {counts.test_good} test/good, defective: {bad}"
    )
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.data synth|instruct|qa|plates ...`."""
    from agent.commands import run_standalone

    return run_standalone("data", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
