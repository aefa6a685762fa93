"""Registry of the pretrained checkpoints the perception tools can use, and how to find them offline.

Nothing here downloads by itself when the hub is switched off: with `HF_HUB_OFFLINE=1` (or no network)
a checkpoint that is not already on disk raises `ModelNotAvailableError`, whose one message names the
model, where it was looked for, and the command that fetches it on a machine with internet.

Names and overrides
-------------------
Each entry has a short name (`clip`, `sam`, `sam-slim`), a kind (`open_clip` or `sam`) and a default
id. A user overrides the id, in this order of precedence:

1. an explicit argument (`resolve_model("clip", "hf-hub:org/repo")`, what `--model` on the CLI passes),
2. an environment variable `LOOKTWICE_MODEL_<NAME>` (`LOOKTWICE_MODEL_CLIP`, `LOOKTWICE_MODEL_SAM_SLIM`),
3. a YAML config file `{clip: ..., sam: ...}` named by `LOOKTWICE_MODELS_FILE`, else
   `~/.config/looktwice/models.yaml` when it exists,
4. the default below.

An id is a hub id (`facebook/sam-vit-base`), a local folder (a `save_pretrained` folder for SAM, or a
folder holding `open_clip_config.json` plus weights for open_clip), or for open_clip an architecture
name with a pretrained tag written `ViT-B-16-plus-240:laion400m_e31` (tag `none` = random weights,
for tests and speed benchmarks only), `hf-hub:org/repo`, or `local-dir:/path`.

Heavy libraries (open_clip, transformers, torch) are imported only inside the loader functions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.detectors.base import DetectorError, MissingModelError

logger = logging.getLogger(__name__)

CONFIG_ENV = "LOOKTWICE_MODELS_FILE"
DEFAULT_CONFIG_FILE = Path("~/.config/looktwice/models.yaml")
RANDOM_TAG = "none"  # open_clip pretrained tag meaning "random weights" (tests, speed benchmarks)


@dataclass(frozen=True)
class ModelSpec:
    """One named checkpoint the tools know about."""

    name: str
    kind: str  # "open_clip" | "sam"
    default: str  # hub id, folder, or for open_clip "Architecture:tag"
    description: str = ""
    size: str = ""


MODELS: dict[str, ModelSpec] = {
    "clip": ModelSpec(
        "clip",
        "open_clip",
        "ViT-B-16-plus-240:laion400m_e31",
        "CLIP for WinCLIP/WinCLIP+ (240 px, 15x15 patch grid)",
        "about 0.8 GB",
    ),
    "sam": ModelSpec("sam", "sam", "facebook/sam-vit-base", "SAM ViT-B for mask refinement", "about 375 MB"),
    "sam-slim": ModelSpec(
        "sam-slim", "sam", "Zigeng/SlimSAM-uniform-77", "SlimSAM (pruned SAM), a small option", "about 39 MB"
    ),
}

# Hub repositories and weight files behind the open_clip tags we name by default; other tags are
# looked up in open_clip's own table (which imports open_clip).
_OPEN_CLIP_HUB: dict[tuple[str, str], tuple[str, str]] = {
    ("ViT-B-16-plus-240", "laion400m_e31"): (
        "timm/vit_base_patch16_plus_clip_240.laion400m_e31",
        "vit_b_16_plus_240-laion400m_e31-8fb26589.pt",
    ),
}
_OPEN_CLIP_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class ModelNotAvailableError(MissingModelError):
    """A checkpoint is not on this machine and cannot be downloaded now. `str()` says what to do."""

    def __init__(
        self, model: str, looked: list[str], fetch: str, reason: str = "", use: str = "--model / LOOKTWICE_MODEL_*"
    ) -> None:
        super().__init__(model, looked, fetch, reason)
        self.model = model
        self.looked = list(looked)
        self.fetch = fetch
        self.reason = reason
        self.use = use

    def __str__(self) -> str:
        where = "; ".join(self.looked) or "nowhere"
        why = f" ({self.reason})" if self.reason else ""
        return (
            f"model '{self.model}' is not available on this machine{why}. Looked in: {where}. "
            f"To get it, on a machine with internet run: {self.fetch} -- then copy the folder to this "
            f"machine (same cache path, or pass the folder with {self.use})."
        )


# --------------------------------------------------------------------------------------------------
# Configuration


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return True
    return False


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, following the same environment variables as huggingface_hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface"
    )
    return Path(home).expanduser() / "hub"


def open_clip_url_cache_dir() -> Path:
    """Where open_clip keeps weights it downloaded from release URLs (not from the hub)."""
    return Path("~/.cache/clip").expanduser()


def load_config_file(path: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Overrides `{name: id}` from a YAML file; `{}` when there is none. Unknown names are an error."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
        if path is None:
            default = DEFAULT_CONFIG_FILE.expanduser()
            if not default.is_file():
                return {}
            path = default
    p = Path(path).expanduser()
    if not p.is_file():
        raise DetectorError(f"model config file '{p}' does not exist")
    import yaml

    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    if not isinstance(data, Mapping):
        raise DetectorError(f"model config file '{p}' must map model names to ids, got {type(data).__name__}")
    unknown = sorted(set(data) - set(MODELS))
    if unknown:
        raise DetectorError(f"model config file '{p}': unknown names {unknown}; known: {sorted(MODELS)}")
    return {str(k): str(v) for k, v in data.items() if v}


def _env_var(name: str) -> str:
    return "LOOKTWICE_MODEL_" + name.upper().replace("-", "_")


def resolve_model(name: str, override: str | None = None, config: Mapping[str, str] | None = None) -> str:
    """The id to use for registry entry `name`: explicit override > env var > config file > default."""
    if name not in MODELS:
        raise DetectorError(f"unknown model name {name!r}; known: {sorted(MODELS)}")
    if override:
        return str(override)
    if os.environ.get(_env_var(name)):
        return os.environ[_env_var(name)]
    cfg = load_config_file() if config is None else config
    if cfg.get(name):
        return cfg[name]
    return MODELS[name].default


# --------------------------------------------------------------------------------------------------
# Availability


def hf_snapshot_file(repo_id: str, filename: str) -> Path | None:
    """A cached file of a hub repo, without importing huggingface_hub."""
    repo_dir = hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo_dir / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo_dir / "refs" / "main"
    candidates = []
    if ref.is_file():
        candidates.append(snapshots / ref.read_text().strip())
    candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for snap in candidates:
        f = snap / filename
        if f.is_file():
            return f
    return None


def hf_repo_dir(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def split_open_clip_id(model_id: str) -> tuple[str, str | None]:
    """`"Arch:tag"` -> ("Arch", "tag"); schema ids ("hf-hub:...", "local-dir:...") and paths -> (id, None)."""
    if model_id.startswith(("hf-hub:", "local-dir:")) or Path(model_id).expanduser().exists():
        return model_id, None
    if ":" in model_id:
        arch, tag = model_id.split(":", 1)
        if "/" not in arch and os.path.sep not in arch:  # "Arch:tag" or "Arch:/path/to/weights.pt"
            return arch, tag or None
    return model_id, None


def with_default_tag(model_id: str) -> str:
    """A bare architecture name gets its registry tag ("ViT-B-16-plus-240" -> "...:laion400m_e31").

    Any other bare name is an error rather than silently random weights.
    """
    arch, tag = split_open_clip_id(model_id)
    if tag is None and Path(arch).expanduser().is_file():
        raise DetectorError(
            f"open_clip weights file {arch!r}: write 'ARCH:{arch}' so the architecture is known"
        )
    if tag is not None or arch.startswith(("hf-hub:", "local-dir:")) or _is_local_path(arch):
        return model_id
    for a, t in _OPEN_CLIP_HUB:
        if a == arch:
            return f"{a}:{t}"
    raise DetectorError(
        f"open_clip model {model_id!r} needs a pretrained tag: write 'ARCH:TAG' (see "
        f"open_clip.list_pretrained_tags_by_model('{arch}')), or 'ARCH:{RANDOM_TAG}' for random weights"
    )


def _open_clip_hub_for_tag(arch: str, tag: str) -> tuple[str, str, str]:
    """(hub repo id, hub filename or '', url file name or '') for an open_clip architecture and tag."""
    if (arch, tag) in _OPEN_CLIP_HUB:
        repo, url_file = _OPEN_CLIP_HUB[(arch, tag)]
        return repo, "", url_file
    import open_clip

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    hub = cfg.get("hf_hub", "")
    # open_clip writes "org/repo/" (default file name) or "org/repo/file.bin"
    repo, filename = (hub.rstrip("/"), "") if hub.endswith("/") else os.path.split(hub)
    url = cfg.get("url", "")
    return repo, filename, os.path.basename(url) if url else ""


@dataclass
class Availability:
    """Where a checkpoint was found (or looked for) and how to get it."""

    available: bool
    location: str  # the path found, or "" when missing
    looked: list[str]
    fetch: str


def check_model(kind: str, model_id: str) -> Availability:
    """Whether `model_id` of `kind` ("open_clip" | "sam" | "llava") can be loaded without a download."""
    if kind in ("sam", "llava"):
        return _check_hf_folder_or_repo(model_id, "config.json")
    if kind == "open_clip":
        return _check_open_clip(model_id)
    raise DetectorError(f"unknown model kind {kind!r}")


def _check_hf_folder_or_repo(model_id: str, marker: str) -> Availability:
    p = Path(model_id).expanduser()
    if _is_local_path(model_id):
        ok = (p / marker).is_file() and _has_weights(p)
        fetch = f"save the model with save_pretrained('{p}') or check the path"
        return Availability(ok, str(p) if ok else "", [str(p)], fetch)
    cached = hf_snapshot_file(model_id, marker)
    fetch = f"huggingface-cli download {model_id}"
    looked = [str(hf_repo_dir(model_id))]
    ok = cached is not None and _has_weights(cached.parent)  # a config without weights = broken download
    return Availability(ok, str(cached.parent) if ok and cached else "", looked, fetch)


def _has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth"))


def _check_open_clip(model_id: str) -> Availability:
    model_id = with_default_tag(model_id)
    arch, tag = split_open_clip_id(model_id)
    if arch.startswith("local-dir:") or (tag is None and Path(arch).expanduser().is_dir()):
        folder = Path(arch.removeprefix("local-dir:")).expanduser()
        ok = (folder / "open_clip_config.json").is_file()
        return Availability(
            ok, str(folder) if ok else "", [str(folder)], "save open_clip_config.json and weights there"
        )
    if tag is None and Path(arch).expanduser().is_file():
        return Availability(True, str(Path(arch).expanduser()), [arch], "")
    if arch.startswith("hf-hub:"):
        repo = arch.removeprefix("hf-hub:")
        found = hf_snapshot_file(repo, "open_clip_config.json")
        looked = [str(hf_repo_dir(repo))]
        return Availability(
            found is not None, str(found.parent) if found else "", looked, f"huggingface-cli download {repo}"
        )
    if tag == RANDOM_TAG:  # random weights: nothing to find
        return Availability(True, "random weights", [], "")
    if tag is None:  # a path that does not exist
        return Availability(False, "", [arch], "check the path")
    if Path(tag).expanduser().is_file():  # "Arch:/path/to/weights.pt"
        return Availability(True, str(Path(tag).expanduser()), [tag], "")
    repo, filename, url_file = _open_clip_hub_for_tag(arch, tag)
    looked: list[str] = []
    if repo:
        looked.append(str(hf_repo_dir(repo)))
        names = [filename] if filename else list(_OPEN_CLIP_WEIGHT_FILES)
        for name in names:
            found = hf_snapshot_file(repo, name)
            if found is not None:
                return Availability(True, str(found), looked, "")
    if url_file:
        target = open_clip_url_cache_dir() / url_file
        looked.append(str(target))
        if target.is_file():
            return Availability(True, str(target), looked, "")
    if repo:
        fetch = (
            f"huggingface-cli download {repo} (or in Python: open_clip.create_model_and_transforms("
            f"'{arch}', pretrained='{tag}'), which fills the same cache)"
        )
    else:
        fetch = f"python -c \"import open_clip; open_clip.create_model_and_transforms('{arch}', pretrained='{tag}')\""
    return Availability(False, "", looked, fetch)


#: seconds the one hub request of `require_model` may take (LOOKTWICE_HUB_TIMEOUT overrides it)
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass
class HubProbe:
    """What one short request to the hub said about a repository."""

    reachable: bool
    exists: bool | None  # None when the hub could not be asked
    detail: str
    url: str


def hub_endpoint() -> str:
    """The hub's base URL (`HF_ENDPOINT`, as huggingface_hub reads it)."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_probe_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("LOOKTWICE_HUB_TIMEOUT", HUB_PROBE_TIMEOUT_S)))
    except ValueError:
        return HUB_PROBE_TIMEOUT_S


