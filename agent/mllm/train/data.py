"""Training data for both stages, and the batch order that makes a resumed run see the same batches.

Stage 1 (`labelled_images`): images with an anomaly label and, when known, a defect mask, from
- an MVTec-layout (or plain good/bad) data set root: train/good and test/good are normal, test/<defect>
  anomalous with ground_truth masks (`instruct_data.datasets.open_dataset`);
- a `looktwice synth` output folder (`descriptions.jsonl`): every synthesized image is anomalous with
  its mask, and every source image named in it is normal.

Stage 2 (`read_llava_json`): LLaVA-JSON conversations as `looktwice build-instruct` writes them
(`[{id, image, conversations: [{from: human|gpt, value}]}]`, `<image>` in the first human turn), with
images relative to the JSON's folder unless an image folder is given. `conversation_segments` turns
one into (text, supervised) pieces in the ChatML layout `format_chat` uses at inference, so training
and inference see the same tokens; only the assistant answers (and their `<|im_end|>`) are supervised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SYNTH_INDEX = "descriptions.jsonl"
INSTRUCT_FILE = "instruct.json"
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


class TrainDataError(ValueError):
    """Training data is missing or malformed; `str()` is one line naming the file."""


@dataclass(frozen=True)
class LabelledImage:
    """One stage-1 sample. `mask` None with `anomalous` True: the defect's extent is unknown."""

    path: Path
    anomalous: bool
    mask: Path | None = None

    @property
    def mask_known(self) -> bool:
        return (not self.anomalous) or self.mask is not None


@dataclass(frozen=True)
class Conversation:
    """One stage-2 sample: an image (or none) and alternating human / gpt turns."""

    id: str
    image: Path | None
    turns: tuple[tuple[str, str], ...]  # (role "user" | "assistant", text)

    @property
    def first_question(self) -> str:
        return self.turns[0][1]

    @property
    def first_answer(self) -> str:
        return self.turns[1][1] if len(self.turns) > 1 else ""


# ---------------------------------------------------------------------------------------------- stage 1
def labelled_images(sources: Sequence[str], categories: Sequence[str] | None = None) -> list[LabelledImage]:
    """All stage-1 samples of `sources` (data set roots or synth folders), in a stable order."""
    if not sources:
        raise TrainDataError("no training data: give --data (a data set root or a `looktwice synth` folder)")
    samples: list[LabelledImage] = []
    for source in sources:
        root = Path(source).expanduser()
        if (root / SYNTH_INDEX).is_file():
            samples.extend(_from_synth(root))
        else:
            samples.extend(_from_dataset(root, categories))
    if not any(s.anomalous for s in samples) or all(s.anomalous for s in samples):
        raise TrainDataError(
            f"stage 1 needs normal and anomalous images; {', '.join(sources)} hold "
            f"{sum(s.anomalous for s in samples)} anomalous of {len(samples)}"
        )
    return samples


def _from_dataset(root: Path, categories: Sequence[str] | None) -> list[LabelledImage]:
    from instruct_data.datasets import DatasetError, open_dataset

    try:
        dataset = open_dataset(root)
        cats = list(categories) if categories else dataset.categories()
        missing = sorted(set(cats) - set(dataset.categories()))
        if missing:
            raise TrainDataError(
                f"{root}: no category {missing[0]!r} (has {', '.join(dataset.categories())})"
            )
        out: list[LabelledImage] = []
        for cat in cats:
            out.extend(LabelledImage(Path(p), False) for p in dataset.train_good(cat))
            for s in dataset.test_samples(cat):
                out.append(
                    LabelledImage(Path(s.image_path), bool(s.gt_label), s.mask_path if s.gt_label else None)
                )
    except DatasetError as err:
        raise TrainDataError(str(err)) from None
    return out


def _from_synth(root: Path) -> list[LabelledImage]:
    index = root / SYNTH_INDEX
    normal: dict[str, LabelledImage] = {}
    anomalous: list[LabelledImage] = []
    for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            image, mask, source = rec["image"], rec.get("mask"), rec.get("source")
        except (json.JSONDecodeError, KeyError, TypeError):
            raise TrainDataError(f"{index}: line {n} is not a synth record with 'image'") from None
        anomalous.append(LabelledImage(root / image, True, root / mask if mask else None))
        if source:
            src = Path(source)
            src = src if src.is_absolute() or src.exists() else root / src
            if not src.is_file():
                raise TrainDataError(f"{index}: line {n}: source image {source!r} not found")
            normal.setdefault(str(src), LabelledImage(src, False))
    return [*sorted(normal.values(), key=lambda s: str(s.path)), *anomalous]


def load_mask_grid(sample: LabelledImage, grid: int) -> Any:
    """The sample's defect mask as the fraction of each of grid x grid cells covered (torch, 1 x g x g),
    over the whole image (what the base crop sees); zeros for a normal image, None when unknown."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    if not sample.anomalous:
        return torch.zeros(1, grid, grid)
    if sample.mask is None:
        return None
    from tools.image_io import list_images, load_mask

    parts = list_images(sample.mask) if sample.mask.is_dir() else [sample.mask]  # LOCO: one file per region
    if not parts:
        return None
    merged = load_mask(parts[0])
    for part in parts[1:]:
        merged = merged | load_mask(part, (merged.shape[1], merged.shape[0]))
    mask = torch.from_numpy(np.asarray(merged, dtype=np.float32))
    return F.adaptive_avg_pool2d(mask[None, None], grid)[0]


# ---------------------------------------------------------------------------------------------- stage 2
def read_llava_json(path: str | Path, image_folder: str | Path | None = None) -> list[Conversation]:
    """Conversations of a LLaVA-JSON file (or a folder holding `instruct.json`)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / INSTRUCT_FILE
    if not p.is_file():
        raise TrainDataError(f"instruction data not found: {p} (write it with `looktwice data instruct`)")
    try:
        items = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TrainDataError(f"{p}: not valid JSON (line {err.lineno})") from None
    if not isinstance(items, list):
        raise TrainDataError(f"{p}: expected a list of conversations, found {type(items).__name__}")
    folder = Path(image_folder).expanduser() if image_folder else p.parent
    return [_conversation(item, i, p, folder) for i, item in enumerate(items)]


def _conversation(item: Any, index: int, path: Path, folder: Path) -> Conversation:
    where = f"{path}: item {index}"
    if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
        raise TrainDataError(f"{where}: needs 'conversations', a list of {{from, value}} turns")
    where = f"{path}: item {item.get('id', index)!r}"
    turns: list[tuple[str, str]] = []
    for i, turn in enumerate(item["conversations"]):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise TrainDataError(f"{where}: turn {i} needs 'from' and a text 'value'")
        role = turn.get("from")
        expected = HUMAN_ROLES if i % 2 == 0 else ASSISTANT_ROLES
        if role not in expected:
            raise TrainDataError(f"{where}: turn {i} is from {role!r}; turns must alternate human, gpt")
        turns.append(("user" if i % 2 == 0 else "assistant", turn["value"]))
    if len(turns) < 2 or len(turns) % 2:
        raise TrainDataError(f"{where}: needs human/gpt pairs, found {len(turns)} turn(s)")
    image = item.get("image")
    markers = sum(t.count("<image>") for _, t in turns)
    if image:
        if markers != 1 or "<image>" not in turns[0][1]:
            raise TrainDataError(f"{where}: <image> must stand once, in the first human turn")
        if any("<image>" in t for r, t in turns if r == "assistant"):
            raise TrainDataError(f"{where}: <image> inside an answer")
    elif markers:
        raise TrainDataError(f"{where}: <image> in the text but no 'image'")
    return Conversation(
        id=str(item.get("id", index)), image=(folder / image) if image else None, turns=tuple(turns)
    )


def conversation_segments(conv: Conversation, system: str | None) -> list[tuple[str, bool]]:
    """(text, supervised) pieces of one conversation in the inference layout of `format_chat`:
    each user turn with its `<|im_start|>assistant\\n` header unsupervised, each answer + `<|im_end|>`
    supervised, the newline between turns unsupervised."""
    from agent.mllm.chat_format import format_chat

    pieces: list[tuple[str, bool]] = []
    for i in range(0, len(conv.turns), 2):
        user, answer = conv.turns[i][1], conv.turns[i + 1][1]
        header = format_chat([("user", user)], system=system if i == 0 else None)
        pieces.append(((("\n" if i else "") + header), False))
        pieces.append((answer + "<|im_end|>", True))
    return pieces


# ---------------------------------------------------------------------------------------------- order
def micro_batches(
    n: int, batch_size: int, epoch: int, seed: int, world: int = 1, rank: int = 0
) -> list[list[int]]:
    """This process's batches of one epoch: a seeded permutation cut into global batches of
    batch_size * world, the last one filled up from the start so every process takes as many steps."""
    import torch

    if n < 1:
        raise TrainDataError("no training samples")
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    order = torch.randperm(n, generator=g).tolist()
    step = batch_size * world
    batches = math.ceil(n / step)
    while len(order) < batches * step:
        order += order[: batches * step - len(order)]
    return [order[b * step + rank * batch_size : b * step + (rank + 1) * batch_size] for b in range(batches)]
