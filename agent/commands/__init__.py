"""Sub-commands of `looktwice` that live in their own modules; each has `add_parser(sub)`.

`run_standalone` lets each module also run as `python -m agent.commands.<name>` without repeating the
parser plumbing in every file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

AddParser = Callable[[Any], None]


def single_command_parser(add_parser: AddParser) -> argparse.ArgumentParser:
    """A `looktwice` parser holding only the sub-command that `add_parser` adds."""
    parser = argparse.ArgumentParser(prog="looktwice")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run_standalone(command: str, add_parser: AddParser, argv: list[str] | None = None) -> int:
    """Parse `argv` (the command word is optional) and run the command; Ctrl-C exits with 130."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] != command:
        args_list.insert(0, command)
    args = single_command_parser(add_parser).parse_args(args_list)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("looktwice: error: interrupted", file=sys.stderr)
        return 130
