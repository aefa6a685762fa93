"""The audit's model-backed finders: SAM automatic masks as blobs, the CLIP text-prompt finder, and
what happens when their models are missing. Tiny random models (no downloads): they recognise
nothing, so these tests check the mechanics; recognition is left to real checkpoints."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import yaml

from agent.audit.check import audit_image
from agent.audit.clip_finder import claim_by_prompt, crop_box, decide, texts_for
from agent.audit.draft import draft_spec
from agent.audit.finders import Finders, ModelFinders
from agent.audit.segment import SamMaskGenerator, masks_to_blobs
from agent.audit.spec import ClipSettings, SamSettings, SpecError, parse_spec
from agent.cli import main
from instruct_data.synthesis.scenes import make_scene, write_scene_set
from tools.components import border_colour, find_parts, work_pixels

BG = (0.9, 0.9, 0.8)
RED, BLUE = (0.8, 0.1, 0.1), (0.1, 0.2, 0.8)
LAX_SAM = {"points_per_side": 4, "min_score": -1000.0, "min_stability": 0.0}  # random SAM: keep all


def _rect(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def _bottle_and_label() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 64x64 work image: a red 'bottle' with a blue 'label' on it; and the two true masks."""
    px = np.tile(np.array(BG), (64, 64, 1))
    bottle, label = _rect(64, 64, 10, 50, 10, 30), _rect(64, 64, 20, 30, 14, 26)
    px[bottle] = RED
    px[label] = BLUE
    return px, bottle, label


def oracle_masks(image) -> list[np.ndarray]:
    """A stand-in for SAM that segments perfectly, SAM-style: the parts, a union of two parts (a
    mask over another), the whole image (mostly background), each part grown by a rim of background."""
    px = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    parts = [b.mask for b in find_parts(px, border_colour(px), 0.15, 0.0005)]
    from scipy import ndimage

    grown = [ndimage.binary_dilation(m, iterations=1) for m in parts]
    union = [parts[0] | parts[1]] if len(parts) > 1 else []
    return [np.ones(px.shape[:2], bool), *grown, *union]


@cache
def _tray_refs() -> tuple:
    return tuple(make_scene("tray", "good", seed=9100 + i).image for i in range(3))


# ---------------------------------------------------------------------------------------------- spec
def test_spec_segmenter_and_model_settings_round_trip() -> None:
    base = {"background": {"rgb": list(BG)}, "components": [{"name": "pin", "find": {"rgb": list(BLUE)}}]}
    plain = parse_spec(base)
    assert not plain.uses_sam and "segmenter" not in plain.to_yaml() and "clip" not in plain.to_yaml()
    data = json.loads(json.dumps(base))
    data["components"].append({"name": "part", "find": {"sam": True}})
    data["sam"] = {"model": "facebook/sam-vit-base", "points_per_side": 8}
    data["clip"] = {"negatives": ["a table"], "margin": 0.2}
    spec = parse_spec(data)
    assert spec.uses_sam and spec.sam_settings.points_per_side == 8 and spec.clip_settings.margin == 0.2
    assert parse_spec(yaml.safe_load(spec.to_yaml())) == spec
    data["segmenter"] = "colour"
    with pytest.raises(SpecError, match=r"components\[1\]\.find\.sam: needs segmenter: sam"):
        parse_spec(data, "s.yaml")


# ---------------------------------------------------------------------------------------------- SAM blobs
def test_sam_masks_become_disjoint_blobs_like_colour_segmentation() -> None:
    px, bottle, label = _bottle_and_label()
    whole = np.ones((64, 64), bool)  # mostly background: dropped
    rim = _rect(64, 64, 8, 52, 8, 32)  # the bottle with a rim of background: trimmed to the foreground
    blobs = masks_to_blobs([whole, rim, label], px, BG, 0.2, 0.002)
    assert len(blobs) == 2
    big, small = blobs
    np.testing.assert_array_equal(big.mask, bottle & ~label)  # the label keeps its own pixels
    np.testing.assert_array_equal(small.mask, label)
    assert big.mask.dtype == bool and big.mask.shape == (64, 64)
    assert small.area == pytest.approx(label.sum() / 64**2) and small.rgb == pytest.approx(BLUE)
    assert small.centroid == pytest.approx((20 / 64, 25 / 64))
    # the same geometry as the colour segmentation of this image
    ref = find_parts(px, BG, 0.2, 0.002)
    for a, b in zip(blobs, ref, strict=True):
        np.testing.assert_array_equal(a.mask, b.mask)
        assert (a.area, *a.centroid, *a.rgb) == pytest.approx((b.area, *b.centroid, *b.rgb))
    # a mask over two separate parts splits into pieces; specks below min_area go
    two = _rect(64, 64, 55, 60, 40, 45) | _rect(64, 64, 55, 60, 55, 60)
    px[two] = RED
    assert len(masks_to_blobs([two], px, BG, 0.2, 0.002)) == 2
    assert masks_to_blobs([two], px, BG, 0.2, 0.01) == []
    # masks at another size than the work image are resized
    half = masks_to_blobs([label[::2, ::2]], px, BG, 0.2, 0.002)
    assert half[0].mask.shape == (64, 64) and half[0].area == pytest.approx(label.sum() / 64**2, rel=0.2)


