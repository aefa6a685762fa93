"""Token sequences of the LLM's input: what each position holds (text, visual, suspicion phrase, anomaly
tokens, padding), the labels of training, and left-padded batches of `inputs_embeds`.

With the expert an image adds, after its usual visual tokens, the suspicion phrase and
1 + 4 + 2nH(2nW + 1) anomaly tokens for an nH x nW AnyRes grid (1 + 4 + 1 for a single crop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# token kinds in a built sequence
PAD, TEXT, VISUAL, PHRASE, ANOMALY = -1, 0, 1, 2, 3
IGNORE_INDEX = -100


def anomaly_token_count(grid_shape: tuple[int, int] | None, tokens_per_side: int = 2) -> int:
    """Anomaly tokens for one image: 1 + s^2 + s nH (s nW + 1) with an nH x nW grid, 1 + s^2 + 1 without."""
    s = tokens_per_side
    if grid_shape is None:
        return 1 + s * s + 1
    n_h, n_w = grid_shape
    return 1 + s * s + s * n_h * (s * n_w + 1)


@dataclass
class TokenSequence:
    """One prompt being assembled: embedding pieces and per-token kinds, ids and labels."""

    embeds: list[Tensor] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def add(self, embeds: Tensor, kind: int, ids: list[int] | None = None, supervised: bool = False) -> None:
        """Append `embeds` (T, D) of one `kind`; `ids` are their token ids (-1: none), labels only when
        `supervised`."""
        n = embeds.shape[0]
        token_ids = ids if ids is not None else [-1] * n
        self.embeds.append(embeds)
        self.kinds.extend([kind] * n)
        self.ids.extend(token_ids)
        self.labels.extend(token_ids if supervised else [IGNORE_INDEX] * n)


@dataclass
class MultimodalInputs:
    """A left-padded batch ready for the LLM."""

    inputs_embeds: Tensor  # (B, L, D)
    attention_mask: Tensor  # (B, L)
    position_ids: Tensor  # (B, L)
    token_kinds: Tensor  # (B, L): PAD / TEXT / VISUAL / PHRASE / ANOMALY
    input_ids: Tensor  # (B, L): token ids for text and phrase, -1 for visual / anomaly / pad
    labels: Tensor | None = None  # (B, L): answer ids, IGNORE_INDEX elsewhere

    def model_kwargs(self) -> dict[str, Tensor]:
        kw = {
            "inputs_embeds": self.inputs_embeds,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }
        if self.labels is not None:
            kw["labels"] = self.labels
        return kw


def pad_left(
    seqs: list[TokenSequence], dim: int, dtype: torch.dtype, device: torch.device, with_labels: bool
) -> MultimodalInputs:
    """Left-pad `seqs` to one batch (embedding width `dim`); position ids count the real tokens only."""
    length = max(len(s.kinds) for s in seqs)
    if length == 0:
        raise ValueError("empty prompt")
    bsz = len(seqs)
    embeds = torch.zeros(bsz, length, dim, dtype=dtype, device=device)
    mask = torch.zeros(bsz, length, dtype=torch.long, device=device)
    kinds = torch.full((bsz, length), PAD, dtype=torch.long)
    ids = torch.full((bsz, length), -1, dtype=torch.long)
    labels = torch.full((bsz, length), IGNORE_INDEX, dtype=torch.long)
    for b, seq in enumerate(seqs):
        n = len(seq.kinds)
        embeds[b, length - n :] = torch.cat(seq.embeds, dim=0)
        mask[b, length - n :] = 1
        kinds[b, length - n :] = torch.tensor(seq.kinds)
        ids[b, length - n :] = torch.tensor(seq.ids)
        labels[b, length - n :] = torch.tensor(seq.labels)
    position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    return MultimodalInputs(
        inputs_embeds=embeds,
        attention_mask=mask,
        position_ids=position_ids,
        token_kinds=kinds,
        input_ids=ids,
        labels=labels.to(device) if with_labels else None,
    )
