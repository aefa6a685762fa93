"""Drawn photos of a labelled bottle for the audit tests (no shared data needed): a glass bottle on a
dark backdrop, a liquid of one of three kinds filled to a level, a top label whose mark goes with the
liquid's kind, and a bottom label with a line of print; light, grain and the labels' places vary a
little from photo to photo, as on real photos."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LIQUIDS = ((150, 40, 35), (200, 170, 60), (215, 210, 190))  # red, yellow, pale
W, H = 200, 400


def _mark(d: ImageDraw.ImageDraw, kind: int, cx: float, cy: float, r: float) -> None:
    """The label's print that tells the kind: two red dots, an orange disc, or a yellow bar."""
    if kind == 0:
        d.ellipse((cx - r, cy - r / 2, cx, cy + r / 2), fill=(170, 20, 30))
        d.ellipse((cx + 1, cy - r / 2, cx + r + 1, cy + r / 2), fill=(170, 20, 30))
        d.line((cx - r / 2, cy - r / 2, cx, cy - 1.6 * r), fill=(40, 90, 30), width=2)
    elif kind == 1:
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(235, 120, 20), outline=(90, 50, 10))
        d.polygon([(cx - 2, cy - r), (cx + r, cy - 1.6 * r), (cx + 4, cy - r + 3)], fill=(30, 110, 40))
    else:
        d.rounded_rectangle((cx - 1.4 * r, cy - r / 2, cx + 1.4 * r, cy + r / 2), radius=r / 2, fill=(240, 230, 90), outline=(60, 60, 20))


def bottle(
    seed: int,
    kind: int | None = None,
    *,
    top_label: bool = True,
    bottom_label: bool = True,
    fill: float = 0.78,
    liquid: tuple[int, int, int] | None = None,
    mark: int | None = None,
    top_shift: tuple[float, float] = (0.0, 0.0),
    top_angle: float = 0.0,
) -> Image.Image:
    """One photo. `kind` picks the liquid and the mark (random by seed when None); `liquid` and `mark`
    override them (a wrong colour, another kind's label); `fill` is the level as a share of the bottle
    from its bottom; `top_shift` moves the top label (share of the bottle), `top_angle` turns it."""
    rng = np.random.default_rng(seed)
    kind = int(rng.integers(3)) if kind is None else kind
    liquid = liquid or LIQUIDS[kind]
    mark = kind if mark is None else mark
    img = Image.new("RGB", (W, H), (8, 8, 10))
    d = ImageDraw.Draw(img)
    dx = rng.uniform(-6, 6)
    x0, x1, top, bottom = 55 + dx, 145 + dx, 40.0, 370.0
    neck = (82 + dx, 118 + dx)
    glass = (70, 72, 78)
    d.rectangle((neck[0], top, neck[1], top + 60), fill=glass)
    d.polygon([(neck[0], top + 60), (neck[1], top + 60), (x1, top + 95), (x0, top + 95)], fill=glass)
    d.rectangle((x0, top + 95, x1, bottom), fill=glass)
    level = bottom - fill * (bottom - top)
    for y in range(int(level), int(bottom) - 4):  # the liquid, darker towards the bottom
        shade = 1.0 - 0.25 * (y - level) / (bottom - level)
        col = tuple(int(c * shade) for c in liquid)
        half = (x1 - x0) / 2 - 4 if y > top + 95 else ((neck[1] - neck[0]) / 2 - 3 if y < top + 60 else ((x1 - x0) / 2 - 4) * (y - top - 60) / 35 + ((neck[1] - neck[0]) / 2 - 3) * (1 - (y - top - 60) / 35))
        cx = (x0 + x1) / 2
        d.line((cx - half, y, cx + half, y), fill=col)
    paper = (245, 205, 110)
    if top_label:
        jx, jy = rng.uniform(-3, 3) + top_shift[0] * (x1 - x0), rng.uniform(-4, 4) + top_shift[1] * (bottom - top)
        lab = Image.new("RGBA", (72, 68), paper + (255,))
        ld = ImageDraw.Draw(lab)
        ld.rounded_rectangle((5, 5, 66, 62), radius=8, outline=(70, 50, 30), width=1)
        _mark(ld, mark, 36, 36, 12)
        if top_angle:
            lab = lab.rotate(top_angle, resample=Image.BILINEAR, expand=True)
        cx, cy = (x0 + x1) / 2 + jx, 205 + jy
        img.paste(lab, (int(cx - lab.width / 2), int(cy - lab.height / 2)), lab)
    if bottom_label:
        jy = rng.uniform(-3, 3)
        bx0, by0 = (x0 + x1) / 2 - 33 + rng.uniform(-2, 2), 318 + jy
        d.rectangle((bx0, by0, bx0 + 66, by0 + 28), fill=paper)
        for k in range(5):
            d.rectangle((bx0 + 8 + 11 * k, by0 + 11, bx0 + 15 + 11 * k, by0 + 17), fill=(40, 30, 20))
    img = img.filter(ImageFilter.GaussianBlur(0.6))
    px = np.asarray(img, dtype=np.float64) * rng.uniform(0.93, 1.07) + rng.normal(0, 2.5, (H, W, 3))
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))


def references(n: int = 8, seed: int = 0) -> list[Image.Image]:
    """n good photos, the three kinds taking turns."""
    return [bottle(seed * 100 + i, i % 3) for i in range(n)]


__all__ = ["LIQUIDS", "bottle", "references"]
