"""Contact sheets: a grid PNG of originals and synthesized anomalies, each tile captioned.

Why: synthesized defects must be looked at, not only tested; one picture of every kind on a few images
shows at a glance whether a kind looks like a defect or like an artefact. The mask is drawn as a thin
outline *outside* its edge (`tools.overlay.outer_outline`), so the defect itself stays visible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tools.overlay import outer_outline

OUTLINE_COLOR = (0, 255, 0)
CAPTION_HEIGHT = 14
PAD = 4


@dataclass
class Tile:
    """One cell of a sheet: an RGB (or grey) uint8 image, an optional mask to outline, a caption."""

    image: np.ndarray
    caption: str = ""
    mask: np.ndarray | None = None


def render_tile(tile: Tile, size: int = 160, outline: bool = True) -> Image.Image:
    """The tile's image fitted into `size` x `size` (aspect kept), mask outlined, caption underneath."""
    arr = np.asarray(tile.image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3].astype(np.uint8)
    h, w = arr.shape[:2]
    scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    img = Image.fromarray(arr).resize((nw, nh), Image.Resampling.BILINEAR)
    if outline and tile.mask is not None and np.asarray(tile.mask).any():
        m = Image.fromarray(np.asarray(tile.mask).astype(np.uint8) * 255).resize(
            (nw, nh), Image.Resampling.NEAREST
        )
        ring = outer_outline(np.asarray(m) > 127, width=1)
        px = np.asarray(img).copy()
        px[ring] = OUTLINE_COLOR
        img = Image.fromarray(px)
    cell = Image.new("RGB", (size, size + CAPTION_HEIGHT), (32, 32, 32))
    cell.paste(img, ((size - nw) // 2, (size - nh) // 2))
    draw = ImageDraw.Draw(cell)
    caption = tile.caption
    while caption and draw.textlength(caption) > size - 2:
        caption = caption[:-1]
    draw.text((2, size + 1), caption, fill=(230, 230, 230))
    return cell


def contact_sheet(rows: Sequence[Sequence[Tile]], tile_size: int = 160, outline: bool = True) -> Image.Image:
    """A grid image with one row per entry of `rows` (rows may differ in length)."""
    if not rows or not any(rows):
        raise ValueError("a contact sheet needs at least one tile")
    ncols = max(len(r) for r in rows)
    cw, ch = tile_size + PAD, tile_size + CAPTION_HEIGHT + PAD
    sheet = Image.new("RGB", (ncols * cw + PAD, len(rows) * ch + PAD), (12, 12, 12))
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            sheet.paste(render_tile(tile, tile_size, outline), (PAD + j * cw, PAD + i * ch))
    return sheet


def save_contact_sheet(
    path: str | Path, rows: Sequence[Sequence[Tile]], tile_size: int = 160, outline: bool = True
) -> Path:
    """Write `contact_sheet(rows)` as PNG to `path` (folders created); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(rows, tile_size, outline).save(p, format="PNG")
    return p


def demo_sheet(
    path: str | Path, seed: int = 0, n_images: int = 3, size: int = 256, tile_size: int = 160
) -> Path:
    """Every registered kind on `n_images` brushed demo plates: the first row shows the originals, then
    one row per kind, each synthesized image shown plain and with its mask outlined."""
    from instruct_data.synthesis.anomalies import kinds, synthesize
    from instruct_data.synthesis.demo_case import brushed_plate

    rng = np.random.default_rng(seed)
    plates = [(brushed_plate(rng, size) * 255).round().astype(np.uint8) for _ in range(n_images)]
    rows: list[list[Tile]] = [[Tile(p, f"original {i}") for i, p in enumerate(plates)]]
    for kind in kinds():
        row: list[Tile] = []
        for i, plate in enumerate(plates):
            res = synthesize(plate, kind, np.random.default_rng([seed, i, len(rows)]))
            row.append(Tile(res.image, f"{kind}: {res.description['appearance']}"))
            row.append(
                Tile(res.image, f"{res.description['location']} {res.description['size']:.3f}", res.mask)
            )
        rows.append(row)
    return save_contact_sheet(path, rows, tile_size)
