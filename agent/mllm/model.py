"""LLaVA-OneVision with the Look-Twice Feature Matching expert, by composition (no monkey patching).

`LookTwiceModel` wraps a transformers `LlavaOnevisionForConditionalGeneration`, its image processor and
tokenizer, and optionally an `AnomalyExpert`. For every image it runs the vision tower once with
`output_hidden_states=True`, builds the usual visual tokens exactly as transformers does (projector +
`pack_image_features`, AnyRes unpadding and row newlines), and, with the expert, appends:

    "with {slightly|moderately|highly} suspicious features: "   (tokenized, embedded by the LLM's table)
    [image-level token][4 base-crop tokens][2nH rows of 2nW grid tokens + newline]   (via the projector)

so an nH x nW AnyRes image gets 1 + 4 + 2nH(2nW + 1) anomaly tokens and a single-crop image 1 + 4 + 1.
The sequence is assembled as `inputs_embeds` and passed to the LLaVA model / `generate()`.

Vision outputs are cached per image content (a hash of the pixels), so a multi-turn chat does not
re-encode its image each turn, and a different image can never reuse another image's features.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from agent.mllm.expert import AnomalyExpert, ExpertOutput, assemble_image_map

if TYPE_CHECKING:
    from PIL import Image

IMAGE_MARKER = "<image>"
DETECTION_QUESTION = "Are there any defects in the image? Answer Yes or No."
DEFAULT_SYSTEM = "You are a helpful assistant."

# token kinds in a built sequence
PAD, TEXT, VISUAL, PHRASE, ANOMALY = -1, 0, 1, 2, 3
IGNORE_INDEX = -100

_SUSPICION_LEVELS: tuple[tuple[float, str], ...] = (
    (0.3, "slightly"),
    (0.7, "moderately"),
    (math.inf, "highly"),
)


def suspicion_word(score: float) -> str:
    """'slightly' (< 0.3), 'moderately' (< 0.7) or 'highly' for an expert image score."""
    for bound, word in _SUSPICION_LEVELS:
        if score < bound:
            return word
    return _SUSPICION_LEVELS[-1][1]


def suspicion_phrase(score: float) -> str:
    """The text put between the visual tokens and the anomaly tokens."""
    return f"with {suspicion_word(score)} suspicious features: "


def anomaly_token_count(grid_shape: tuple[int, int] | None, tokens_per_side: int = 2) -> int:
    """Anomaly tokens for one image: 1 + s^2 + s nH (s nW + 1) with an nH x nW grid, 1 + s^2 + 1 without."""
    s = tokens_per_side
    if grid_shape is None:
        return 1 + s * s + 1
    n_h, n_w = grid_shape
    return 1 + s * s + s * n_h * (s * n_w + 1)


def format_chat(
    turns: Sequence[tuple[str, str]], system: str | None = DEFAULT_SYSTEM, add_generation_prompt: bool = True
) -> str:
    """ChatML (Qwen / LLaVA-OneVision `qwen_1_5`) text for (role, content) turns; contents may hold
    `<image>` markers."""
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system else []
    parts += [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def format_question(question: str, num_images: int = 1, system: str | None = DEFAULT_SYSTEM) -> str:
    """One user turn: `num_images` image markers, then the question, ready for generation."""
    return format_chat([("user", (IMAGE_MARKER + "\n") * num_images + question)], system=system)


def image_key(image: Image.Image) -> str:
    """A content hash of an image (mode, size, pixels): the vision cache's key."""
    h = hashlib.sha1()
    h.update(f"{image.mode}:{image.size}".encode())
    h.update(image.tobytes())
    return h.hexdigest()


@dataclass
class VisionEncoding:
    """One image as the LLM sees it, computed once and cached."""

    image_size: tuple[int, int]  # (H, W) of the original image
    grid_shape: tuple[int, int] | None  # AnyRes (nH, nW); None for a single crop
    visual_embeds: Tensor  # (T_v, D): the usual LLaVA-OneVision visual tokens
    anomaly_embeds: Tensor | None = None  # (T_a, D): image-level + selected tokens, projected
    score: float | None = None  # expert image score (anomaly probability)
    crop_maps: Tensor | None = None  # (crops, 1, g, g) expert maps, on CPU

    @property
    def phrase(self) -> str | None:
        return None if self.score is None else suspicion_phrase(self.score)

    def anomaly_map(self) -> np.ndarray | None:
        """Expert anomaly map (H, W) float32 at the image's own resolution, or None without expert."""
        if self.crop_maps is None:
            return None
        return assemble_image_map(self.crop_maps, self.grid_shape, self.image_size).numpy().astype(np.float32)


