"""The parts of the vLLM plugin that do not need vLLM: which folder, which expert, how many tokens an
image takes, the expert's block after each image, and where each checkpoint tensor goes.

Why apart from the vLLM classes (`agent.mllm.vllm_plugin.model`): these are the decisions that make a
served model read what the transformers path gives it (`agent.mllm.model.LookTwiceModel`), so they
are tested in-process against that path on a CPU (tests/agent/mllm/test_vllm_plugin.py), where vLLM
cannot load LLaVA-OneVision; the vLLM classes only wire them in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from agent.mllm.chat_format import SUSPICION_WORDS, suspicion_word
from agent.mllm.expert_tokens import (
    anomaly_token_block,
    expert_token_count,
    fixed_phrase_length,
    phrase_token_ids,
)
from tools.ltfm.expert import AnomalyExpert, ExpertConfig

#: prefix of the expert's parameters inside the served model
EXPERT_PREFIX = "looktwice_expert."


class PluginError(RuntimeError):
    """A folder the plugin cannot serve as trained; one line saying why and what to do."""


@dataclass(frozen=True)
class ServedFolder:
    """A LookTwice model folder as the plugin serves it: where it is and the expert the LLM learned."""

    folder: Path
    expert_file: Path
    expert_config: ExpertConfig
    trained_by: str


#: the files of a hub repository the plugin reads itself (vLLM fetches the rest)
PLUGIN_FILES = ["config.json", "looktwice_expert.json", "ltfm_expert*.safetensors"]


def local_folder(model: str | os.PathLike[str]) -> Path:
    """The local folder of `model`: a folder, or for a hub id the snapshot holding the marker and the
    expert (from the cache; fetched, as vLLM fetches the weights, unless HF_HUB_OFFLINE is set)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model), allow_patterns=PLUGIN_FILES, local_files_only=True))
    except Exception:  # not in the cache (the hub's error types differ between versions)
        pass
    try:
        return Path(snapshot_download(str(model), allow_patterns=PLUGIN_FILES))
    except Exception as err:
        raise PluginError(f"LookTwice plugin: cannot find the folder of {model!r} ({type(err).__name__})") from None


def served_folder(model: str | os.PathLike[str]) -> ServedFolder:
    """The folder and the expert its LLM was trained with (`looktwice_expert.json`); `PluginError` when
    the marker is missing or does not match: such a folder must not be served with expert tokens."""
    from tools.ltfm.expert_io import read_expert_config
    from tools.ltfm.expert_marker import check_expert_marker

    folder = local_folder(model)
    check = check_expert_marker(folder)
    if check.marker is None or check.expert_path is None:
        raise PluginError(
            f"LookTwice plugin: {folder} declares the LookTwice architecture but {check.why}; "
            "serve a folder written by `looktwice train llm` or a LookTwice converter"
        )
    return ServedFolder(folder, check.expert_path, read_expert_config(check.expert_path), check.marker.trained_by)


def load_expert(served: ServedFolder, device: torch.device | str = "cpu") -> AnomalyExpert:
    """The expert the LLM was trained with, in float32 (as the transformers path runs it), strictly."""
    from tools.ltfm.expert_io import load_expert as load

    return load(served.expert_file, config=served.expert_config, device=device, dtype=torch.float32).eval()


# ------------------------------------------------------------------------------------------------ tokens


def grid_shape(image_size: tuple[int, int], grid_pinpoints: Sequence[Sequence[int]], crop_size: int) -> tuple[int, int]:
    """AnyRes (nH, nW) of an image of (height, width), as LLaVA-OneVision's processor cuts it."""
    from transformers.models.llava_onevision.modeling_llava_onevision import get_anyres_image_grid_shape

    n_h, n_w = get_anyres_image_grid_shape(list(image_size), [list(p) for p in grid_pinpoints], crop_size)
    return int(n_h), int(n_w)


def extra_image_tokens(
    width: int, height: int, hf_config: Any, tokenizer: Any, pool_size: int = 2
) -> int:
    """Tokens the expert adds after an image of `width` x `height`: the phrase (one length for every
    level, `fixed_phrase_length`) and the anomaly tokens of its AnyRes grid."""
    grid = grid_shape((height, width), hf_config.image_grid_pinpoints, int(hf_config.vision_config.image_size))
    return expert_token_count(grid, fixed_phrase_length(tokenizer), pool_size)