def probe_hub(repo_id: str, timeout: float | None = None) -> HubProbe:
    """One request for a model repository's metadata (`GET {endpoint}/api/models/{repo}`), no retry:
    whether the hub answers at all, and whether it has the repository."""
    import urllib.error
    import urllib.parse
    import urllib.request

    url = f"{hub_endpoint()}/api/models/{urllib.parse.quote(repo_id, safe='/')}"
    headers = {"User-Agent": "looktwice"}
    token = os.environ.get("HF_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    wait = hub_probe_timeout() if timeout is None else timeout
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=wait):
            return HubProbe(True, True, "found", url)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403, 404):
            return HubProbe(True, False, f"the hub answered HTTP {err.code} for {repo_id}", url)
        return HubProbe(False, None, f"the hub answered HTTP {err.code}", url)
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return HubProbe(False, None, f"{type(reason).__name__}: {reason}".strip(": "), url)


def hub_repo_for(kind: str, model_id: str) -> str | None:
    """The hub repository a checkpoint id downloads from (None when it comes from elsewhere)."""
    if kind in ("sam", "llava"):
        return model_id
    if kind == "open_clip":
        arch, tag = split_open_clip_id(with_default_tag(model_id))
        if arch.startswith("hf-hub:"):
            return arch.removeprefix("hf-hub:")
        if tag and tag != RANDOM_TAG:
            repo, _, _ = _open_clip_hub_for_tag(arch, tag)
            return repo or None
    return None


