"""What a writer of an MVTec-layout set (`plates`, `validation`) reports it wrote.

Why a module of its own: both writers fill the same `train/good`, `test/good`, `test/<kind>` splits, so
they count them with one dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SetCounts:
    """Images written per split under `root` (one category folder); `test_bad` per defect kind."""

    root: Path
    train_good: int = 0
    test_good: int = 0
    test_bad: dict[str, int] = field(default_factory=dict)


__all__ = ["SetCounts"]
