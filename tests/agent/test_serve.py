"""`looktwice serve`: the plain-Python sessions (uploads, limits, history, isolation, files), the tiny
LLaVA brain through a session, and the real web app driven in headless Chromium with Playwright."""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from agent.commands import serve
from agent.serve.session import (
    REGION_HEADERS,
    ChatSession,
    Engine,
    ServeLimits,
    SessionError,
    UploadError,
)
from tests.agent import agent_case as case

#: gradio's own event-timing table (local, for progress estimates) trips pandas 3 deprecations
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

FAST = ["--resolution", "96"]
QUESTION = "Is there any defect in this image?"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="looktwice")
    serve.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["serve", *argv])


def snapshot(root: Path, skip: Path) -> set[str]:
    """Every path under `root` except inside `skip`: what a session must not change."""
    return {str(p) for p in root.rglob("*") if skip not in p.parents and p != skip}


def one_line(text: str) -> bool:
    return "\n" not in text and "Traceback" not in text and 0 < len(text) <= 400


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Any]:
    found = case.write_case(tmp_path_factory.mktemp("serve_case"))
    found["ref_list"] = sorted(found["refs"].glob("*.png"))
    return found


@pytest.fixture(scope="module")
def engine() -> Engine:
    """The engine `looktwice serve --resolution 96` builds: RuleBrain, refmatch, no default references."""
    built = serve.build_engine(parse(FAST))
    notes = built.warm_up()
    assert any("zero-shot" in n for n in notes)  # no --refs: the fallback is announced
    return built


# ---------------------------------------------------------------------------------------------- sessions


