"""Web-chat sessions in plain Python: what `looktwice serve` does for one browser tab, without gradio.

Why a module of its own: the web UI (`agent.serve.app`) only moves text and pictures; everything that
decides something (upload limits, decoding, when to inspect, history, which files are written where)
lives here, so it is unit-tested without a browser and the UI cannot leak one user's data to another.

- `Engine` is what all sessions share: the loop factory (detector + brain from the command line), the
  default references, a few fitted loops keyed by the content of their references, and one lock, so
  one inspection or brain call runs at a time (a model brain holds one model; the loop's zoom detector
  is refitted per crop).
- `ChatSession` is one user's state: its own folder `<workdir>/session-<random id>/`, the current image
  and references (decoded with the safe loader `tools.image_io` and re-encoded as PNG there, so no
  uploaded byte is kept as is), and an `agent.conversation.Conversation`: the image is inspected once per
  image + references, follow-up questions reuse that inspection with the history, as `looktwice chat`.
- Every user mistake (bad or oversized file, too many references, no image yet) raises `SessionError`
  whose message is one line the UI shows in the chat.
"""

from __future__ import annotations

import re
import secrets
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from agent.brains.abilities import SeesImages
from agent.conversation import Conversation, SetupError, trace_warnings
from agent.images import ANALYSIS_MAX_SIDE
from tools.content_key import images_key
from tools.image_io import ImageLoadError, load_image

MB = 1024 * 1024

#: Columns of the region table (`region_rows`). #: the region's number, as on the overlay and in the
#: answer; bbox: x0, y0, x1, y1 in image pixels (x1, y1 exclusive); score: the mean anomaly score inside.
REGION_HEADERS: tuple[str, ...] = ("#", "location", "looks like", "bbox", "area %", "score")

#: What a user may upload (for messages; the loader decides by content, not by name).
IMAGE_KINDS = "PNG, JPEG, TIFF, BMP or WebP"


@dataclass(frozen=True)
class ServeLimits:
    """Per-session limits: they bound what one browser tab can make the server decode, keep and compute."""

    max_upload_bytes: int = 20 * MB  # one uploaded file
    max_pixels: int = 40_000_000  # one decoded image (checked on the header, before decoding)
    max_side: int = ANALYSIS_MAX_SIDE  # longer side an image is decoded and analysed at (reduced above)
    max_references: int = 8  # good references per session
    max_question_chars: int = 2000
    max_turns: int = 100  # questions per image (the history goes into every brain call)


class SessionError(ValueError):
    """A user mistake; `str()` is one line for the chat."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class UploadError(SessionError):
    """An uploaded file was refused (unreadable, too big, too many)."""


def one_line(text: str, limit: int = 400) -> str:
    """`text` on one line, at most `limit` characters: what the chat shows for an error."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def display_name(path: str | Path, limit: int = 60) -> str:
    """The file name a user sees in messages: the base name only, printable, shortened."""
    name = re.sub(r"[^\w .,()+=@#-]", "_", Path(str(path)).name) or "upload"
    return name if len(name) <= limit else name[: limit - 3] + "..."


def images_digest(images: Sequence[Image.Image]) -> str:
    """A content hash of decoded images (mode, size, pixels): the key of a fitted loop."""
    return images_key(images)


def region_rows(record: Any) -> list[list[Any]]:
    """One row per region of an inspection record, in `REGION_HEADERS` order: its number (the one on
    the overlay and in the answer), where, what it looks like (defect word, else shape), box, size, score."""
    rows = []
    for i, r in enumerate(record.regions, start=1):
        x0, y0, x1, y1 = (int(v) for v in r.bbox)
        rows.append(
            [
                int(r.number or i),
                r.location,
                r.kind or r.shape,
                f"{x0}, {y0}, {x1}, {y1}",
                round(100.0 * float(r.area_fraction), 2),
                round(float(r.mean_score), 2),
            ]
        )
    return rows


#: Builds a fitted loop for references (PIL images, may be empty), sending one-line notes to the callable.
LoopFactory = Callable[[list[Image.Image], Callable[[str], None]], Any]


class Engine:
    """What all sessions share: the loop factory, default references, a few fitted loops, one lock."""

    def __init__(
        self, make_loop: LoopFactory, default_references: Sequence[Image.Image] = (), max_loops: int = 4
    ) -> None:
        self._make_loop = make_loop
        self.default_references = list(default_references)
        self.max_loops = max(1, int(max_loops))
        self.lock = threading.RLock()
        self._loops: OrderedDict[str, tuple[Any, list[str]]] = OrderedDict()

    def loop_for(self, references: Sequence[Image.Image]) -> tuple[Any, list[str]]:
        """A loop fitted on `references` (the default references when empty) and the notes of its
        setup (e.g. the zero-shot fallback); fitted once per content, the least recently used dropped.
        Raises `SessionError` when the detector cannot be set up."""
        refs = list(references) or self.default_references
        key = images_digest(refs)
        with self.lock:
            if key in self._loops:
                self._loops.move_to_end(key)
                return self._loops[key]
            notes: list[str] = []
            try:
                loop = self._make_loop(refs, notes.append)
            except SetupError as err:
                raise SessionError(f"the detector could not be set up: {err}") from None
            self._loops[key] = (loop, [one_line(n) for n in notes])
            while len(self._loops) > self.max_loops:
                self._loops.popitem(last=False)
            return self._loops[key]

    def warm_up(self) -> list[str]:
        """Fit the default loop now (weights load once, before the first user waits); its notes."""
        return self.loop_for(())[1]


