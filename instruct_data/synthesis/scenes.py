"""Deterministic LOCO-like scenes with logical and structural anomalies and their ground truth.

Three scenes, drawn on a light beige background (128 x 128 by default):

- `tray`: a tray of 3 x 4 compartments (faint walls), one blue pin in each compartment (`pin`).
- `box`: a box with items in fixed places: a `bottle` and its `label` (same flavour colour, orange or
  purple), a green `cap` and a yellow `bar`.
- `cable`: a dark `cable` across the image held by three grey `clamp`s, with a `plug` at each end (both
  plugs of one colour, teal or orange, like a colour-coded harness).

Logical anomalies (each with kind, component name and a mask of where it is or should be):
`missing` (one or more items gone), `extra` (one more item), `moved` (an item away from its place),
`recoloured` (an item of a fixed colour in another colour) and, on the box and the cable, `mismatched`
(the label's flavour does not match the bottle's; the two plugs differ). Structural defects on the same
scenes (`STRUCTURAL_KINDS`): `scratch` (a thin dark line across a part) and `stain` (a soft discoloured
patch). Everything depends only on the seed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SCENES = ("tray", "box", "cable")
KINDS: dict[str, tuple[str, ...]] = {
    "tray": ("missing", "extra", "moved", "recoloured"),
    "box": ("missing", "extra", "moved", "recoloured", "mismatched"),
    "cable": ("missing", "extra", "moved", "recoloured", "mismatched"),
}
STRUCTURAL_KINDS = ("scratch", "stain")
BACKGROUND = (226, 222, 210)
WALL = (214, 210, 198)
PIN = (40, 70, 200)
RED = (210, 40, 40)
FLAVOURS = {"orange": ((232, 128, 28), (250, 170, 90)), "purple": ((130, 45, 165), (175, 100, 205))}
CAP = (40, 160, 70)
BAR = (230, 205, 40)
STAIN = (120, 88, 52)
ROWS, COLS = 3, 4
CABLE = (58, 58, 66)
CLAMP = (150, 152, 162)
PLUGS = {"orange": (225, 120, 30), "teal": (30, 120, 130)}
PLUG_FOR_FLAVOUR = {"orange": "orange", "purple": "teal"}  # the scene's two variants, like the box's
CLAMP_X = (0.27, 0.5, 0.73)  # clamp positions along the cable, image fractions


@dataclass
class Item:
    name: str
    shape: str  # "disc" or "rect"
    centre: tuple[float, float]  # pixels
    size: tuple[float, float]  # radius (disc: both the same) or half width/height
    colour: tuple[int, int, int]

    def mask(self, width: int, height: int) -> np.ndarray:
        yy, xx = np.mgrid[0:height, 0:width]
        cx, cy = self.centre
        if self.shape == "disc":
            return (xx - cx) ** 2 + (yy - cy) ** 2 <= self.size[0] ** 2
        return (np.abs(xx - cx) <= self.size[0]) & (np.abs(yy - cy) <= self.size[1])


@dataclass
class Scene:
    image: Image.Image
    scene: str
    kind: str  # "good" or an anomaly kind
    component: str | None = None  # the component the anomaly concerns
    mask: np.ndarray | None = None  # where it is (or should be), HxW bool; None for good scenes
    items: list[Item] = field(default_factory=list)
    detail: str = ""

    @property
    def label(self) -> int:
        return 0 if self.kind == "good" else 1


def _tray_items(rng: np.random.Generator, size: int, hard: bool = False) -> list[Item]:
    cw, ch = size / COLS, size / ROWS
    r = size * 0.045
    jit, grow = (3.0, 0.1) if hard else (1.0, 0.0)
    return [
        Item(
            "pin",
            "disc",
            ((c + 0.5) * cw + rng.uniform(-jit, jit), (row + 0.5) * ch + rng.uniform(-jit, jit)),
            (r * (1 + rng.uniform(-grow, grow)),) * 2,
            PIN,
        )
        for row in range(ROWS)
        for c in range(COLS)
    ]


def _box_items(rng: np.random.Generator, size: int, flavour: str, hard: bool = False) -> list[Item]:
    s = size / 128.0
    jit = 3.0 if hard else 1.0
    j = lambda: rng.uniform(-jit, jit) * s  # noqa: E731
    liquid, label = FLAVOURS[flavour]
    return [
        Item("bottle", "rect", (34 * s + j(), 64 * s + j()), (14 * s, 34 * s), liquid),
        Item("label", "rect", (86 * s + j(), 36 * s + j()), (12 * s, 10 * s), label),
        Item("cap", "disc", (86 * s + j(), 80 * s + j()), (9 * s, 9 * s), CAP),
        Item("bar", "rect", (86 * s + j(), 108 * s + j()), (22 * s, 5 * s), BAR),
    ]


def _cable_items(rng: np.random.Generator, size: int, plug: str, hard: bool = False) -> list[Item]:
    s = size / 128.0
    jit = 3.0 if hard else 1.0
    j = lambda: rng.uniform(-jit, jit) * s  # noqa: E731
    y = 64 * s + j()
    items = [Item("cable", "rect", (64 * s, y), (46 * s, 5 * s), CABLE)]
    items += [Item("clamp", "rect", (x * size + j(), y), (4 * s, 11 * s), CLAMP) for x in CLAMP_X]
    items += [Item("plug", "rect", (x * s + j(), y + j()), (7 * s, 9 * s), PLUGS[plug]) for x in (12, 116)]
    return items


def _scratch(img: np.ndarray, rng: np.random.Generator, target: Item) -> np.ndarray:
    """Darken a thin line (about 2 px) across `target`; returns its mask."""
    size = img.shape[0]
    length = size * rng.uniform(0.18, 0.3)
    angle = rng.uniform(0, np.pi)
    cx, cy = target.centre
    yy, xx = np.mgrid[0:size, 0:size]
    dx, dy = np.cos(angle), np.sin(angle)
    along = (xx - cx) * dx + (yy - cy) * dy
    across = -(xx - cx) * dy + (yy - cy) * dx
    mask = (np.abs(along) <= length / 2) & (np.abs(across) <= 1.0)
    img[mask] *= 0.45
    return mask


def _stain(img: np.ndarray, rng: np.random.Generator, target: Item) -> np.ndarray:
    """A soft brownish patch near `target`'s centre; returns where it is visible."""
    size = img.shape[0]
    radius = size * rng.uniform(0.05, 0.08)
    cx = target.centre[0] + rng.uniform(-0.5, 0.5) * radius
    cy = target.centre[1] + rng.uniform(-0.5, 0.5) * radius
    yy, xx = np.mgrid[0:size, 0:size]
    alpha = 0.65 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
    img[:] = img * (1 - alpha[..., None]) + np.asarray(STAIN, float) * alpha[..., None]
    return alpha > 0.2


