"""`looktwice serve [--host 127.0.0.1] [--port 7860] [--refs DIR] [--brain ...]`: a web chat about one image.

The brain and the detector come from the same flags as `ask`; the references from each user's upload
(or `--refs` for users who upload none). The logic is `agent.serve.session` (no gradio), the UI
`agent.serve.app`. Exit codes: 0 after Ctrl-C, 2 usage errors (bad flags, brain or detector setup,
gradio missing).
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from agent.commands.ask import DESCRIPTION as ASK_DESCRIPTION
from agent.commands.ask import add_brain_args

DESCRIPTION = """\
A web chat on this machine about one image at a time. In the browser: upload an image and, for a
better check, a few images of good parts; ask questions ("Is there any defect in this image?", "Where
is it?", "How big?", "What could cause it?"); each answer comes with the overlay (heatmap + outline)
and a table of the regions (location, box, area, score, shape). The part is inspected once per image
and references; follow-up questions reuse the inspection, with the conversation so far (as `chat`).

safety:
  Each browser tab is its own session with its own folder <workdir>/session-<random id>/; uploads are
  checked (size, pixels, real image content), decoded and saved there as PNG, and the overlays are
  written there; nothing is written outside --workdir. The session's folder is deleted when gradio
  drops the tab's state. No share link, no analytics, works offline. There is no login: keep the
  default host 127.0.0.1 unless the network is trusted.

needs gradio: pip install "looktwice[serve]"

brains:
""" + ASK_DESCRIPTION.split("brains:\n", 1)[1]


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` sub-command to `sub` (the object `add_subparsers()` returned)."""
    from agent.commands import with_examples

    p = sub.add_parser(
        "serve",
        help="web chat in the browser: upload an image and good references, ask, see overlay and regions",
        **with_examples(
            DESCRIPTION,
            [
                "looktwice serve                                    # http://127.0.0.1:7860 (rule brain, refmatch)",
                "looktwice serve --refs good_parts/                 # default references for users who upload none",
                "looktwice serve --brain llava:/models/anomaly-ov   # answers from the local LLaVA-OneVision",
                "looktwice serve --host 0.0.0.0 --port 8080         # reachable from other machines (no login!)",
            ],
        ),
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument(
        "--workdir",
        help="folder for the sessions' files (default: a new temporary folder, deleted at exit)",
    )
    p.add_argument(
        "--max-upload-mb", type=float, default=20.0, help="largest uploaded file in MB (default 20)"
    )
    p.add_argument("--max-refs", type=int, default=8, help="good references per session (default 8)")
    add_brain_args(
        p,
        refs_help="folder (or file) of good references for users who upload none (default: none, so the "
        "zero-shot fallback runs until a user uploads references)",
        max_megapixels=40.0,
    )
    p.set_defaults(func=cmd_serve)


def limits_from_args(args: argparse.Namespace) -> Any:
    """`ServeLimits` from the flags; raises `ValueError` for a limit out of range."""
    from agent.images import limits_from_args as image_limits_from_args
    from agent.serve.session import MB, ServeLimits

    pixels = image_limits_from_args(args).max_pixels  # --max-megapixels, checked as every command does
    if args.max_upload_mb <= 0 or args.max_refs < 1:
        raise ValueError("--max-upload-mb must be above 0, --max-refs at least 1")
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be 1..65535, got {args.port}")
    return ServeLimits(
        max_upload_bytes=int(args.max_upload_mb * MB), max_pixels=pixels, max_references=int(args.max_refs)
    )


def build_engine(args: argparse.Namespace) -> Any:
    """The shared `Engine`: one brain (and SAM) for all sessions, the default references from --refs,
    and a loop per set of references built like `ask` does (`build_pipeline`). Raises `SetupError`."""
    from agent.brains.common import BrainError
    from agent.brains.spec import build_brain
    from agent.console import info_line
    from agent.conversation import SetupError, build_pipeline
    from agent.images import limits_from_args as image_limits_from_args
    from agent.serve.session import Engine
    from tools.detectors import DetectorError

    try:
        brain = build_brain(args.brain)
        defaults = image_limits_from_args(args).references(args.refs, warn=info_line)
    except (BrainError, DetectorError, ValueError) as err:
        raise SetupError(str(err)) from None
    sam = None
    if getattr(args, "sam", None):
        from tools.sam import SamTool

        sam = SamTool(args.sam)

    def make_loop(references: list[Any], warn: Any) -> Any:
        return build_pipeline(args, references=references, brain=brain, sam=sam, warn=warn)

    return Engine(make_loop, defaults)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the command from parsed arguments; returns the exit code."""
    from agent.console import usage_error

    try:
        limits = limits_from_args(args)
    except ValueError as err:
        return usage_error(err)
    own_workdir = not args.workdir
    workdir = Path(tempfile.mkdtemp(prefix="looktwice-serve-")) if own_workdir else Path(args.workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return usage_error(f"cannot create the work folder '{workdir}': {err.strerror or err}")
    previous = _stop_on_sigterm()
    try:
        return _serve(args, workdir, limits)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop_on_sigterm() -> Any:
    """Let SIGTERM (a service manager, `kill`) stop the server like Ctrl-C, so the temporary work
    folder is still removed; the previous handler, or None where signals cannot be set (not the main
    thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


def _serve(args: argparse.Namespace, workdir: Path, limits: Any) -> int:
    """Check gradio, build the engine (weights load now), serve until Ctrl-C; the exit code."""
    from agent.console import EXIT_OK, info_line, usage_error
    from agent.conversation import SetupError
    from agent.serve.session import SessionError

    try:
        from agent.serve.app import ServeDependencyError, build_app, import_gradio, launch

        import_gradio(workdir)  # before anything else imports gradio: it reads its cache folder then
    except ServeDependencyError as err:
        return usage_error(err)
    try:
        engine = build_engine(args)
        info_line("looktwice serve: loading the detector and the brain ...")
        for note in engine.warm_up():
            info_line(f"looktwice serve: {note}")
    except (SetupError, SessionError) as err:
        return usage_error(err)
    if not _is_loopback(args.host):
        info_line(
            f"looktwice serve: warning: listening on {args.host}: anyone who can reach it can use it (no login)"
        )
    info_line(f"looktwice serve: session files in {workdir}")
    info_line(f"looktwice serve: open http://{args.host}:{args.port}/ in a browser; Ctrl-C stops")
    try:
        launch(build_app(engine, workdir, limits), args.host, args.port, limits, block=True, quiet=True)
    except OSError as err:  # e.g. the port is taken
        return usage_error(f"cannot serve on {args.host}:{args.port}: {err}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.serve ...` (the `serve` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("serve", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
