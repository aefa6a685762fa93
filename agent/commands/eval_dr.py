"""`looktwice eval-dr --qa DIR --brain ... [--refs-from DIR --shots K] [--limit N] --out DIR`, and
`looktwice eval-dr --compare A.json B.json`.

The VisA-D&R-style benchmark of a brain (evals/dr/): detection with the strict Yes/No prompt and
reasoning (ROUGE-L, SBERT) on a QA set written by `looktwice data qa`. Exit codes: 0 done, 1 some
images could not be read (the rest are scored), 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Benchmark a brain on a VisA-D&R-style QA set (from `looktwice data qa`).

detection   "Are there any defects for the object in the image? Please reply with 'Yes' or 'No'."
            per image; only a leading Yes/No counts (unparsable = wrong). accuracy, precision, recall,
            F1, miss rate, overkill rate and image AUROC (from pred_score), each the mean over classes.
reasoning   for each anomalous image the questions of dr.json in order, with the history kept;
            ROUGE-L and SBERT cosine (all-MiniLM-L6-v2, the `evals` extra) against the references.
control     rouge_l_control and sbert_control: each reasoning answer of another image of the same
            class (drawn with --seed) scored against this image's reference, i.e. what the shared
            wording scores without knowing the image; compare rouge_l and sbert with them.
judge       optional: --judge openai:<base-url>#<model> scores each reasoning answer 1-10 against the
            reference (prompt: prompts/dr_judge.yaml); `judge` in results.json. A rerun with --judge
            on a finished --out scores the answers that have no score yet.

fallback    when the brain fails (error, no text) the loop shows the RuleBrain's answer; the benchmark
            scores such answers as empty (they are not the brain's) unless --score-fallback.
outputs     <out>/samples.jsonl (one line per image; a rerun skips the images already there),
            <out>/results.json, <out>/results.md, <out>/control.jsonl (the control's pairs)
compare     --compare A.json B.json prints two runs side by side"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `eval-dr` sub-command to `sub`."""
    from agent.commands import with_examples
    from agent.detector_flags import add_brain_arg, add_detector_args

    p = sub.add_parser(
        "eval-dr",
        help="D&R benchmark of a brain: Yes/No detection and reasoning (ROUGE-L, SBERT) on a QA set",
        **with_examples(
            DESCRIPTION,
            [
                "looktwice eval-dr --qa qa/ --refs-from mvtec_root/bottle --shots 4 --out dr_rule/",
                "looktwice eval-dr --qa qa/ --brain llava:/models/anomaly-ov --refs-from mvtec_root/bottle --out dr_llava/",
                "looktwice eval-dr --compare dr_rule/results.json dr_llava/results.json",
            ],
        ),
    )
    p.add_argument("--qa", help="QA folder (test_data.json, dr.json, meta.json) from `looktwice data qa`")
    p.add_argument("--data-root", help="where the QA set's images are (default: meta.json's data_root)")
    add_brain_arg(p)
    p.add_argument("--refs-from", help="MVTec-layout root: --shots good references per class from train/good")
    p.add_argument("--shots", type=int, default=4, help="number of references per class (default 4)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the reference draw, of --limit and of the control pairs (default 0)"
    )
    p.add_argument("--limit", type=int, help="evaluate a seeded sample of N images (default: all)")
    p.add_argument("--no-sbert", action="store_true", help="skip SBERT similarity (no `evals` extra needed)")
    p.add_argument(
        "--judge",
        metavar="openai:<base-url>#<model>",
        help="LLM judge (OpenAI-compatible server) scoring reasoning answers 1-10 (optional)",
    )
    p.add_argument(
        "--score-fallback",
        action="store_true",
        help="score the RuleBrain's stand-in answers when the brain fails (default: score them as empty)",
    )
    p.add_argument("--out", default="looktwice-dr", help="output folder (default looktwice-dr)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"), help="print two results side by side")
    add_detector_args(p)
    p.set_defaults(func=cmd_eval_dr)


def cmd_compare(a: str, b: str) -> int:
    from agent.console import EXIT_OK, usage_error
    from evals.dr.runner import compare_table

    data = []
    for path in (a, b):
        p = Path(path)
        if p.is_dir():
            p = p / "results.json"
        try:
            data.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as err:
            return usage_error(f"cannot read results '{p}': {err}")
    print(compare_table(data[0], data[1], (Path(a).parent.name or a, Path(b).parent.name or b)), end="")
    return EXIT_OK


def cmd_eval_dr(args: argparse.Namespace) -> int:
    from agent.brains.common import BrainError
    from agent.commands.common import settings_from_args
    from agent.console import EXIT_OK, EXIT_SOME_FAILED, info_line, usage_error
    from agent.detector_flags import detector_options
    from evals.dr.text import SbertUnavailable
    from instruct_data.datasets import DatasetError
    from instruct_data.qa.reader import QASetError
    from tools.detectors import DetectorError

    if args.compare:
        return cmd_compare(*args.compare)
    if not args.qa:
        return usage_error("--qa DIR is required (or --compare A.json B.json)")
    if args.shots <= 0:
        return usage_error(f"--shots must be positive, got {args.shots}")
    from evals.dr.runner import TABLE_FILE, DRSettings, markdown_table, run_dr_benchmark

    try:
        settings = settings_from_args(
            DRSettings, args, detector_options=detector_options(args), sbert=not args.no_sbert
        )
        result, failures = run_dr_benchmark(settings, show_progress=not args.quiet, warn=info_line)
    except (
        QASetError,
        DatasetError,
        DetectorError,
        BrainError,
        SbertUnavailable,
        ValueError,
        KeyError,
    ) as err:
        return usage_error(err)
    print(markdown_table(result, f"D&R benchmark: brain {args.brain}"), end="")
    info_line(
        f"wrote {Path(args.out) / 'samples.jsonl'}, {Path(args.out) / 'results.json'}, {Path(args.out) / TABLE_FILE}"
    )
    return EXIT_SOME_FAILED if failures else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.eval_dr ...` (the `eval-dr` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("eval-dr", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