def _render(
    items: list[Item],
    scene: str,
    size: int,
    rng: np.random.Generator,
    hard: bool = False,
    defect: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[Image.Image, np.ndarray | None]:
    """The scene's pixels (and the structural defect's mask when `defect` draws one)."""
    img = np.empty((size, size, 3), np.float64)
    img[:] = BACKGROUND
    if scene == "tray":
        for c in range(1, COLS):
            x = round(c * size / COLS)
            img[:, x - 1 : x + 1] = WALL
        for r in range(1, ROWS):
            y = round(r * size / ROWS)
            img[y - 1 : y + 1, :] = WALL
    else:
        img[2:4, 2:-2] = WALL
        img[-4:-2, 2:-2] = WALL
        img[2:-2, 2:4] = WALL
        img[2:-2, -4:-2] = WALL
    for it in items:
        img[it.mask(size, size)] = it.colour
    defect_mask = defect(img) if defect is not None else None
    if hard:  # uneven light: a global gain, a slight colour cast and a brightness ramp, more sensor noise
        ramp = np.linspace(-1.0, 1.0, size)[None, :, None] * rng.uniform(-0.05, 0.05)
        img *= rng.uniform(0.9, 1.06) * rng.uniform(0.97, 1.03, 3)[None, None, :] * (1.0 + ramp)
    img += rng.normal(0.0, 5.0 if hard else 2.5, img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8)), defect_mask


