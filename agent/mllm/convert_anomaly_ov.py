"""Convert an official Anomaly-OV stage-2 checkpoint (LLM + projector + expert) into a LookTwice folder.

    python -m agent.mllm.convert_anomaly_ov /models/anomaly-ov-0.5b --out /models/looktwice-anomaly-ov-0.5b
    python -m agent.mllm.convert_anomaly_ov SRC --out OUT --expert pretrained_expert_05b.pth

The official code (github.com/honda-research-institute/Anomaly-OneVision, built on LLaVA-NeXT) trains
`LlavaQwenForCausalLM` (`model_type: llava_qwen`) with the expert attached as `anomaly_encoder` and
saves the whole state dict; its layout, which this reads:

- the Qwen2 LLM: `model.embed_tokens.weight`, `model.layers.{i}.*`, `model.norm.weight`, `lm_head.weight`
  (the 0.5B ties it to the embeddings: the official evaluation sets `lm_head.weight = embed_tokens`);
- the SigLIP-so400m tower with its last layer and head removed: `model.vision_tower.vision_tower.
  vision_model.{embeddings,encoder.layers.0-25,post_layernorm}.*`;
- the projector `mlp2x_gelu`: `model.mm_projector.0.*` (LLM width x 1152), `model.mm_projector.2.*`;
- `model.image_newline` (LLM width);
- the expert (`AnomalyOV`): `anomaly_encoder.{positive_embedding, negative_embedding, pooling_layer.0,
  class_predictor.{0,2}, siglip_adaptors.{0-3}, prompt_adaptors.{0-3}, final_predictor.{0,2},
  q_former.{query_proj,key_proj}}.*`; when the checkpoint holds none, `--expert` gives the official
  `pretrained_expert_*.pth` it was trained with (the official training loads that file, frozen).

The LookTwice folder is LLaVA-OneVision as transformers saves it (`language_model.model.*`,
`vision_tower.vision_model.*`, `multi_modal_projector.linear_{1,2}.*`, `image_newline`), the Qwen2
tokenizer with `<image>` and `<video>`, LLaVA-OneVision's processor (AnyRes pinpoints and
`anyres_max_9` from the official config), `ltfm_expert.safetensors`, and the marker that the LLM was
trained with that expert (`tools.ltfm.expert_marker`). Tensors are streamed shard by shard (a 7B model
is never held whole) and written in the source's dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tools.ltfm.expert_io import ExpertWeightsError

EXPERT_PREFIX = "anomaly_encoder."
#: official key prefix -> LLaVA-OneVision (transformers) key prefix
RENAMES: tuple[tuple[str, str], ...] = (
    ("model.vision_tower.vision_tower.vision_model.", "vision_tower.vision_model."),
    ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
    ("model.image_newline", "image_newline"),
    ("lm_head.", "language_model.lm_head."),
    ("model.", "language_model.model."),
)
#: the vision towers the official configs name (`mm_vision_tower`), as LLaVA-NeXT truncates them
KNOWN_TOWERS: dict[str, dict[str, Any]] = {
    "google/siglip-so400m-patch14-384": {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 26,  # 27 minus the last, which LLaVA-NeXT deletes
        "num_attention_heads": 16,
        "image_size": 384,
        "patch_size": 14,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
        "vision_use_head": False,
    }
}
SHARD_BYTES = 4 * 2**30


class ConversionError(ValueError):
    """The source is not an Anomaly-OV stage-2 checkpoint this can convert; one line saying why."""


def new_name(key: str) -> str | None:
    """The LookTwice (transformers LLaVA-OneVision) name of an official key; None for the expert's keys
    and for buffers that are not weights."""
    if key.startswith(EXPERT_PREFIX) or key.endswith(".inv_freq"):
        return None
    for old, new in RENAMES:
        if key.startswith(old):
            return new + key[len(old) :]
    raise ConversionError(f"key {key!r} is not part of the Anomaly-OV (llava_qwen) layout")


def source_tensors(folder: Path) -> Iterator[tuple[str, Tensor]]:
    """(key, tensor) of every weight file of the source folder, one file at a time."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ConversionError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(file), framework="pt") as f:
                for key in list(f.keys()):
                    yield key, f.get_tensor(key)
        else:
            state = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
            yield from state.items()


