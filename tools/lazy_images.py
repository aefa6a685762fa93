"""A sequence of images read from disk only when an item is asked for.

Batch detectors sample their partner pool from a batch of thousands of images; passing them this
sequence instead of decoded images keeps memory bounded by what they actually read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import overload

from PIL import Image


class LazyImages(Sequence[Image.Image]):
    def __init__(self, paths: Sequence[str | Path], loader: Callable[[str | Path], Image.Image]) -> None:
        self.paths = list(paths)
        self.loader = loader

    def keys(self) -> list[str]:
        """A content key per item from its file's bytes (nothing is decoded); an unreadable file gets
        a key of its path, and is reported where it is read."""
        from tools.content_key import file_key

        out = []
        for p in self.paths:
            try:
                out.append(file_key(p))
            except OSError:
                out.append(f"unreadable:{p}")
        return out

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...

    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(index, slice):
            return [self.loader(p) for p in self.paths[index]]
        return self.loader(self.paths[index])


__all__ = ["LazyImages"]
