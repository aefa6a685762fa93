"""Detection v2 on synthetic images: batch detector, alignment, the augmentation rule, mutual scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from evals.metrics import image_auroc as auroc
from instruct_data.synthesis.demo_case import brushed_plate, draw_scratch, draw_stain
from instruct_data.synthesis.products import bracket, weave
from tests.helpers import to_pil
from tools.detectors import DETECTORS, DetectorError
from tools.detectors.alignment import grey_small, is_aligned, phase_shift, shift_features, windowed_nearest
from tools.detectors.augmentation_rule import decide_views
from tools.detectors.mutual_scoring import choose_partners, mutual_scores, per_partner_distances
from tools.detectors.reference_matching import ReferenceMatchingDetector
from tools.lazy_images import LazyImages

# ---------------------------------------------------------------------------------------- batch


@pytest.fixture(scope="module")
def plate_batch():
    """18 good plates and 9 defective ones (a third of the batch), shuffled."""
    rng = np.random.default_rng(5)
    good = [to_pil(brushed_plate(rng, 128)) for _ in range(18)]
    bad = []
    for i in range(9):
        draw = draw_scratch if i % 2 else draw_stain
        im, _ = draw(brushed_plate(rng, 128), rng)
        bad.append(to_pil(im))
    images = good + bad
    labels = np.array([0] * len(good) + [1] * len(bad))
    order = np.random.default_rng(0).permutation(len(images))
    return [images[i] for i in order], labels[order]


def test_batch_detector_ranks_defects_above_good_with_a_third_defective(plate_batch):
    images, labels = plate_batch
    det = DETECTORS.build("batch", resolution=128, partners=12)
    det.fit([])
    det.fit_batch(images)
    scores = np.array([o.pred_score for o in det.predict(images)])
    assert auroc(labels, scores) >= 0.95
    assert det.calibration()["method"].startswith("batch")
    assert det.settings()["pool_size"] == len(images)


def test_batch_detector_reads_only_its_pool_and_scores_new_images(plate_batch, tmp_path):
    images, labels = plate_batch
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i:02d}.png")
        im.save(paths[-1])
    read: list[str] = []

    def loader(p):
        read.append(str(p))
        return Image.open(p).convert("RGB")

    det = DETECTORS.build("batch", resolution=128, partners=8, max_pool=10, seed=3)
    det.fit([])
    det.fit_batch(LazyImages(paths, loader))
    assert len(read) == 10, "only the sampled partner pool is read"
    outs = det.predict(images)
    scores = np.array([o.pred_score for o in outs])
    assert auroc(labels, scores) >= 0.9
    again = det.predict(images[::-1])[::-1]
    assert [o.raw_score for o in again] == [o.raw_score for o in outs], "order does not change scores"


def test_batch_with_references_uses_both(plate_batch):
    images, labels = plate_batch
    rng = np.random.default_rng(11)
    refs = [to_pil(brushed_plate(rng, 128)) for _ in range(3)]
    det = DETECTORS.build("batch", resolution=128, partners=12)
    det.fit(refs)
    det.fit_batch(images)
    assert det.settings()["references"]["detector"] == "refmatch"
    scores = np.array([o.pred_score for o in det.predict(images)])
    assert auroc(labels, scores) >= 0.95


def test_batch_needs_a_batch():
    det = DETECTORS.build("batch", resolution=128)
    det.fit([])
    with pytest.raises(DetectorError, match="fit_batch"):
        det.predict([Image.new("RGB", (64, 64))])
    with pytest.raises(DetectorError, match="at least 2"):
        det.fit_batch([Image.new("RGB", (64, 64))])


def test_mutual_scores_ignore_a_defect_shared_by_few_partners():
    g = torch.Generator().manual_seed(0)
    query = torch.randn(50, 8, generator=g)
    partners = [query + 0.01 * torch.randn(50, 8, generator=g) for _ in range(10)]
    odd = torch.full((1, 8), 9.0)
    query = torch.cat([query, odd])
    partners[0] = torch.cat([partners[0], odd])  # one partner shares the oddity
    partners[1:] = [torch.cat([p, torch.zeros(1, 8)]) for p in partners[1:]]
    per = per_partner_distances(query, partners, chunk=16)
    brute = torch.stack([torch.cdist(query, p).min(1).values for p in partners], 1)
    torch.testing.assert_close(per, brute, atol=1e-3, rtol=1e-3)
    s = mutual_scores(per, 0.3)
    assert s[-1] > 10 * s[:-1].max(), "a patch matched in only 1 of 10 partners stays anomalous"


def test_partners_depend_on_content_and_seed_only():
    keys = [f"k{i}" for i in range(40)]
    a = choose_partners("k3", keys, 8, seed=0)
    assert len(a) == 8 and 3 not in a
    assert choose_partners("k3", list(keys), 8, seed=0) == a
    assert choose_partners("k3", keys, 8, seed=1) != a


# ---------------------------------------------------------------------------------------- alignment


def test_phase_correlation_recovers_a_known_shift():
    rng = np.random.default_rng(2)
    base = to_pil(bracket(rng, 128))
    moved = Image.new("RGB", base.size)
    moved.paste(base, (6, -4))  # 6 px right, 4 px up
    x = torch.from_numpy(np.stack([np.asarray(base), np.asarray(moved)])).permute(0, 3, 1, 2).float() / 255
    greys = grey_small(x, side=128)
    dy, dx, peak = phase_shift(greys[1], greys[0])
    assert dy == pytest.approx(4, abs=0.6) and dx == pytest.approx(-6, abs=0.6)
    assert peak > 0.2


def test_shift_and_windowed_nearest():
    f = torch.arange(5 * 6 * 2, dtype=torch.float32).view(5, 6, 2)
    moved = shift_features(f, 1, 2)
    assert torch.equal(moved[1:, 2:], f[:-1, :-2])
    bank = torch.stack([f, f + 100])
    assert float(windowed_nearest(f, bank, radius=1).max()) == 0.0
    assert float(windowed_nearest(moved, bank, radius=0)[3, 3]) > 0
    assert is_aligned(np.array([1.0, 1.02]), np.array([2.0, 2.2]), np.array([1.0, 1.0]))
    assert not is_aligned(np.array([1.0]), np.array([1.1]), np.array([1.0]))  # the place does not matter
    assert not is_aligned(np.array([1.6]), np.array([3.0]), np.array([1.0]))  # the window misses the match


def test_refmatch_detects_alignment_for_an_object_not_for_a_texture():
    rng = np.random.default_rng(4)
    obj = ReferenceMatchingDetector(resolution=128)
    obj.fit([to_pil(bracket(rng, 128)) for _ in range(4)])
    tex = ReferenceMatchingDetector(resolution=128)
    tex.fit([to_pil(weave(rng, 128)) for _ in range(4)])
    assert obj.aligned and not tex.aligned
    assert obj.settings()["alignment"]["aligned"] is True


def test_aligned_matching_flags_a_hole_in_the_wrong_place():
    """A second hole looks like the part's own holes: position-free matching finds it normal."""
    rng = np.random.default_rng(6)
    refs = [to_pil(bracket(rng, 128)) for _ in range(4)]
    good = bracket(rng, 128)
    extra = good.copy()
    yy, xx = np.mgrid[0:128, 0:128]
    extra[np.hypot(yy - 0.80 * 128, xx - 0.30 * 128) < 0.05 * 128] = 0.14  # a hole on the lower arm
    scores = {}
    for mode in ("on", "off"):
        det = ReferenceMatchingDetector(resolution=128, align=mode)
        det.fit(refs)
        g, e = det.predict([to_pil(good), to_pil(extra)])
        scores[mode] = e.raw_score / g.raw_score
    assert scores["on"] > scores["off"]


# ---------------------------------------------------------------------------------------- augmentation rule


def test_rule_refuses_turns_for_an_oriented_part_and_accepts_them_for_a_texture():
    rng = np.random.default_rng(8)
    tex = ReferenceMatchingDetector(resolution=128, align="off")
    tex.fit([to_pil(weave(rng, 128)) for _ in range(4)])
    part = ReferenceMatchingDetector(resolution=128, align="off")
    part.fit([to_pil(bracket(rng, 128)) for _ in range(4)])
    assert "rot90" in tex.views and "rot180" in tex.views
    assert "rot90" not in part.views and "rot180" not in part.views
    assert part.augmentation is not None and "refused" in part.augmentation.reason


def test_decide_views_logic():
    base = {0: 1.0, 1: 1.0, 2: 1.0}

    def score(i, name):
        return base[i] * (3.0 if name == "rot90" else 1.02 if name else 1.0)

    d = decide_views(score, 3, ("hflip", "rot90"), tolerance=0.1)
    assert d.accepted == ("hflip",) and d.ratios["rot90"] == pytest.approx(3.0)
    assert decide_views(score, 1, ("hflip",)).accepted == ()