@dataclass
class VisionFeatures:
    """Frozen vision-tower outputs for a batch of images (all crops, image-major)."""

    hidden_states: tuple[Tensor, ...]  # (N, P, C) each; index 0 = embeddings
    final_layer: int  # the index the projector reads (the "final visual tokens")
    split_sizes: list[int]  # crops per image
    image_sizes: list[tuple[int, int]]  # (H, W) per image
    grid_shapes: list[tuple[int, int] | None]  # AnyRes (nH, nW) per image

    @property
    def final(self) -> Tensor:
        return self.hidden_states[self.final_layer]

    def levels(self, layer_indices: Sequence[int]) -> list[Tensor]:
        return [self.hidden_states[i] for i in layer_indices]


@dataclass
class _Sequence:
    """One prompt being assembled: embedding pieces and per-token kinds, ids and labels."""

    embeds: list[Tensor] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)


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


class LookTwiceModel:
    """LLaVA-OneVision (+ optional LTFM expert) with a small API: encode, build inputs, generate, score."""

    def __init__(
        self,
        llava: Any,
        image_processor: Any,
        tokenizer: Any,
        expert: AnomalyExpert | None = None,
        cache_size: int = 32,
    ) -> None:
        self.llava = llava
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.expert = expert
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[str, bool, bool], VisionEncoding] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        cfg = llava.config
        self.vision_config = cfg.vision_config
        self.grid_pinpoints = [list(p) for p in cfg.image_grid_pinpoints]
        self.crop_size = int(cfg.vision_config.image_size)
        layer = cfg.vision_feature_layer
        self.feature_layers: list[int] = [layer] if isinstance(layer, int) else list(layer)
        if expert is not None:
            self._check_expert(expert)

    # ----------------------------------------------------------------------------------------- parts
    @property
    def core(self) -> Any:
        """The `LlavaOnevisionModel` (vision tower, projector, image_newline, language model)."""
        return self.llava.model

    @property
    def device(self) -> torch.device:
        return self.core.get_input_embeddings().weight.device

    @property
    def vision_device(self) -> torch.device:
        return next(self.core.vision_tower.parameters()).device

    @property
    def vision_dtype(self) -> torch.dtype:
        return next(self.core.vision_tower.parameters()).dtype

    @property
    def embed_dtype(self) -> torch.dtype:
        return self.core.get_input_embeddings().weight.dtype

    def set_expert(self, expert: AnomalyExpert | None) -> None:
        """Attach (or detach, with None) an expert; clears the vision cache."""
        if expert is not None:
            self._check_expert(expert)
        self.expert = expert
        self.clear_cache()

    def clear_cache(self) -> None:
        self._cache.clear()

    def _check_expert(self, expert: AnomalyExpert) -> None:
        ec, vc = expert.config, self.vision_config
        grid = int(vc.image_size) // int(vc.patch_size)
        if ec.hidden_size != vc.hidden_size or ec.grid_size != grid:
            raise ValueError(
                f"expert sizes (width {ec.hidden_size}, grid {ec.grid_size}) do not match the vision tower "
                f"(width {vc.hidden_size}, grid {grid})"
            )
        too_deep = [i for i in ec.layer_indices if not -vc.num_hidden_layers - 1 <= i <= vc.num_hidden_layers]
        if too_deep:
            raise ValueError(
                f"expert layer indices {too_deep} exceed the tower's {vc.num_hidden_layers} layers"
            )

    # ------------------------------------------------------------------------------------- vision
    def encode_images(
        self, images: Sequence[Image.Image], anyres: bool = True, trainable: bool = False
    ) -> list[VisionEncoding]:
        """Vision tower (+ expert) for each image, cached by content. `anyres=False`: base crop only
        (what LLaVA-OneVision does for several images in one prompt). `trainable=True` (stage-2
        training): the projector runs with gradients and nothing is cached; the tower and the expert
        stay frozen."""
        if trainable:
            return self._encode(list(images), anyres, trainable=True)
        with_expert = self.expert is not None
        keys = [(image_key(im), bool(anyres), with_expert) for im in images]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        # an image given twice in one call is encoded once
        unique: dict[tuple[str, bool, bool], int] = {}
        for i in todo:
            unique.setdefault(keys[i], i)
        self.cache_hits += len(images) - len(unique)
        self.cache_misses += len(unique)
        if unique:
            fresh = self._encode([images[i] for i in unique.values()], anyres)
            for k, enc in zip(unique, fresh, strict=True):
                self._cache[k] = enc
        out = []
        for k in keys:
            self._cache.move_to_end(k)
            out.append(self._cache[k])
        while len(self._cache) > max(self.cache_size, len(set(keys))):
            self._cache.popitem(last=False)
        return out

    def _preprocess(self, image: Image.Image, anyres: bool) -> tuple[Tensor, tuple[int, int], Any]:
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            get_anyres_image_grid_shape,
            image_size_to_num_patches,
        )

        rgb = image.convert("RGB") if image.mode != "RGB" else image
        batch = self.image_processor(images=[rgb], return_tensors="pt")
        size = tuple(int(v) for v in batch["image_sizes"][0].tolist())  # (H, W)
        n = image_size_to_num_patches(list(size), self.grid_pinpoints, self.crop_size) if anyres else 1
        pixels = batch["pixel_values"][0][:n]
        grid = (
            get_anyres_image_grid_shape(list(size), self.grid_pinpoints, self.crop_size) if anyres else None
        )
        return pixels, size, grid

    @torch.no_grad()
    def vision_features(self, images: Sequence[Image.Image], anyres: bool = True) -> VisionFeatures:
        """The frozen vision tower's hidden states for all crops of `images` (e.g. to train the expert:
        `expert(f.final, f.levels(expert.config.layer_indices), f.split_sizes)`)."""
        prepared = [self._preprocess(im, anyres) for im in images]
        pixels = torch.cat([p[0] for p in prepared], dim=0).to(self.vision_device, self.vision_dtype)
        hidden = self.core.vision_tower(pixels, output_hidden_states=True, return_dict=True).hidden_states
        return VisionFeatures(
            hidden_states=tuple(hidden),
            final_layer=self.feature_layers[-1],
            split_sizes=[p[0].shape[0] for p in prepared],
            image_sizes=[p[1] for p in prepared],
            grid_shapes=[p[2] for p in prepared],
        )

    def _encode(
        self, images: Sequence[Image.Image], anyres: bool, trainable: bool = False
    ) -> list[VisionEncoding]:
        feats = self.vision_features(images, anyres)
        with torch.set_grad_enabled(trainable):
            usual = self._visual_tokens(feats.hidden_states, feats.split_sizes, feats.image_sizes)
        encodings = [
            VisionEncoding(image_size=s, grid_shape=g, visual_embeds=u)
            for s, g, u in zip(feats.image_sizes, feats.grid_shapes, usual, strict=True)
        ]
        if self.expert is not None:
            self._run_expert(feats, encodings, trainable)
        return encodings

    def _visual_tokens(
        self, hidden: Sequence[Tensor], splits: list[int], sizes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """The usual LLaVA-OneVision visual tokens, as `get_image_features` builds them."""
        cfg = self.llava.config
        feats = torch.cat([hidden[i] for i in self.feature_layers], dim=-1)
        if cfg.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]
        projected = self.core.multi_modal_projector(feats.to(self._projector_dtype()))
        packed, _ = self.core.pack_image_features(
            torch.split(projected, splits, dim=0),
            torch.tensor(sizes),
            image_newline=self.core.image_newline,
            vision_aspect_ratio=cfg.vision_aspect_ratio,
        )
        return [p.to(self.embed_dtype) for p in packed]

    def _projector_dtype(self) -> torch.dtype:
        for p in self.core.multi_modal_projector.parameters():
            if p.dtype.is_floating_point:
                return p.dtype
        return self.vision_dtype

    def _run_expert(self, feats: VisionFeatures, encodings: list[VisionEncoding], trainable: bool) -> None:
        expert = self.expert
        assert expert is not None
        splits = feats.split_sizes
        dev = expert.device
        with torch.no_grad():  # the expert is frozen in stage 2
            out = expert(
                feats.final.to(dev), [f.to(dev) for f in feats.levels(expert.config.layer_indices)], splits
            )
        with torch.set_grad_enabled(trainable):
            self._project_anomaly_tokens(out, splits, encodings)

    def _project_anomaly_tokens(
        self, out: ExpertOutput, splits: list[int], encodings: list[VisionEncoding]
    ) -> None:
        expert = self.expert
        assert expert is not None
        t = expert.config.tokens_per_crop
        selected = out.selected_tokens.view(-1, t, out.selected_tokens.shape[-1])  # (N, T, C)
        newline = self.core.image_newline.to(self.embed_dtype)
        start = 0
        for b, (enc, n) in enumerate(zip(encodings, splits, strict=True)):
            crops = selected[start : start + n]
            tokens = torch.cat([out.image_tokens[b : b + 1], crops.reshape(-1, crops.shape[-1])], dim=0)
            proj = self.core.multi_modal_projector(tokens.to(self.vision_device, self._projector_dtype()))
            proj = proj.to(self.embed_dtype)
            pieces = [proj[: 1 + t]]  # image-level token, base-crop tokens
            if n > 1:
                s = expert.config.pool_size
                if enc.grid_shape is None or enc.grid_shape[0] * enc.grid_shape[1] != n - 1:
                    raise RuntimeError(f"grid {enc.grid_shape} does not match {n - 1} AnyRes crops")
                n_h, n_w = enc.grid_shape
                grid = (
                    proj[1 + t :]
                    .view(n_h, n_w, s, s, -1)
                    .permute(0, 2, 1, 3, 4)
                    .reshape(n_h * s, n_w * s, -1)
                )
                rows = torch.cat([grid, newline.expand(n_h * s, 1, -1).to(grid.device)], dim=1)
                pieces.append(rows.reshape(-1, rows.shape[-1]))
            else:
                pieces.append(newline[None].to(proj.device))
            enc.anomaly_embeds = torch.cat(pieces, dim=0)
            enc.score = float(out.image_scores[b])
            enc.crop_maps = out.crop_maps[start : start + n].detach().float().cpu()
            start += n

    # -------------------------------------------------------------------------------- sequences
    def _embed_ids(self, ids: list[int]) -> Tensor:
        emb = self.core.get_input_embeddings()
        return emb(torch.tensor(ids, dtype=torch.long, device=self.device)).to(self.embed_dtype)

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def build_inputs(
        self,
        prompts: Sequence[str],
        images: Sequence[Sequence[Image.Image]],
        answers: Sequence[str] | None = None,
        use_expert: bool = True,
        trainable: bool = False,
    ) -> MultimodalInputs:
        """Assemble a left-padded batch of `inputs_embeds`.

        Each prompt holds one `<image>` marker per image of its list. A prompt with one image uses
        AnyRes; with several (references + query) each image is its base crop, as in LLaVA-OneVision.
        `answers` (training): appended after each prompt and `<|im_end|>`; only they carry labels.
        `trainable`: the projector's outputs keep gradients (stage 2; no vision cache).
        """
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} image lists")
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        segments = [
            [(prompt, False)] + ([(answers[b] + "<|im_end|>", True)] if answers is not None else [])
            for b, prompt in enumerate(prompts)
        ]
        return self.build_segment_inputs(
            segments, images, use_expert=use_expert, trainable=trainable, with_labels=answers is not None
        )

    def build_segment_inputs(
        self,
        segments: Sequence[Sequence[tuple[str, bool]]],
        images: Sequence[Sequence[Image.Image]],
        use_expert: bool = True,
        trainable: bool = False,
        with_labels: bool | None = None,
    ) -> MultimodalInputs:
        """A batch from sequences given as (text, supervised) pieces, for multi-turn training.

        Supervised pieces (the assistant's answers) carry their token ids as labels; everything else
        (system, user turns, role headers, visual, phrase and anomaly tokens, padding) is IGNORE_INDEX.
        `<image>` markers may only stand in unsupervised pieces, one per image of the sequence's list.
        `with_labels` defaults to "some piece of the batch is supervised".
        """
        if len(segments) != len(images):
            raise ValueError(f"{len(segments)} sequences but {len(images)} image lists")
        counts = []
        for b, (pieces, imgs) in enumerate(zip(segments, images, strict=True)):
            if any(sup and IMAGE_MARKER in text for text, sup in pieces):
                raise ValueError(f"sequence {b}: {IMAGE_MARKER} inside a supervised (answer) piece")
            n = sum(text.count(IMAGE_MARKER) for text, _ in pieces)
            if n != len(imgs):
                raise ValueError(f"prompt {b} has {n} {IMAGE_MARKER} markers but {len(imgs)} images")
            counts.append(n)
        encodings = self._encode_batch(images, trainable)
        seqs: list[_Sequence] = []
        for pieces, encs in zip(segments, encodings, strict=True):
            seq = _Sequence()
            queue = list(encs)
            for text, supervised in pieces:
                if supervised:
                    self._add_text(seq, text, supervised=True)
                    continue
                parts = text.split(IMAGE_MARKER)
                for i, part in enumerate(parts):
                    self._add_text(seq, part)
                    if i < len(parts) - 1:
                        self._add_image(seq, queue.pop(0), use_expert)
            seqs.append(seq)
        if with_labels is None:
            with_labels = any(sup for pieces in segments for _, sup in pieces)
        return self._pad(seqs, with_labels=with_labels)

    def _encode_batch(
        self, images: Sequence[Sequence[Image.Image]], trainable: bool
    ) -> list[list[VisionEncoding]]:
        """Encodings per sequence; when every sequence has one image they go through the tower
        together (one call, AnyRes each), otherwise sequence by sequence."""
        if images and all(len(imgs) == 1 for imgs in images):
            flat = self.encode_images([imgs[0] for imgs in images], anyres=True, trainable=trainable)
            return [[enc] for enc in flat]
        return [
            self.encode_images(imgs, anyres=len(imgs) == 1, trainable=trainable) if imgs else []
            for imgs in images
        ]

    def _add_image(self, seq: _Sequence, enc: VisionEncoding, use_expert: bool) -> None:
        self._add_embeds(seq, enc.visual_embeds, VISUAL)
        if use_expert and enc.anomaly_embeds is not None and enc.score is not None:
            self._add_text(seq, suspicion_phrase(enc.score), kind=PHRASE)
            self._add_embeds(seq, enc.anomaly_embeds, ANOMALY)

    def _add_text(self, seq: _Sequence, text: str, kind: int = TEXT, supervised: bool = False) -> None:
        tok = self._tokenize(text)
        if tok:
            seq.embeds.append(self._embed_ids(tok))
            seq.kinds.extend([kind] * len(tok))
            seq.ids.extend(tok)
            seq.labels.extend(tok if supervised else [IGNORE_INDEX] * len(tok))

    def _add_embeds(self, seq: _Sequence, embeds: Tensor, kind: int) -> None:
        seq.embeds.append(embeds.to(self.device, self.embed_dtype))
        seq.kinds.extend([kind] * embeds.shape[0])
        seq.ids.extend([-1] * embeds.shape[0])
        seq.labels.extend([IGNORE_INDEX] * embeds.shape[0])

    def _pad(self, seqs: list[_Sequence], with_labels: bool) -> MultimodalInputs:
        length = max(len(s.kinds) for s in seqs)
        if length == 0:
            raise ValueError("empty prompt")
        dim = self.core.get_input_embeddings().weight.shape[-1]
        bsz = len(seqs)
        embeds = torch.zeros(bsz, length, dim, dtype=self.embed_dtype, device=self.device)
        mask = torch.zeros(bsz, length, dtype=torch.long, device=self.device)
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
            labels=labels.to(self.device) if with_labels else None,
        )

    # ----------------------------------------------------------------------------------- running
    def forward(self, inputs: MultimodalInputs, **kwargs: Any) -> Any:
        """The LLaVA model on `inputs_embeds` (loss too when `inputs.labels` is set)."""
        return self.llava(**inputs.model_kwargs(), **kwargs)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[Sequence[Image.Image]],
        use_expert: bool = True,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Answer a batch of prompts; `generate_kwargs` go to transformers' `generate()`."""
        inputs = self.build_inputs(prompts, images, use_expert=use_expert)
        generate_kwargs.setdefault("max_new_tokens", 64)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        out = self.llava.generate(
            inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, **generate_kwargs
        )
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def yes_no_token_ids(self) -> tuple[list[int], list[int]]:
        """Vocabulary ids that decode exactly to Yes / No (any case, optional leading space)."""
        return _yes_no_ids(self.tokenizer)

    @torch.no_grad()
    def yes_probability(
        self,
        images: Sequence[Image.Image] | Image.Image,
        question: str = DETECTION_QUESTION,
        use_expert: bool = True,
    ) -> list[float]:
        """P(Yes) / (P(Yes) + P(No)) from the first answer token's logits, one value per image."""
        imgs = [images] if not isinstance(images, Sequence) else list(images)
        prompts = [format_question(question)] * len(imgs)
        inputs = self.build_inputs(prompts, [[im] for im in imgs], use_expert=use_expert)
        logits = self.llava(**inputs.model_kwargs(), logits_to_keep=1).logits[:, -1].float()
        return yes_probability_from_logits(logits, *self.yes_no_token_ids()).tolist()

    def chat(
        self,
        history: list[tuple[str, str]],
        message: str,
        images: Sequence[Image.Image] = (),
        system: str | None = DEFAULT_SYSTEM,
        use_expert: bool = True,
        **generate_kwargs: Any,
    ) -> str:
        """One chat turn. `history` holds (user, assistant) text pairs; `images` belong to the first
        user turn (its `<image>` markers are added when missing). Appends the new pair to `history`."""
        turns: list[tuple[str, str]] = []
        for user, assistant in history:
            turns += [("user", user), ("assistant", assistant)]
        first_user = history[0][0] if history else message
        if images and IMAGE_MARKER not in first_user:
            first_user = (IMAGE_MARKER + "\n") * len(images) + first_user
        if history:
            turns[0] = ("user", first_user)
            turns.append(("user", message))
        else:
            turns.append(("user", first_user))
        prompt = format_chat(turns, system=system)
        answer = self.generate([prompt], [list(images)], use_expert=use_expert, **generate_kwargs)[0]
        history.append((message if history else first_user, answer))
        return answer

    def detect(self, image: Image.Image, with_llm: bool = True) -> DetectionResult:
        """Expert score and map, and (with_llm) P(Yes) for the detection question."""
        enc = self.encode_images([image])[0]
        p_yes = self.yes_probability([image])[0] if with_llm else None
        return DetectionResult(
            expert_score=enc.score,
            llm_yes_probability=p_yes,
            anomaly_map=enc.anomaly_map(),
        )

    def save_pretrained(self, folder: str) -> None:
        """Save the LLaVA weights, image processor, tokenizer and (if any) the expert into `folder`."""
        from pathlib import Path

        from agent.mllm.expert_io import save_expert
        from agent.mllm.loading import EXPERT_FILENAME

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.llava.save_pretrained(out)
        self.image_processor.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        if self.expert is not None:
            save_expert(self.expert, out / EXPERT_FILENAME)


