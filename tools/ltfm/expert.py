"""The anomaly expert of Anomaly-OV: Look-Twice Feature Matching (LTFM), as a plain torch module.

Structure (DESIGN.md section 4, following the official Anomaly-OV code, with its fixes):

- Inputs, for every AnyRes crop of every image (crop 0 of each image is the base crop, the whole image
  squashed to the tower's input size): the vision tower's hidden states at `layer_indices` (four levels)
  and the final visual tokens `v` (the hidden state the LLaVA projector reads, before post-layernorm).
- Object-aware prompts ("look back"): learned vectors e+ (normal) and e- (anomalous). From the base crop's
  final tokens: Linear(P -> 1) pooling over the P tokens, then an MLP C -> D -> D (GELU) gives the class
  embedding c. Per level i: d+- = normalize(W_i [e+-, c]); v_i = normalize(U_i feat_i);
  map_i = softmax over {+, -} of 100 <v_i, d+->; the anomalous channel is the anomaly probability.
  The crop map is the mean of the level maps, shape (N, 1, g, g).
- Visual token selector ("look twice"): q = AvgPool2(v * m) / AvgPool2(m) gives 4 query tokens per crop;
  single-head attention with Q, K projected C -> A and V = v unprojected gives 4 selected tokens per crop.
- Image score: significance-weighted mean of the selected tokens over all crops of an image (the
  image-level token), then an MLP C -> 512 -> 1 and a sigmoid.

Fixes over the official code: sizes come from the vision config (no hard-coded 729 / 1152 / 27); the
number of levels is configurable; the head's logits are returned so training can use
`binary_cross_entropy_with_logits`; crops of different images never mix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Hidden-state indices the official expert reads from SigLIP-so400m as LLaVA-OneVision truncates it
#: (26 encoder layers; index 0 of `hidden_states` is the embedding output).
OFFICIAL_LAYER_INDICES: tuple[int, ...] = (7, 13, 19, 25)
OFFICIAL_NUM_LAYERS = 26


def default_layer_indices(num_hidden_layers: int) -> tuple[int, ...]:
    """The official levels (7, 13, 19, 25 of 26 layers), mapped proportionally onto a smaller tower.

    Indices address `hidden_states` as transformers returns them (0 = embeddings, i = output of layer i).
    For a 26-layer tower (or deeper) the official indices are returned unchanged.
    """
    if num_hidden_layers < 1:
        raise ValueError(f"num_hidden_layers must be >= 1, got {num_hidden_layers}")
    if num_hidden_layers >= OFFICIAL_NUM_LAYERS:
        return OFFICIAL_LAYER_INDICES
    return tuple(
        min(num_hidden_layers, max(1, round(i * num_hidden_layers / OFFICIAL_NUM_LAYERS)))
        for i in OFFICIAL_LAYER_INDICES
    )


@dataclass
class ExpertConfig:
    """Sizes of the expert. Build it with `ExpertConfig.from_vision_config` rather than by hand."""

    hidden_size: int  # width C of the vision tokens (1152 for SigLIP-so400m)
    grid_size: int  # tokens per side of one crop, g (27 for 384 px / patch 14)
    layer_indices: tuple[int, ...] = OFFICIAL_LAYER_INDICES
    embedding_dim: int = 512  # D: e+ / e-, prompt and feature adapters
    class_dim: int = 512  # width of the class embedding c
    attention_dim: int = 512  # A: Q / K projection of the token selector
    predictor_dim: int = 512  # hidden width of the image-score MLP
    pool_size: int = 2  # selected tokens per crop = pool_size ** 2
    logit_scale: float = 100.0  # temperature of the +/- softmax

    def __post_init__(self) -> None:
        self.layer_indices = tuple(int(i) for i in self.layer_indices)
        if not self.layer_indices:
            raise ValueError("layer_indices must name at least one hidden state")
        for name in ("hidden_size", "grid_size", "embedding_dim", "class_dim", "attention_dim", "pool_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def num_patches(self) -> int:
        """Tokens per crop, P = g * g."""
        return self.grid_size * self.grid_size

    @property
    def num_levels(self) -> int:
        return len(self.layer_indices)

    @property
    def tokens_per_crop(self) -> int:
        return self.pool_size * self.pool_size

    @classmethod
    def from_vision_config(cls, vision_config: Any, **overrides: Any) -> ExpertConfig:
        """Sizes from a transformers vision config (e.g. `SiglipVisionConfig`); `overrides` win."""
        grid = int(vision_config.image_size) // int(vision_config.patch_size)
        values: dict[str, Any] = {
            "hidden_size": int(vision_config.hidden_size),
            "grid_size": grid,
            "layer_indices": default_layer_indices(int(vision_config.num_hidden_layers)),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["layer_indices"] = list(self.layer_indices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExpertConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown expert config keys: {', '.join(unknown)}")
        return cls(**d)


@dataclass
class ExpertOutput:
    """What the expert computed for a batch of images (N crops in all, B images)."""

    crop_maps: Tensor  # (N, 1, g, g): anomaly probability per token of every crop
    level_maps: Tensor  # (L, N, 1, g, g): the per-level maps averaged into crop_maps
    crop_significance: Tensor  # (N,): mean anomaly probability of each crop
    token_significance: Tensor  # (N, T): weight of each selected token (T = pool_size**2)
    selected_tokens: Tensor  # (N * T, C): the "look twice" tokens, crop-major
    image_tokens: Tensor  # (B, C): significance-weighted mean of each image's selected tokens
    image_logits: Tensor  # (B,): pre-sigmoid image score
    image_scores: Tensor  # (B,): sigmoid(image_logits), the expert's anomaly probability
    split_sizes: list[int] = field(default_factory=list)  # crops per image
    image_maps: list[Tensor] | None = None  # per image (H, W), when `image_sizes` was given

    def per_image(self, index: int) -> tuple[Tensor, Tensor]:
        """(crop_maps, selected_tokens as (crops, T, C)) of image `index`."""
        start = sum(self.split_sizes[:index])
        stop = start + self.split_sizes[index]
        tokens = self.selected_tokens.view(self.crop_maps.shape[0], -1, self.selected_tokens.shape[-1])
        return self.crop_maps[start:stop], tokens[start:stop]


class TokenSelector(nn.Module):
    """Single-head attention: queries and keys projected to `attention_dim`, values unprojected."""

    def __init__(self, hidden_size: int, attention_dim: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(hidden_size, attention_dim)
        self.key_proj = nn.Linear(hidden_size, attention_dim)

    def forward(self, queries: Tensor, tokens: Tensor) -> Tensor:
        """queries (N, T, C), tokens (N, P, C) -> (N, T, C)."""
        q = self.query_proj(queries)
        k = self.key_proj(tokens)
        scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(k.shape[-1])
        return torch.matmul(torch.softmax(scores, dim=-1), tokens)


class AnomalyExpert(nn.Module):
    """Look-Twice Feature Matching. See the module docstring for the structure."""

    def __init__(self, config: ExpertConfig) -> None:
        super().__init__()
        self.config = config
        c, d = config.hidden_size, config.embedding_dim
        self.normal_prompt = nn.Parameter(torch.randn(1, d))  # e+
        self.anomalous_prompt = nn.Parameter(torch.randn(1, d))  # e-
        self.token_pool = nn.Linear(config.num_patches, 1)
        self.class_head = nn.Sequential(
            nn.Linear(c, config.class_dim), nn.GELU(), nn.Linear(config.class_dim, config.class_dim)
        )
        self.feature_adapters = nn.ModuleList(nn.Linear(c, d) for _ in range(config.num_levels))
        self.prompt_adapters = nn.ModuleList(
            nn.Linear(d + config.class_dim, d) for _ in range(config.num_levels)
        )
        self.selector = TokenSelector(c, config.attention_dim)
        self.score_head = nn.Sequential(
            nn.Linear(c, config.predictor_dim), nn.GELU(), nn.Linear(config.predictor_dim, 1)
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.normal_prompt.dtype

    @property
    def device(self) -> torch.device:
        return self.normal_prompt.device

    def anomaly_maps(self, level_features: Sequence[Tensor], base_features: Tensor) -> Tensor:
        """Per-level anomaly maps (L, N, 1, g, g).

        level_features: L tensors (N, P, C); base_features: (N, P, C), the final tokens of each crop's
        image's base crop (repeated per crop).
        """
        cfg = self.config
        if len(level_features) != cfg.num_levels:
            raise ValueError(f"expected {cfg.num_levels} feature levels, got {len(level_features)}")
        n = base_features.shape[0]
        pooled = self.token_pool(base_features.transpose(1, 2)).squeeze(-1)  # (N, C)
        class_emb = self.class_head(pooled)  # (N, class_dim)
        pos = self.normal_prompt.expand(n, -1)
        neg = self.anomalous_prompt.expand(n, -1)
        maps = []
        for i, feats in enumerate(level_features):
            adapter = self.prompt_adapters[i]
            d_pos = F.normalize(adapter(torch.cat([pos, class_emb], dim=-1)), dim=-1)
            d_neg = F.normalize(adapter(torch.cat([neg, class_emb], dim=-1)), dim=-1)
            prompts = torch.stack([d_pos, d_neg], dim=-1)  # (N, D, 2)
            v = F.normalize(self.feature_adapters[i](feats), dim=-1)  # (N, P, D)
            logits = cfg.logit_scale * torch.matmul(v, prompts)  # (N, P, 2)
            prob = torch.softmax(logits, dim=-1)[..., 1]  # anomalous channel, (N, P)
            maps.append(prob.view(n, 1, cfg.grid_size, cfg.grid_size))
        return torch.stack(maps, dim=0)

    def forward(
        self,
        final_features: Tensor,
        level_features: Sequence[Tensor],
        split_sizes: Sequence[int] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        grid_shapes: Sequence[tuple[int, int] | None] | None = None,
    ) -> ExpertOutput:
        """Run the expert.

        Args:
            final_features: (N, P, C) final visual tokens of all crops of all images, image-major.
            level_features: one (N, P, C) tensor per level in `config.layer_indices`.
            split_sizes: crops per image (the first crop of each image is its base crop); default:
                every crop is an image of its own.
            image_sizes: (H, W) per image; when given, `image_maps` holds each image's anomaly map at
                that resolution (see `assemble_image_map`).
            grid_shapes: AnyRes (nH, nW) per image (None: use the base crop's map alone).
        """
        cfg = self.config
        n, p, c = final_features.shape
        if p != cfg.num_patches or c != cfg.hidden_size:
            raise ValueError(
                f"expert expects (N, {cfg.num_patches}, {cfg.hidden_size}) tokens, got {tuple(final_features.shape)}"
            )
        splits = [1] * n if split_sizes is None else [int(s) for s in split_sizes]
        if sum(splits) != n or min(splits, default=1) < 1:
            raise ValueError(f"split_sizes {splits} do not add up to {n} crops")
        dtype = self.dtype
        v = final_features.to(dtype)
        levels = [f.to(dtype) for f in level_features]

        base_index = torch.repeat_interleave(
            torch.tensor([sum(splits[:i]) for i in range(len(splits))], device=v.device),
            torch.tensor(splits, device=v.device),
        )
        level_maps = self.anomaly_maps(levels, v[base_index])  # (L, N, 1, g, g)
        crop_maps = level_maps.mean(dim=0)  # (N, 1, g, g)
        crop_significance = level_maps.mean(dim=(2, 3, 4)).mean(dim=0)  # (N,)

        # Look twice: anomaly-weighted pooling gives the queries, attention over the crop's tokens.
        grid = v.transpose(1, 2).reshape(n, c, cfg.grid_size, cfg.grid_size)
        pooled_map = F.adaptive_avg_pool2d(crop_maps, cfg.pool_size)  # (N, 1, s, s)
        queries = F.adaptive_avg_pool2d(grid * crop_maps, cfg.pool_size) / pooled_map.clamp_min(1e-12)
        queries = queries.flatten(2).transpose(1, 2)  # (N, T, C)
        selected = self.selector(queries, v)  # (N, T, C)
        token_significance = pooled_map.flatten(1) * crop_significance[:, None]  # (N, T)

        image_tokens = []
        for tokens, weights in zip(
            torch.split(selected, splits), torch.split(token_significance, splits), strict=True
        ):
            w = weights[..., None]
            image_tokens.append((tokens * w).sum(dim=(0, 1)) / w.sum().clamp_min(1e-12))
        image_token = torch.stack(image_tokens, dim=0)  # (B, C)
        logits = self.score_head(image_token).squeeze(-1)  # (B,)
        image_maps = None
        if image_sizes is not None:
            if len(image_sizes) != len(splits):
                raise ValueError(f"{len(image_sizes)} image sizes for {len(splits)} images")
            grids = list(grid_shapes) if grid_shapes is not None else [None] * len(splits)
            image_maps = [
                assemble_image_map(m, g, s)
                for m, g, s in zip(torch.split(crop_maps.detach(), splits), grids, image_sizes, strict=True)
            ]
        return ExpertOutput(
            crop_maps=crop_maps,
            level_maps=level_maps,
            crop_significance=crop_significance,
            token_significance=token_significance,
            selected_tokens=selected.reshape(n * cfg.tokens_per_crop, c),
            image_tokens=image_token,
            image_logits=logits,
            image_scores=torch.sigmoid(logits),
            split_sizes=splits,
            image_maps=image_maps,
        )


def balanced_bce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Stage-1 objective: BCE on image labels, normal and anomalous halves weighted equally."""
    labels = labels.to(logits.dtype)
    n_pos = labels.sum()
    n_neg = labels.numel() - n_pos
    pos_weight = torch.where(n_pos > 0, n_neg.clamp_min(1) / n_pos.clamp_min(1), torch.ones_like(n_pos))
    weights = torch.where(labels > 0.5, pos_weight, torch.ones_like(labels))
    loss = F.binary_cross_entropy_with_logits(logits, labels, weight=weights, reduction="sum")
    return loss / weights.sum()


def _unpad(grid: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Remove the centred padding LLaVA's AnyRes adds to reach the grid's aspect ratio ((C, H, W) in)."""
    orig_h, orig_w = image_size
    cur_h, cur_w = grid.shape[-2:]
    if orig_w / orig_h > cur_w / cur_h:
        new_h = int(round(orig_h * (cur_w / orig_w), 7))
        pad = (cur_h - new_h) // 2
        return grid[..., pad : cur_h - pad, :]
    new_w = int(round(orig_w * (cur_h / orig_h), 7))
    pad = (cur_w - new_w) // 2
    return grid[..., :, pad : cur_w - pad]


def assemble_image_map(
    crop_maps: Tensor, grid_shape: tuple[int, int] | None, image_size: tuple[int, int]
) -> Tensor:
    """One image's anomaly map (H, W) at its own resolution from its crop maps (crops, 1, g, g).

    The base crop (crop 0) covers the whole image squashed, so its map is resized straight to (H, W).
    With an AnyRes grid (nH, nW), the grid crops are stitched, their padding removed and resized to
    (H, W) too; the image map is the mean of the two views. Without a grid the base map alone is used.
    """
    h, w = int(image_size[0]), int(image_size[1])
    maps = crop_maps.float()
    base = F.interpolate(maps[:1], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    if grid_shape is None or maps.shape[0] == 1:
        return base
    n_h, n_w = grid_shape
    if maps.shape[0] != 1 + n_h * n_w:
        raise ValueError(f"{maps.shape[0]} crop maps do not fit a {n_h}x{n_w} grid plus the base crop")
    g = maps.shape[-1]
    stitched = maps[1:].view(n_h, n_w, g, g).permute(0, 2, 1, 3).reshape(1, n_h * g, n_w * g)
    stitched = _unpad(stitched, (h, w))
    grid_map = F.interpolate(stitched[None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return 0.5 * (base + grid_map)