@dataclass
class Reply:
    """What one question produced: the answer and the evidence the UI shows beside it."""

    answer: str
    overlay: Path | None  # the overlay PNG (heatmap + outline) inside the session folder
    rows: list[list[Any]]  # `region_rows`
    verdict: str  # one line: verdict, score, threshold, region count, detector, brain
    notes: list[str] = field(default_factory=list)  # fallbacks and warnings, one line each


class ChatSession:
    """One user's conversation about one image at a time; all its files stay in its own folder."""

    def __init__(self, engine: Engine, workdir: str | Path, limits: ServeLimits | None = None) -> None:
        self.engine = engine
        self.limits = limits or ServeLimits()
        self.id = secrets.token_hex(8)
        root = Path(workdir)
        root.mkdir(parents=True, exist_ok=True)
        self.folder = root / f"session-{self.id}"
        self.folder.mkdir(mode=0o700)
        self.conversation = Conversation(None, self.folder / "outputs")
        #: the chat as shown: [{"role": "user" | "assistant", "content": str}, ...]
        self.messages: list[dict[str, str]] = []
        self.image: Image.Image | None = None
        self.image_path: Path | None = None
        self.image_name = ""
        self.references: list[Image.Image] = []
        self.reference_names: list[str] = []
        self._uploads = 0  # numbers the decoded copies, so no name is reused
        self._version = (0, 0)  # (image, references), bumped on every upload
        self._inspected: tuple[int, int] | None = None
        self._lock = threading.RLock()
        self.closed = False

    # ------------------------------------------------------------------------------------------ uploads

    def _decode(self, upload: str | Path, what: str) -> tuple[Image.Image, str]:
        """Check the size, decode with the safe loader; (image, display name) or `UploadError`."""
        path = Path(str(upload))
        name = display_name(path)
        try:
            size = path.stat().st_size
        except OSError:
            raise UploadError(f"the {what} '{name}' could not be read: the upload is gone") from None
        limit = self.limits.max_upload_bytes
        if size > limit:
            raise UploadError(f"the {what} '{name}' is {size / MB:.1f} MB; the limit is {limit / MB:g} MB")
        try:
            image = load_image(path, max_pixels=self.limits.max_pixels, max_side=self.limits.max_side)
        except ImageLoadError as err:
            reason = err.reason.split(" (decompression-bomb guard")[0]
            raise UploadError(f"the {what} '{name}' cannot be used: {reason} (use {IMAGE_KINDS})") from None
        return image, name

    def _save(self, image: Image.Image, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", compress_level=1)
        return path

    def set_image(self, upload: str | Path) -> str:
        """Make `upload` the image under discussion: validated, decoded and saved as PNG in the session
        folder; the history starts again. Returns the line the chat shows; raises `UploadError`."""
        image, name = self._decode(upload, "image")
        with self._lock:
            self._uploads += 1
            old = self.image_path
            self.image_path = self._save(image, self.folder / f"image-{self._uploads}.png")
            if old is not None:
                old.unlink(missing_ok=True)
            self.image, self.image_name = image, name
            self._version = (self._version[0] + 1, self._version[1])
            text = f"New image {name} ({image.width}x{image.height}). Ask a question about it."
            self.messages.append({"role": "assistant", "content": text})
            return text

    def set_references(self, uploads: Sequence[str | Path]) -> str:
        """Use `uploads` as the good references (none: back to the server's defaults). All are checked
        before any is taken: one bad file refuses the set with `UploadError`. Returns the chat line."""
        uploads = list(uploads or [])
        cap = self.limits.max_references
        if len(uploads) > cap:
            raise UploadError(f"{len(uploads)} references uploaded; at most {cap} per session")
        decoded = [self._decode(u, "reference") for u in uploads]
        with self._lock:
            self._uploads += 1
            for old in self.folder.glob("references-*"):
                shutil.rmtree(old, ignore_errors=True)
            folder = self.folder / f"references-{self._uploads}"
            for i, (image, _) in enumerate(decoded):
                self._save(image, folder / f"ref-{i}.png")
            self.references = [image for image, _ in decoded]
            self.reference_names = [name for _, name in decoded]
            self._version = (self._version[0], self._version[1] + 1)
            self.messages.append({"role": "assistant", "content": self.references_line()})
            return self.references_line()

    def references_line(self) -> str:
        """Which references the next inspection compares with, in words."""
        if self.references:
            return f"Comparing with {len(self.references)} uploaded good reference(s)."
        n = len(self.engine.default_references)
        if n:
            return f"Comparing with the server's {n} good reference(s)."
        return "No good references: the zero-shot detector is used (weaker); upload a few good parts."

    # ------------------------------------------------------------------------------------------ questions

    def ask(self, question: str) -> Reply:
        """Answer `question` about the current image: inspected once per image + references, then the
        brain answers with the history. Raises `SessionError` for a missing image or a bad question."""
        q = str(question or "").strip()
        if not q:
            raise SessionError("type a question first, e.g. 'Is there any defect in this image?'")
        if len(q) > self.limits.max_question_chars:
            raise SessionError(
                f"the question has {len(q)} characters; the limit is {self.limits.max_question_chars}"
            )
        with self._lock:
            if self.image is None or self.image_path is None:
                raise SessionError(f"upload an image first ({IMAGE_KINDS})")
            conv = self.conversation
            if self._inspected == self._version and len(conv.history) >= self.limits.max_turns:
                raise SessionError(
                    f"{self.limits.max_turns} questions about this image; upload it again to start over"
                )
            with self.engine.lock:
                notes: list[str] = []
                if self._inspected != self._version:
                    loop, notes = self.engine.loop_for(self.references)
                    notes = list(notes)
                    self._drop_outputs()
                    conv.open(self.image_path, self.image, pipeline=loop)
                    self._inspected = self._version
                    notes += trace_warnings(conv.record.trace)
                else:  # the brain may be shared: hand it this session's image again
                    brain = conv.pipeline.brain
                    if isinstance(brain, SeesImages):
                        brain.use_image(str(self.image_path), self.image)
                n_before = len(conv.record.trace)
                answer = conv.ask(q)
                notes += trace_warnings(conv.record.trace[n_before:])
            self.messages += [{"role": "user", "content": q}, {"role": "assistant", "content": answer}]
            r = conv.record
            verdict = (
                f"{r.verdict} (score {r.pred_score:.2f}, threshold {r.threshold:.2f}), "
                f"{len(r.regions)} region(s); detector {r.detector}, brain {conv.pipeline.brain.name}"
            )
            return Reply(answer, conv.overlay, region_rows(r), verdict, [one_line(n) for n in notes])

    def feedback(self, label: str) -> str:
        """A person's verdict on the current image. "good" (a false alarm): the image joins this
        session's references (the uploaded ones, else the server's), so the next inspection compares
        with it and re-estimates the boundary. "defective" (a missed defect): kept in the session folder
        and said whether the current boundary catches it. Returns the chat line."""
        from agent.feedback import content_name

        if label not in ("good", "defective"):
            raise SessionError(f"feedback must be good or defective, got {label!r}")
        with self._lock:
            if self.image is None:
                raise SessionError(f"upload an image first ({IMAGE_KINDS})")
            name = content_name(self.image, Path(self.image_name).stem)
            if label == "good":
                if len(self.references) >= self.limits.max_references + 8:
                    raise SessionError("this session holds enough references; start a new one to add more")
                base = self.references or list(self.engine.default_references)
                self.references = [*base, self.image]
                self.reference_names = [*(self.reference_names or [f"server reference {i + 1}" for i in range(len(base))]), self.image_name]
                self._save(self.image, self.folder / "feedback-good" / name)
                self._version = (self._version[0], self._version[1] + 1)
                text = (f"Thanks: {self.image_name} is good. It joins the references "
                        f"({len(self.references)} now); ask again to inspect with them.")
            else:
                self._save(self.image, self.folder / "feedback-defective" / name)
                r = self.conversation.record if self._inspected == self._version else None
                caught = r is not None and r.verdict == "defective"
                text = f"Thanks: {self.image_name} is defective; kept. " + (
                    "The current boundary catches it." if caught else
                    "The current boundary does not catch it: more good references or a higher false-alarm rate may."
                )
            self.messages.append({"role": "assistant", "content": text})
            return text

    def add_error(self, message: str, question: str | None = None) -> None:
        """Show a refused upload or question in the chat (the question first, when there was one)."""
        with self._lock:
            if question:
                self.messages.append({"role": "user", "content": str(question)})
            self.messages.append({"role": "assistant", "content": f"Error: {one_line(message)}"})

    def clear_chat(self) -> None:
        """Empty the chat and the history (the inspection stays: the next question reuses it)."""
        with self._lock:
            self.messages = []
            self.conversation.history = []

    @property
    def history(self) -> list[tuple[str, str]]:
        """(question, answer) pairs about the current image, what the brain sees."""
        return list(self.conversation.history)

    def _drop_outputs(self) -> None:
        """Remove the previous inspection's files, so a session keeps one set of outputs."""
        out = self.conversation.out
        for name in self.conversation.files.values():
            (out / name).unlink(missing_ok=True)
        self.conversation.files = {}

    def close(self) -> None:
        """Delete the session folder (the browser tab is gone); safe to call twice."""
        with self._lock:
            self.closed = True
            shutil.rmtree(self.folder, ignore_errors=True)


__all__ = [
    "REGION_HEADERS",
    "ChatSession",
    "Engine",
    "Reply",
    "ServeLimits",
    "SessionError",
    "UploadError",
    "display_name",
    "images_digest",
    "one_line",
    "region_rows",
]