def make_scene(
    scene: str,
    kind: str = "good",
    seed: int = 0,
    size: int = 128,
    flavour: str | None = None,
    hard: bool = False,
) -> Scene:
    """One scene; `kind` is "good", one of KINDS[scene] (logical) or of STRUCTURAL_KINDS. Same arguments,
    same pixels. `hard`: larger position and size jitter, uneven light (gain, colour cast, ramp) and
    more noise."""
    if scene not in SCENES:
        raise ValueError(f"unknown scene '{scene}'; choose one of: {', '.join(SCENES)}")
    all_kinds = ("good",) + KINDS[scene] + STRUCTURAL_KINDS
    if kind not in all_kinds:
        raise ValueError(
            f"scene '{scene}' has no anomaly kind '{kind}'; choose one of: {', '.join(all_kinds[1:])}"
        )
    rng = np.random.default_rng([seed, SCENES.index(scene), all_kinds.index(kind)])
    if flavour is None:
        flavour = str(rng.choice(sorted(FLAVOURS)))
    if scene == "tray":
        items = _tray_items(rng, size, hard)
    elif scene == "box":
        items = _box_items(rng, size, flavour, hard)
    else:
        items = _cable_items(rng, size, PLUG_FOR_FLAVOUR[flavour], hard)
    mask = np.zeros((size, size), bool)
    component: str | None = None
    detail = ""
    defect: Callable[[np.ndarray], np.ndarray] | None = None
    if kind == "missing":
        n = int(rng.integers(1, 4)) if scene == "tray" else 1
        pool = len(items) if scene != "cable" else np.arange(1, len(items))  # the cable itself stays
        gone = sorted(int(i) for i in rng.choice(pool, n, replace=False))
        for i in gone:
            mask |= items[i].mask(size, size)
        component = items[gone[0]].name
        detail = f"{n} {component} missing"
        items = [it for i, it in enumerate(items) if i not in gone]
    elif kind == "extra":
        if scene == "tray":
            base = items[int(rng.integers(len(items)))]
            dy = size / ROWS * 0.33 * (1 if rng.random() < 0.5 else -1)
            new = Item("pin", "disc", (base.centre[0], base.centre[1] + dy), base.size, PIN)
        elif scene == "cable":
            base = items[1 + int(rng.integers(2))]  # a fourth clamp between two others
            new = Item("clamp", "rect", (base.centre[0] + size * 0.115, base.centre[1]), base.size, CLAMP)
        else:
            base = items[2]  # a second cap, in the free space under the label
            new = Item(
                "cap", "disc", (base.centre[0] + size * 0.15, base.centre[1] - size * 0.17), base.size, CAP
            )
        items.append(new)
        mask |= new.mask(size, size)
        component, detail = new.name, f"one {new.name} too many"
    elif kind == "moved":
        i = _pick(rng, scene, len(items))
        it = items[i]
        mask |= it.mask(size, size)
        if scene == "tray":
            shift = (size / COLS * 0.5 * (1 if it.centre[0] < size / 2 else -1), 0.0)
        elif scene == "cable":  # along the cable, a third of the way to the next clamp
            shift = (size * 0.09 * (1 if rng.random() < 0.5 else -1), 0.0)
        else:
            shift = (-size * 0.12, 0.0) if it.name == "cap" else (0.0, -size * 0.08)
        moved = Item(
            it.name, it.shape, (it.centre[0] + shift[0], it.centre[1] + shift[1]), it.size, it.colour
        )
        items[i] = moved
        mask |= moved.mask(size, size)
        component, detail = it.name, f"{it.name} moved"
    elif kind == "recoloured":
        i = _pick(rng, scene, len(items))
        it = items[i]
        items[i] = Item(it.name, it.shape, it.centre, it.size, RED)
        mask |= it.mask(size, size)
        component, detail = it.name, f"{it.name} in the wrong colour"
    elif kind == "mismatched" and scene == "box":
        other = next(f for f in sorted(FLAVOURS) if f != flavour)
        lab = items[1]
        items[1] = Item(lab.name, lab.shape, lab.centre, lab.size, FLAVOURS[other][1])
        mask |= lab.mask(size, size)
        component, detail = "label", f"{other} label on a {flavour} bottle"
    elif kind == "mismatched":  # cable: one plug of the other colour
        own = PLUG_FOR_FLAVOUR[flavour]
        other = next(p for p in PLUGS if p != own)
        i = 4 + int(rng.integers(2))
        plug = items[i]
        items[i] = Item(plug.name, plug.shape, plug.centre, plug.size, PLUGS[other])
        mask |= plug.mask(size, size)
        component, detail = "plug", f"a {other} plug on a {own} harness"
    elif kind in STRUCTURAL_KINDS:
        target = items[int(rng.integers(len(items)))]
        draw = _scratch if kind == "scratch" else _stain
        defect = lambda img: draw(img, rng, target)  # noqa: E731
        component, detail = target.name, f"{kind} on the {target.name}"
    image, defect_mask = _render(items, scene, size, rng, hard, defect)
    if defect_mask is not None:
        mask |= defect_mask
    return Scene(image, scene, kind, component, mask if kind != "good" else None, items, detail)


