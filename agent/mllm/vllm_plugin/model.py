"""LLaVA-OneVision with the Look-Twice expert's tokens, as a vLLM model (needs vLLM; imported by vLLM
when a folder declares `LookTwiceLlavaOnevisionForConditionalGeneration`, through `register`).

Built on vLLM's own LLaVA-OneVision (vllm/model_executor/models/llava_onevision.py), changed where the
expert comes in:

- processing: each `<image>` takes the usual LLaVA-OneVision tokens plus the expert's
  (`core.extra_image_tokens`: the suspicion phrase and 1 + 4 + 2nH(2nW + 1) anomaly tokens), so the
  placeholders are reserved before the image is seen;
- `embed_multimodal`: for each image, the SigLIP tower runs once (the layers the projector and the
  expert read are kept), the usual visual tokens are built as vLLM does, the expert scores the crops,
  and `core.expert_blocks` appends the phrase's embeddings (from the LLM's own table) and the projected
  anomaly tokens, exactly as the transformers path (`agent.mllm.model.LookTwiceModel`) does;
- weights: the checkpoint's tensors through `core.split_weights` (transformers 5 tower names), the
  expert from the file the folder's marker names (checked by its SHA-256), strictly.

Every image of a request gets the expert's tokens (vLLM cuts every image into AnyRes crops); LookTwice's
OpenAI brain sends one image per request to such a server, as training did.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from vllm.config import VllmConfig
from vllm.model_executor.models.llava_onevision import (
    LlavaOnevisionDummyInputsBuilder,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageEmbeddingInputs,
    LlavaOnevisionImageInputs,
    LlavaOnevisionMultiModalProcessor,
    LlavaOnevisionProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from agent.mllm.vllm_plugin import core
from tools.ltfm.expert import AnomalyExpert


class LookTwiceProcessingInfo(LlavaOnevisionProcessingInfo):
    """LLaVA-OneVision's processing info, with the expert's tokens counted in every image."""

    def _served(self) -> core.ServedFolder:
        served = getattr(self, "_looktwice_served", None)
        if served is None:
            served = core.served_folder(self.ctx.model_config.model)
            self._looktwice_served = served
        return served

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        usual = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        extra = core.extra_image_tokens(
            image_width, image_height, self.get_hf_config(), self.get_tokenizer(),
            self._served().expert_config.pool_size,
        )
        return usual + extra


@MULTIMODAL_REGISTRY.register_processor(
    LlavaOnevisionMultiModalProcessor,
    info=LookTwiceProcessingInfo,
    dummy_inputs=LlavaOnevisionDummyInputsBuilder,
)
class LookTwiceLlavaOnevisionForConditionalGeneration(LlavaOnevisionForConditionalGeneration):
    """vLLM's LLaVA-OneVision that keeps the Look-Twice expert's tokens (module docstring)."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        from transformers import AutoTokenizer

        model_config = vllm_config.model_config
        self.looktwice_served = core.served_folder(model_config.model)
        tokenizer = AutoTokenizer.from_pretrained(
            model_config.tokenizer, revision=model_config.tokenizer_revision, trust_remote_code=False
        )
        self.looktwice_phrases = core.phrase_ids(tokenizer)
        # filled by `load_weights`, from the file the marker names; float32, as the transformers path runs it
        self.looktwice_expert = AnomalyExpert(self.looktwice_served.expert_config).to(torch.float32).eval()
        vision = self.config.vision_config
        layer = self.config.vision_feature_layer
        layers = [layer] if isinstance(layer, int) else list(layer)
        self._final_layers = [i % (vision.num_hidden_layers + 1) if i < 0 else i for i in layers]
        self._expert_layers = [
            i % (vision.num_hidden_layers + 1) if i < 0 else i
            for i in self.looktwice_expert.config.layer_indices
        ]

    # ------------------------------------------------------------------------------------------ images
    def _tower_states(self, pixels: Tensor) -> dict[int, Tensor]:
        """Hidden states of the SigLIP tower at the projector's and the expert's layers (0 = the
        embeddings, i = layer i's output), running its layers as vLLM's encoder does."""
        wanted = set(self._final_layers) | set(self._expert_layers)
        tower = self.vision_tower.vision_model
        hidden = tower.embeddings(pixels)
        states = {0: hidden} if 0 in wanted else {}
        deepest = max(wanted)
        for index, layer in enumerate(tower.encoder.layers, start=1):
            if index > deepest:
                break
            hidden, _ = layer(hidden)
            if index in wanted:
                states[index] = hidden
        missing = wanted - set(states)
        if missing:
            raise core.PluginError(f"LookTwice plugin: the vision tower has no layers {sorted(missing)}")
        return states

    def _process_image_input(self, image_input: LlavaOnevisionImageInputs) -> list[Tensor]:
        if isinstance(image_input, LlavaOnevisionImageEmbeddingInputs):
            raise core.PluginError(
                "LookTwice plugin: precomputed image embeddings carry no expert tokens; send the image itself"
            )
        pixel_values = image_input["pixel_values"]
        per_image: Sequence[Tensor] = list(pixel_values)
        sizes = image_input.get("image_sizes")
        if sizes is None:
            side = int(self.config.vision_config.image_size)
            sizes = torch.as_tensor([[side, side]] * len(per_image))
        crops, grids = [], []
        for size in sizes:
            n, grid = core.real_crop_count((int(size[0]), int(size[1])), self.config)
            crops.append(n)
            grids.append(grid)
        pixels = torch.cat([p[:n] for p, n in zip(per_image, crops, strict=True)])
        states = self._tower_states(pixels)
        features = torch.cat([states[i] for i in self._final_layers], dim=-1)
        if self.config.vision_feature_select_strategy == "default":
            features = features[:, 1:]
        projected = self.multi_modal_projector(features)
        final = states[self._final_layers[-1]]
        levels = [states[i] for i in self._expert_layers]
        dtype = self.image_newline.dtype
        blocks, _ = core.expert_blocks(
            self.looktwice_expert,
            final,
            levels,
            crops,
            grids,
            lambda tokens: self.multi_modal_projector(tokens.to(dtype)),
            self.image_newline,
            lambda ids: self.language_model.embed_input_ids(torch.tensor(ids, device=final.device)),
            self.looktwice_phrases,
        )
        out = []
        start = 0
        for size, n, block in zip(sizes, crops, blocks, strict=True):
            visual = self._merge_image_patch_embeddings(
                size, projected[start : start + n], image_newline=self.image_newline, strategy="spatial_unpad"
            )
            out.append(torch.cat([visual, block.to(visual.dtype)], dim=0))
            start += n
        return out

    # ------------------------------------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, Tensor]]) -> set[str]:
        names = core.expert_keys(self.looktwice_expert.config)
        model_weights, _ = core.split_weights(weights, names)  # the expert's tensors: from its checked file
        loaded = super().load_weights(model_weights)
        expert = core.load_expert(self.looktwice_served, device=self.image_newline.device)
        self.looktwice_expert.load_state_dict(expert.state_dict(), strict=True)
        return set(loaded) | {core.EXPERT_PREFIX + name for name, _ in self.looktwice_expert.named_parameters()}


__all__ = ["LookTwiceLlavaOnevisionForConditionalGeneration", "LookTwiceProcessingInfo"]
