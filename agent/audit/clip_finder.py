"""The CLIP text-prompt finder: which candidate blobs a `find: {clip_prompt: ...}` component claims.

Each unclaimed blob is cropped from the full-resolution image (a square around its box with some
context, so a small part is not a few blurry pixels) and scored against every component's prompt plus
generic negatives ("background", "an empty surface"). Why the competing texts: a CLIP similarity on its
own has no meaningful threshold, a softmax over alternatives does. The blob goes to the component whose
prompt wins, when it wins by `margin` in probability; otherwise it stays unclaimed (and is an
unexpected object if the spec checks for those).

`claim_by_prompt` is the decision (numpy); the scorer is any `ClipScorer` callable, `OpenClipScorer`
being the real one (open_clip, imported by `tools.models.load_open_clip` when it is loaded).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from agent.audit.spec import ClipSettings, Spec
from tools.components import Part

ClipScorer = Callable[[Sequence[Image.Image], Sequence[str]], np.ndarray]  # -> (crops, texts) logits
MIN_CROP = 8  # pixels: smaller crops are grown to this


def crop_box(mask: np.ndarray, size: tuple[int, int], margin: float = 0.25) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in pixels of an image of `size` (width, height): a square around the mask's box
    (work resolution), `margin` x its size added on each side, kept inside the image."""
    mh, mw = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0, 0, size[0], size[1]
    w, h = size
    x0, x1 = xs.min() / mw * w, (xs.max() + 1) / mw * w
    y0, y1 = ys.min() / mh * h, (ys.max() + 1) / mh * h
    side = max(x1 - x0, y1 - y0, MIN_CROP) * (1.0 + 2.0 * margin)
    side = min(side, float(min(w, h)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(cx - side / 2, 0.0), w - side)
    top = min(max(cy - side / 2, 0.0), h - side)
    return round(left), round(top), round(left + side), round(top + side)


def texts_for(spec: Spec, settings: ClipSettings) -> tuple[list[str], list[str]]:
    """(texts to score, the component owning each text or "" for a negative): every component's
    prompt, then the negatives (those equal to a prompt left out)."""
    texts, owners = [], []
    for c in spec.components:
        if c.find.clip_prompt and c.find.clip_prompt not in texts:
            texts.append(c.find.clip_prompt)
            owners.append(c.name)
    for neg in settings.negatives:
        if neg not in texts:
            texts.append(neg)
            owners.append("")
    return texts, owners


def decide(logits: np.ndarray, owners: Sequence[str], margin: float) -> list[str | None]:
    """Per crop: the owner of the winning text when it is a component's and wins by `margin` in
    softmax probability over all texts, else None."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    out: list[str | None] = []
    for row in p:
        order = np.argsort(-row, kind="stable")
        best = int(order[0])
        lead = row[best] - (row[order[1]] if len(row) > 1 else 0.0)
        out.append(owners[best] if owners[best] and lead >= margin else None)
    return out


def claim_by_prompt(
    blobs: Sequence[Part],
    indices: Sequence[int],
    image: Image.Image,
    spec: Spec,
    scorer: ClipScorer,
) -> dict[int, str]:
    """{blob index: component} for the blobs in `indices` that a component's prompt claims."""
    settings = spec.clip_settings
    texts, owners = texts_for(spec, settings)
    if not indices or not any(owners):
        return {}
    rgb = image.convert("RGB")
    crops = [rgb.crop(crop_box(blobs[i].mask, rgb.size, settings.crop_margin)) for i in indices]
    logits = np.asarray(scorer(crops, texts), dtype=np.float64)
    if logits.shape != (len(crops), len(texts)):
        raise ValueError(f"CLIP scorer returned shape {logits.shape}, expected {(len(crops), len(texts))}")
    won = decide(logits, owners, settings.margin)
    return {i: o for i, o in zip(indices, won, strict=True) if o is not None}


class OpenClipScorer:
    """`ClipScorer` over a loaded open_clip bundle (`tools.models.OpenClipBundle`): image-text logits
    (cosine x the model's logit scale), text embeddings cached per string."""

    def __init__(self, bundle: Any, device: str = "cpu", batch_size: int = 32) -> None:
        import torch

        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.batch_size = max(1, int(batch_size))
        self._text: dict[str, Any] = {}
        self._mean = torch.tensor(bundle.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(bundle.std, dtype=torch.float32).view(1, 3, 1, 1)

    def _pixels(self, crops: Sequence[Image.Image]) -> Any:
        import torch

        h, w = self.bundle.image_size
        arr = np.stack([np.asarray(c.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)) for c in crops])
        x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)
        return ((x - self._mean) / self._std).to(self.device)

    def _texts(self, texts: Sequence[str]) -> Any:
        import torch
        import torch.nn.functional as F

        todo = [t for t in texts if t not in self._text]
        if todo:
            with torch.no_grad():
                emb = self.model.encode_text(self.bundle.tokenizer(todo).to(self.device))
            for t, e in zip(todo, F.normalize(emb.float(), dim=-1), strict=True):
                self._text[t] = e
        return torch.stack([self._text[t] for t in texts])

    def __call__(self, crops: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if not crops:
            return np.zeros((0, len(texts)), np.float32)
        text = self._texts(texts)
        out = []
        with torch.no_grad():
            scale = getattr(self.model, "logit_scale", None)
            scale = float(scale.exp()) if scale is not None else 100.0
            for i in range(0, len(crops), self.batch_size):
                img = self.model.encode_image(self._pixels(crops[i : i + self.batch_size]))
                out.append(scale * F.normalize(img.float(), dim=-1) @ text.T)
        return torch.cat(out).cpu().numpy().astype(np.float32)


__all__ = ["ClipScorer", "OpenClipScorer", "claim_by_prompt", "crop_box", "decide", "texts_for"]
