"""Reader of a VisA-D&R-style QA set (`test_data.json`, `dr.json`, optional `meta.json`).

The format is documented in instruct_data/qa/FORMAT.md. Images are resolved against the data root:
the `data_root` argument, else `meta.json`'s `data_root` (relative = relative to the QA folder), else
the QA folder itself. An image listed in both files is one `QAImage` (detection and reasoning).

Why here, beside the builder: the reader is the format's other half. The benchmark (`evals.dr`) reads
a set to score it, and the instruction-data builder reads one to keep clear of its images
(`instruct_data.qa.overlap`); both use this one reader.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TEST_FILE, DR_FILE, META_FILE = "test_data.json", "dr.json", "meta.json"


class QASetError(ValueError):
    """The QA folder is missing or a file is malformed; the message names the file and entry."""


@dataclass
class QAImage:
    image: str  # as written in the files (relative to the data root)
    path: Path  # resolved
    cls: str
    anomaly: bool | None  # None: only in dr.json (then it is anomalous by construction)
    defect_type: str | None = None
    questions: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)

    @property
    def in_detection(self) -> bool:
        return self.anomaly is not None


@dataclass
class QASet:
    folder: Path
    data_root: Path
    images: list[QAImage]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted({im.cls for im in self.images})


def _class_from_path(image: str) -> str:
    parts = Path(image).parts
    if len(parts) > 1 and parts[0] not in ("test", "train", "ground_truth", "..", "."):
        return parts[0]
    return "all"


def _read_list(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise QASetError(f"cannot read '{path}': {err}") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise QASetError(f"'{path}' must hold a JSON list of objects")
    return data


def load_qa_set(folder: str | Path, data_root: str | Path | None = None) -> QASet:
    """Read the QA set in `folder`; raises `QASetError`."""
    qa = Path(folder)
    if not qa.is_dir():
        raise QASetError(f"QA folder not found: '{qa}'")
    meta: dict[str, Any] = {}
    if (qa / META_FILE).is_file():
        try:
            meta = json.loads((qa / META_FILE).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise QASetError(f"cannot read '{qa / META_FILE}': {err}") from None
    if data_root is not None:
        root = Path(data_root)
    elif meta.get("data_root"):
        root = Path(meta["data_root"])
        root = root if root.is_absolute() else qa / root
    else:
        root = qa
    has_test, has_dr = (qa / TEST_FILE).is_file(), (qa / DR_FILE).is_file()
    if not has_test and not has_dr:
        raise QASetError(
            f"'{qa}' holds neither {TEST_FILE} nor {DR_FILE}: build one with `looktwice data qa`"
        )
    by_image: dict[str, QAImage] = {}
    if has_test:
        for i, e in enumerate(_read_list(qa / TEST_FILE)):
            if not isinstance(e.get("image"), str) or not isinstance(e.get("anomaly"), bool | int):
                raise QASetError(
                    f"{qa / TEST_FILE} entry {i}: needs 'image' (string) and 'anomaly' (true/false)"
                )
            img = e["image"]
            by_image[img] = QAImage(
                img, root / img, str(e.get("class") or _class_from_path(img)), bool(e["anomaly"])
            )
    if has_dr:
        for i, e in enumerate(_read_list(qa / DR_FILE)):
            q, a = e.get("questions"), e.get("answers")
            if not isinstance(e.get("image"), str) or not isinstance(q, list) or not isinstance(a, list):
                raise QASetError(
                    f"{qa / DR_FILE} entry {i}: needs 'image', 'questions' and 'answers' (lists)"
                )
            if len(q) != len(a):
                raise QASetError(f"{qa / DR_FILE} entry {i}: {len(q)} questions but {len(a)} answers")
            img = e["image"]
            item = by_image.get(img)
            if item is None:
                item = QAImage(img, root / img, str(e.get("class") or _class_from_path(img)), None)
                by_image[img] = item
            item.defect_type = e.get("defect_type")
            item.questions = [str(x) for x in q]
            item.answers = [str(x) for x in a]
    return QASet(qa, root, list(by_image.values()), meta)
