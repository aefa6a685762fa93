"""Stage 2: projector + LLM on instruction conversations; the vision tower and the expert are frozen.

Methods (`method` in the config):
- `full`: the projector (and `image_newline`) and every LLM weight are trained (`train_llm: false`
  trains the projector alone).
- `lora`: peft LoRA adapters on the LLM's linear layers (`lora.target_modules`, matched inside the
  language model only) plus the full projector.
- `qlora`: the same on a 4-bit NF4 base (bitsandbytes; the tower, projector and head stay unquantized).

Loss: the LLM's cross-entropy on the supervised tokens only: labels are -100 everywhere except the
assistant answers and their `<|im_end|>` (system, user turns, role headers, visual / phrase / anomaly
tokens and padding are masked), see `LookTwiceModel.build_segment_inputs`.

Output, `<out>/model/`: a complete model folder (weights, tokenizer, processor, and the expert as
`ltfm_expert.safetensors`, with the marker `looktwice_expert.json` that says the LLM was trained with
it) that `load_model(<out>/model)` reads like any checkpoint, expert tokens included. With LoRA and
QLoRA the adapters are merged into a fresh unquantized copy of the base (`export_dtype`) for it, and
also kept in `<out>/adapter/` (peft format, plus `non_lora_trainables.safetensors` for the projector,
as LLaVA names it) for use with peft on top of the base.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from agent.mllm.train.config import LLMTrainConfig
from agent.mllm.train.data import Conversation, conversation_segments, read_llava_json

ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
NON_LORA_FILE = "non_lora_trainables.safetensors"
PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "model.image_newline")
LLM_PREFIXES = ("model.language_model.", "lm_head.")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError('LoRA / QLoRA training needs peft: pip install "looktwice[train]"') from None
    return peft


def lora_target_regex(names: list[str]) -> str:
    """A peft `target_modules` regex that matches the named linear layers inside the LLM only."""
    alternatives = "|".join(re.escape(n) for n in names)
    return rf".*\.language_model\..*\.({alternatives})$"


class LLMStage:
    """`StageTask` of stage 2."""

    def __init__(self, cfg: LLMTrainConfig, device: torch.device | str) -> None:
        from agent.mllm.loading import load_model

        self.cfg = cfg
        self.conversations: list[Conversation] = [
            c for source in cfg.data for c in read_llava_json(source, cfg.image_folder)
        ]
        if not self.conversations:
            from agent.mllm.train.data import TrainDataError

            raise TrainDataError("no conversations in the stage-2 data: give --data (a LLaVA JSON file)")
        expert = None if cfg.expert in (None, "none", "") else cfg.expert
        qlora = cfg.method == "qlora"
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # bitsandbytes wants an explicit GPU
            device = torch.device("cuda", torch.cuda.current_device())
        from tools.ltfm.options import resolve_dtype

        self.model = load_model(
            cfg.model,
            expert=expert,
            dtype=resolve_dtype(cfg.dtype, device.type),
            quantization="4bit" if qlora else None,
            device_map={"": str(device)} if qlora else None,
            expert_tokens=True,  # the LLM is being taught the expert's tokens
        )
        llava = self.model.llava
        if not qlora:
            llava.to(device)
        if self.model.expert is not None:
            self.model.expert.to(device).eval().requires_grad_(False)
        llava.requires_grad_(False)
        self.peft_model: Any = None
        if cfg.method in ("lora", "qlora"):
            peft = _peft()
            if qlora:
                llava = peft.prepare_model_for_kbit_training(
                    llava,
                    use_gradient_checkpointing=cfg.gradient_checkpointing,
                    gradient_checkpointing_kwargs={"use_reentrant": False},
                )
            lora = peft.LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=lora_target_regex(cfg.lora.target_modules),
                bias="none",
            )
            self.peft_model = peft.get_peft_model(llava, lora)
            if not cfg.train_llm:
                for name, p in self.peft_model.named_parameters():
                    if "lora_" in name:
                        p.requires_grad_(False)
        elif cfg.train_llm:
            for name, p in llava.named_parameters():
                if name.startswith(LLM_PREFIXES):
                    p.requires_grad_(True)
        if cfg.train_projector:
            for name, p in llava.named_parameters():
                if name.startswith(PROJECTOR_PREFIXES):
                    p.requires_grad_(True)
        if cfg.gradient_checkpointing and not qlora:
            llava.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.module: nn.Module = self.peft_model if self.peft_model is not None else llava
        if not any(p.requires_grad for p in self.module.parameters()):
            raise ValueError("nothing to train: no parameter requires a gradient")

    def num_samples(self) -> int:
        return len(self.conversations)

    def param_groups(self) -> list[dict[str, Any]]:
        projector, rest = [], []
        for name, p in self.module.named_parameters():
            if p.requires_grad:
                (projector if ("multi_modal_projector" in name or "image_newline" in name) else rest).append(
                    p
                )
        groups: list[dict[str, Any]] = []
        if rest:
            groups.append({"params": rest, "lr": self.cfg.lr})
        if projector:
            groups.append({"params": projector, "lr": self.cfg.projector_lr or self.cfg.lr})
        return groups

    def batch_inputs(self, indices: list[int]) -> Any:
        """The model inputs (with labels) of conversations `indices`."""
        from tools.image_io import load_image

        convs = [self.conversations[i] for i in indices]
        images = [[load_image(c.image, mode="RGB")] if c.image is not None else [] for c in convs]
        segments = [conversation_segments(c, self.cfg.system) for c in convs]
        return self.model.build_segment_inputs(segments, images, trainable=True, with_labels=True)

    def loss(self, model: nn.Module, indices: list[int]) -> Tensor:
        inputs = self.batch_inputs(indices)
        return model(**inputs.model_kwargs()).loss

    # ------------------------------------------------------------------------------------ export
    def export(self, out: Path) -> dict[str, str]:
        artifacts: dict[str, str] = {}
        trained_by = f"looktwice train llm (stage 2, {self.cfg.method})"
        if self.peft_model is None:
            self.model.llava.eval()
            save_model_folder(self.model, out / MODEL_DIR, self.cfg.model, trained_by)
        else:
            adapter = out / ADAPTER_DIR
            self.peft_model.save_pretrained(str(adapter))
            extras = non_lora_trainables(self.peft_model)
            if extras:
                from safetensors.torch import save_file

                save_file(extras, str(adapter / NON_LORA_FILE))
            artifacts["adapter"] = str(adapter)
            merged = merge_adapter(self.cfg.model, adapter, self.model.expert, self._export_dtype())
            save_model_folder(merged, out / MODEL_DIR, self.cfg.model, trained_by)
        artifacts["model"] = str(out / MODEL_DIR)
        return artifacts

    def _export_dtype(self) -> str:
        from tools.ltfm.options import resolve_dtype

        dtype = self.cfg.dtype if self.cfg.export_dtype == "auto" else self.cfg.export_dtype
        return resolve_dtype(dtype, str(self.model.device))


def non_lora_trainables(peft_model: nn.Module) -> dict[str, Tensor]:
    """Trained parameters that are not LoRA weights (the projector), by their names in the base model."""
    out = {}
    for name, p in peft_model.named_parameters():
        if p.requires_grad and "lora_" not in name:
            out[name.removeprefix("base_model.model.")] = p.detach().to("cpu").contiguous()
    return out


def merge_adapter(base: str, adapter: Path, expert: Any, dtype: str) -> Any:
    """A fresh unquantized base with the adapter merged in and the projector weights loaded."""
    from agent.mllm.loading import load_model

    peft = _peft()
    fresh = load_model(base, expert=None, dtype=dtype)
    merged = peft.PeftModel.from_pretrained(fresh.llava, str(adapter)).merge_and_unload()
    extra = adapter / NON_LORA_FILE
    if extra.is_file():
        from safetensors.torch import load_file

        state = load_file(str(extra))
        result = merged.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{extra}: weights not in the base model: {result.unexpected_keys[0]}")
    fresh.llava = merged.eval()
    if expert is not None:
        fresh.set_expert(expert.to("cpu"))
    return fresh


def save_model_folder(model: Any, folder: Path, base: str, trained_by: str | None = None) -> None:
    """`model.save_pretrained(folder)` (marked as trained with its expert when `trained_by` says by
    what and an expert is attached), plus the base's processor files (chat template, video processor)
    when it has them, so transformers' processor reads the folder too. vLLM serves it with the
    LookTwice plugin (`agent.mllm.vllm_plugin`), which keeps the expert's tokens."""
    from tools.ltfm.checkpoints import resolve_model_path

    model.save_pretrained(str(folder), trained_by=trained_by)
    try:
        from transformers import AutoProcessor

        AutoProcessor.from_pretrained(resolve_model_path(base), local_files_only=True).save_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError):
        pass  # a model folder without a processor config: the image processor and tokenizer are saved
