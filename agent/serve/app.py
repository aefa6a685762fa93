"""The gradio UI of `looktwice serve`: upload an image and good references, ask, see the evidence.

Only layout and plumbing live here; every decision is made by `agent.serve.session` (plain Python).
Why it looks like this:

- Each browser tab gets its own `ChatSession` in a `gr.State` (created on its first action, deleted
  with its folder when gradio drops the tab's state), never a module-level object: two users never
  share a conversation, an image or a folder.
- Handlers never raise: a user mistake becomes one "Error: ..." line in the chat, anything unexpected
  one line too (the traceback goes to the server log only).
- Offline: analytics and the version check are off, no share link, no SSR server, no API page; the
  default theme's fonts are served by gradio itself. Gradio's upload cache is pointed inside the work
  folder (`GRADIO_TEMP_DIR`, read by gradio when components are made), so nothing is written outside it.
- Pictures go to the browser as PIL images (gradio copies them to its cache), so the work folder is
  never exposed through `allowed_paths`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from PIL import Image

from agent.serve.session import (
    IMAGE_KINDS,
    REGION_HEADERS,
    ChatSession,
    Engine,
    ServeLimits,
    SessionError,
    one_line,
)

logger = logging.getLogger("looktwice.serve")

INSTALL_HINT = 'pip install "looktwice[serve]"'
DISPLAY_SIDE = 1280  # long side of pictures sent to the browser (the files keep full resolution)
SESSION_TTL_S = 6 * 3600  # a tab's state (and folder) is dropped this long after its last action
CACHE_CLEANUP = (1800, 6 * 3600)  # gradio deletes its cached files older than 6 h, every 30 min

EXAMPLE_QUESTION = "Is there any defect in this image?"

CSS = """
#chat { min-height: 360px; }
#status, #verdict { font-size: 0.95em; }
#regions { --font-mono: var(--font); }
#regions th span { font-size: var(--text-sm); }
"""


class ServeDependencyError(RuntimeError):
    """gradio is not installed; the message says how to install it."""


def gradio_cache_dir(workdir: str | Path) -> Path:
    """Where gradio keeps uploads and the pictures it sends: inside the work folder."""
    return Path(workdir) / "gradio-cache"


def import_gradio(workdir: str | Path | None = None) -> ModuleType:
    """gradio, with analytics off and (given `workdir`) its cache inside `workdir`: both are read from the
    environment, partly when gradio is first imported, so call this before anything imports gradio.
    Raises `ServeDependencyError`, naming the `serve` extra, when gradio is missing."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    if workdir is not None:
        cache = gradio_cache_dir(workdir)
        cache.mkdir(parents=True, exist_ok=True)
        os.environ["GRADIO_TEMP_DIR"] = str(cache.resolve())
    try:
        import gradio
    except ImportError as err:
        raise ServeDependencyError(
            f"the web chat needs gradio, which is not installed ({err}); install it with: {INSTALL_HINT}"
        ) from None
    return gradio


def _display(image: Image.Image | None) -> Image.Image | None:
    """A copy small enough to send to the browser."""
    if image is None:
        return None
    if max(image.size) <= DISPLAY_SIDE:
        return image
    small = image.copy()
    small.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
    return small


def _upload_path(upload: Any) -> str | None:
    """gradio hands a file as a path string (or an object with `.name`/`.path`); None when cleared."""
    if upload is None:
        return None
    for attr in ("path", "name"):
        if not isinstance(upload, str) and hasattr(upload, attr):
            return str(getattr(upload, attr))
    return str(upload)


def _status(session: ChatSession) -> str:
    """The line under the uploads: what the next answer is about."""
    image = (
        f"Image: `{session.image_name}` ({session.image.width}x{session.image.height})"
        if session.image is not None
        else f"No image yet: upload one ({IMAGE_KINDS})."
    )
    return f"{image}  \n{session.references_line()}"


