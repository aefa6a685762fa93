"""Helpers shared by the model brains: the error type, evidence text, image encoding.

Model brains (OpenAI-compatible servers, the local LLaVA) see the same evidence the RuleBrain does:
the score, the threshold and the measured regions, written as text from `prompts/agent.yaml`, plus the
image itself. Images come from `use_image` (what the loop and the chat hand over, so a file is read
once) or, failing that, from `record.image_path` through the safe loader.
"""

from __future__ import annotations

import base64
import io
from collections import OrderedDict
from typing import Any

from PIL import Image

from tools.record import InspectionRecord


class BrainError(RuntimeError):
    """A brain could not produce text (server unreachable, timeout, malformed reply, missing model).

    The message is one line that says what failed and where, fit for a terminal.
    """


def evidence_text(record: InspectionRecord, t: dict[str, Any], with_verdict: bool = True) -> str:
    """The record's measured evidence as text (templates `evidence`, `region`, `no_regions`). Without
    the verdict (`evidence_blind`), only where the map peaks: regions, their count and scores exist only
    for parts that are not good, so they would give the verdict away."""
    if not with_verdict:
        place = record.suspicious_place.location if record.suspicious_place is not None else ""
        return t["evidence_blind"].format(place=place or "center")
    lines = []
    for r in record.regions[:5]:
        x0, y0, x1, y1 = (int(v) for v in r.bbox)
        lines.append(
            t["region"].format(
                shape=r.shape or "anomalous",
                location=r.location,
                percent=100.0 * r.area_fraction,
                x0=x0,
                y0=y0,
                x1=x1,
                y1=y1,
                max_score=r.max_score,
            )
        )
    return t["evidence"].format(
        score=float(record.pred_score),
        threshold=float(record.threshold),
        verdict=record.verdict,
        regions="\n".join(lines) if lines else t["no_regions"],
    )


def image_data_url(image: Image.Image, max_side: int = 1024, fmt: str = "PNG") -> str:
    """`data:image/png;base64,...` of an RGB copy of `image`, downscaled to `max_side` (long side)."""
    img = image.convert("RGB")
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    mime = "image/png" if fmt.upper() == "PNG" else f"image/{fmt.lower()}"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


class ViewMemory:
    """Labelled views (the second look's crops) by image path, for the most recent few images."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._views: OrderedDict[str, list[tuple[str, Image.Image]]] = OrderedDict()

    def put(self, path: str, views: Any) -> None:
        self._views[str(path)] = [(str(label), image) for label, image in views]
        self._views.move_to_end(str(path))
        while len(self._views) > self.size:
            self._views.popitem(last=False)

    def get(self, path: str) -> list[tuple[str, Image.Image]]:
        return list(self._views.get(str(path), []))


def yes_no_share(top: list[dict[str, Any]]) -> float | None:
    """P(Yes) / (P(Yes) + P(No)) from an OpenAI `top_logprobs` list of the first token; None when
    neither word is among them."""
    import math

    yes = no = 0.0
    for item in top:
        token = str(item.get("token", "")).strip().lower().strip(".,:!")
        p = math.exp(float(item.get("logprob", -1e9)))
        if token == "yes":
            yes += p
        elif token == "no":
            no += p
    return yes / (yes + no) if yes + no > 0 else None


class ImageMemory:
    """The images a brain was handed, by path (a small LRU), with the safe loader as the fallback."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._images: OrderedDict[str, Image.Image] = OrderedDict()

    def put(self, path: str, image: Image.Image) -> None:
        self._images[str(path)] = image
        self._images.move_to_end(str(path))
        while len(self._images) > self.size:
            self._images.popitem(last=False)

    def get(self, path: str) -> Image.Image | None:
        """The image for `path`; loaded from disk when not handed over; None when unreadable."""
        key = str(path)
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        from tools.image_io import ImageLoadError, load_image

        try:
            image = load_image(key)
        except (ImageLoadError, OSError):
            return None
        self.put(key, image)
        return image
