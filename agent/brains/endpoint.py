"""Where an OpenAI-compatible server is (a vLLM server first of all): base URL, model and key, from the
arguments or, when not given, from the environment.

    LOOKTWICE_OPENAI_BASE_URL   e.g. http://127.0.0.1:8000/v1 (a bare host gets /v1 appended)
    LOOKTWICE_OPENAI_MODEL      the served model name (`vllm serve <model>`)
    LOOKTWICE_OPENAI_API_KEY    sent as a Bearer token when set (vLLM's --api-key)

Why its own module: the brain (`agent.brains.openai`) and the LangChain chat model (`agent.lc_models`)
reach the same server the same way, and neither needs the other for it.
"""

from __future__ import annotations

import os
import urllib.parse

from agent.brains.common import BrainError

ENV_BASE_URL = "LOOKTWICE_OPENAI_BASE_URL"
ENV_MODEL = "LOOKTWICE_OPENAI_MODEL"
ENV_API_KEY = "LOOKTWICE_OPENAI_API_KEY"


def resolve_settings(
    base_url: str | None = None, model: str | None = None, api_key: str | None = None
) -> tuple[str, str, str | None]:
    """`(base_url, model, api_key)` from the arguments, else from the LOOKTWICE_OPENAI_* variables;
    raises `BrainError` when the URL or the model is missing or the URL is malformed."""
    url = base_url or os.environ.get(ENV_BASE_URL)
    if not url:
        raise BrainError(
            f"no OpenAI-compatible server given: use openai:<base-url>#<model> or set {ENV_BASE_URL}"
        )
    url = normalize_base_url(url)
    name = model or os.environ.get(ENV_MODEL) or ""
    if not name:
        raise BrainError(f"no model name for {url}: use openai:<base-url>#<model> or set {ENV_MODEL}")
    key = api_key if api_key is not None else os.environ.get(ENV_API_KEY)
    return url, name, key


def normalize_base_url(url: str) -> str:
    """`http://host:8000` -> `http://host:8000/v1`; a URL with a path is kept (minus a trailing '/')."""
    url = url.strip()
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise BrainError(f"invalid OpenAI base URL {url!r}: expected http(s)://host[:port][/v1]")
    path = parsed.path.rstrip("/")
    if not path:
        path = "/v1"
    return urllib.parse.urlunparse((parsed.scheme, parsed.netloc, path, "", "", ""))


__all__ = ["ENV_API_KEY", "ENV_BASE_URL", "ENV_MODEL", "normalize_base_url", "resolve_settings"]
