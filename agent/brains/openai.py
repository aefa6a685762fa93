"""OpenAIBrain: any OpenAI-compatible chat endpoint (a vLLM server first of all) as a brain.

Plain HTTP with the standard library (no `openai` package): `POST {base_url}/chat/completions` with
the image as a base64 data URL in the first user turn and the measured evidence as text. Settings come
from the arguments or, when not given, from the LOOKTWICE_OPENAI_* variables (`agent.brains.endpoint`).

Every failure (refused connection, timeout, HTTP error status, a body that is not the OpenAI format)
raises `BrainError` with one line naming the server and what went wrong; the loop catches it and falls
back to the tool evidence. A text-only model (the server answers HTTP 400 "... is not a multimodal
model", as vLLM does) is asked again without the image, and the brain stops sending images to it; the
evidence text still goes with every request (`last_call["image_dropped"]` says why).

What is sent: the inspected image first; the second look's crops only when `send_views` is on
(`--brain 'openai:<url>#<model>?views=on'`): a LookTwice model served by vLLM with the plugin was trained
on one image of the part, and its expert's tokens follow every image of a request. P(Yes) sends the
image and the detection question of `prompts/agent.yaml` alone, as training did: no evidence from the
detector, whose verdict the model would only repeat.

`chat_model()` gives the same server as a LangChain chat model (`agent.lc_models`), for the
tool-calling agent of `agent.lc_tools.build_agent`.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from typing import Any, ClassVar

from PIL import Image

from agent.brains.abilities import DrivesTools, JudgesDefects, ProposesRules, ReportsModelCalls, SeesImages
from agent.brains.base import Brain
from agent.brains.common import (
    BrainError,
    ImageMemory,
    ViewMemory,
    evidence_text,
    image_data_url,
    yes_no_share,
)
from agent.brains.endpoint import resolve_settings
from prompts import load_prompts
from tools.record import InspectionRecord

#: HTTP 400 messages that say the model takes no images (vLLM; OpenAI-style servers).
_NO_IMAGES = re.compile(
    r"not a multimodal model|image_url is only supported|does not support (image|vision)|"
    r"image input is not supported",
    re.IGNORECASE,
)


class OpenAIBrain(Brain, SeesImages, JudgesDefects, ProposesRules, DrivesTools, ReportsModelCalls):
    """Explanations and answers from an OpenAI-compatible chat-completions server."""

    name: ClassVar[str] = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_tokens: int = 256,
        temperature: float = 0.0,
        send_image: bool = True,
        prompts: str = "agent",
        send_views: bool = False,
    ) -> None:
        self.base_url, self.model, self.api_key = resolve_settings(base_url, model, api_key)
        self.timeout = float(timeout)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.send_image = send_image
        self.send_views = bool(send_views)
        self.prompt_name = prompts
        self.t: dict[str, Any] = load_prompts(prompts)
        self.images = ImageMemory()
        self.views = ViewMemory()
        self.last_call: dict[str, Any] = {}
        self._url_cache: tuple[Image.Image, str] | None = None
        self._labels: list[str] = []  # the images of the request being built, by what they show
        self.image_dropped: str | None = None  # why the server refused images (then none are sent)

    def settings(self) -> dict[str, Any]:
        return {
            "brain": self.name,
            "base_url": self.base_url,
            "model": self.model,
            "prompts": self.prompt_name,
            "views": self.send_views,
        }

    def use_image(self, path: str, image: Image.Image) -> None:
        """Hand over the image of `path`, so it is not read again from disk."""
        self.images.put(str(path), image)

    def use_views(self, path: str, views: Any) -> None:
        """The second look's labelled crops for `path`; sent after the whole image."""
        self.views.put(str(path), views)

    def chat_model(self, **options: Any) -> Any:
        """This server and model as a LangChain `ChatOpenAI` (tool calling; needs the `agent` extra)."""
        from agent.lc_models import openai_chat_model

        settings = {"timeout": self.timeout, "temperature": self.temperature, "max_tokens": self.max_tokens}
        return openai_chat_model(self.base_url, self.model, self.api_key, **{**settings, **options})

    # ------------------------------------------------------------------------------------------------
    # HTTP

    def complete(self, messages: list[dict[str, Any]], **options: Any) -> str:
        """One chat completion; returns the first choice's text. Raises `BrainError` on any failure.

        When the server refuses images (a text-only model), the request is sent again without them
        and no image is sent from then on."""
        return self.complete_choice(messages, **options)["message"]["content"].strip()

    def complete_choice(self, messages: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
        """The first choice of one chat completion (its message, and `logprobs` when asked for)."""
        sent = list(self._labels) if _has_images(messages) else []
        try:
            choice = self._complete(messages, dict(options))
        except _ImagesRefused as refused:
            self.send_image = False
            self.image_dropped = refused.detail
            choice = self._complete(_text_only(messages), dict(options))
            self.last_call["image_dropped"] = refused.detail
            sent = []
        self.last_call["images_sent"] = sent
        return choice

    def _complete(self, messages: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any]:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": options.pop("max_tokens", self.max_tokens),
            "temperature": options.pop("temperature", self.temperature),
            **options,
        }
        url = f"{self.base_url}/chat/completions"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(
            url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST"
        )
        t0 = time.perf_counter()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = _error_detail(err)
            if err.code == 400 and _NO_IMAGES.search(detail) and _has_images(messages):
                raise _ImagesRefused(detail) from None
            raise BrainError(f"{url} answered HTTP {err.code}{': ' + detail if detail else ''}") from None
        except TimeoutError:
            raise BrainError(f"{url} did not answer within {self.timeout:g} s") from None
        except urllib.error.URLError as err:
            reason = err.reason
            if isinstance(reason, TimeoutError):
                raise BrainError(f"{url} did not answer within {self.timeout:g} s") from None
            raise BrainError(f"cannot reach {url}: {_one_line(str(reason))}") from None
        except (ConnectionError, OSError) as err:
            raise BrainError(f"cannot reach {url}: {_one_line(str(err))}") from None
        try:
            data = json.loads(raw.decode("utf-8"))
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise BrainError(
                f"{url} did not answer with JSON: {_one_line(raw[:120].decode('utf-8', 'replace'))}"
            ) from None
        except (KeyError, IndexError, TypeError):
            raise BrainError(f"{url} answered JSON without choices[0].message.content") from None
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise BrainError(f"{url} answered a non-text message content ({type(content).__name__})")
        self.last_call = {
            "url": url,
            "model": self.model,
            "seconds": round(time.perf_counter() - t0, 4),
            "usage": data.get("usage") if isinstance(data, dict) else None,
        }
        return {**choice, "message": {**choice["message"], "content": content}}

    # ------------------------------------------------------------------------------------------------
    # messages

    def _data_url(self, image: Image.Image) -> str:
        """The image's data URL, encoded once per image object (a chat sends it with every request)."""
        if self._url_cache is None or self._url_cache[0] is not image:
            self._url_cache = (image, image_data_url(image))
        return self._url_cache[1]

    def _user_content(
        self, record: InspectionRecord | None, text: str, views: bool = True
    ) -> list[dict[str, Any]] | str:
        image = self.images.get(record.image_path) if (record is not None and self.send_image) else None
        if image is None:
            return text
        extra = self.views.get(record.image_path) if (views and self.send_views and record is not None) else []
        parts: list[dict[str, Any]] = [
            {"type": "text", "text": self.t["view_intro"].format(n=1, label="the whole image")},
            {"type": "image_url", "image_url": {"url": self._data_url(image)}},
        ]
        self._labels = ["the whole image"] + [label for label, _ in extra]
        if not extra:  # one image, as in training: the image, then the text
            parts = parts[1:]
        for n, (label, view) in enumerate(extra, start=2):
            parts.append({"type": "text", "text": self.t["view_intro"].format(n=n, label=label)})
            parts.append({"type": "image_url", "image_url": {"url": image_data_url(view, max_side=512)}})
        parts.append({"type": "text", "text": text})
        return parts

    def messages_for(
        self, record: InspectionRecord, request: str, history: list[tuple[str, str]] | None = None
    ) -> list[dict[str, Any]]:
        """System prompt, then (image + evidence + first question), earlier turns, the new request."""
        evidence = evidence_text(record, self.t, self.show_verdict)
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.t["system"].strip()}]
        turns = list(history or []) + [(request, "")]
        for i, (user, assistant) in enumerate(turns):
            text = f"{evidence}\n\n{user}" if i == 0 else user
            messages.append({"role": "user", "content": self._user_content(record, text) if i == 0 else text})
            if assistant:
                messages.append({"role": "assistant", "content": assistant})
        return messages

    # ------------------------------------------------------------------------------------------------
    # the interface

    def explain(self, record: InspectionRecord) -> str:
        return self.complete(self.messages_for(record, self.t["explain"].strip()))

    def answer(
        self, question: str, record: InspectionRecord, history: list[tuple[str, str]] | None = None
    ) -> str:
        request = f"{self.t['answer_prefix'].strip()}\n{question}" if not history else question
        return self.complete(self.messages_for(record, request, history))

    def p_yes(self, record: InspectionRecord) -> tuple[float, str]:
        """P(Yes) to the detection question from the first token's `top_logprobs` (vLLM returns them);
        from the parsed answer when the server gives none (1, 0, or 0.5 when it is neither). The request
        holds the image and the question only, with the training system prompt."""
        from agent.mllm.chat_format import DEFAULT_SYSTEM
        from instruct_data.answers import parse_yes_no

        messages = [
            {"role": "system", "content": DEFAULT_SYSTEM},
            {"role": "user", "content": self._user_content(record, self.t["detection"].strip(), views=False)},
        ]
        choice = self.complete_choice(messages, max_tokens=4, logprobs=True, top_logprobs=20)
        content = (choice.get("logprobs") or {}).get("content") or []
        if content and isinstance(content[0], dict):
            share = yes_no_share(content[0].get("top_logprobs") or [])
            if share is not None:
                return float(share), "logprobs"
        parsed = parse_yes_no(choice["message"]["content"])
        return (0.5 if parsed is None else float(parsed)), "parsed answer"

    def propose_rules(self, components_text: str) -> str:
        """Raw model text for the rule-proposal prompt (the loop parses and validates it)."""
        return self.complete(self.rule_messages(components_text))

    def repair_rules(self, components_text: str, previous: str, error: str) -> str:
        messages = self.rule_messages(components_text)
        messages.append({"role": "assistant", "content": previous})
        messages.append({"role": "user", "content": self.t["rules_repair"].format(error=error)})
        return self.complete(messages)

    def chat_text(self, prompt: str, history: list[tuple[str, str]] | None = None) -> str:
        """A text-only chat: system prompt, earlier (user, assistant) turns, then `prompt`."""
        messages: list[dict[str, Any]] = [{"role": "system", "content": self.t["system"].strip()}]
        for user, assistant in history or []:
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": prompt})
        return self.complete(messages)

    def rule_messages(self, components_text: str) -> list[dict[str, Any]]:
        return [
            {"role": "system", "content": self.t["system"].strip()},
            {"role": "user", "content": self.t["rules"].format(components=components_text)},
        ]


class _ImagesRefused(Exception):
    """The server answered HTTP 400 because the model takes no images."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _has_images(messages: list[dict[str, Any]]) -> bool:
    return any(
        isinstance(m.get("content"), list)
        and any(isinstance(p, dict) and p.get("type") == "image_url" for p in m["content"])
        for m in messages
    )


def _text_only(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages with every image part removed, and the label before each image with it (a content
    list of text parts becomes one string)."""
    out = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            parts = [p for p in content if isinstance(p, dict)]
            texts = [
                p.get("text", "") for i, p in enumerate(parts)
                if p.get("type") == "text" and not (i + 1 < len(parts) and parts[i + 1].get("type") == "image_url")
            ]
            m = {**m, "content": "\n".join(texts)}
        out.append(m)
    return out


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the status code alone is still a useful message
        return _one_line(err.reason or "")
    try:
        data = json.loads(raw)
        if isinstance(data, dict):
            inner = data.get("error", data)
            msg = inner.get("message") if isinstance(inner, dict) else inner
            if msg:
                return _one_line(str(msg))
    except json.JSONDecodeError:
        pass
    return _one_line(raw or str(err.reason or ""))