def real_crop_count(image_size: tuple[int, int], hf_config: Any) -> tuple[int, tuple[int, int]]:
    """(crops, grid) of an image of (height, width): the base crop and its AnyRes grid crops; a batch
    may pad an image's pixel values with more, which must not reach the expert."""
    n_h, n_w = grid_shape(image_size, hf_config.image_grid_pinpoints, int(hf_config.vision_config.image_size))
    return 1 + n_h * n_w, (n_h, n_w)


def phrase_ids(tokenizer: Any) -> dict[str, list[int]]:
    """Token ids of the suspicion phrase per level (checked to have one length)."""
    fixed_phrase_length(tokenizer)
    return phrase_token_ids(tokenizer)


def expert_blocks(
    expert: AnomalyExpert,
    final: Tensor,
    levels: list[Tensor],
    crops: Sequence[int],
    grids: Sequence[tuple[int, int]],
    project: Callable[[Tensor], Tensor],
    newline: Tensor,
    embed_phrase: Callable[[list[int]], Tensor],
    ids_by_word: dict[str, list[int]],
) -> tuple[list[Tensor], list[float]]:
    """For each image (its `crops` consecutive rows of `final` and `levels`), the block the LLM reads
    after the usual visual tokens: the suspicion phrase's embeddings, then the projected anomaly tokens
    (`agent.mllm.expert_tokens.anomaly_token_block`), and the expert's image scores."""
    with torch.no_grad():
        out = expert(final, levels, list(crops))
    t = expert.config.tokens_per_crop
    selected = out.selected_tokens.view(-1, t, out.selected_tokens.shape[-1])
    blocks, scores = [], []
    start = 0
    for b, (n, grid) in enumerate(zip(crops, grids, strict=True)):
        score = float(out.image_scores[b])
        anomaly = anomaly_token_block(
            out.image_tokens[b], selected[start : start + n], grid, expert.config.pool_size, project, newline
        )
        phrase = embed_phrase(ids_by_word[suspicion_word(score)]).to(anomaly.device, anomaly.dtype)
        blocks.append(torch.cat([phrase, anomaly], dim=0))
        scores.append(score)
        start += n
    return blocks, scores


# ------------------------------------------------------------------------------------------------ weights


def expert_keys(config: ExpertConfig) -> set[str]:
    """The state-dict names of an expert of `config` (as `save_expert` writes them)."""
    with torch.device("meta"):
        return set(AnomalyExpert(config).state_dict())


def checkpoint_name(name: str) -> str:
    """A LLaVA-OneVision checkpoint key as vLLM's LLaVA-OneVision reads it: transformers 5 saves the
    SigLIP tower without its `vision_model.` level (`vision_tower.encoder...`), vLLM's tower has it."""
    bare = name.removeprefix("model.") if name.startswith("model.vision_tower.") else name
    if bare.startswith("vision_tower.") and not bare.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + bare[len("vision_tower.") :]
    return bare


def split_weights(
    weights: Iterable[tuple[str, Tensor]], expert_names: set[str]
) -> tuple[Iterator[tuple[str, Tensor]], dict[str, Tensor]]:
    """The model's tensors renamed for vLLM (`checkpoint_name`), and the expert's tensors that came in
    the same stream (vLLM reads every `*.safetensors` of a folder without a shard index, the expert's
    file included) collected apart, by their expert names."""
    collected: dict[str, Tensor] = {}

    def model_weights() -> Iterator[tuple[str, Tensor]]:
        for name, tensor in weights:
            if name in expert_names:
                collected[name] = tensor
                continue
            yield checkpoint_name(name), tensor

    return model_weights(), collected


__all__ = [
    "EXPERT_PREFIX",
    "SUSPICION_WORDS",
    "PluginError",
    "ServedFolder",
    "checkpoint_name",
    "expert_blocks",
    "expert_keys",
    "extra_image_tokens",
    "grid_shape",
    "load_expert",
    "local_folder",
    "phrase_ids",
    "real_crop_count",
    "served_folder",
    "split_weights",
]
