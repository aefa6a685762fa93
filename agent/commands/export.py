"""`looktwice export mmad --run DIR --out FILE` and
`looktwice export lmms-eval --qa DIR --out DIR [--task NAME]`.

Exports of the D&R benchmark in the ecosystem's formats (evals/export/): an `eval-dr` run's answers
as MMAD's result JSON, and a QA set as an lmms-eval task folder (YAML + utils.py + data JSONL).
Exit codes: 0 written, 2 usage errors (missing run or QA folder, bad task name).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `export` sub-command (with `mmad` and `lmms-eval`) to `sub`."""
    from agent.commands import with_examples

    p = sub.add_parser(
        "export",
        help="export D&R answers as MMAD results, or a QA set as an lmms-eval task folder",
        **with_examples(
            "mmad: answers of an `eval-dr` run folder (its samples.jsonl) as MMAD's result JSON "
            "([{image, question, question_type, correct_answer, gpt_answer}]). lmms-eval: a task folder "
            "(<task>.yaml, utils.py, <task>.jsonl) for a QA set from `looktwice data qa`; run it with "
            "`lmms_eval --tasks <task> --include_path <folder>`.",
            [MMAD_EXAMPLE, LMMS_EXAMPLE],
        ),
    )
    fmt = p.add_subparsers(dest="format", metavar="{mmad,lmms-eval}")
    m = _format(fmt, "mmad", "an eval-dr run's answers in MMAD's result format",
                "Answers of an `eval-dr` run as [{image, question, question_type, correct_answer, gpt_answer}].",
                [MMAD_EXAMPLE, "looktwice export mmad --run dr_rule/ --out answers.json --image-prefix MVTec-AD/"],
                cmd_export_mmad, {"--run": "eval-dr output folder (with samples.jsonl)", "--out": "output JSON file"})
    m.add_argument("--image-prefix", default="", help="prefix of every `image` (e.g. 'MVTec-AD/')")
    e = _format(fmt, "lmms-eval", "an lmms-eval task folder (YAML + utils.py + data) for a QA set",
                "A task folder (<task>.yaml, utils.py, <task>.jsonl) for a QA set from `looktwice data qa`.",
                [LMMS_EXAMPLE, "looktwice export lmms-eval --qa qa/ --out lmms_task/ --task looktwice_bottle"],
                cmd_export_lmms_eval, {"--qa": "QA folder from `looktwice data qa`", "--out": "output task folder"})
    e.add_argument("--task", default="looktwice_dr", help="task name (default looktwice_dr)")
    e.add_argument("--data-root", help="where the QA set's images are (default: meta.json's data_root)")
    p.set_defaults(func=lambda args: _no_format(p))


def _format(fmt: argparse._SubParsersAction, name: str, help: str, description: str, examples: list[str],
            func: Callable[[argparse.Namespace], int], required: dict[str, str]) -> argparse.ArgumentParser:
    """One export format's sub-parser: description, examples, the command it runs, its required flags."""
    from agent.commands import with_examples

    parser = fmt.add_parser(name, help=help, **with_examples(description, examples))
    for flag, text in required.items():
        parser.add_argument(flag, required=True, help=text)
    parser.set_defaults(func=func)
    return parser


MMAD_EXAMPLE = "looktwice export mmad --run dr_rule/ --out answers.json"
LMMS_EXAMPLE = "looktwice export lmms-eval --qa qa/ --out lmms_task/"


def _no_format(p: argparse.ArgumentParser) -> int:
    from agent.console import EXIT_USAGE, error_line

    error_line("export needs a format: mmad or lmms-eval")
    p.print_usage(sys.stderr)
    return EXIT_USAGE


def cmd_export_mmad(args: argparse.Namespace) -> int:
    from agent.console import EXIT_OK, info_line, usage_error
    from evals.export.mmad import ExportError, export_mmad

    try:
        records = export_mmad(args.run, args.out, args.image_prefix)
    except (ExportError, OSError) as err:
        return usage_error(err)
    n_det = sum(1 for r in records if r["question_type"] == "Anomaly Detection")
    print(f"wrote {args.out}: {len(records)} records ({n_det} detection, {len(records) - n_det} reasoning)")
    info_line("MMAD result format: [{image, question, question_type, correct_answer, gpt_answer}]")
    return EXIT_OK


def cmd_export_lmms_eval(args: argparse.Namespace) -> int:
    from agent.console import EXIT_OK, info_line, usage_error
    from evals.dr.reader import QASetError
    from evals.export.lmms_eval import LmmsExportError, write_lmms_eval_task

    try:
        info = write_lmms_eval_task(args.qa, args.out, args.task, args.data_root)
    except (QASetError, LmmsExportError, OSError) as err:
        return usage_error(err)
    print(
        f"wrote {info['yaml']}, {info['utils']}, {info['data']}: {info['documents']} documents "
        f"({info['detection']} detection, {info['reasoning']} reasoning)"
    )
    info_line(f"run: lmms_eval --model <model> --tasks {args.task} --include_path {info['yaml'].parent}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.export ...` (the `export` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("export", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