@dataclass
class DetectionResult:
    """`pred_score` sources for one image."""

    expert_score: float | None  # expert anomaly probability (None without expert)
    llm_yes_probability: float | None  # P(Yes | detection question)
    anomaly_map: np.ndarray | None  # (H, W) float32, expert map

    @property
    def pred_score(self) -> float:
        """The LLM's P(Yes) when computed, else the expert score."""
        if self.llm_yes_probability is not None:
            return float(self.llm_yes_probability)
        if self.expert_score is not None:
            return float(self.expert_score)
        raise ValueError("no score: neither the LLM nor the expert was run")


def _yes_no_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    cache = getattr(tokenizer, "_looktwice_yes_no", None)
    if cache is not None:
        return cache
    yes: set[int] = set()
    no: set[int] = set()
    for word, bucket in (("yes", yes), ("no", no)):
        for variant in (word, word.capitalize(), word.upper()):
            for text in (variant, " " + variant):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(ids) == 1 and tokenizer.decode(ids).strip().lower() == word:
                    bucket.add(int(ids[0]))
    if not yes or not no:
        raise ValueError(
            "the tokenizer has no single token for 'Yes' or 'No'; P(Yes) cannot be read off logits"
        )
    result = (sorted(yes), sorted(no))
    with contextlib.suppress(AttributeError):
        tokenizer._looktwice_yes_no = result
    return result


def yes_probability_from_logits(logits: Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]) -> Tensor:
    """P(Yes) / (P(Yes) + P(No)) per row of (B, V) logits, from the full-vocabulary softmax."""
    probs = torch.softmax(logits.float(), dim=-1)
    p_yes = probs[:, list(yes_ids)].sum(-1)
    p_no = probs[:, list(no_ids)].sum(-1)
    return p_yes / (p_yes + p_no).clamp_min(1e-12)
