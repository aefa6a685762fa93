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

Around it: the tower, AnyRes preprocessing and the expert's maps are perception (`tools.ltfm.vision`),
the prompt text is `chat_format`, the token layout and padding `sequences`, P(Yes) `yes_no`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from agent.mllm.chat_format import (
    DEFAULT_SYSTEM,
    IMAGE_MARKER,
    detection_question,
    format_chat,
    format_question,
    suspicion_phrase,
)
from agent.mllm.expert_tokens import anomaly_token_block
from agent.mllm.sequences import ANOMALY, PHRASE, TEXT, VISUAL, MultimodalInputs, TokenSequence, pad_left
from agent.mllm.yes_no import yes_no_token_ids, yes_probability_from_logits
from tools.content_key import image_key
from tools.ltfm.expert import AnomalyExpert, ExpertOutput
from tools.ltfm.vision import ExpertEncoding, LlavaVision, VisionFeatures, expert_encodings, run_expert

if TYPE_CHECKING:
    from PIL import Image


@dataclass(kw_only=True)
class VisionEncoding(ExpertEncoding):
    """One image as the LLM sees it (the expert's score and maps, plus its tokens), computed once and
    cached."""

    visual_embeds: Tensor  # (T_v, D): the usual LLaVA-OneVision visual tokens
    anomaly_embeds: Tensor | None = None  # (T_a, D): image-level + selected tokens, projected

    @property
    def phrase(self) -> str | None:
        return None if self.score is None else suspicion_phrase(self.score)