def require_model(kind: str, model_id: str, display: str | None = None, use: str | None = None) -> Availability:
    """Where the checkpoint is on this machine, or, when it is not, raise `ModelNotAvailableError` fast.

    One mechanism for every model (detectors' CLIP and SAM, the LLaVA brain): the local folder or cache
    first; then, unless `HF_HUB_OFFLINE` is set, one short request to the hub (`probe_hub`, a few
    seconds at most, no retries). A hub that does not answer, or has no such repository, ends here with
    one message (what was asked, where it was looked for, how to get it); a hub that has it lets the
    caller download as usual."""
    avail = check_model(kind, model_id)
    if avail.available:
        return avail
    name = display or model_id
    extra = {"use": use} if use else {}
    if _is_local_path(model_id):
        raise ModelNotAvailableError(name, avail.looked, avail.fetch, "the folder does not hold a model", **extra)
    if hub_offline():
        raise ModelNotAvailableError(
            name, avail.looked, avail.fetch, "HF_HUB_OFFLINE is set, so the hub was not asked", **extra
        )
    repo = hub_repo_for(kind, model_id)
    if repo is None:
        return avail  # downloaded from a release URL by its library: nothing to ask the hub
    probe = probe_hub(repo)
    if not probe.reachable:
        why = f"not on disk, and the hub did not answer ({probe.url}: {probe.detail})"
        raise ModelNotAvailableError(name, avail.looked, avail.fetch, why, **extra)
    if probe.exists is False:
        raise ModelNotAvailableError(name, avail.looked, avail.fetch, f"not on disk, and {probe.detail}", **extra)
    return avail


