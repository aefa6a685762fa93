"""Build a VisA-D&R-style QA set from any MVTec-layout data set (format: instruct_data/qa/FORMAT.md).

Writes three files into the output folder:
- `test_data.json`: [{image, anomaly, class}] for the detection part (every selected test image);
- `dr.json`: [{image, class, defect_type, questions, answers}] for the reasoning part (anomalous images
  only), a low-level question (describe the defect) and a complex one (likely cause, prevention);
- `meta.json`: where the images are (`data_root`), how the set was drawn, and counts (and, with
  `exclude_from`, the split check against the instruction data: `instruct_data.qa.overlap`).

Reference answers come from the ground truth only: the mask is measured with `tools.regions.measure_regions`
(location words, size, shape, tone against the surroundings) and the defect type picks the cause and
prevention; every sentence is a template in `prompts/qa_templates.yaml`. Images are referenced by
their path relative to the data root, so the set moves with the data.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from instruct_data.datasets import ALL_CATEGORIES, Dataset, Sample, open_dataset
from instruct_data.qa.overlap import SplitGuard
from instruct_data.qa.reader import DR_FILE, META_FILE, TEST_FILE
from prompts import load_prompts
from tools.record import Region
from tools.regions import measure_regions

FORMAT_VERSION = 1


class QABuildError(ValueError):
    """The QA set cannot be built (no test images, unknown category, ...); the message says why."""


@dataclass
class BuildSettings:
    data: str
    out: str
    category: str | None = None
    limit: int | None = None  # at most this many test images per category (about half anomalous)
    seed: int = 0
    exclude_from: str | None = None  # instruction data (instruct.json or its folder) to share no image with
    allow_overlap: bool = False  # build even when some images are in `exclude_from` (recorded in meta)


def templates() -> dict[str, Any]:
    """The parsed `prompts/qa_templates.yaml`."""
    return load_prompts("qa_templates")


# ---------------------------------------------------------------------------------------------- words


def words_of(name: str) -> str:
    """A folder name in words: 'MT_Blowhole' -> 'blowhole', 'metal_nut' -> 'metal nut'."""
    text = re.sub(r"[_\-]+", " ", name).strip().lower()
    text = re.sub(r"^mt\s+", "", text)
    return re.sub(r"\s+", " ", text)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def defect_entry(defect_type: str, tpl: dict[str, Any]) -> dict[str, Any] | None:
    """The first `defect_types` entry whose `match` words occur in the defect type's words."""
    tokens = words_of(defect_type)
    for entry in tpl["defect_types"]:
        for word in entry["match"]:
            if re.search(rf"(^|\s){re.escape(word)}", tokens):
                return entry
    return None


def _size_word(fraction: float, tpl: dict[str, Any]) -> str:
    for entry in tpl["sizes"]:
        if entry["below"] is None or fraction < entry["below"]:
            return entry["word"]
    return tpl["sizes"][-1]["word"]


def _area_phrase(fraction: float, tpl: dict[str, Any]) -> str:
    percent = 100.0 * fraction
    if percent < 0.05:
        return tpl["area"]["under"]
    return tpl["area"]["about"].format(percent=f"{percent:.1f}%")


def _tone(contrast: float, tpl: dict[str, Any]) -> str:
    if contrast <= -tpl["tone_threshold"]:
        return tpl["tone_words"]["darker"]
    if contrast >= tpl["tone_threshold"]:
        return tpl["tone_words"]["brighter"]
    return tpl["tone_words"]["similar"]


def region_phrase(region: Region, tpl: dict[str, Any]) -> str:
    """'a small elongated mark in the upper-left, darker than its surroundings, covering about 1.2% ...'."""
    size = _size_word(region.area_fraction, tpl)
    text = tpl["describe"]["region"].format(
        size=size,
        shape=tpl["shape_words"].get(region.shape, region.shape),
        location=tpl["locations"].get(region.location, f"at the {region.location}"),
        tone=_tone(region.intensity_contrast, tpl),
        area=_area_phrase(region.area_fraction, tpl),
    )
    return f"{article(text)} {text}"


