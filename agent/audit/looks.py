"""What a part looks like, as data a spec can hold: small images (patterns), appearance vectors,
and the colour kinds seen on the references.

- Patterns (a part's mean look, or the look of a part seen with one colour kind of another) are small
  RGB images stored in the spec as base64 PNG: a spec stays one self-contained text file.
- A look is the part's inner crop shrunk to `LOOK_SIZE` squared; two looks are compared by their
  best correlation within a small shift: the print (a fruit, a logo) decides it, not the light.
- Colour kinds: the references' colours of a part grouped so that any two colours of one kind are
  closer than `KIND_DISTANCE` (complete linkage); a part with two or more kinds varies by kind (a
  flavour), and its rule is "one of the kinds seen". Kinds are named by colour words.
"""

from __future__ import annotations

import base64
import colorsys
import io
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image

LOOK_SIZE = 24
LOOK_SHIFT = 4  # pixels two looks may be moved against each other (a part found a little off)
KIND_DISTANCE = 0.12  # RGB 0..1: colours of one kind are closer than this

_HUES = ((0.04, "red"), (0.11, "orange"), (0.19, "yellow"), (0.45, "green"), (0.53, "cyan"),
         (0.72, "blue"), (0.85, "purple"), (0.95, "pink"), (1.01, "red"))


def colour_word(rgb: Sequence[float], brown: bool = True) -> str:
    """A plain colour word for an RGB 0..1 colour (`brown`: dark orange is brown)."""
    h, s, v = colorsys.rgb_to_hsv(*(float(c) for c in rgb))
    if v < 0.2:
        return "black"
    if s < 0.2:
        return "white" if v > 0.8 else "grey"
    if brown and 0.04 <= h < 0.11 and v < 0.55:
        return "brown"
    word = next(word for lim, word in _HUES if h < lim)
    return f"pale {word}" if brown and s < 0.4 else word


def encode_pattern(px: np.ndarray) -> str:
    """HxWx3 float 0..1 -> base64 PNG text."""
    buf = io.BytesIO()
    Image.fromarray((np.clip(px, 0, 1) * 255).round().astype(np.uint8)).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


@lru_cache(maxsize=64)
def decode_pattern(text: str) -> np.ndarray:
    """base64 PNG text -> HxWx3 float 0..1 (read-only: decoded once per pattern); ValueError when it
    is not one."""
    try:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as im:
            out = np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0
            out.setflags(write=False)
            return out
    except Exception as err:  # binascii.Error, PIL.UnidentifiedImageError, ...
        raise ValueError(f"not a base64 PNG pattern ({type(err).__name__})") from None


def look_vector(crop: np.ndarray) -> np.ndarray:
    """A crop's look: shrunk to `LOOK_SIZE` squared, RGB 0..1 (compared by `look_distance`)."""
    img = Image.fromarray((np.clip(crop, 0, 1) * 255).astype(np.uint8)).resize((LOOK_SIZE, LOOK_SIZE), Image.BILINEAR)
    return np.asarray(img, dtype=np.float64) / 255.0


def look_distance(a: np.ndarray, b: np.ndarray) -> float:
    """1 - the best correlation (NCC, each colour channel's brightness and contrast factored out) of
    two looks moved against each other by up to `LOOK_SHIFT` pixels: the print decides, not the light
    or where exactly the crop was cut."""
    from tools.part_templates import ncc_map

    a = np.asarray(a, dtype=np.float64).reshape(LOOK_SIZE, LOOK_SIZE, 3)
    b = np.asarray(b, dtype=np.float64).reshape(LOOK_SIZE, LOOK_SIZE, 3)
    pad = np.pad(a, ((LOOK_SHIFT, LOOK_SHIFT), (LOOK_SHIFT, LOOK_SHIFT), (0, 0)), mode="edge")
    return float(1.0 - ncc_map(pad, b).max())


def look_pattern(vector: np.ndarray) -> np.ndarray:
    """A look as a small image (to store it as a pattern)."""
    return np.clip(np.asarray(vector).reshape(LOOK_SIZE, LOOK_SIZE, 3), 0, 1)


def pattern_vector(px: np.ndarray) -> np.ndarray:
    """Inverse of `look_pattern`."""
    return np.asarray(px, dtype=np.float64).reshape(LOOK_SIZE, LOOK_SIZE, 3)


def colour_kinds(colours: Sequence[Sequence[float]], distance: float = KIND_DISTANCE) -> list[int]:
    """Kind index per colour: complete-linkage groups with every pair closer than `distance`."""
    c = np.asarray(colours, dtype=np.float64)
    groups: list[list[int]] = [[i] for i in range(len(c))]
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) if len(c) else np.zeros((0, 0))
    while len(groups) > 1:
        best, pair = math.inf, None
        for i in range(len(groups)):
            for j in range(i + 1, len(groups)):
                link = float(d[np.ix_(groups[i], groups[j])].max())
                if link < best:
                    best, pair = link, (i, j)
        if pair is None or best >= distance:
            break
        i, j = pair
        groups[i] += groups.pop(j)
    kind = [0] * len(c)
    order = sorted(range(len(groups)), key=lambda g: min(groups[g]))
    for k, g in enumerate(order):
        for i in groups[g]:
            kind[i] = k
    return kind


def kind_names(centres: Sequence[Sequence[float]]) -> list[str]:
    """Unique names (colour words, numbered when repeated) for kind centres."""
    words = [colour_word(c) for c in centres]
    out = []
    for i, w in enumerate(words):
        n = words[:i].count(w)
        out.append(w if words.count(w) == 1 else f"{w} {n + 1}")
    return out


__all__ = [
    "KIND_DISTANCE",
    "LOOK_SIZE",
    "colour_kinds",
    "colour_word",
    "decode_pattern",
    "encode_pattern",
    "kind_names",
    "look_distance",
    "look_pattern",
    "look_vector",
    "pattern_vector",
]