def _guarded(
    session: ChatSession, action: Callable[[], Any], question: str | None = None
) -> tuple[Any, str | None]:
    """Run `action`; a `SessionError` or any other failure becomes one error line in the chat."""
    try:
        return action(), None
    except SessionError as err:
        message = str(err)
    except Exception as err:  # noqa: BLE001 - the UI shows one line, the log keeps the traceback
        logger.exception("session %s: %s failed", session.id, getattr(action, "__name__", "action"))
        message = one_line(f"internal error ({type(err).__name__}: {err}); see the server log")
    session.add_error(message, question)
    return None, message


def _picture(gr: ModuleType, label: str, height: int, buttons: list[str], elem_id: str) -> Any:
    """A read-only image pane (PIL in, PNG to the browser): the current image and the overlay."""
    return gr.Image(
        label=label, type="pil", format="png", interactive=False, height=height, buttons=buttons, elem_id=elem_id
    )


def build_app(
    engine: Engine,
    workdir: str | Path,
    limits: ServeLimits | None = None,
    title: str = "LookTwice: ask about a part",
) -> Any:
    """The `gr.Blocks` app over `engine`; sessions live in `<workdir>/session-<id>/`.

    Points gradio's cache inside `workdir` (`import_gradio`) before any component is made.
    """
    workdir = Path(workdir)
    limits = limits or ServeLimits()
    workdir.mkdir(parents=True, exist_ok=True)
    gr = import_gradio(workdir)

    def session_of(state: ChatSession | None) -> ChatSession:
        return state if state is not None and not state.closed else ChatSession(engine, workdir, limits)

    def close_session(state: ChatSession | None) -> None:
        if state is not None:
            state.close()

    def on_image(upload: Any, state: ChatSession | None) -> tuple[Any, ...]:
        """Take the upload; the drop zone is emptied again (the preview shows the current image)."""
        session = session_of(state)
        path = _upload_path(upload)
        if path is not None:
            _guarded(session, lambda: session.set_image(path))
        return session, list(session.messages), _display(session.image), _status(session), None

    def on_references(uploads: Any, state: ChatSession | None) -> tuple[Any, ...]:
        """Take the uploads as the references; a refused set is removed from the drop zone."""
        session = session_of(state)
        paths = [p for p in (_upload_path(u) for u in (uploads or [])) if p]
        _, error = _guarded(session, lambda: session.set_references(paths))
        return session, list(session.messages), _status(session), (None if error else gr.skip())

    def on_feedback(label: str, state: ChatSession | None) -> tuple[Any, ...]:
        """A person's verdict on the current image (see `ChatSession.feedback`)."""
        session = session_of(state)
        _guarded(session, lambda: session.feedback(label))
        return session, list(session.messages), _status(session)

    def on_clear(state: ChatSession | None) -> tuple[Any, ...]:
        session = session_of(state)
        session.clear_chat()
        return session, list(session.messages)

    def on_question(question: str, state: ChatSession | None) -> tuple[Any, ...]:
        """Show the question at once; the answer follows in `on_answer`."""
        session = session_of(state)
        q = str(question or "").strip()
        shown = list(session.messages) + ([{"role": "user", "content": q}] if q else [])
        return session, shown, "", q

    def on_answer(question: str, state: ChatSession | None) -> tuple[Any, ...]:
        session = session_of(state)
        reply, _ = _guarded(session, lambda: session.ask(question), question=question or None)
        if reply is None:
            return session, list(session.messages), gr.skip(), gr.skip(), gr.skip()
        overlay = None
        if reply.overlay is not None and reply.overlay.is_file():
            with Image.open(reply.overlay) as im:  # our own PNG, written by this session
                overlay = _display(im.convert("RGB"))
        verdict = f"**Verdict:** {reply.verdict}" + "".join(f"  \n_note: {n}_" for n in reply.notes)
        table = {"headers": list(REGION_HEADERS), "data": reply.rows}
        return session, list(session.messages), overlay, table, verdict

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=CACHE_CLEANUP) as app:
        state = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=close_session)
        gr.Markdown(
            f"## {title}\nUpload an image of a part and, for a better check, a few images of good parts; "
            "then ask, e.g. *Is there any defect in this image? Where is it? How big is it? What could "
            "cause it?* The part is inspected once; follow-up questions reuse that inspection."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=300):  # what is inspected
                image_in = gr.File(
                    label=f"Image to inspect ({IMAGE_KINDS})", height=160, elem_id="image-upload"
                )
                refs_in = gr.File(
                    label=f"Good references (optional, up to {limits.max_references})",
                    file_count="multiple",
                    height=170,
                    elem_id="refs-upload",
                )
                status = gr.Markdown(f"No image yet: upload one ({IMAGE_KINDS}).", elem_id="status")
                preview = _picture(gr, "Current image", 220, ["fullscreen"], "preview")
            with gr.Column(scale=4, min_width=360):  # the conversation
                chat = gr.Chatbot(
                    label="Conversation", height=470, buttons=["copy", "copy_all"], elem_id="chat"
                )
                with gr.Row(equal_height=True):
                    question = gr.Textbox(
                        placeholder=f"Ask, e.g. {EXAMPLE_QUESTION}",
                        show_label=False,
                        max_length=limits.max_question_chars,
                        scale=5,
                        elem_id="question",
                    )
                    ask = gr.Button("Ask", variant="primary", scale=1, min_width=80, elem_id="ask")
                verdict = gr.Markdown("", elem_id="verdict")
                with gr.Row(equal_height=True):
                    mark_good = gr.Button("It is good (false alarm)", size="sm", elem_id="mark-good")
                    mark_bad = gr.Button("It is defective (missed)", size="sm", elem_id="mark-defective")
            with gr.Column(scale=4, min_width=360):  # the evidence behind the last answer
                overlay = _picture(
                    gr, "Overlay: heat above the review band, numbered outlines, verdict", 400, ["download", "fullscreen"], "overlay"
                )
                regions = gr.Dataframe(
                    headers=list(REGION_HEADERS),
                    label="Regions (#: the number on the overlay and in the answer; bbox: x0, y0, x1, y1 in pixels; "
                    "score: mean anomaly score inside)",
                    interactive=False,
                    wrap=True,
                    column_widths=["7%", "18%", "19%", "26%", "14%", "16%"],
                    max_height=260,
                    elem_id="regions",
                )
        pending = gr.State("")

        common: dict[str, Any] = {"api_visibility": "private"}
        image_in.upload(on_image, [image_in, state], [state, chat, preview, status, image_in], **common)
        refs_in.upload(on_references, [refs_in, state], [state, chat, status, refs_in], **common)
        refs_in.clear(on_references, [refs_in, state], [state, chat, status, refs_in], **common)
        chat.clear(on_clear, [state], [state, chat], **common)
        good_label, bad_label = gr.State("good"), gr.State("defective")
        mark_good.click(on_feedback, [good_label, state], [state, chat, status], **common)
        mark_bad.click(on_feedback, [bad_label, state], [state, chat, status], **common)
        for trigger in (ask.click, question.submit):
            trigger(on_question, [question, state], [state, chat, question, pending], **common).then(
                on_answer, [pending, state], [state, chat, overlay, regions, verdict], **common
            )
    return app


def launch(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 7860,
    limits: ServeLimits | None = None,
    block: bool = True,
    quiet: bool = False,
) -> Any:
    """Serve `app` on host:port, offline: no share link, no analytics, no SSR, no API page; uploads over
    the limit are refused by gradio before they are stored. `block=False` returns once it is up."""
    limits = limits or ServeLimits()
    app.queue(default_concurrency_limit=4, max_size=64)
    app.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=not block,
        show_error=False,
        quiet=quiet,
        max_file_size=limits.max_upload_bytes,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        run_history=False,
        footer_links=[],
        css=CSS,
    )
    return app


__all__ = ["ServeDependencyError", "build_app", "gradio_cache_dir", "import_gradio", "launch"]
