"""What several `looktwice` commands do with their parsed flags before the work starts: check that the
given paths exist, and fill a settings object from the flags of the same names.

Why here: these steps are the commands' own (argparse in, settings out); the agent core below them
takes settings objects and never sees a `Namespace`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
PathArg = str | os.PathLike[str]


def report_missing(required: Iterable[PathArg], optional: Iterable[PathArg | None] = ()) -> bool:
    """True, after one error line naming every path that does not exist, when some are missing; an
    `optional` one that was not given (None or empty) is not looked for."""
    from agent.console import error_line
    from agent.images import missing_message, missing_paths

    missing = missing_paths([*required, *(p for p in optional if p)])
    if missing:
        error_line(missing_message(missing, "path"))
    return bool(missing)


def flag_values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The values of the flags `names` (their `dest` names) that `args` holds."""
    return {name: getattr(args, name) for name in names if hasattr(args, name)}


def batch_run_fields(args: argparse.Namespace, limits: Any) -> dict[str, Any]:
    """The settings a resumable batch run (`report`, `audit run`) takes from the flags both commands
    have: INPUT..., --out, --quiet, --no-fsync, and the image limits of --max-megapixels."""
    return {
        "inputs": list(args.inputs),
        "out": Path(args.out),
        "progress": not args.quiet,
        "durable": not args.no_fsync,
        "limits": limits,
    }


def settings_from_args(kind: type[T], args: argparse.Namespace, **given: Any) -> T:
    """A settings dataclass `kind` whose fields take the flags of the same names, `given` over them: the
    one place where `--per-image` becomes `per_image`, so a field and its flag cannot drift apart.
    Fields with no flag of their name keep their defaults."""
    names = [f.name for f in fields(kind) if f.init and f.name not in given]  # type: ignore[arg-type]
    return kind(**flag_values(args, names), **given)
