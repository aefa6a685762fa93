"""`build_instruct`: the instruction data set from start to end (subjects, conversations, optional
rewriting, `instruct.json` and `stats.json`).

Why apart from `conversations`: the conversations are pure templates over the ground truth, the rewriting
(`rewrite`) builds on their format, and this module puts the two together, so neither imports the other's
user.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from instruct_data.instruct.conversations import (
    INSTRUCT_FILE,
    STATS_FILE,
    InstructBuildError,
    InstructSettings,
    compute_stats,
    conversations_for,
    subjects_from_data,
    subjects_from_synthesis,
    templates,
    validate,
)
from instruct_data.instruct.rewrite import Chat, rewrite_answers
from instruct_data.qa.builder import templates as qa_templates
from instruct_data.qa.overlap import SplitGuard

#: Turns the `--rewrite` spec into (chat function, its settings for the stats); the caller builds the
#: language model (this layer does not know brains), so it is passed in.
ChatFor = Callable[[str], tuple[Chat, dict[str, Any]]]


def build_instruct(
    settings: InstructSettings,
    progress: Callable[[int], None] | None = None,
    chat_for: ChatFor | None = None,
) -> dict[str, Any]:
    """Write `instruct.json` and `stats.json` into `settings.out`; returns the stats dict.

    `chat_for` is needed only with `settings.rewrite`. With `settings.exclude_from` (a QA set) the
    images read from disk are checked against it before any conversation is written (synthesized
    ones before they are made): `SplitOverlapError` when they share content, unless
    `settings.allow_overlap`."""
    if (settings.data is None) == (settings.synth_from is None):
        raise InstructBuildError("give exactly one of --data and --synth-from")
    if settings.per_image <= 0:
        raise InstructBuildError(f"--per-image must be positive, got {settings.per_image}")
    if settings.limit is not None and settings.limit <= 0:
        raise InstructBuildError(f"--limit must be positive, got {settings.limit}")
    guard = SplitGuard.against_qa(settings.exclude_from) if settings.exclude_from else None
    split_check: dict[str, Any] | None = None

    def check(paths: list[Path]) -> None:
        nonlocal split_check
        if guard is not None:
            shown = [(str(p), p) for p in paths]
            split_check = guard.check(shown, "instruction data", settings.allow_overlap)

    out = Path(settings.out)  # made once the images passed the split check
    tpl, qa = templates(), qa_templates()
    if settings.data is not None:
        subjects = subjects_from_data(settings, out)
        # `image` is relative to the resolved output folder, which may not exist yet: join lexically
        check([Path(os.path.normpath(out.resolve() / s.image)) for s in subjects])
    else:
        subjects = subjects_from_synthesis(settings, out, tpl, check_sources=check)
    if not subjects:
        raise InstructBuildError("no images to build conversations from (need normal and anomalous images)")
    items: list[dict[str, Any]] = []
    for index, subject in enumerate(subjects):
        items.extend(conversations_for(subject, index, settings, tpl, qa))
        if progress:
            progress(1)
    validate(items)
    rewrite_stats = None
    if settings.rewrite:
        if chat_for is None:
            raise InstructBuildError("--rewrite needs a language model, and none was passed in to build it")
        chat, model = chat_for(settings.rewrite)
        rewrite_stats = rewrite_answers(items, chat, model, settings.rewrite_cache or out / "rewrite_cache.jsonl")
        validate(items)
    stats = compute_stats(items, subjects, settings)
    if rewrite_stats is not None:
        stats["rewrite"] = rewrite_stats
    if split_check is not None:
        stats["split_check"] = split_check
    out.mkdir(parents=True, exist_ok=True)
    stats["image_folder"] = str(out.resolve())  # LLaVA's --image_folder: `image` paths are relative to it
    (out / INSTRUCT_FILE).write_text(json.dumps(items, indent=1), encoding="utf-8")
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2), encoding="utf-8")
    return stats