def _pick(rng: np.random.Generator, scene: str, n_items: int) -> int:
    """The item a `moved` / `recoloured` anomaly changes: any pin, the box's cap or bar, a clamp."""
    if scene == "tray":
        return int(rng.integers(n_items))
    return int(rng.integers(2, 4)) if scene == "box" else int(rng.integers(1, 4))


def write_scene_set(
    folder: str | Path,
    n: int,
    seed: int = 0,
    n_refs: int = 4,
    size: int = 128,
    scenes: tuple[str, ...] = SCENES,
    hard: bool = False,
    structural: bool = False,
) -> dict[str, Any]:
    """Write `<folder>/<scene>/refs/*.png` (good references, flavours alternating) and
    `<folder>/<scene>/test/*.png` (about n per scene: half good, half spread over the anomaly kinds, the
    structural ones included when `structural`) with ground-truth masks in `<folder>/<scene>/gt/`, and
    `<folder>/labels.json` ({relative path: {scene, kind, family, label, component, mask, detail}};
    family is "logical", "structural" or None for good). Returns the labels."""
    root = Path(folder)
    labels: dict[str, Any] = {}
    flavours = sorted(FLAVOURS)
    for scene in scenes:
        for sub in ("refs", "test", "gt"):
            (root / scene / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n_refs):
            sc = make_scene(
                scene, "good", seed=seed * 100_003 + 90_000 + i, size=size, flavour=flavours[i % 2], hard=hard
            )
            sc.image.save(root / scene / "refs" / f"ref_{i:02d}.png")
        kinds = KINDS[scene] + (STRUCTURAL_KINDS if structural else ())
        for i in range(n):
            kind = "good" if i % 2 == 0 else kinds[(i // 2) % len(kinds)]
            sc = make_scene(scene, kind, seed=seed * 100_003 + i, size=size, hard=hard)
            rel = f"{scene}/test/{i:04d}_{kind}.png"
            sc.image.save(root / rel)
            entry: dict[str, Any] = {
                "scene": scene,
                "kind": kind,
                "family": None
                if kind == "good"
                else ("structural" if kind in STRUCTURAL_KINDS else "logical"),
                "label": sc.label,
                "component": sc.component,
                "detail": sc.detail,
                "mask": None,
            }
            if sc.mask is not None:
                mrel = f"{scene}/gt/{i:04d}_{kind}_mask.png"
                Image.fromarray(sc.mask.astype(np.uint8) * 255).save(root / mrel)
                entry["mask"] = mrel
            labels[rel] = entry
    (root / "labels.json").write_text(json.dumps(labels, indent=1), encoding="utf-8")
    return labels


__all__ = ["KINDS", "SCENES", "STRUCTURAL_KINDS", "Item", "Scene", "make_scene", "write_scene_set"]