def test_sam_segmenter_path_drafts_and_audits_with_an_injected_generator() -> None:
    finders = Finders(masks=oracle_masks)
    spec = draft_spec(list(_tray_refs()), segmenter="sam", finders=finders)
    assert spec.segmenter == "sam" and all(c.find.sam for c in spec.components)
    pins = spec.components[0]
    assert pins.count.min == pins.count.max == 12 and spec.dropped == []
    good = audit_image(make_scene("tray", "good", seed=3).image, spec, finders=finders)
    assert not good.anomalous and not any(r.skipped for r in good.rules), good.explanation
    missing = audit_image(make_scene("tray", "missing", seed=0).image, spec, finders=finders)
    assert missing.anomalous and "missing" in missing.explanation
    # a bare `sam: true` component takes every segment nobody else claims
    bare = parse_spec(
        {
            "background": spec.background.model_dump(),
            "components": [{"name": "part", "find": {"sam": True}, "count": 12}],
        }
    )
    assert not audit_image(make_scene("tray", "good", seed=3).image, bare, finders=finders).anomalous
    # without a mask generator: colour segmentation, the SAM-only component and unexpected objects skipped
    res = audit_image(make_scene("tray", "good", seed=3).image, bare)
    skipped = {r.rule: r.explanation for r in res.rules if r.skipped}
    assert set(skipped) == {"segmenter", "part.find", "unexpected_objects"}
    assert "--sam" in skipped["part.find"] and not res.anomalous


@pytest.fixture(scope="module")
def tiny_sam_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    from tests.tools.clip.tiny import tiny_sam

    model, processor = tiny_sam()
    folder = tmp_path_factory.mktemp("tiny-sam")
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_real_sam_generator_on_a_tiny_model(tiny_sam_folder) -> None:
    from tools.sam import mask_iou

    finders = ModelFinders(sam_model=str(tiny_sam_folder))
    generate = finders.mask_generator(SamSettings(**LAX_SAM, nms_iou=0.5))
    assert isinstance(generate, SamMaskGenerator)
    assert finders.mask_generator(SamSettings()).tool is generate.tool  # loaded once
    image = make_scene("box", "good", seed=1).image
    masks = generate(image)
    assert masks, "a random SAM still returns masks with the filters off"
    for m in masks:
        assert m.shape == (image.height, image.width) and m.dtype == bool
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert mask_iou(masks[i], masks[j]) <= 0.55  # NMS (on a downsampled copy)
    px = work_pixels(image)
    blobs = masks_to_blobs(masks, px, border_colour(px), 0.15, 0.0)
    total = np.zeros(px.shape[:2], int)
    for b in blobs:
        assert b.mask.shape == px.shape[:2] and b.area == pytest.approx(b.mask.sum() / b.mask.size)
        total += b.mask
    assert total.max() <= 1  # disjoint
    spec = parse_spec(
        {
            "background": {"rgb": [float(v) for v in border_colour(px)]},
            "components": [{"name": "part", "find": {"sam": True}}],
            "sam": LAX_SAM,
        }
    )
    result = audit_image(image, spec, finders=finders)
    assert not any(r.skipped for r in result.rules) and result.work_size == (image.width, image.height)


# ---------------------------------------------------------------------------------------------- CLIP
def test_crop_box_is_a_square_with_context_inside_the_image() -> None:
    mask = _rect(64, 64, 20, 30, 14, 26)  # 12 x 10 at work resolution
    x0, y0, x1, y1 = crop_box(mask, (640, 640), margin=0.25)
    assert x1 - x0 == y1 - y0 == 180 and (x0 + x1) / 2 == 200 and (y0 + y1) / 2 == 250
    corner = crop_box(_rect(64, 64, 0, 4, 0, 4), (64, 64), margin=0.5)
    assert corner[:2] == (0, 0) and corner[2] == corner[3] >= 8


def test_decide_needs_a_winning_component_prompt_and_a_margin() -> None:
    owners = ["screw", "nut", ""]
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [1.0, 1.0, 0.0], [1.0, 0.9, -5.0]])
    assert decide(logits, owners, 0.1) == ["screw", None, None, None]
    assert decide(logits, owners, 0.0)[3] == "screw"


def _blue_scorer(calls: list):
    """A stub CLIP: a crop whose centre is blue is 'a blue pin', anything else 'background'."""

    def score(crops, texts):
        calls.append(list(texts))
        out = np.zeros((len(crops), len(texts)))
        for i, c in enumerate(crops):
            r, g, b = np.asarray(c.convert("RGB"), float)[c.height // 2, c.width // 2] / 255
            out[i, texts.index("a blue pin" if b > r + 0.2 else "background")] = 8.0
        return out

    return score


def test_clip_prompt_finder_claims_blobs_with_an_injected_scorer() -> None:
    data = {
        "background": {"rgb": [0.886, 0.871, 0.824], "tolerance": 0.15},
        "components": [
            {"name": "pin", "find": {"clip_prompt": "a blue pin"}, "count": 12},
            {"name": "screw", "find": {"clip_prompt": "a small screw"}},
        ],
    }
    spec = parse_spec(data)
    assert texts_for(spec, spec.clip_settings) == (
        ["a blue pin", "a small screw", "background", "an empty surface"],
        ["pin", "screw", "", ""],
    )
    calls: list = []
    finders = Finders(clip=_blue_scorer(calls))
    good = audit_image(make_scene("tray", "good", seed=2).image, spec, finders=finders)
    assert not good.anomalous and not any(r.skipped for r in good.rules), good.explanation
    assert calls == [["a blue pin", "a small screw", "background", "an empty surface"]]
    assert sum(b.owner == "pin" for b in good.blobs) == 12
    missing = audit_image(make_scene("tray", "missing", seed=0).image, spec, finders=finders)
    assert missing.anomalous and "pin missing" in missing.explanation
    recoloured = audit_image(make_scene("tray", "recoloured", seed=0).image, spec, finders=finders)
    assert recoloured.anomalous  # the red pin is not 'a blue pin': one missing and one unexpected object
    # colour finders go first: only the blobs they leave are scored
    mixed = parse_spec(
        {**data, "components": [{"name": "pin", "find": {"rgb": [0.16, 0.27, 0.78]}}, data["components"][1]]}
    )
    calls.clear()
    blobs = audit_image(make_scene("tray", "good", seed=2).image, mixed, finders=finders).blobs
    assert calls == [] and all(b.owner == "pin" for b in blobs)
    # no scorer: the CLIP-only components are skipped, with the reason
    res = audit_image(make_scene("tray", "good", seed=2).image, spec)
    assert {r.rule for r in res.rules if r.skipped} == {"pin.find", "screw.find", "unexpected_objects"}
    assert not res.anomalous and "--clip" in res.rules[0].explanation


@pytest.fixture(scope="module")
def tiny_clip() -> str:
    pytest.importorskip("open_clip")
    from tests.tools.clip.tiny import tiny_clip_id

    return tiny_clip_id()


def test_open_clip_scorer_runs_on_a_tiny_model(tiny_clip) -> None:
    finders = ModelFinders(clip_model=tiny_clip)
    scorer = finders.clip_scorer(ClipSettings())
    assert scorer is not None and finders.clip_scorer(ClipSettings()) is scorer  # loaded once
    image = make_scene("box", "good", seed=0).image
    crops = [image, image.crop((10, 10, 40, 30)), image.crop((0, 0, 9, 9))]
    texts = ["a bottle", "a label", "background", "an empty surface"]
    logits = scorer(crops, texts)
    assert logits.shape == (3, 4) and np.isfinite(logits).all()
    np.testing.assert_allclose(scorer(crops[:1], texts), logits[:1], rtol=1e-4, atol=1e-4)
    assert scorer([], texts).shape == (0, 4)
    px = work_pixels(image)
    blobs = find_parts(px, border_colour(px), 0.15, 0.002)
    spec = parse_spec(
        {
            "background": {"rgb": [0.886, 0.871, 0.824]},
            "components": [{"name": "cap", "find": {"clip_prompt": "a cap"}}],
        }
    )
    claims = claim_by_prompt(blobs, list(range(len(blobs))), image, spec, scorer)
    assert set(claims) <= set(range(len(blobs))) and set(claims.values()) <= {"cap"}
    result = audit_image(image, spec, finders=finders)
    assert not any(r.skipped for r in result.rules)


# ---------------------------------------------------------------------------------------------- CLI
def _scene_set(tmp_path):
    write_scene_set(tmp_path / "data", 4, seed=3, scenes=("tray",))
    return tmp_path / "data/tray/refs", tmp_path / "data/tray/test"


def test_cli_missing_models_skip_rules_and_warn_once(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    refs, test = _scene_set(tmp_path)
    spec = draft_spec([make_scene("tray", "good", seed=9000 + i).image for i in range(3)])
    data = yaml.safe_load(spec.to_yaml())
    data["components"].append({"name": "screw", "find": {"clip_prompt": "a small screw"}, "count": 2})
    data["segmenter"] = "sam"
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    args = ["audit", "run", str(test), "--refs", str(refs), "--spec", str(tmp_path / "spec.yaml")]
    args += ["--detector", "none", "--quiet", "--out", str(tmp_path / "out")]
    code = main([*args, "--clip", str(tmp_path / "no-clip"), "--sam", str(tmp_path / "no-sam")])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = err.strip().splitlines()
    clip_lines = [x for x in lines if "CLIP model" in x]
    sam_lines = [x for x in lines if "SAM model" in x]
    assert (
        len(clip_lines) == 1
        and str(tmp_path / "no-clip") in clip_lines[0]
        and "check the path" in clip_lines[0]
    )
    assert len(sam_lines) == 1 and str(tmp_path / "no-sam") in sam_lines[0]
    assert "Traceback" not in err
    rows = [json.loads(x) for x in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        skipped = {r["rule"] for r in row["record"]["audit"]["rules"] if r["skipped"]}
        assert skipped == {"segmenter", "screw.find", "unexpected_objects"}

    # draft with a missing SAM: one warning, drafted by colour, with a note
    out = tmp_path / "drafted.yaml"
    assert (
        main(["audit", "draft", "--refs", str(refs), "--sam", str(tmp_path / "no-sam"), "--out", str(out)])
        == 0
    )
    err = capsys.readouterr().err
    assert sum("SAM model" in x for x in err.splitlines()) == 1
    drafted = yaml.safe_load(out.read_text())
    assert "segmenter" not in drafted and any("drafted by colour, not SAM" in n for n in drafted["notes"])


def test_cli_run_with_tiny_sam_and_clip(tmp_path, tiny_sam_folder, tiny_clip, capsys) -> None:
    refs, test = _scene_set(tmp_path)
    data = {
        "background": {"rgb": [0.886, 0.871, 0.824], "tolerance": 0.15},
        "components": [
            {"name": "pin", "find": {"sam": True, "rgb": [0.16, 0.27, 0.78]}},
            {"name": "screw", "find": {"clip_prompt": "a small screw"}},
        ],
        "sam": LAX_SAM,
    }
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(data))
    args = ["audit", "run", str(test), "--refs", str(refs), "--spec", str(tmp_path / "spec.yaml")]
    args += ["--detector", "none", "--quiet", "--out", str(tmp_path / "out")]
    code = main([*args, "--sam", str(tiny_sam_folder), "--clip", tiny_clip])
    err = capsys.readouterr().err
    assert code == 0 and "not on this machine" not in err, err
    rows = [json.loads(x) for x in (tmp_path / "out/results.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert not any(r["skipped"] for r in row["record"]["audit"]["rules"])
    # the models are part of the settings: resuming with another is refused
    assert main([*args, "--resume", "--clip", "Other:none"]) == 2


def test_unavailable_messages_are_one_line_naming_model_and_remedy() -> None:
    from agent.audit.finders import unavailable_message
    from tools.models import ModelNotAvailableError

    extra = unavailable_message("clip", "ViT-B-16:x", ModuleNotFoundError("no open_clip", name="open_clip"))
    assert (
        extra == "CLIP model 'ViT-B-16:x' needs the 'clip' extra: pip install 'looktwice[clip]' (open_clip)"
    )
    hub = ModelNotAvailableError(
        "facebook/sam-vit-base", ["/c"], "huggingface-cli download facebook/sam-vit-base"
    )
    text = unavailable_message("sam", "facebook/sam-vit-base", hub)
    assert "huggingface-cli download facebook/sam-vit-base" in text and "--sam" in text and "\n" not in text
    odd = unavailable_message("sam", "m", RuntimeError("bad\nconfig"))
    assert odd == "SAM model 'm' could not be loaded: bad config"