def measure_mask(mask: np.ndarray, image: np.ndarray | None, max_regions: int = 10) -> list[Region]:
    """Regions of a ground-truth mask (largest first), measured like the detector's regions."""
    m = np.asarray(mask, dtype=bool)
    regions = measure_regions(m.astype(np.float32), m, image, max_regions=max_regions)
    return sorted(regions, key=lambda r: (-r.area_px, r.centroid[1], r.centroid[0]))


def defect_words(defect_type: str, tpl: dict[str, Any]) -> str:
    entry = defect_entry(defect_type, tpl)
    return entry["words"] if entry else words_of(defect_type)


def describe_defect(
    defect_type: str, object_name: str, regions: list[Region] | None, tpl: dict[str, Any] | None = None
) -> str:
    """Reference answer to the low-level question; `regions` None = no mask file."""
    tpl = tpl or templates()
    d = tpl["describe"]
    defect = defect_words(defect_type, tpl)
    obj = words_of(object_name)
    if not regions:
        return d["no_mask"].format(article=article(defect), defect=defect, object=obj)
    if len(regions) == 1:
        return d["one"].format(
            article=article(defect), defect=defect, object=obj, region=region_phrase(regions[0], tpl)
        )
    listed = [region_phrase(r, tpl) for r in regions[: d["max_listed"]]]
    rest = len(regions) - len(listed)
    if rest > 0:
        listed.append(d["more"].format(count=_count_word(rest, tpl)))
    return d["several"].format(
        count=_count_word(len(regions), tpl), defect=defect, object=obj, regions=d["separator"].join(listed)
    )


def _count_word(n: int, tpl: dict[str, Any]) -> str:
    words = tpl["count_words"]
    return words[n] if 0 <= n < len(words) else str(n)


def explain_cause(
    defect_type: str, object_name: str, regions: list[Region] | None, tpl: dict[str, Any] | None = None
) -> str:
    """Reference answer to the complex question: the defect type's cause and prevention; without a
    matching type, the fallback for the shape of the largest region, else the generic one."""
    tpl = tpl or templates()
    entry = defect_entry(defect_type, tpl)
    if entry is None:
        fb = tpl["fallback"]
        entry = fb.get(regions[0].shape, fb["generic"]) if regions else fb["generic"]
    fields = {"defect": words_of(defect_type), "object": words_of(object_name)}
    return tpl["complex_answer"].format(
        cause=entry["cause"].format(**fields), prevention=entry["prevention"].format(**fields)
    )


# ---------------------------------------------------------------------------------------------- selection


def select_samples(samples: list[Sample], limit: int | None, seed: int, category: str) -> list[Sample]:
    """All samples, or `limit` of them drawn with `seed`: about half anomalous, spread round-robin over
    the defect types, the rest good (whichever side runs short is filled from the other)."""
    if limit is None or limit >= len(samples):
        return sorted(samples, key=lambda s: str(s.image_path))
    rng = random.Random(f"{seed}:{category}")
    good = sorted((s for s in samples if not s.gt_label), key=lambda s: str(s.image_path))
    rng.shuffle(good)
    groups: dict[str, list[Sample]] = {}
    for s in sorted((s for s in samples if s.gt_label), key=lambda s: str(s.image_path)):
        groups.setdefault(s.defect_type, []).append(s)
    for key in sorted(groups):
        rng.shuffle(groups[key])
    n_anom_total = sum(len(g) for g in groups.values())
    n_good = min(limit // 2, len(good))
    n_anom = min(limit - n_good, n_anom_total)
    n_good = min(limit - n_anom, len(good))
    picked = good[:n_good]
    queues = [groups[k] for k in sorted(groups)]
    taken = 0
    while taken < n_anom:
        for q in queues:
            if q and taken < n_anom:
                picked.append(q.pop(0))
                taken += 1
    return sorted(picked, key=lambda s: str(s.image_path))


# ---------------------------------------------------------------------------------------------- build


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(Path(path).resolve(), root.resolve())).as_posix()
    except ValueError:  # another drive on Windows
        return Path(path).resolve().as_posix()


