"""WinCLIP compute (Jeong et al., CVPR 2023): window embeddings, harmonic aggregation, zero/few-shot maps.

How the pieces fit:

- The image is squashed to the model's input size (240 px for ViT-B-16-plus-240, a 15x15 patch grid),
  so the patch map covers the whole image and is resized back to each image's own size at the end.
- Patch embedding (conv1 + class token + positional embedding + ln_pre) runs once per image. Each
  window of `scale x scale` patches (stride 1) is then a short sequence [class token, its patches]
  through the visual transformer: the "masked forward". All windows of one scale have the same
  length, so they go through the transformer as one batch (chunked by a token budget), not one by one.
- Zero-shot: each window embedding is scored against the normal/anomalous text embeddings (softmax
  over the two, the anomalous probability); a patch's score at one scale is the harmonic mean of the
  scores of all windows covering it (`harmonic_aggregation`, a sparse incidence matrix product); the
  zero-shot map is the harmonic mean over scales plus the class-token (image) score.
- Few-shot (WinCLIP+): visual association `(1 - cos).min() / 2` of every window (per scale) and every
  patch token against all reference windows / patches; windows are aggregated harmonically like above,
  the per-scale maps averaged.

This module imports torch but not open_clip; models come from `tools.models.load_open_clip`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tools.clip.prompts import PromptSet, clean_object_name, load_prompt_set
from tools.detectors.base import DetectorError

EPS = 1e-6


# --------------------------------------------------------------------------------------------------
# Windows and aggregation (pure tensor functions)


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Window start positions along one axis; the last window always ends at the border."""
    if size > length:
        return []
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def window_masks(grid: tuple[int, int], scale: int, stride: int = 1) -> torch.Tensor:
    """Patch indices (row-major on the grid) of every `scale x scale` window: LongTensor (n_windows, scale**2).

    Windows are ordered row-major by their top-left corner. A scale larger than the grid gives no
    windows (shape (0, scale**2)).
    """
    gh, gw = grid
    if scale < 1 or stride < 1:
        raise ValueError(f"scale and stride must be >= 1, got {scale}, {stride}")
    rows, cols = _starts(gh, scale, stride), _starts(gw, scale, stride)
    offsets = torch.arange(scale)
    out = []
    for r in rows:
        for c in cols:
            rr = (r + offsets)[:, None]
            cc = (c + offsets)[None, :]
            out.append((rr * gw + cc).reshape(-1))
    if not out:
        return torch.empty(0, scale * scale, dtype=torch.long)
    return torch.stack(out).long()


def incidence_matrix(masks: torch.Tensor, n_patches: int) -> torch.Tensor:
    """Dense float (n_patches, n_windows) matrix with 1 where a window covers a patch."""
    n_windows = masks.shape[0]
    inc = torch.zeros(n_patches, n_windows)
    if n_windows:
        inc[masks.T.reshape(-1), torch.arange(n_windows).repeat(masks.shape[1])] = 1.0
    return inc


def harmonic_aggregation(
    window_scores: torch.Tensor,
    masks: torch.Tensor,
    grid: tuple[int, int],
    incidence: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-patch harmonic mean of the scores of the windows covering it.

    window_scores: (B, n_windows) positive scores; masks: (n_windows, k) patch indices.
    Returns (B, grid_h, grid_w). Scores are clamped to >= 1e-6 so a zero score gives ~0, not a NaN;
    a patch covered by no window gets NaN.
    """
    gh, gw = grid
    n_patches = gh * gw
    inc = incidence if incidence is not None else incidence_matrix(masks, n_patches)
    inc = inc.to(device=window_scores.device, dtype=window_scores.dtype)
    counts = inc.sum(dim=1)  # (P,)
    inv_sum = (1.0 / window_scores.clamp_min(EPS)) @ inc.T  # (B, P)
    out = counts / inv_sum
    out = torch.where(counts > 0, out, torch.full_like(out, float("nan")))
    return out.reshape(window_scores.shape[0], gh, gw)


def class_scores(embeddings: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    """Anomalous probability: softmax over (normal, anomalous) of cos / temperature. (..., D) -> (...)."""
    logits = embeddings @ text.T / temperature
    return logits.softmax(dim=-1)[..., 1]


def visual_association(embeddings: torch.Tensor, references: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """`(1 - cos).min() / 2` of each embedding against all references (both L2-normalized).

    embeddings: (B, N, D); references: (M, D). Returns (B, N) in [0, 1].
    """
    if references.shape[0] == 0:
        raise ValueError("no reference embeddings")
    out = []
    for i in range(0, embeddings.shape[0], chunk):
        sims = embeddings[i : i + chunk] @ references.T  # (b, N, M)
        out.append((1.0 - sims.amax(dim=-1)) / 2.0)
    return torch.cat(out, dim=0)


# --------------------------------------------------------------------------------------------------
# Model wrapper


@dataclass
class Encoded:
    """Embeddings of a batch of images, all L2-normalized, on the model's device, float32."""

    image: torch.Tensor  # (B, D) projected class token
    windows: list[torch.Tensor]  # per scale: (B, n_windows, D) projected window class tokens
    patches: torch.Tensor  # (B, P, W) final-layer patch tokens (after ln_post, not projected)

    def select(self, idx: Sequence[int] | torch.Tensor) -> Encoded:
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.image.device)
        return Encoded(self.image[idx_t], [w[idx_t] for w in self.windows], self.patches[idx_t])

    def __len__(self) -> int:
        return int(self.image.shape[0])


