"""LangChain chat models for the tool-calling agent (`agent.lc_tools.build_agent`).

    openai_chat_model("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct")   # a vLLM server

An OpenAI-compatible server becomes a `langchain_openai.ChatOpenAI`, with the same settings and
environment fallbacks as `OpenAIBrain` (`agent.brains.endpoint`: LOOKTWICE_OPENAI_BASE_URL,
LOOKTWICE_OPENAI_MODEL, LOOKTWICE_OPENAI_API_KEY). `agent.lc_tools.chat_model_for` picks the chat model
of a brain or a `--brain` spec. Tool calling must be enabled on the server; for vLLM that is
`vllm serve MODEL --enable-auto-tool-choice --tool-call-parser <parser of the model>` (hermes for
Qwen2.5), or it answers requests with tools with HTTP 400.

langchain-openai is imported only when a model is built (the `agent` extra).
"""

from __future__ import annotations

from typing import Any

from agent.brains.common import BrainError
from agent.brains.endpoint import resolve_settings

#: vLLM ignores the key unless it was started with --api-key, but the OpenAI client needs one.
NO_KEY = "EMPTY"


def openai_chat_model(
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    temperature: float = 0.0,
    max_tokens: int | None = None,
    max_retries: int = 0,
    **options: Any,
) -> Any:
    """A `ChatOpenAI` for an OpenAI-compatible chat-completions server.

    `base_url`, `model` and `api_key` fall back to LOOKTWICE_OPENAI_*; a bare host gets `/v1`. Without a
    key, the placeholder "EMPTY" is sent (OPENAI_API_KEY is never picked up, so a real OpenAI key does
    not travel to a local server). `options` go to `ChatOpenAI` unchanged. Raises `BrainError` when the
    server or the model is not given, or when langchain-openai is not installed.
    """
    url, name, key = resolve_settings(base_url, model, api_key)
    try:
        from langchain_openai import ChatOpenAI
    except ImportError:
        raise BrainError(
            "the LangChain chat model for OpenAI-compatible servers needs langchain-openai: "
            "pip install 'looktwice[agent]'"
        ) from None
    settings: dict[str, Any] = {
        "model": name,
        "base_url": url,
        "api_key": key or NO_KEY,
        "timeout": float(timeout),
        "temperature": float(temperature),
        "max_retries": int(max_retries),
    }
    if max_tokens is not None:
        settings["max_tokens"] = int(max_tokens)
    return ChatOpenAI(**{**settings, **options})


__all__ = ["NO_KEY", "openai_chat_model"]