def test_session_answers_with_overlay_regions_and_history(engine, files, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("x")
    workdir = tmp_path / "work"
    before = snapshot(tmp_path, workdir)
    session = ChatSession(engine, workdir)
    assert session.folder.parent == workdir and session.folder.name == f"session-{session.id}"

    assert "scratch.png" in session.set_image(files["scratch"])
    assert "2 uploaded" in session.set_references(files["ref_list"])
    reply = session.ask(QUESTION)
    assert reply.answer.startswith("Yes")
    assert reply.verdict.startswith("defective") and "brain rule" in reply.verdict
    assert reply.overlay is not None and reply.overlay.is_file()
    assert session.folder in reply.overlay.parents
    with Image.open(reply.overlay) as im:
        assert im.size == (case.SIZE, case.SIZE)
    assert reply.rows and all(len(row) == len(REGION_HEADERS) for row in reply.rows)
    first = reply.rows[0]
    assert first[0] == 1 and isinstance(first[1], str) and first[2] and first[3].count(",") == 3 and first[4] > 0
    assert [row[0] for row in reply.rows] == [r.number for r in session.conversation.record.regions]

    record = session.conversation.record
    follow = session.ask("Where is it?")
    assert session.conversation.record is record  # the inspection is reused, not run again
    assert follow.answer and follow.overlay == reply.overlay
    assert [q for q, _ in session.history] == [QUESTION, "Where is it?"]
    roles = [m["role"] for m in session.messages]
    assert roles == ["assistant", "assistant", "user", "assistant", "user", "assistant"]

    # decoded copies of the uploads (not the uploads themselves) live in the session folder
    assert (session.folder / "image-1.png").is_file()
    assert len(list(session.folder.glob("references-*/ref-*.png"))) == 2
    assert snapshot(tmp_path, workdir) == before  # nothing written outside the work folder
    session.close()
    assert not session.folder.exists()


def test_new_references_or_image_inspect_again(engine, files, tmp_path):
    session = ChatSession(engine, tmp_path)
    session.set_image(files["scratch"])
    zero_shot = session.ask(QUESTION)
    assert any("zero-shot" in n for n in zero_shot.notes)  # no references anywhere: said so
    assert "selfsim" in zero_shot.verdict
    session.set_references(files["ref_list"])
    with_refs = session.ask(QUESTION)
    assert "refmatch" in with_refs.verdict and session.history == [(QUESTION, with_refs.answer)]
    session.set_image(files["good"])
    good = session.ask(QUESTION)
    assert good.answer.startswith("No") and good.rows == [] and good.verdict.startswith("good")
    stem = session.image_path.stem
    outputs = sorted(p.name for p in (session.folder / "outputs").iterdir())
    assert outputs and all(name.startswith(f"{stem}.") or name.startswith(f"{stem}_") for name in outputs)
    assert sorted(p.name for p in session.folder.glob("image-*")) == [f"{stem}.png"]  # one of each
    session.clear_chat()
    assert session.messages == [] and session.history == []
    assert session.ask("How big is it?").answer  # the inspection is kept


def test_bad_images_give_one_line_errors(engine, files, tmp_path):
    session = ChatSession(engine, tmp_path)
    text_png = tmp_path / "notes.png"
    text_png.write_text("this is a text file, not a PNG\n" * 20)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(files["scratch"].read_bytes()[:200])
    cases = {
        text_png: "not an image",
        empty: "empty file",
        truncated: "truncated or corrupt",
        tmp_path / "gone.png": "could not be read",
    }
    for path, words in cases.items():
        with pytest.raises(UploadError) as err:
            session.set_image(path)
        message = str(err.value)
        assert one_line(message) and words in message and path.name in message
        assert str(tmp_path) not in message  # server paths are not shown to users
    with pytest.raises(UploadError, match="reference 'notes.png'"):
        session.set_references([files["ref_list"][0], text_png])
    assert session.image is None and session.references == []  # nothing half-taken
    with pytest.raises(SessionError, match="upload an image first"):
        session.ask(QUESTION)
    session.add_error("the image 'x.png' cannot be used: not an image", question="Is it ok?")
    assert session.messages[-2:] == [
        {"role": "user", "content": "Is it ok?"},
        {"role": "assistant", "content": "Error: the image 'x.png' cannot be used: not an image"},
    ]


def test_upload_and_question_limits(engine, files, tmp_path):
    size = files["scratch"].stat().st_size
    small = ChatSession(engine, tmp_path, ServeLimits(max_upload_bytes=size - 1))
    with pytest.raises(UploadError, match=r"scratch.png' is 0.0 MB; the limit is"):
        small.set_image(files["scratch"])
    few_pixels = ChatSession(engine, tmp_path, ServeLimits(max_pixels=50 * 50))
    with pytest.raises(UploadError, match="image too large: 96x96") as err:
        few_pixels.set_image(files["scratch"])
    assert one_line(str(err.value))
    capped = ChatSession(engine, tmp_path, ServeLimits(max_references=1, max_question_chars=20, max_turns=1))
    with pytest.raises(UploadError, match="2 references uploaded; at most 1 per session"):
        capped.set_references(files["ref_list"])
    capped.set_image(files["scratch"])
    with pytest.raises(SessionError, match="type a question first"):
        capped.ask("   ")
    with pytest.raises(SessionError, match="the limit is 20"):
        capped.ask("x" * 21)
    capped.ask("Any defect?")
    with pytest.raises(SessionError, match="upload it again"):
        capped.ask("Where?")


def test_sessions_are_separate(engine, files, tmp_path):
    a, b = ChatSession(engine, tmp_path), ChatSession(engine, tmp_path)
    assert a.id != b.id and a.folder != b.folder and a.folder.parent == b.folder.parent == tmp_path
    a.set_image(files["scratch"])
    a.set_references(files["ref_list"])
    a.ask(QUESTION)
    assert b.messages == [] and b.history == [] and b.image is None and b.references == []
    with pytest.raises(SessionError, match="upload an image first"):
        b.ask(QUESTION)  # b does not see a's image
    b.set_image(files["good"])
    b.ask("How many marks?")
    assert [q for q, _ in a.history] == [QUESTION] and [q for q, _ in b.history] == ["How many marks?"]
    assert not any(b.folder in p.parents for p in a.folder.rglob("*"))
    b.close()
    assert a.folder.is_dir() and not b.folder.exists()
    assert a.ask("Where is it?").answer  # closing b leaves a alone


def test_engine_fits_once_per_reference_set(files):
    built: list[int] = []

    def make_loop(references, warn):
        built.append(len(references))
        warn("fitted")
        return object()

    eng = Engine(make_loop, max_loops=1)
    refs = case.references()
    loop, notes = eng.loop_for(refs)
    assert eng.loop_for(list(refs))[0] is loop and notes == ["fitted"] and built == [2]
    eng.loop_for(())  # another set pushes the first out (max_loops=1)
    eng.loop_for(refs)
    assert built == [2, 0, 2]


# ---------------------------------------------------------------------------------------------- command


def test_serve_command_flags_and_missing_gradio(monkeypatch, capsys):
    from agent.cli import build_parser

    assert "serve" in build_parser().format_help()
    args = parse(["--max-upload-mb", "0"])
    assert serve.cmd_serve(args) == 2 and "--max-upload-mb" in capsys.readouterr().err
    limits = serve.limits_from_args(
        parse(["--max-upload-mb", "2", "--max-megapixels", "1.5", "--max-refs", "3"])
    )
    assert limits == ServeLimits(max_upload_bytes=2 * 1024 * 1024, max_pixels=1_500_000, max_references=3)

    from agent.serve import app

    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # both are set by the command: restored after
    monkeypatch.delenv("GRADIO_TEMP_DIR", raising=False)
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if gradio were not installed
    with pytest.raises(app.ServeDependencyError, match=r'pip install "looktwice\[serve\]"'):
        app.import_gradio()
    assert serve.cmd_serve(parse([])) == 2
    assert 'pip install "looktwice[serve]"' in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- LLaVA


def test_session_with_tiny_llava_brain(files, tmp_path_factory):
    pytest.importorskip("transformers")
    import time

    import torch

    from agent.mllm.testing import build_tiny_llava

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    model = build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))
    eng = serve.build_engine(parse([*FAST, "--brain", f"llava:{model}"]))
    session = ChatSession(eng, tmp_path_factory.mktemp("llava_work"))
    session.set_image(files["scratch"])
    session.set_references(files["ref_list"])
    reply = session.ask(QUESTION)
    follow = session.ask("Where is it?")
    if time.perf_counter() - t0 > 60:
        pytest.skip("the tiny LLaVA model is too slow on this machine")
    # a random tiny model may say nothing useful (then the RuleBrain's text is used), but it is asked
    assert isinstance(reply.answer, str) and reply.answer and isinstance(follow.answer, str)
    assert "brain llava" in reply.verdict and reply.overlay is not None and reply.overlay.is_file()
    steps = [e for e in session.conversation.record.trace if e["step"] == "answer"]
    assert len(steps) == 2 and all(e["brain"] == "llava" for e in steps)
    assert steps[1]["inputs"]["history_turns"] == 1