class WinCLIP:
    """WinCLIP around a loaded open_clip model (see `tools.models.OpenClipBundle`).

    `token_budget` bounds how many tokens one transformer call gets (window sequences are batched up
    to it); raise it on a GPU with memory to spare, lower it on a small CPU box.
    """

    def __init__(
        self,
        bundle: Any,
        scales: Sequence[int] = (2, 3),
        stride: int = 1,
        temperature: float = 0.07,
        prompts: PromptSet | str | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        token_budget: int = 65536,
    ) -> None:
        self.bundle = bundle
        self.model = bundle.model.to(device).eval()
        self.visual = self.model.visual
        self._check_visual(self.visual)
        self.device = torch.device(device)
        self.precision = precision
        self.image_size = tuple(bundle.image_size)
        ph, pw = (
            self.visual.patch_size
            if isinstance(self.visual.patch_size, tuple)
            else (self.visual.patch_size,) * 2
        )
        self.grid = (self.image_size[0] // ph, self.image_size[1] // pw)
        self.n_patches = self.grid[0] * self.grid[1]
        self.scales = tuple(int(s) for s in scales if int(s) <= min(self.grid))
        if not self.scales:
            raise DetectorError(f"no window scale in {tuple(scales)} fits the {self.grid} patch grid")
        self.stride = stride
        self.masks = [window_masks(self.grid, s, stride).to(self.device) for s in self.scales]
        self.incidence = [incidence_matrix(m.cpu(), self.n_patches).to(self.device) for m in self.masks]
        self.temperature = float(temperature)
        self.prompts = prompts if isinstance(prompts, PromptSet) else load_prompt_set(prompts)
        self.token_budget = int(token_budget)
        self._text_cache: dict[str, torch.Tensor] = {}
        self._mean = torch.tensor(bundle.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(bundle.std, dtype=torch.float32).view(1, 3, 1, 1)

    @staticmethod
    def _check_visual(visual: Any) -> None:
        needed = ("conv1", "class_embedding", "positional_embedding", "transformer", "ln_post")
        missing = [n for n in needed if not hasattr(visual, n)]
        if missing or getattr(visual, "attn_pool", None) is not None:
            raise DetectorError(
                "WinCLIP needs an open_clip VisionTransformer tower (conv1, class token, no attentional "
                f"pooling); this model's visual tower is {type(visual).__name__}"
            )

    # ---- helpers --------------------------------------------------------------------------------

    def _autocast(self):
        if self.precision in ("bf16", "fp16") and self.device.type in ("cuda", "cpu"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast(self.device.type, dtype=dtype)
        return torch.autocast(self.device.type, enabled=False)

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Squash-resize to the model input size (bicubic) and normalize: (B, 3, H, W) float32."""
        h, w = self.image_size
        arrays = [np.asarray(im.convert("RGB").resize((w, h), Image.Resampling.BICUBIC)) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        return (x - self._mean) / self._std

    def _embed_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Class + patch tokens after positional embedding and ln_pre: (B, 1 + P, width)."""
        v = self.visual
        if hasattr(v, "_embeds"):
            return v._embeds(x)
        t = v.conv1(x).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(t.dtype).expand(t.shape[0], 1, -1)
        t = torch.cat([cls, t], dim=1) + v.positional_embedding.to(t.dtype)
        return v.ln_pre(t)

    def _pool_project(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Final-layer tokens -> (projected pooled embedding, patch tokens after ln_post)."""
        v = self.visual
        if hasattr(v, "_pool"):
            pooled, rest = v._pool(tokens)
        else:
            t = v.ln_post(tokens)
            pooled, rest = t[:, 0], t[:, 1:]
        if getattr(v, "proj", None) is not None:
            pooled = pooled @ v.proj
        return pooled, rest

    def _transformer(self, seqs: torch.Tensor) -> torch.Tensor:
        """Run NLD sequences through the visual transformer in chunks of at most `token_budget` tokens."""
        per = max(1, self.token_budget // seqs.shape[1])
        outs = [self.visual.transformer(seqs[i : i + per]) for i in range(0, seqs.shape[0], per)]
        return torch.cat(outs, dim=0)

    # ---- encoders -------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, images: Sequence[Image.Image] | torch.Tensor) -> Encoded:
        """Image, window (per scale) and patch embeddings of a batch."""
        x = images if isinstance(images, torch.Tensor) else self.preprocess(images)
        x = x.to(self.device)
        with self._autocast():
            tokens = self._embed_tokens(x)  # (B, 1+P, C), shared by the full and the window forwards
            b = tokens.shape[0]
            full = self._transformer(tokens)
            image, patches = self._pool_project(full)
            windows = []
            for masks in self.masks:
                n_w, k = masks.shape
                cls_idx = torch.zeros(n_w, 1, dtype=torch.long, device=masks.device)
                idx = torch.cat([cls_idx, masks + 1], dim=1)  # (n_w, 1+k): class token + window patches
                seqs = tokens[:, idx].reshape(b * n_w, 1 + k, tokens.shape[-1])
                pooled, _ = self._pool_project(self._transformer(seqs))
                windows.append(pooled.reshape(b, n_w, -1))
        norm = lambda t: F.normalize(t.float(), dim=-1)  # noqa: E731
        return Encoded(norm(image), [norm(w) for w in windows], norm(patches))

    @torch.no_grad()
    def text_embeddings(self, object_name: str | None) -> torch.Tensor:
        """(2, D) normal/anomalous prompt-ensemble embeddings for an object, cached per name."""
        key = clean_object_name(object_name)
        if key not in self._text_cache:
            normal, anomalous = self.prompts.expand(key)
            tokens = self.bundle.tokenizer(normal + anomalous).to(self.device)
            with self._autocast():
                emb = self._encode_text(tokens)
            emb = F.normalize(emb.float(), dim=-1)
            classes = [emb[: len(normal)].mean(0), emb[len(normal) :].mean(0)]
            self._text_cache[key] = F.normalize(torch.stack(classes), dim=-1)
        return self._text_cache[key]

    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """`model.encode_text`, but on the context cut after the last end-of-text token.

        The text tower is causal and pools at the end-of-text token (argmax of the ids), so the padding
        after it cannot change the result; prompts are ~15 of 77 positions, so this is ~4x less work.
        Towers of another shape (HF text models, other pooling) go through `encode_text` unchanged.
        """
        m = self.model
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        mask = getattr(m, "attn_mask", None)
        if (
            not all(hasattr(m, n) for n in needed)
            or mask is None
            or getattr(m, "text_pool_type", "") != "argmax"
        ):
            return m.encode_text(tokens)
        n = int(tokens.argmax(dim=-1).max()) + 1
        t = tokens[:, :n]
        cast = m.transformer.get_cast_dtype() if hasattr(m.transformer, "get_cast_dtype") else torch.float32
        x = m.token_embedding(t).to(cast) + m.positional_embedding[:n].to(cast)
        x = m.ln_final(m.transformer(x, attn_mask=mask[:n, :n]))
        x = x[torch.arange(x.shape[0], device=x.device), t.argmax(dim=-1)]
        proj = getattr(m, "text_projection", None)
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return x

    # ---- scores ---------------------------------------------------------------------------------

    def zero_shot(self, enc: Encoded, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(image scores (B,), zero-shot map (B, gh, gw)): harmonic mean over the image score and scales."""
        image = class_scores(enc.image, text, self.temperature)
        maps = [image.view(-1, 1, 1).expand(-1, *self.grid)]
        for win, masks, inc in zip(enc.windows, self.masks, self.incidence, strict=True):
            scores = class_scores(win, text, self.temperature)
            maps.append(harmonic_aggregation(scores, masks, self.grid, inc))
        stacked = torch.stack(maps).clamp_min(EPS)
        return image, len(maps) / (1.0 / stacked).sum(dim=0)

    def few_shot(self, enc: Encoded, ref: Encoded) -> torch.Tensor:
        """Visual-association map (B, gh, gw) against reference patches and windows, mean over scales."""
        maps = [visual_association(enc.patches, ref.patches.reshape(-1, ref.patches.shape[-1]))]
        maps[0] = maps[0].reshape(-1, *self.grid)
        for win, rwin, masks, inc in zip(enc.windows, ref.windows, self.masks, self.incidence, strict=True):
            scores = visual_association(win, rwin.reshape(-1, rwin.shape[-1]))
            maps.append(harmonic_aggregation(scores, masks, self.grid, inc))
        return torch.stack(maps).mean(dim=0)


def upsample_maps(maps: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """(B, gh, gw) patch maps -> float32 numpy maps at each image's own (H, W), bilinear."""
    out = []
    for m, (h, w) in zip(maps, sizes, strict=True):
        up = F.interpolate(m[None, None].float(), size=(h, w), mode="bilinear", align_corners=False)
        out.append(up[0, 0].cpu().numpy().astype(np.float32))
    return out
