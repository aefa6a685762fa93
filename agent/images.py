"""How the commands read the images they are given: one pixel limit, large images reduced to what the
detectors need, and a line saying so.

Why a module of its own: `inspect`, `report`, `audit`, `ask` and `chat` take the same
`--max-megapixels` flag and must treat a 100-megapixel photo the same way. The embedded detectors
shrink a large image by at most 2x (`min_scale`) and run their backbone in tiles, so memory grows with
the megapixels analysed; an image is analysed at no more than `ANALYSIS_MAX_SIDE` pixels on its longer
side (a 20-megapixel camera's frame whole): JPEGs are decoded reduced, and every map, mask and overlay
stays in bounded memory (BENCHMARKS.md, "Large images"). Nothing smaller changes.
References go through the same reduction as the images they are compared with, so a reference and a
query of the same size keep the same pixel scale.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: `tools.image_io.DEFAULT_MAX_PIXELS`, restated so that building the parser imports neither numpy nor
#: Pillow (`looktwice --help` stays instant); a test holds the two equal.
DEFAULT_MAX_PIXELS = 100_000_000

#: Key in a PIL image's `info` holding the file's (width, height) when the image was reduced.
SOURCE_SIZE = "looktwice_source_size"

#: The longest side an image is analysed at: a 20-megapixel frame (5472 x 3648) whole; beyond it the
#: image is decoded reduced (tiles keep the backbone's memory bounded, the full-size maps do not shrink).
ANALYSIS_MAX_SIDE = 6144


@dataclass(frozen=True)
class ImageLimits:
    """What a command may decode (`max_pixels`, on the file's header) and the longest side it analyses."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_side: int = ANALYSIS_MAX_SIDE

    def load(self, path: str | os.PathLike[str], note: Callable[[str], None] | None = None) -> Any:
        """One image to inspect (RGB PIL image). `note` gets one line when the image is reduced, before
        the (slow) decoding starts. Raises `ImageLoadError` as `tools.image_io.load_image` does."""
        from tools.image_io import load_image, read_image_size, reduced_size

        w, h = read_image_size(path)  # the header only
        reduced = max(w, h) > self.max_side
        if reduced and note is not None:
            rw, rh = reduced_size((w, h), self.max_side)
            note(f"{path}: {w}x{h} px ({w * h / 1e6:.0f} MP), decoding reduced and analysing at {rw}x{rh}")
        image = load_image(path, max_pixels=self.max_pixels, max_side=self.max_side)
        if reduced:
            image.info[SOURCE_SIZE] = (w, h)
        return image

    def references(
        self,
        source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
        warn: Callable[[str], None],
    ) -> list[Any]:
        """Good references under the same limits (none when `source` is None); unreadable ones are
        skipped with a warning. Raises `tools.image_io.ImageSetError` when none is usable."""
        from tools.image_io import load_image_set

        if source is None:
            return []
        return load_image_set(source, "reference", warn, max_pixels=self.max_pixels, max_side=self.max_side)


def source_size(image: Any) -> tuple[int, int] | None:
    """(width, height) of the file an image was reduced from by `ImageLimits.load`; None if not reduced.
    Records carry it as `source_size`, so region pixels can be mapped back to the file."""
    size = getattr(image, "info", {}).get(SOURCE_SIZE)
    return tuple(size) if size else None


def analysis_side(detector_options: Mapping[str, Any] | None = None) -> int:
    """`ANALYSIS_MAX_SIDE`, or more when a detector resolution asks for it (refmatch works at up to
    4 x its resolution on the longer side)."""
    resolution = (detector_options or {}).get("resolution")
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        return max(ANALYSIS_MAX_SIDE, 4 * resolution)
    return ANALYSIS_MAX_SIDE


def pillow_max_megapixels() -> float:
    """The largest image Pillow opens at all (2 x `Image.MAX_IMAGE_PIXELS`, a process-wide setting this
    tool leaves alone), in megapixels."""
    from PIL import Image

    return 2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6


def add_max_megapixels_arg(p: argparse.ArgumentParser, default: float = DEFAULT_MAX_PIXELS / 1e6) -> None:
    """`--max-megapixels`, the same flag on every command that reads images."""
    p.add_argument(
        "--max-megapixels",
        type=float,
        default=default,
        metavar="MP",
        help=f"largest image in megapixels, checked on the file header before decoding (default {default:g}); "
        "larger ones are refused as possible decompression bombs",
    )


def limits_from_args(
    args: argparse.Namespace, detector_options: Mapping[str, Any] | None = None
) -> ImageLimits:
    """`ImageLimits` from `--max-megapixels` and the detector settings; `ValueError` for a bad limit."""
    megapixels = getattr(args, "max_megapixels", None)
    if megapixels is None:
        megapixels = DEFAULT_MAX_PIXELS / 1e6
    cap = pillow_max_megapixels()
    if not 0 < megapixels <= cap:
        raise ValueError(
            f"--max-megapixels must be above 0 and at most {cap:.0f} (Pillow refuses larger images), "
            f"got {megapixels:g}"
        )
    return ImageLimits(max_pixels=int(megapixels * 1_000_000), max_side=analysis_side(detector_options))


def missing_paths(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """The paths named on a command line that do not exist (a list file `@paths.txt` is checked as the
    file it names); each is a usage error, reported before anything is written."""
    missing = []
    for item in paths:
        text = os.fspath(item)
        target = text[1:] if text.startswith("@") else text
        if not Path(target).exists():
            missing.append(text)
    return missing


def missing_message(paths: Sequence[str], what: str = "input") -> str:
    """One line per missing path, naming it."""
    return "\n".join(f"{what} '{p}' does not exist" for p in paths)


__all__ = [
    "ANALYSIS_MAX_SIDE",
    "ImageLimits",
    "add_max_megapixels_arg",
    "analysis_side",
    "limits_from_args",
    "missing_message",
    "missing_paths",
    "source_size",
]