# ---------------------------------------------------------------------------------------------- browser

CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else shutil.which("chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000

browser_test = pytest.mark.skipif(
    CHROMIUM is None
    or importlib.util.find_spec("playwright") is None
    or importlib.util.find_spec("gradio") is None,
    reason="the browser test needs Chromium (/usr/bin/chromium or `chromium` on PATH), "
    "playwright (pip install playwright) and gradio (pip install 'looktwice[serve]')",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The app on 127.0.0.1 in this process (gradio's own thread), run from an empty folder."""
    from agent.serve.app import build_app, launch

    root = tmp_path_factory.mktemp("serve_app")
    workdir, cwd = root / "work", root / "cwd"
    cwd.mkdir()
    limits = ServeLimits(max_upload_bytes=2 * 1024 * 1024)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # both are set by the app: restore them after
        mp.setenv("GRADIO_TEMP_DIR", str(root / "unused"))
        mp.chdir(cwd)
        app = build_app(engine, workdir, limits)
        port = free_port()
        launch(app, "127.0.0.1", port, limits, block=False, quiet=True)
        try:
            yield {"url": f"http://127.0.0.1:{port}/", "workdir": workdir, "cwd": cwd}
        finally:
            app.close()


@pytest.fixture(scope="module")
def browser(server) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser: Any, url: str) -> Any:
    """A new browser context (a new user: own cookies, own gradio session) with the app loaded."""
    context = browser.new_context(viewport={"width": 1280, "height": 1100})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector("#image-upload input[type=file]", state="attached")
    return page


def bot_texts(page: Any) -> list[str]:
    return page.locator('#chat [data-testid="bot"]').all_inner_texts()


def chat_text(page: Any) -> str:
    return page.locator("#chat").inner_text()


def upload(page: Any, target: str, paths: list[Path], status_words: str) -> None:
    page.set_input_files(f"#{target} input[type=file]", [str(p) for p in paths])
    page.locator("#status").filter(has_text=status_words).wait_for()


def ask(page: Any, question: str, n_bot_before: int) -> str:
    """Type and submit; wait until a new bot message (the answer or an error) has arrived."""
    page.locator("#question textarea").fill(question)
    page.locator("#ask").click()
    page.locator(f'#chat [data-testid="bot"] >> nth={n_bot_before}').wait_for()
    page.wait_for_function(
        "n => document.querySelectorAll('#chat [data-testid=\"bot\"]').length > n", arg=n_bot_before
    )
    return bot_texts(page)[-1]


@browser_test
def test_browser_upload_ask_overlay_and_regions(server, browser, files):
    page = open_page(browser, server["url"])
    upload(page, "image-upload", [files["scratch"]], "scratch.png")
    upload(page, "refs-upload", files["ref_list"], "2 uploaded good reference")
    answer = ask(page, QUESTION, len(bot_texts(page)))
    assert answer.startswith("Yes"), answer
    assert QUESTION in page.locator('#chat [data-testid="user"]').all_inner_texts()

    overlay = page.locator("#overlay img").first
    overlay.wait_for()
    page.wait_for_function(
        "() => { const i = document.querySelector('#overlay img'); return i && i.complete && i.naturalWidth > 0; }"
    )
    assert overlay.get_attribute("src") and overlay.evaluate("i => i.naturalWidth") == case.SIZE
    page.locator("#verdict").filter(has_text="defective").wait_for()

    page.locator("#regions").scroll_into_view_if_needed()
    table = page.locator("#regions")
    page.wait_for_function(
        "() => /\\b1\\b/.test(document.querySelector('#regions').innerText.split('score').pop() || '')"
    )
    body = table.inner_text().rsplit("score", 1)[1]  # the rows, after the last header
    assert any(w in body for w in ("center", "left", "right", "upper", "lower")), body

    follow = ask(page, "Where is it?", len(bot_texts(page)))
    assert follow and follow != answer
    page.context.close()
    assert list(server["cwd"].iterdir()) == []  # nothing written where the server was started


@browser_test
def test_browser_users_do_not_see_each_other(server, browser, files, tmp_path):
    alice = open_page(browser, server["url"])
    upload(alice, "image-upload", [files["scratch"]], "scratch.png")
    upload(alice, "refs-upload", files["ref_list"], "2 uploaded good reference")
    assert ask(alice, QUESTION, len(bot_texts(alice))).startswith("Yes")

    bob = open_page(browser, server["url"])
    assert QUESTION not in chat_text(bob) and bot_texts(bob) == []
    error = ask(bob, "Where is the defect?", 0)  # bob has no image: alice's is not his
    assert error.startswith("Error: upload an image first"), error

    text_png = tmp_path / "notes.png"
    text_png.write_text("not an image at all\n")
    bob.set_input_files("#image-upload input[type=file]", str(text_png))
    bob.locator('#chat [data-testid="bot"]').filter(has_text="notes.png").wait_for()
    message = bot_texts(bob)[-1]
    assert message.startswith("Error: the image 'notes.png' cannot be used: not an image"), message
    assert "\n" not in message.strip() and "Traceback" not in chat_text(bob)

    upload(bob, "image-upload", [files["good"]], "good.png")
    ask(bob, "How many marks?", len(bot_texts(bob)))
    assert "How many marks?" not in chat_text(alice) and "notes.png" not in chat_text(alice)
    assert "Where is the defect?" not in chat_text(alice)
    assert QUESTION not in chat_text(bob)
    sessions = sorted(p.name for p in server["workdir"].glob("session-*"))
    assert len(sessions) >= 2 and len(set(sessions)) == len(sessions)
    alice.context.close()
    bob.context.close()


def test_random_image_is_not_an_upload_risk(engine, tmp_path):
    """A big-but-allowed random image decodes, is re-encoded as PNG and its display copy is small."""
    from agent.serve.app import _display

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1600, 3), dtype=np.uint8))
    path = tmp_path / "noise.jpg"
    noise.save(path, quality=90)
    session = ChatSession(engine, tmp_path / "work")
    session.set_image(path)
    saved = session.folder / "image-1.png"
    with Image.open(saved) as im:
        assert im.format == "PNG" and im.size == (1600, 900)
    shown = _display(session.image)
    assert shown is not None and max(shown.size) <= 1280
