"""Drafting on the real good photos of ../shared/data/juice_bottle (marked `data`, skipped when absent):
whichever 8 of the 50 photos are the references, the drafted spec keeps a presence rule for every
part a person would name (the bottle, the juice, the top and the bottom label), a fill level and the
label-juice pair rule; and the logical validation set's edits are found on those photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "juice_bottle" / "train" / "good"
PHOTOS = sorted(DATA.glob("*.png")) if DATA.is_dir() else []

pytestmark = [
    pytest.mark.data,
    pytest.mark.slow,
    pytest.mark.skipif(len(PHOTOS) < 50, reason="needs the 50 juice-bottle photos in ../shared/data/juice_bottle"),
]


def _middle(c) -> float:
    box = c.find.template.box
    return (box[1] + box[3]) / 2


@pytest.mark.parametrize("draw", range(4))
def test_drafted_spec_keeps_the_parts_a_person_would_name(draw: int) -> None:
    from agent.audit.draft import draft_spec
    from tools.image_io import load_image

    picks = np.random.default_rng(100 + draw).choice(len(PHOTOS), 8, replace=False)
    spec = draft_spec([load_image(PHOTOS[i]) for i in picks], [PHOTOS[i].name for i in picks])
    assert spec.segmenter == "regions" and spec.frame == "product"
    present = [c for c in spec.components if c.count is not None and c.count.min == 1]
    assert any(c.find.product for c in present), "the bottle"
    parts = [c for c in present if c.find.template is not None]
    juice = [c for c in parts if c.colour is not None and c.colour.classes and len(c.colour.classes) >= 2]
    assert juice, "the juice: a part whose colour is one of the kinds seen"
    # the labels: parts of a label's height at the top label's and the bottom label's place
    top = [c for c in parts if 0.45 <= _middle(c) <= 0.7 and c.find.template.box[3] - c.find.template.box[1] < 0.3]
    bottom = [c for c in parts if 0.8 <= _middle(c) <= 0.97 and c.find.template.box[3] - c.find.template.box[1] < 0.3]
    assert top and bottom, [(c.name, c.find.template.box) for c in parts]
    assert any(c.fill is not None for c in parts), "a fill level"
    names = {c.name for c in juice}
    assert any(p.attribute == "kind" and p.a in {c.name for c in top} and p.b in names for p in spec.pairs), [
        (p.a, p.b) for p in spec.pairs
    ]
    assert spec.held_out_scores and len(spec.held_out_scores) == 8
    assert all(line.split(":")[0] for line in spec.kept) and all("(" in d or ":" in d for d in spec.dropped)


def test_edits_of_real_photos_are_caught_with_named_rules(tmp_path) -> None:
    from agent.audit.check import audit_image
    from agent.audit.draft import draft_spec
    from instruct_data.synthesis.logical_photos import write_logical_photo_set
    from tools.image_io import load_image

    spec = draft_spec([load_image(p) for p in PHOTOS[:8]], [p.name for p in PHOTOS[:8]])
    labels = write_logical_photo_set(PHOTOS[40:42], tmp_path, kinds=("missing_top", "fill_low", "recoloured"), seed=1)
    for rel, gt in labels.items():
        result = audit_image(load_image(tmp_path / rel), spec)
        if gt["label"]:
            assert result.violations, (rel, result.explanation)
            assert any(ch.isdigit() for ch in result.explanation)
        if gt["kind"] == "fill_low":
            assert any(r.rule.endswith(".fill") for r in result.violations), result.explanation