def _load_rgb(path: Path) -> np.ndarray:
    from tools.image_io import load_image

    return np.asarray(load_image(path))


def qa_items(sample: Sample, rel: str, tpl: dict[str, Any]) -> dict[str, Any]:
    """The dr.json entry of one anomalous sample."""
    image = _load_rgb(sample.image_path)
    mask = sample.load_mask((image.shape[1], image.shape[0]))
    regions = measure_mask(mask, image) if mask is not None and mask.any() else None
    obj = words_of(sample.category)
    q = tpl["questions"]
    return {
        "image": rel,
        "class": sample.category,
        "defect_type": sample.defect_type,
        "questions": [q["low_level"].format(object=obj), q["complex"].format(object=obj)],
        "answers": [
            describe_defect(sample.defect_type, sample.category, regions, tpl),
            explain_cause(sample.defect_type, sample.category, regions, tpl),
        ],
    }


def build_qa_set(settings: BuildSettings, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write test_data.json, dr.json and meta.json into `settings.out`; returns the meta dict."""
    if settings.limit is not None and settings.limit <= 0:
        raise QABuildError(f"--limit must be positive, got {settings.limit}")
    dataset: Dataset = open_dataset(settings.data)
    known = dataset.categories()
    if settings.category in (None, ALL_CATEGORIES):
        categories = known
    elif settings.category in known:
        categories = [settings.category]
    else:
        raise QABuildError(
            f"category {settings.category!r} not found in '{settings.data}'; known: {', '.join(known)}"
        )
    root = Path(dataset.root)
    guard = SplitGuard.against_instruct(settings.exclude_from) if settings.exclude_from else None
    chosen = {c: select_samples(dataset.test_samples(c), settings.limit, settings.seed, c) for c in categories}
    split_check = None
    if guard is not None:
        images = [(_relative(s.image_path, root), Path(s.image_path)) for c in categories for s in chosen[c]]
        split_check = guard.check(images, "QA set", settings.allow_overlap)
    tpl = templates()
    test_data: list[dict[str, Any]] = []
    dr: list[dict[str, Any]] = []
    per_class: dict[str, dict[str, int]] = {}
    for cat in categories:
        counts = per_class.setdefault(cat, {"images": 0, "anomalous": 0, "good": 0, "without_mask": 0})
        for s in chosen[cat]:
            rel = _relative(s.image_path, root)
            test_data.append({"image": rel, "anomaly": bool(s.gt_label), "class": cat})
            counts["images"] += 1
            counts["anomalous" if s.gt_label else "good"] += 1
            if s.gt_label:
                item = qa_items(s, rel, tpl)
                dr.append(item)
                if s.mask_path is None:
                    counts["without_mask"] += 1
            if progress:
                progress(1)
    if not test_data:
        raise QABuildError(f"no test images found in '{settings.data}'")
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": "looktwice-dr",
        "format_version": FORMAT_VERSION,
        "data_root": str(root.resolve()),
        "categories": categories,
        "limit": settings.limit,
        "seed": settings.seed,
        "detection_question": tpl["detection_question"],
        "counts": {
            "images": len(test_data),
            "anomalous": sum(1 for t in test_data if t["anomaly"]),
            "good": sum(1 for t in test_data if not t["anomaly"]),
            "dr_items": len(dr),
            "questions": sum(len(d["questions"]) for d in dr),
        },
        "per_class": per_class,
    }
    if split_check is not None:
        meta["split_check"] = split_check
    (out / TEST_FILE).write_text(json.dumps(test_data, indent=1), encoding="utf-8")
    (out / DR_FILE).write_text(json.dumps(dr, indent=1), encoding="utf-8")
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta
