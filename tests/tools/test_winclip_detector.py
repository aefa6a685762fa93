"""WinCLIP / WinCLIP+ / fused detectors end to end with a tiny random open_clip model (no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("open_clip")

from tests.tools.clip.tiny import tiny_clip_id  # noqa: E402
from tools.detectors import DETECTORS, DetectorError, DetectorOutput  # noqa: E402
from tools.detectors.fused import FusedDetector, fuse_probabilities, logit  # noqa: E402
from tools.detectors.winclip import LeaveOneOutCalibration  # noqa: E402


def _texture(seed: int, size=(48, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.tile(np.linspace(60, 190, size[1], dtype=np.float32), (size[0], 1))
    img = base[..., None] + rng.normal(0, 6, (*size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _defect(seed: int) -> Image.Image:
    a = np.asarray(_texture(seed)).copy()
    a[10:30, 20:44] = [250, 10, 10]
    return Image.fromarray(a)


@pytest.fixture(scope="module")
def refs():
    return [_texture(s) for s in range(4)]


@pytest.fixture(scope="module")
def tests_images():
    return [_texture(100), _defect(101), _texture(102).resize((40, 30))]


def _check_outputs(outs, images):
    assert len(outs) == len(images)
    for o, im in zip(outs, images, strict=True):
        assert isinstance(o, DetectorOutput)
        assert o.anomaly_map.shape == (im.height, im.width) and o.anomaly_map.dtype == np.float32
        assert np.isfinite(o.anomaly_map).all() and o.anomaly_map.min() >= 0 and o.anomaly_map.max() <= 1
        assert 0.0 <= o.pred_score <= 1.0 and np.isfinite(o.raw_score)


def test_registry_names():
    for name in ("winclip", "winclip+", "fused"):
        assert name in DETECTORS and DETECTORS.describe(name)


def test_zero_shot(refs, tests_images):
    det = DETECTORS.build("winclip", model=tiny_clip_id(), object_name="metal_nut")
    det.fit([])
    outs = det.predict(tests_images)
    _check_outputs(outs, tests_images)
    assert all(o.raw_score == pytest.approx(o.pred_score) for o in outs)  # uncalibrated by design
    assert outs[0].extras["object_name"] == "metal_nut"
    assert "zero-shot" in det.calibration()["method"]
    s = det.settings()
    assert s["detector"] == "winclip" and s["model"] == tiny_clip_id() and s["scales"] == [2, 3]
    again = DETECTORS.build("winclip", model=tiny_clip_id(), object_name="metal_nut").predict(
        tests_images[:1]
    )
    assert again[0].pred_score == pytest.approx(outs[0].pred_score, abs=1e-6)  # deterministic


def test_few_shot_calibrated_on_leave_one_out(refs, tests_images):
    det = DETECTORS.build("winclip+", model=tiny_clip_id(), object_name="tile", batch_size=2)
    assert det.requires_references
    with pytest.raises(DetectorError, match="fit"):
        det.predict(tests_images)
    with pytest.raises(DetectorError, match="reference"):
        det.fit([])
    det.fit(refs)
    cal = det.calibration()
    assert cal["references_used"] == 4 and cal["image"]["n"] == 4 and cal["pixel"]["n"] == 4
    outs = det.predict(tests_images)
    _check_outputs(outs, tests_images)
    # a reference scores like the leave-one-out scores did (below the boundary), the red patch higher;
    # with random weights the class-token half of the score is noise, so no claim about crossing 0.5
    ref_out, defect_out = det.predict([refs[0], tests_images[1]])
    assert ref_out.pred_score < 0.5 and ref_out.pred_score < defect_out.pred_score
    assert ref_out.anomaly_map.max() < 0.5 and ref_out.anomaly_map.max() < defect_out.anomaly_map.max()
    before = cal["image"]["mean"]
    det.set_object_name("screw")  # other prompts, other scores: re-calibrated from the stored embeddings
    assert det.calibration()["image"]["mean"] != before
    assert det.predict([refs[0]])[0].extras["object_name"] == "screw"
    assert defect_out.anomaly_map[10:30, 20:44].mean() > defect_out.anomaly_map[35:, :].mean()


def test_single_reference_is_uncalibrated(refs, tests_images):
    det = DETECTORS.build("winclip+", model=tiny_clip_id())
    det.fit(refs[:1])
    assert det.calibration()["method"].startswith("none")
    _check_outputs(det.predict(tests_images[:1]), tests_images[:1])


def test_leave_one_out_calibration_math():
    cal = LeaveOneOutCalibration([0.2, 0.3, 0.25, 0.25], z_boundary=3.0)
    assert cal(cal.boundary) == pytest.approx(0.5)
    assert cal(0.25) < 0.1 and cal(1.0) > 0.99
    floored = LeaveOneOutCalibration([0.5, 0.5])
    assert floored.std == pytest.approx(0.05)  # 10% of the mean


def test_fuse_probabilities():
    assert fuse_probabilities([0.5, 0.5], [1, 1]) == pytest.approx(0.5)
    assert fuse_probabilities([0.9, 0.1], [1, 1]) == pytest.approx(0.5)
    p = fuse_probabilities([0.8, 0.6], [3, 1])
    assert p == pytest.approx(1 / (1 + np.exp(-(3 * logit(0.8) + logit(0.6)) / 4)))
    maps = fuse_probabilities([np.full((2, 2), 0.7), np.full((2, 2), np.nan)], [1, 1])
    assert maps.shape == (2, 2)
    assert np.allclose(maps, 1 / (1 + np.exp(-logit(0.7) / 2)))  # NaN = no opinion (logit 0)
    with pytest.raises(ValueError):
        fuse_probabilities([0.5], [0])


def test_fused_of_two_winclips(refs, tests_images):
    plus = DETECTORS.build("winclip+", model=tiny_clip_id(), object_name="tile")
    zero = DETECTORS.build("winclip", model=tiny_clip_id(), object_name="tile")
    fused = FusedDetector(parts=[plus, zero], weights=[2.0, 1.0])
    fused.fit(refs)
    outs = fused.predict(tests_images)
    _check_outputs(outs, tests_images)
    p_plus, p_zero = plus.predict(tests_images), zero.predict(tests_images)
    for o, a, b in zip(outs, p_plus, p_zero, strict=True):
        assert o.pred_score == pytest.approx(
            float(fuse_probabilities([a.pred_score, b.pred_score], [2, 1])), abs=1e-6
        )
        assert set(o.extras["parts"]) == {"winclip+", "winclip"}
    cal = fused.calibration()
    assert set(cal["parts"]) == {"winclip+", "winclip"} and "logit" in cal["method"]
    assert [p["name"] for p in fused.settings()["parts"]] == ["winclip+", "winclip"]
    fused.set_object_name("carpet")
    assert plus.object_name == zero.object_name == "carpet"


def test_fused_without_references_swaps_to_zero_shot(tests_images):
    fused = DETECTORS.build("fused", parts=("winclip+",), model=tiny_clip_id(), object_name="tile")
    fused.fit([])
    assert fused.calibration()["notes"] == ["winclip+ replaced by winclip: no references given"]
    _check_outputs(fused.predict(tests_images[:1]), tests_images[:1])
    with pytest.raises(DetectorError, match="weights"):
        FusedDetector(parts=["winclip"], weights=[1.0, 2.0])


def test_fused_with_sam_refinement(refs, tests_images):
    pytest.importorskip("transformers")
    from tests.tools.clip.tiny import tiny_sam
    from tools.sam import SamTool

    model, processor = tiny_sam()
    tool = SamTool(sam_model=model, processor=processor, min_iou=1.01)  # always keeps the original regions
    fused = FusedDetector(parts=["winclip+"], model=tiny_clip_id(), object_name="tile", sam=tool)
    fused.fit(refs)
    outs = fused.predict(tests_images[1:2])
    _check_outputs(outs, tests_images[1:2])
    o = outs[0]
    assert o.extras["pred_mask"].shape == o.anomaly_map.shape
    assert all(d["kept"] == "original" for d in o.extras["sam"])
    np.testing.assert_array_equal(o.extras["pred_mask"], o.anomaly_map > 0.5)


def test_fused_with_reference_matching(refs, tests_images):
    pytest.importorskip("tools.detectors.reference_matching")
    try:
        fused = DETECTORS.build(
            "fused",
            model=tiny_clip_id(),
            object_name="tile",
            part_kwargs={"refmatch": {"resolution": 64, "augment": ()}},
        )
        fused.fit(refs)
    except (ImportError, DetectorError) as e:  # reference matching absent or its weights not installed
        pytest.skip(f"refmatch unavailable: {e}")
    images = [*tests_images, refs[0]]
    outs = fused.predict(images)
    _check_outputs(outs, images)
    assert set(outs[0].extras["parts"]) == {"refmatch", "winclip+"}
    assert outs[1].pred_score > outs[-1].pred_score  # the red patch vs. a reference


def test_fused_skips_a_part_whose_model_is_missing(refs, tests_images, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOOKTWICE_MODEL_CLIP", "ViT-B-16-plus-240:laion400m_e31")
    monkeypatch.setattr("tools.models.open_clip_url_cache_dir", lambda: tmp_path / "clip")
    here = DETECTORS.build("winclip+", model=tiny_clip_id(), object_name="tile")
    fused = FusedDetector(parts=["winclip", here])
    fused.fit(refs)
    (note,) = fused.calibration()["notes"]
    assert note.startswith("winclip skipped") and "huggingface-cli download" in note
    assert set(fused.predict(tests_images[:1])[0].extras["parts"]) == {"winclip+"}
    strict = FusedDetector(parts=["winclip", here], skip_missing_models=False)
    with pytest.raises(DetectorError, match="not available"):
        strict.fit(refs)


def test_resolve_precision():
    from tools.detectors.winclip import resolve_precision

    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    assert resolve_precision("auto", "mps") == "fp32"
    with pytest.raises(DetectorError, match="precision"):
        resolve_precision("int8", "cpu")
    with pytest.raises(DetectorError, match="resolution"):
        DETECTORS.build("winclip", resolution=256)