def vision_config(official: dict[str, Any], given: Any = None) -> Any:
    """The SigLIP config of the tower: `given`, or the known tower `mm_vision_tower` names."""
    from transformers import SiglipVisionConfig

    if given is not None:
        config = SiglipVisionConfig(**{k: v for k, v in given.to_dict().items() if k in SiglipVisionConfig().to_dict()})
        config.vision_use_head = False  # LLaVA-NeXT removes SigLIP's head
        return config
    name = str(official.get("mm_vision_tower", ""))
    if name not in KNOWN_TOWERS:
        raise ConversionError(
            f"vision tower {name!r} is not one this converter knows ({', '.join(KNOWN_TOWERS)}); pass its config"
        )
    return SiglipVisionConfig(**KNOWN_TOWERS[name])


def llava_config(official: dict[str, Any], vision: Any, tokenizer: Any) -> Any:
    """LLaVA-OneVision's config from the official `llava_qwen` config (a Qwen2 config plus `mm_*` keys)."""
    from transformers import LlavaOnevisionConfig, Qwen2Config

    if official.get("model_type") != "llava_qwen":
        raise ConversionError(f"config model_type {official.get('model_type')!r}: expected llava_qwen")
    if official.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise ConversionError(f"projector {official['mm_projector_type']!r}: only mlp2x_gelu is converted")
    qwen_keys = set(Qwen2Config().to_dict()) - {"architectures", "model_type", "transformers_version"}
    text = Qwen2Config(**{k: v for k, v in official.items() if k in qwen_keys})
    pinpoints = official.get("image_grid_pinpoints")
    if not isinstance(pinpoints, list) or not pinpoints:
        raise ConversionError("config has no image_grid_pinpoints list (AnyRes resolutions)")
    return LlavaOnevisionConfig(
        text_config=text.to_dict(),
        vision_config=vision.to_dict(),
        image_grid_pinpoints=[list(p) for p in pinpoints],
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        vision_aspect_ratio=str(official.get("image_aspect_ratio", "anyres_max_9")),
        tie_word_embeddings=bool(official.get("tie_word_embeddings", False)),
    )


def _tokenizer(src: Path) -> Any:
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    from agent.mllm.chat_format import CHATML_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(str(src), local_files_only=True)
    missing = [t for t in ("<image>", "<video>") if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def _write_weights(src: Path, out: Path, tie: bool, vocab_size: int) -> dict[str, Tensor]:
    """Stream the renamed tensors into shards of `out`; returns the expert's tensors (official names)."""
    from safetensors.torch import save_file

    expert: dict[str, Tensor] = {}
    shard: dict[str, Tensor] = {}
    size = 0
    files: list[tuple[str, list[str]]] = []

    def flush() -> None:
        nonlocal shard, size
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file({k: v.contiguous() for k, v in shard.items()}, str(out / name), metadata={"format": "pt"})
            files.append((name, list(shard)))
            shard, size = {}, 0

    for key, tensor in source_tensors(src):
        if key.startswith(EXPERT_PREFIX):
            expert[key[len(EXPERT_PREFIX) :]] = tensor
            continue
        name = new_name(key)
        if name is None or (tie and name == "language_model.lm_head.weight"):
            continue  # tied head (the official 0.5B evaluation ties it, too)
        if name.endswith("embed_tokens.weight") and tensor.shape[0] < vocab_size:
            raise ConversionError(f"{key} has {tensor.shape[0]} rows, fewer than the tokenizer's {vocab_size} ids")
        shard[name] = tensor
        size += tensor.numel() * tensor.element_size()
        if size >= SHARD_BYTES:
            flush()
    flush()
    if len(files) == 1:
        (out / files[0][0]).rename(out / "model.safetensors")
    else:
        total = sum((out / n).stat().st_size for n, _ in files)
        index = {"metadata": {"total_size": total}, "weight_map": {k: n for n, keys in files for k in keys}}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return expert


def convert_anomaly_ov(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    expert: str | os.PathLike[str] | None = None,
    vision: Any = None,
) -> Path:
    """Convert the official stage-2 folder `src` into the LookTwice folder `out` (see the module
    docstring); `expert`: the official expert `.pth` when the checkpoint holds none; `vision`: the
    tower's SigLIP config when `mm_vision_tower` names one this module does not know."""
    from tools.ltfm.checkpoints import EXPERT_FILENAME
    from tools.ltfm.expert import ExpertConfig
    from tools.ltfm.expert_io import (
        convert_official_state_dict,
        load_official_expert,
        load_state_dict_strict,
        save_expert,
    )
    from tools.ltfm.expert_marker import mark_trained_with_expert

    source, target = Path(src).expanduser(), Path(out).expanduser()
    config_file = source / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{source}: no config.json (is it the official Anomaly-OV checkpoint folder?)")
    if target.exists() and any(target.iterdir()):
        raise ConversionError(f"{target} is not empty: give a new folder")
    target.mkdir(parents=True, exist_ok=True)
    official = json.loads(config_file.read_text(encoding="utf-8"))
    tokenizer = _tokenizer(source)
    tower = vision_config(official, vision)
    config = llava_config(official, tower, tokenizer)
    expert_state = _write_weights(source, target, config.tie_word_embeddings, len(tokenizer))
    config.architectures = ["LlavaOnevisionForConditionalGeneration"]
    config.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    _processor(config, tokenizer).save_pretrained(str(target))

    expert_config = ExpertConfig.from_vision_config(tower)
    if expert_state:
        from tools.ltfm.expert import AnomalyExpert

        module = AnomalyExpert(expert_config)
        load_state_dict_strict(module, convert_official_state_dict(expert_state), source=f"{source} ({EXPERT_PREFIX}*)")
    elif expert is not None:
        module = load_official_expert(expert, config=expert_config)
    else:
        raise ConversionError(
            f"{source} holds no {EXPERT_PREFIX}* weights: give the official expert it was trained with "
            "(--expert pretrained_expert_05b.pth or _7b.pth)"
        )
    save_expert(module.float(), target / EXPERT_FILENAME)
    mark_trained_with_expert(target, EXPERT_FILENAME, f"convert anomaly-ov stage 2 ({source.name})")
    return target


def _processor(config: Any, tokenizer: Any) -> Any:
    """LLaVA-OneVision's processor for the converted folder (SigLIP's 0.5 mean and std)."""
    from transformers import (
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    side = int(config.vision_config.image_size)
    size = {"height": side, "width": side}
    image = LlavaOnevisionImageProcessor(
        size=size, image_grid_pinpoints=config.image_grid_pinpoints, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return LlavaOnevisionProcessor(
        image_processor=image,
        tokenizer=tokenizer,
        video_processor=LlavaOnevisionVideoProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3),
        num_image_tokens=(side // int(config.vision_config.patch_size)) ** 2,
        vision_feature_select_strategy="full",
        chat_template=tokenizer.chat_template,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m agent.mllm.convert_anomaly_ov", description=__doc__.splitlines()[0]
    )
    ap.add_argument("src", help="the official Anomaly-OV stage-2 checkpoint folder")
    ap.add_argument("--out", required=True, help="the LookTwice folder to write (new or empty)")
    ap.add_argument("--expert", help="official pretrained_expert_*.pth, when the checkpoint holds no expert")
    args = ap.parse_args(argv)
    try:
        folder = convert_anomaly_ov(args.src, args.out, args.expert)
    except (ConversionError, ExpertWeightsError, OSError) as err:
        print(f"convert_anomaly_ov: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {folder}: use it with --brain 'llava:{folder}' or `vllm serve {folder}` (LookTwice plugin)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
