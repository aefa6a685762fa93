"""Anomaly-Instruct-style conversations in LLaVA JSON, from masked MVTec-layout data or from synthesis.

Output (`<out>/instruct.json`): a list of
`{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}, ...]}`; the first human turn starts
with `<image>\\n` and no other turn holds `<image>`. `image` is relative to the output folder (LLaVA's
`image_folder` is the output folder), so synthesized images sit under `<out>/images/` and real ones are
referenced with `../` paths. `<out>/stats.json` holds the counts.

Turn types: `detection` (the answer is exactly "Yes" or "No"), `description` (defect type, location
words, size, appearance), `cause` and `suggestion` (from the per-defect-type templates of
`prompts/qa_templates.yaml`, shape-based fallback), and `multi_round` (a detection turn, then 1-3
follow-ups chained in order: description, cause, suggestion).

Balance: as many normal as anomalous images are used (the larger side is cut, per category with real
data; one original + one synthesized copy per good image with synthesis), and the first conversation
of every image is a detection one, so detection conversations are balanced exactly.

Determinism: every random choice comes from generators seeded with (seed, image index), so the same
seed and inputs give the same JSON and the same synthesized files.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from instruct_data.qa.builder import (
    _area_phrase,
    _size_word,
    article,
    defect_entry,
    describe_defect,
    measure_mask,
    words_of,
)
from instruct_data.qa.overlap import INSTRUCT_FILE as INSTRUCT_FILE  # one name for the file, kept here too
from prompts import load_prompts
from tools.record import Region

STATS_FILE = "stats.json"
IMAGE_TOKEN = "<image>"
TURN_TYPES = ("detection", "description", "cause", "suggestion", "multi_round")


class InstructBuildError(ValueError):
    """The conversations cannot be built (no images, bad settings); the message says why."""


@dataclass
class InstructSettings:
    out: str
    data: str | None = None  # MVTec-layout root with masks
    synth_from: str | None = None  # folder of good images (or a data set root: its train/good images)
    per_image: int = 2  # conversations per image; the first is always a detection one
    seed: int = 0
    limit: int | None = None  # at most this many images per category (real) / source images (synth)
    rewrite: str | None = None  # llava:<m> | openai:<url>#<m>: LLM rephrasing of the answers (optional)
    rewrite_cache: str | None = None  # JSON-lines cache of rewrites (default <out>/rewrite_cache.jsonl)
    exclude_from: str | None = None  # a QA set folder whose images must not be used (compared by content)
    allow_overlap: bool = False  # build even when some images are in `exclude_from` (recorded in stats)


@dataclass
class Subject:
    """One image to talk about, with its ground truth."""

    image: str  # path relative to the output folder
    anomalous: bool
    category: str
    defect_type: str = "good"
    regions: list[Region] | None = None  # measured mask regions (None: no mask)
    synth: dict[str, Any] | None = None  # SynthResult.description for synthesized anomalies
    source: str = ""  # the original image of a synthesized one
    extra: dict[str, Any] = field(default_factory=dict)


def templates() -> dict[str, Any]:
    """The parsed `prompts/instruct_templates.yaml`."""
    return load_prompts("instruct_templates")


# ---------------------------------------------------------------------------------------------- answers


def cause_and_prevention(subject: Subject, qa: dict[str, Any]) -> tuple[str, str]:
    """The cause and prevention sentences of the subject's defect type, else of its largest region's
    shape, else the generic ones."""
    entry = defect_entry(subject.defect_type, qa)
    if entry is None:
        fb = qa["fallback"]
        entry = fb.get(subject.regions[0].shape, fb["generic"]) if subject.regions else fb["generic"]
    fields = {"defect": words_of(subject.defect_type), "object": words_of(subject.category)}
    return entry["cause"].format(**fields), entry["prevention"].format(**fields)


def describe_subject(subject: Subject, tpl: dict[str, Any], qa: dict[str, Any]) -> str:
    obj = words_of(subject.category)
    if not subject.anomalous:
        return tpl["answers"]["normal_description"].format(object=obj)
    if subject.synth is None:
        return describe_defect(subject.defect_type, subject.category, subject.regions, qa)
    d = subject.synth
    defect = (
        entry["words"] if (entry := defect_entry(subject.defect_type, qa)) else words_of(subject.defect_type)
    )
    size = _size_word(float(d["size"]), qa)
    return tpl["answers"]["synth_description"].format(
        article=article(defect),
        defect=defect,
        object=obj,
        location=qa["locations"].get(d["location"], f"at the {d['location']}"),
        size_article=article(size),
        size=size,
        appearance=d["appearance"],
        area=_area_phrase(float(d["size"]), qa),
    )


def answer(kind: str, subject: Subject, tpl: dict[str, Any], qa: dict[str, Any]) -> str:
    """The gpt answer of one turn type ('detection', 'description', 'cause', 'suggestion')."""
    a = tpl["answers"]
    if kind == "detection":
        return a["detection_yes"] if subject.anomalous else a["detection_no"]
    if kind == "description":
        return describe_subject(subject, tpl, qa)
    if not subject.anomalous:
        return a["normal_suggestion"].format(object=words_of(subject.category))
    cause, prevention = cause_and_prevention(subject, qa)
    return cause if kind == "cause" else prevention


# ---------------------------------------------------------------------------------------------- conversations


def conversation_turns(kind: str, subject: Subject, rng: random.Random, tpl: dict[str, Any]) -> list[str]:
    """The single-turn kinds of one conversation of type `kind`, in order."""
    if kind != "multi_round":
        return [kind]
    chain = tpl["multi_round"]["anomalous" if subject.anomalous else "normal"]
    n_follow = rng.randint(1, len(chain))  # 2-4 turns in all with the detection turn
    return ["detection", *chain[:n_follow]]


def make_conversation(
    kind: str, subject: Subject, rng: random.Random, tpl: dict[str, Any], qa: dict[str, Any]
) -> list[dict[str, str]]:
    obj = words_of(subject.category)
    turns: list[dict[str, str]] = []
    for i, t in enumerate(conversation_turns(kind, subject, rng, tpl)):
        follow = "follow_ups" if subject.anomalous else "follow_ups_normal"
        pool = tpl["questions"][t] if i == 0 else tpl[follow][t]
        question = rng.choice(pool).format(object=obj)
        if i == 0:
            question = f"{IMAGE_TOKEN}\n{question}"
        turns.append({"from": "human", "value": question})
        turns.append({"from": "gpt", "value": answer(t, subject, tpl, qa)})
    return turns


def kinds_for(subject: Subject, per_image: int, rng: random.Random) -> list[str]:
    """`per_image` turn types: detection first, then the others shuffled (cycled when more are asked)."""
    others = (
        ["description", "cause", "suggestion", "multi_round"]
        if subject.anomalous
        else [
            "description",
            "multi_round",
        ]
    )
    picked = ["detection"]
    while len(picked) < per_image:
        batch = others[:]
        rng.shuffle(batch)
        picked.extend(batch)
    return picked[:per_image]


def conversations_for(
    subject: Subject, index: int, settings: InstructSettings, tpl: dict[str, Any], qa: dict[str, Any]
) -> list[dict[str, Any]]:
    rng = random.Random(f"{settings.seed}:{index}:{subject.image}")
    items = []
    for k, kind in enumerate(kinds_for(subject, settings.per_image, rng)):
        items.append(
            {
                "id": f"{index:06d}-{k}",
                "image": subject.image,
                "conversations": make_conversation(kind, subject, rng, tpl, qa),
                "type": kind,
            }
        )
    return items


# ---------------------------------------------------------------------------------------------- sources


def _relative(path: Path, out: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), out.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).resolve().as_posix()


def _load_rgb(path: Path) -> np.ndarray:
    from tools.image_io import load_image

    return np.asarray(load_image(path))


def _shuffled(items: list[Any], seed: int, tag: str) -> list[Any]:
    items = sorted(items, key=str)
    random.Random(f"{seed}:{tag}").shuffle(items)
    return items


def subjects_from_data(settings: InstructSettings, out: Path) -> list[Subject]:
    """Balanced normal (train/good, test/good) and anomalous (test/<defect>) images of every category."""
    from instruct_data.datasets import open_dataset

    assert settings.data is not None
    dataset = open_dataset(settings.data)
    subjects: list[Subject] = []
    for cat in dataset.categories():
        samples = dataset.test_samples(cat)
        good = [*dataset.train_good(cat), *(s.image_path for s in samples if not s.gt_label)]
        bad = [s for s in samples if s.gt_label]
        n = min(len(good), len(bad))
        if settings.limit is not None:
            n = min(n, settings.limit // 2)
        good = _shuffled(good, settings.seed, f"good:{cat}")[:n]
        bad = sorted(_shuffled(bad, settings.seed, f"bad:{cat}")[:n], key=lambda s: str(s.image_path))
        for path in sorted(good, key=str):
            subjects.append(Subject(image=_relative(path, out), anomalous=False, category=cat))
        for s in bad:
            image = _load_rgb(s.image_path)
            mask = s.load_mask((image.shape[1], image.shape[0]))
            regions = measure_mask(mask, image) if mask is not None and mask.any() else None
            subjects.append(
                Subject(
                    image=_relative(s.image_path, out),
                    anomalous=True,
                    category=cat,
                    defect_type=s.defect_type,
                    regions=regions,
                )
            )
    return subjects


def _good_images(folder: str) -> list[tuple[str, Path]]:
    """(category, path) of the good images: a data set's train/good images, else every image found."""
    from instruct_data.datasets import DatasetError, open_dataset
    from tools.image_io import list_images

    try:
        dataset = open_dataset(folder)
        found = [(cat, p) for cat in dataset.categories() for p in dataset.train_good(cat)]
        if found:
            return found
    except DatasetError:
        pass
    name = Path(folder).resolve().name or "object"
    return [(name, p) for p in list_images(folder, recursive=True)]


def subjects_from_synthesis(
    settings: InstructSettings,
    out: Path,
    tpl: dict[str, Any],
    check_sources: Callable[[list[Path]], None] | None = None,
) -> list[Subject]:
    """Every good image as a normal subject plus one synthesized anomalous copy of it (image and mask
    saved under `<out>/images` and `<out>/masks`). `check_sources` sees the source images before
    anything is written (the split guard)."""
    from PIL import Image

    from instruct_data.synthesis.anomalies import kinds as registered
    from instruct_data.synthesis.anomalies import synthesize

    assert settings.synth_from is not None
    names = tpl["synth_kinds"]
    pool = [k for k in sorted(names) if k in set(registered())]
    if not pool:
        raise InstructBuildError("no synthesized anomaly kinds available")
    sources = _shuffled(_good_images(settings.synth_from), settings.seed, "synth")
    if settings.limit is not None:
        sources = sources[: settings.limit]
    sources.sort(key=str)
    if check_sources is not None:
        check_sources([Path(path) for _, path in sources])
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    subjects: list[Subject] = []
    for idx, (cat, path) in enumerate(sources):
        rng = np.random.default_rng([settings.seed, idx])
        kind = pool[int(rng.integers(len(pool)))]
        result = synthesize(_load_rgb(path), kind, rng)
        stem = f"{idx:05d}_{Path(path).stem}_{kind}"
        img_path, mask_path = out / "images" / f"{stem}.png", out / "masks" / f"{stem}.png"
        Image.fromarray(result.image).save(img_path)
        Image.fromarray(result.mask.astype(np.uint8) * 255).save(mask_path)
        rel = _relative(path, out)
        subjects.append(Subject(image=rel, anomalous=False, category=cat))
        subjects.append(
            Subject(
                image=f"images/{stem}.png",
                anomalous=True,
                category=cat,
                defect_type=names[kind],
                regions=measure_mask(result.mask, result.image),
                synth=result.description,
                source=rel,
                extra={"mask": f"masks/{stem}.png", "kind": kind},
            )
        )
    return subjects


# ---------------------------------------------------------------------------------------------- build


def validate(items: list[dict[str, Any]]) -> None:
    """Raise InstructBuildError when an item breaks the LLaVA conversation format."""
    for item in items:
        conv = item["conversations"]
        if not conv or len(conv) % 2:
            raise InstructBuildError(f"{item['id']}: conversation must hold human/gpt pairs")
        for i, turn in enumerate(conv):
            if turn["from"] != ("human" if i % 2 == 0 else "gpt"):
                raise InstructBuildError(f"{item['id']}: roles must alternate, starting with human")
        if not conv[0]["value"].startswith(f"{IMAGE_TOKEN}\n"):
            raise InstructBuildError(f"{item['id']}: the first human turn must start with <image>")
        if sum(t["value"].count(IMAGE_TOKEN) for t in conv) != 1:
            raise InstructBuildError(f"{item['id']}: <image> must occur exactly once")


def compute_stats(
    items: list[dict[str, Any]], subjects: list[Subject], settings: InstructSettings
) -> dict[str, Any]:
    types = {t: 0 for t in TURN_TYPES}
    answers = {"Yes": 0, "No": 0}
    turns = 0
    for item in items:
        types[item["type"]] += 1
        conv = item["conversations"]
        turns += len(conv) // 2
        if item["type"] in ("detection", "multi_round"):
            answers[conv[1]["value"]] += 1
    return {
        "format": "llava",
        "source": "data" if settings.data else "synth",
        "seed": settings.seed,
        "per_image": settings.per_image,
        "limit": settings.limit,
        "conversations": len(items),
        "turns": turns,
        "turn_types": types,
        "images": {
            "normal": sum(1 for s in subjects if not s.anomalous),
            "anomalous": sum(1 for s in subjects if s.anomalous),
        },
        "detection_answers": answers,
        "detection_conversations": {
            "Yes": sum(
                1 for i in items if i["type"] == "detection" and i["conversations"][1]["value"] == "Yes"
            ),
            "No": sum(
                1 for i in items if i["type"] == "detection" and i["conversations"][1]["value"] == "No"
            ),
        },
    }
