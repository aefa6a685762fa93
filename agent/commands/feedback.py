"""`looktwice feedback IMAGE --good|--defective --refs DIR`: teach the tool what a person saw.

--good: a false alarm. The image joins the references (`<refs>/feedback-good/`), so the next inspection
compares with it and the boundary is re-estimated; the command says where it was kept, then the
verdict before the feedback and with it among the references.
--defective: a missed defect. It is kept beside the references (`<refs>.defects/`, never used as a
reference) and the command says whether the current boundary would catch it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from agent.console import EXIT_OK, EXIT_USAGE, info_line, usage_error

DESCRIPTION = __doc__.split("\n\n", 1)[1] if __doc__ else ""


def _verdict(record: Any) -> str:
    rate = record.decision.get("false_alarm_rate")
    promise = f", false-alarm rate {rate:.3g} from {record.decision.get('good_samples')} good sample(s)" if rate else ""
    return f"{record.verdict} (score {record.pred_score:.2f}{promise})"


def add_parser(sub: Any) -> None:
    """Add the `feedback` sub-command to `sub`."""
    from agent.commands import with_examples
    from agent.detector_flags import add_decision_args, add_detector_args
    from agent.images import add_max_megapixels_arg

    p = sub.add_parser(
        "feedback",
        help="a person's verdict on an image: a false alarm joins the references, a missed defect is kept",
        **with_examples(
            DESCRIPTION,
            [
                "looktwice feedback part_017.png --good --refs good_parts/       # it was a false alarm",
                "looktwice feedback part_042.png --defective --refs good_parts/  # a defect it passed",
            ],
        ),
    )
    p.add_argument("image", help="the image a person judged")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--good", action="store_true", help="the part is good: the tool raised a false alarm")
    which.add_argument("--defective", action="store_true", help="the part is defective: the tool missed it")
    p.add_argument("--refs", required=True, help="the folder of good references the feedback belongs to")
    add_max_megapixels_arg(p)
    add_detector_args(p)
    add_decision_args(p)
    p.set_defaults(func=cmd_feedback)


def cmd_feedback(args: argparse.Namespace) -> int:
    from agent.commands.common import report_missing
    from agent.detector_flags import inspection_settings
    from agent.feedback import add_feedback
    from agent.images import limits_from_args
    from agent.inspection import Pipeline
    from tools.detectors import DetectorError
    from tools.image_io import ImageLoadError

    if report_missing([args.image, args.refs]):
        return EXIT_USAGE
    if not Path(args.refs).is_dir():
        return usage_error(f"--refs must be a folder of good references, got '{args.refs}'")
    label = "good" if args.good else "defective"
    try:
        settings = inspection_settings(args)
        limits = limits_from_args(args, settings.detector_options)
        image = limits.load(args.image)
        before = Pipeline(settings, warn=lambda m: None).fit(limits.references(args.refs, warn=info_line))
        record = before.inspect(args.image, image)
    except (ImageLoadError, DetectorError, ValueError) as err:
        return usage_error(err)
    try:
        path, new = add_feedback(image, label, args.refs, Path(args.image).stem)
    except OSError as err:
        return usage_error(f"cannot store the feedback: {err.strerror or err}")
    info_line(f"{'kept' if new else 'already kept'} as {label}: {path}")
    info_line(f"{args.image}: before the feedback: {_verdict(record)}")
    if label == "good":
        after = Pipeline(settings, warn=lambda m: None).fit(limits.references(args.refs, warn=info_line))
        info_line(f"{args.image}: with it among the references: {_verdict(after.inspect(args.image, image))}")
    elif record.verdict != "defective":
        info_line(
            "the current boundary does not catch this defect; more references of the good variation, a "
            "higher --false-alarm-rate, or the batch mode of `report` may; it is kept to check against"
        )
    return EXIT_OK



__all__ = ["add_parser", "cmd_feedback"]