class LookTwiceModel:
    """LLaVA-OneVision (+ optional LTFM expert) with a small API: encode, build inputs, generate, score."""

    def __init__(
        self,
        llava: Any,
        image_processor: Any,
        tokenizer: Any,
        expert: AnomalyExpert | None = None,
        cache_size: int = 32,
        expert_tokens: bool | None = None,
    ) -> None:
        """`expert_tokens`: whether the LLM reads the expert's tokens (default: whenever an expert is
        attached; `load_model` passes what the folder's marker says, `tools.ltfm.checkpoints`)."""
        self.llava = llava
        self.image_processor = image_processor
        self.vision = LlavaVision.from_llava(llava, image_processor)
        self.tokenizer = tokenizer
        self.expert: AnomalyExpert | None = None
        self.expert_tokens = False
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple[str, bool, bool], VisionEncoding] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        #: prompt and generated token counts and seconds of the last `generate` / `yes_probability`
        self.last_run: dict[str, Any] = {}
        self.folder = ""  # where it was loaded from (`load_model`)
        self.expert_note = ""  # why the expert is (not) attached and whether the LLM reads its tokens
        self.expert_source = ""  # the expert's file, when it was loaded from one
        self.set_expert(expert, expert_tokens)

    # ----------------------------------------------------------------------------------------- parts
    @property
    def core(self) -> Any:
        """The `LlavaOnevisionModel` (vision tower, projector, image_newline, language model)."""
        return self.llava.model

    @property
    def device(self) -> torch.device:
        return self.core.get_input_embeddings().weight.device

    @property
    def embed_dtype(self) -> torch.dtype:
        return self.core.get_input_embeddings().weight.dtype

    def set_expert(self, expert: AnomalyExpert | None, tokens: bool | None = None) -> None:
        """Attach (or detach, with None) an expert; clears the vision cache. `tokens`: whether the LLM
        reads its tokens (default: yes when an expert is attached)."""
        self.vision.use_expert(expert)
        self.expert = expert
        self.expert_tokens = expert is not None and (True if tokens is None else bool(tokens))
        self.clear_cache()

    def clear_cache(self) -> None:
        self._cache.clear()

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

    def _encode(
        self, images: Sequence[Image.Image], anyres: bool, trainable: bool = False
    ) -> list[VisionEncoding]:
        feats = self.vision.features(images, anyres)
        with torch.set_grad_enabled(trainable):
            usual = self._visual_tokens(feats, feats.split_sizes, feats.image_sizes)
        encodings = [
            VisionEncoding(image_size=s, grid_shape=g, visual_embeds=u)
            for s, g, u in zip(feats.image_sizes, feats.grid_shapes, usual, strict=True)
        ]
        if self.expert is not None:
            self._run_expert(feats, encodings, trainable)
        return encodings

    def _visual_tokens(
        self, hidden: VisionFeatures, splits: list[int], sizes: list[tuple[int, int]]
    ) -> list[Tensor]:
        """The usual LLaVA-OneVision visual tokens, as `get_image_features` builds them."""
        cfg = self.llava.config
        feats = torch.cat(hidden.levels(self.vision.feature_layers), dim=-1)
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
        return self.vision.dtype

    def _run_expert(self, feats: VisionFeatures, encodings: list[VisionEncoding], trainable: bool) -> None:
        assert self.expert is not None
        out = run_expert(self.expert, feats)  # the expert is frozen in stage 2
        for enc, seen in zip(encodings, expert_encodings(out, feats), strict=True):
            enc.score, enc.crop_maps = seen.score, seen.crop_maps
        with torch.set_grad_enabled(trainable):
            self._project_anomaly_tokens(out, feats.split_sizes, encodings)

    def _project_anomaly_tokens(
        self, out: ExpertOutput, splits: list[int], encodings: list[VisionEncoding]
    ) -> None:
        expert = self.expert
        assert expert is not None
        t = expert.config.tokens_per_crop
        selected = out.selected_tokens.view(-1, t, out.selected_tokens.shape[-1])  # (N, T, C)
        newline = self.core.image_newline.to(self.embed_dtype)

        def project(tokens: Tensor) -> Tensor:
            proj = self.core.multi_modal_projector(tokens.to(self.vision.device, self._projector_dtype()))
            return proj.to(self.embed_dtype)

        start = 0
        for b, (enc, n) in enumerate(zip(encodings, splits, strict=True)):
            enc.anomaly_embeds = anomaly_token_block(
                out.image_tokens[b], selected[start : start + n], enc.grid_shape, expert.config.pool_size,
                project, newline,
            )
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
        use_expert: bool | None = None,
        trainable: bool = False,
    ) -> MultimodalInputs:
        """Assemble a left-padded batch of `inputs_embeds`.

        Each prompt holds one `<image>` marker per image of its list. A prompt with one image uses
        AnyRes; with several (references + query) each image is its base crop, as in LLaVA-OneVision.
        The expert's phrase and tokens follow the first image of a prompt only (the inspected part, as
        in training), and only when `use_expert` (default: `expert_tokens`, whether the LLM learned them).
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
        use_expert: bool | None = None,
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
        with_expert = self.expert_tokens if use_expert is None else bool(use_expert)
        encodings = self._encode_batch(images, trainable)
        seqs: list[TokenSequence] = []
        for pieces, encs in zip(segments, encodings, strict=True):
            seq = TokenSequence()
            queue = list(encs)
            for text, supervised in pieces:
                if supervised:
                    self._add_text(seq, text, supervised=True)
                    continue
                parts = text.split(IMAGE_MARKER)
                for i, part in enumerate(parts):
                    self._add_text(seq, part)
                    if i < len(parts) - 1:
                        first = len(queue) == len(encs)
                        self._add_image(seq, queue.pop(0), with_expert and first)
            seqs.append(seq)
        if with_labels is None:
            with_labels = any(sup for pieces in segments for _, sup in pieces)
        dim = self.core.get_input_embeddings().weight.shape[-1]
        return pad_left(seqs, dim, self.embed_dtype, self.device, with_labels=with_labels)

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

    def _add_image(self, seq: TokenSequence, enc: VisionEncoding, use_expert: bool) -> None:
        self._add_embeds(seq, enc.visual_embeds, VISUAL)
        if use_expert and enc.anomaly_embeds is not None and enc.score is not None:
            self._add_text(seq, suspicion_phrase(enc.score), kind=PHRASE)
            self._add_embeds(seq, enc.anomaly_embeds, ANOMALY)

    def _add_text(self, seq: TokenSequence, text: str, kind: int = TEXT, supervised: bool = False) -> None:
        tok = self._tokenize(text)
        if tok:
            seq.add(self._embed_ids(tok), kind, ids=tok, supervised=supervised)

    def _add_embeds(self, seq: TokenSequence, embeds: Tensor, kind: int) -> None:
        seq.add(embeds.to(self.device, self.embed_dtype), kind)

    # ----------------------------------------------------------------------------------- running
    def forward(self, inputs: MultimodalInputs, **kwargs: Any) -> Any:
        """The LLaVA model on `inputs_embeds` (loss too when `inputs.labels` is set)."""
        return self.llava(**inputs.model_kwargs(), **kwargs)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        images: Sequence[Sequence[Image.Image]],
        use_expert: bool | None = None,
        **generate_kwargs: Any,
    ) -> list[str]:
        """Answer a batch of prompts; `generate_kwargs` go to transformers' `generate()`. `last_run`
        holds the prompt and generated token counts and the seconds it took."""
        t0 = time.perf_counter()
        inputs = self.build_inputs(prompts, images, use_expert=use_expert)
        generate_kwargs.setdefault("max_new_tokens", 64)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        out = self.llava.generate(
            inputs_embeds=inputs.inputs_embeds, attention_mask=inputs.attention_mask, **generate_kwargs
        )
        self._sync()
        pad = self.tokenizer.pad_token_id
        new = int((out != pad).sum()) if pad is not None else int(out.numel())
        self.last_run = {
            "prompt_tokens": int(inputs.attention_mask.sum()),
            "new_tokens": new,
            "seconds": round(time.perf_counter() - t0, 4),
            "expert_tokens": int((inputs.token_kinds == ANOMALY).sum()),
        }
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def yes_no_token_ids(self) -> tuple[list[int], list[int]]:
        """Vocabulary ids that decode exactly to Yes / No (any case, optional leading space)."""
        return yes_no_token_ids(self.tokenizer)

    @torch.no_grad()
    def yes_probability(
        self,
        images: Sequence[Image.Image] | Image.Image,
        question: str | None = None,
        use_expert: bool | None = None,
        system: str | None = DEFAULT_SYSTEM,
    ) -> list[float]:
        """P(Yes) / (P(Yes) + P(No)) from the first answer token's logits, one value per image, for the
        detection question (default: `prompts/agent.yaml`'s, worded as the training templates) asked as
        in training: one image, the question, the training system prompt."""
        t0 = time.perf_counter()
        imgs = [images] if not isinstance(images, Sequence) else list(images)
        prompts = [format_question(question or detection_question(), system=system)] * len(imgs)
        inputs = self.build_inputs(prompts, [[im] for im in imgs], use_expert=use_expert)
        logits = self.llava(**inputs.model_kwargs(), logits_to_keep=1).logits[:, -1].float()
        p_yes = yes_probability_from_logits(logits, *self.yes_no_token_ids()).tolist()
        self.last_run = {
            "prompt_tokens": int(inputs.attention_mask.sum()),
            "new_tokens": 0,
            "seconds": round(time.perf_counter() - t0, 4),
            "expert_tokens": int((inputs.token_kinds == ANOMALY).sum()),
        }
        return p_yes

    def chat(
        self,
        history: list[tuple[str, str]],
        message: str,
        images: Sequence[Image.Image] = (),
        system: str | None = DEFAULT_SYSTEM,
        use_expert: bool | None = None,
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

    def save_pretrained(self, folder: str, trained_by: str | None = None) -> None:
        """Save the LLaVA weights, image processor, tokenizer and (if any) the expert into `folder`.

        `trained_by` (stage 2, converters): the LLM was trained with this expert's tokens, so the folder
        is marked as such (`tools.ltfm.expert_marker.mark_trained_with_expert`: the marker file, and
        the architecture name vLLM serves only with the LookTwice plugin)."""
        from pathlib import Path

        from tools.ltfm.checkpoints import EXPERT_FILENAME
        from tools.ltfm.expert_io import save_expert
        from tools.ltfm.expert_marker import mark_trained_with_expert

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.llava.save_pretrained(out)
        self.image_processor.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self._save_processor(out)
        if self.expert is not None:
            save_expert(self.expert, out / EXPERT_FILENAME)
            if trained_by:
                mark_trained_with_expert(out, EXPERT_FILENAME, trained_by)


    def _save_processor(self, out: Any) -> None:
        """LLaVA-OneVision's processor config (tokens per crop, feature strategy, chat template): what
        transformers' `AutoProcessor` and a vLLM server read to expand `<image>`."""
        try:
            from transformers import LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor
        except ImportError:  # no torchvision for the video processor: the processor config is left out
            return
        config = self.llava.config
        side = int(config.vision_config.image_size)
        processor = LlavaOnevisionProcessor(
            image_processor=self.image_processor,
            tokenizer=self.tokenizer,
            video_processor=LlavaOnevisionVideoProcessor(size={"height": side, "width": side}),
            num_image_tokens=(side // int(config.vision_config.patch_size)) ** 2,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            chat_template=getattr(self.tokenizer, "chat_template", None),
        )
        processor.save_pretrained(out)


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