def _is_local_path(model_id: str) -> bool:
    return model_id.startswith(("/", ".", "~", "local-dir:")) or Path(model_id).expanduser().exists()


# --------------------------------------------------------------------------------------------------
# Loaders


@dataclass
class OpenClipBundle:
    """A loaded open_clip model with what WinCLIP needs around it."""

    model: Any  # open_clip.CLIP
    tokenizer: Any
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    model_id: str


def load_open_clip(model: str | None = None, device: str = "cpu", precision: str = "fp32") -> OpenClipBundle:
    """Load an open_clip model by registry override, "Arch:tag", "hf-hub:...", "local-dir:..." or folder.

    Raises `ModelNotAvailableError` when the weights are not on disk and the hub is offline.
    """
    model_id = with_default_tag(resolve_model("clip", model))
    arch, tag = split_open_clip_id(model_id)
    if tag is None and Path(arch).expanduser().is_dir():
        arch = "local-dir:" + str(Path(arch).expanduser())
    require_model("open_clip", model_id)
    import open_clip

    kwargs: dict[str, Any] = {"device": device, "precision": precision}
    if arch.startswith(("hf-hub:", "local-dir:")):
        name, pretrained = arch, None
    else:
        name = arch
        if tag == RANDOM_TAG:
            pretrained = None
            logger.warning("open_clip model %s built with RANDOM weights (tag %r)", arch, tag)
        else:
            pretrained = tag
    try:
        import torch

        with torch.random.fork_rng(devices=[]):
            if pretrained is None:
                torch.manual_seed(0)  # random weights (tests, speed runs): the same ones every time
            clip_model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained, **kwargs
            )
        tokenizer = open_clip.get_tokenizer(name)
    except ModelNotAvailableError:
        raise
    except Exception as e:
        avail = check_model("open_clip", model_id)
        if not avail.available:
            raise ModelNotAvailableError(
                model_id, avail.looked, avail.fetch, f"{type(e).__name__}: {e}"
            ) from e
        raise
    clip_model.eval()
    visual = clip_model.visual
    size = visual.image_size if isinstance(visual.image_size, tuple) else (visual.image_size,) * 2
    pcfg = getattr(visual, "preprocess_cfg", {}) or {}
    mean = tuple(pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(pcfg.get("std", open_clip.OPENAI_DATASET_STD))
    del preprocess
    return OpenClipBundle(clip_model, tokenizer, (int(size[0]), int(size[1])), mean, std, model_id)


def load_sam(model: str | None = None, device: str = "cpu", name: str = "sam") -> tuple[Any, Any]:
    """(SamModel, SamProcessor) from a hub id or a `save_pretrained` folder, offline-aware."""
    model_id = resolve_model(name, model)
    require_model("sam", model_id)
    from transformers import SamModel, SamProcessor

    local = _is_local_path(model_id)
    try:
        sam = SamModel.from_pretrained(model_id, local_files_only=local or hub_offline())
        processor = SamProcessor.from_pretrained(model_id, local_files_only=local or hub_offline())
    except Exception as e:  # no network: OSError or a hub error, depending on the versions
        avail = check_model("sam", model_id)
        if avail.available:
            raise
        raise ModelNotAvailableError(model_id, avail.looked, avail.fetch, f"{type(e).__name__}: {e}") from e
    return sam.to(device).eval(), processor
