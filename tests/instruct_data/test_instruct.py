"""Anomaly-Instruct-style conversations (LLaVA JSON) on a tiny synthetic MVTec tree and by synthesis."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.commands import build_instruct
from instruct_data.instruct import InstructBuildError, InstructSettings, validate
from instruct_data.instruct import build_instruct as build
from tests.helpers import run_commands
from tests.instruct_data.mvtec_case import write_tree
from tools.regions import location_words

IMAGE = "<image>"


def run(argv: list[str]) -> int:
    return run_commands(argv, build_instruct)


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def add_square_category(root: Path) -> None:
    """root/square: flat grey images; the anomalous one has a dark square in the upper-left, masked."""
    base = root / "square"
    flat = np.full((60, 60, 3), 160, np.uint8)
    _save(flat, base / "train" / "good" / "000.png")
    _save(flat, base / "test" / "good" / "000.png")
    bad = flat.copy()
    bad[4:14, 4:14] = 40
    mask = np.zeros((60, 60), np.uint8)
    mask[4:14, 4:14] = 255
    _save(bad, base / "test" / "stain" / "000.png")
    _save(mask, base / "ground_truth" / "stain" / "000_mask.png")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = write_tree(tmp_path_factory.mktemp("mvtec"), categories=("plate",))
    add_square_category(root)
    return root


@pytest.fixture(scope="module")
def built(tree: Path, tmp_path_factory) -> tuple[Path, list[dict], dict]:
    out = tmp_path_factory.mktemp("out")
    stats = build(InstructSettings(out=str(out), data=str(tree), per_image=5, seed=3))
    items = json.loads((out / "instruct.json").read_text())
    return out, items, stats


def check_format(items: list[dict], out: Path) -> None:
    assert items
    assert len({i["id"] for i in items}) == len(items)
    for item in items:
        assert {"id", "image", "conversations"} <= set(item)
        assert (out / item["image"]).is_file()
        conv = item["conversations"]
        assert len(conv) >= 2 and len(conv) % 2 == 0
        assert [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
        assert conv[0]["value"].startswith(f"{IMAGE}\n")
        assert sum(t["value"].count(IMAGE) for t in conv) == 1
        assert all(t["value"].strip() for t in conv)
    validate(items)


def test_format_is_llava(built) -> None:
    out, items, stats = built
    check_format(items, out)
    assert json.loads((out / "stats.json").read_text()) == stats
    assert stats["image_folder"] == str(out.resolve())
    assert stats["conversations"] == len(items)
    assert sum(stats["turn_types"].values()) == len(items)
    assert all(
        stats["turn_types"][t] > 0 for t in ("detection", "description", "cause", "suggestion", "multi_round")
    )
    multi = [i for i in items if i["type"] == "multi_round"]
    assert all(2 <= len(i["conversations"]) // 2 <= 4 for i in multi)


def test_validate_rejects_bad_items() -> None:
    good = {
        "id": "x",
        "image": "a.png",
        "conversations": [{"from": "human", "value": "<image>\nq"}, {"from": "gpt", "value": "a"}],
    }
    validate([good])
    swapped = {**good, "conversations": good["conversations"][::-1]}
    twice = {
        **good,
        "conversations": [
            *good["conversations"],
            {"from": "human", "value": "<image>\nq"},
            {"from": "gpt", "value": "a"},
        ],
    }
    for bad in (swapped, twice):
        with pytest.raises(InstructBuildError):
            validate([bad])


def test_balanced_normal_and_anomalous(built) -> None:
    _, items, stats = built
    assert stats["images"]["normal"] == stats["images"]["anomalous"] == 4  # plate 3 + square 1 each
    assert stats["detection_conversations"]["Yes"] == stats["detection_conversations"]["No"] == 4
    per_image: dict[str, list[str]] = {}
    for item in items:
        per_image.setdefault(item["image"], []).append(item["type"])
    assert all(types[0] == "detection" and len(types) == 5 for types in per_image.values())


def test_detection_answers_are_yes_or_no_and_right(built) -> None:
    _, items, _ = built
    seen = 0
    for item in items:
        if item["type"] in ("detection", "multi_round"):
            answer = item["conversations"][1]["value"]
            assert answer in ("Yes", "No")
            assert answer == ("No" if "/good/" in item["image"] else "Yes")
            seen += 1
    assert seen >= 8


def test_answers_name_the_location_of_a_known_mask(built) -> None:
    _, items, _ = built
    square = [i for i in items if i["image"].endswith("square/test/stain/000.png")]
    descriptions = [
        t["value"] for i in square for t in i["conversations"][1::2] if t["value"].startswith("There is")
    ]
    assert descriptions
    for text in descriptions:
        assert "in the upper-left" in text and "contamination" in text and "darker" in text
    causes = [t["value"] for i in square if i["type"] == "cause" for t in i["conversations"][1::2]]
    assert causes and all("stain" in c.lower() or "contamination" in c.lower() for c in causes)
    normal = [t["value"] for i in items if "/good/" in i["image"] for t in i["conversations"][1::2]]
    assert not any("upper-left" in v for v in normal)


def test_deterministic_for_a_seed(tree: Path, tmp_path: Path) -> None:
    texts = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        build(InstructSettings(out=str(tmp_path / name), data=str(tree), per_image=3, seed=seed))
        texts.append((tmp_path / name / "instruct.json").read_text())
    assert texts[0] == texts[1]
    assert texts[0] != texts[2]


def test_limit_and_bad_settings(tree: Path, tmp_path: Path) -> None:
    stats = build(InstructSettings(out=str(tmp_path / "l"), data=str(tree), per_image=1, limit=2))
    assert stats["images"] == {"normal": 2, "anomalous": 2}  # one each of 2 categories
    with pytest.raises(InstructBuildError):
        build(InstructSettings(out=str(tmp_path / "x"), data=str(tree), per_image=0))
    with pytest.raises(InstructBuildError):
        build(InstructSettings(out=str(tmp_path / "x"), data=str(tree), synth_from=str(tree)))


def test_synth_path_end_to_end_via_command(tree: Path, tmp_path: Path) -> None:
    good = tree / "plate" / "train" / "good"
    out = tmp_path / "synth"
    synth_argv = ["build-instruct", "--synth-from", str(good), "--per-image", "5", "--seed", "4"]
    assert run([*synth_argv, "--out", str(out)]) == 0
    items = json.loads((out / "instruct.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    check_format(items, out)
    assert stats["source"] == "synth"
    assert stats["images"] == {"normal": 4, "anomalous": 4}
    assert stats["detection_conversations"] == {"Yes": 4, "No": 4}
    synth_images = sorted((out / "images").glob("*.png"))
    assert len(synth_images) == 4 and len(list((out / "masks").glob("*.png"))) == 4
    for item in items:
        if not item["image"].startswith("images/"):
            assert item["conversations"][1]["value"] == "No" or item["type"] not in (
                "detection",
                "multi_round",
            )
            continue
        mask = np.asarray(Image.open(out / "masks" / Path(item["image"]).name)) > 127
        ys, xs = np.nonzero(mask)
        where = location_words(xs.mean(), ys.mean(), mask.shape[1], mask.shape[0])
        for turn in item["conversations"][1::2]:
            if turn["value"].startswith("There is"):
                assert where in turn["value"]
    again = tmp_path / "again"
    assert run([*synth_argv, "--out", str(again)]) == 0  # the same seed: the same files
    assert (again / "instruct.json").read_text() == (out / "instruct.json").read_text()
    for p in synth_images:
        assert (again / "images" / p.name).read_bytes() == p.read_bytes()


def test_command_usage_errors(tmp_path: Path) -> None:
    assert run(["build-instruct", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(SystemExit):
        run(["build-instruct", "--out", str(tmp_path / "o")])


# ---------------------------------------------------------------------------------------------- rewrite
def test_facts_kept_checks_verdict_locations_and_numbers() -> None:
    from instruct_data.instruct.rewrite import facts_kept

    original = "Yes: a crack in the upper-left, about 1.5% of the surface."
    assert (
        facts_kept(original, "Yes - there's a crack up in the upper-left, covering about 1.5% of it.") is None
    )
    assert facts_kept(original, "No, it looks fine.") == "leading 'Yes' changed"
    assert (
        facts_kept(original, "Yes, a crack covering 1.5% of the surface.") == "location 'upper-left' dropped"
    )
    assert facts_kept(original, "Yes, a crack in the upper-left corner.") == "number 1.5 dropped"
    assert facts_kept(original, "") == "empty rewrite"
    assert facts_kept("A crack.", "x" * 200) == "rewrite much longer than the answer"


def test_rewrite_over_http_is_checked_cached_and_never_required(tree, tmp_path) -> None:
    from tests.openai_server import ScriptedServer, completion

    base = ["build-instruct", "--data", str(tree), "--per-image", "2", "--limit", "2", "--seed", "3"]
    plain = tmp_path / "plain"
    assert run([*base, "--out", str(plain)]) == 0
    templ = json.loads((plain / "instruct.json").read_text())
    n_long = sum(
        1
        for it in templ
        for t in it["conversations"][1::2]
        if t["value"].strip().rstrip(".").lower() not in ("yes", "no")
    )
    assert n_long > 0

    server = ScriptedServer()
    try:
        # every request gets "<answer> (rephrased)": the facts are kept, so each rewrite is accepted
        def echo(body: dict) -> tuple:
            answer = body["messages"][-1]["content"].split("Answer to rewrite:", 1)[1].strip()
            return 200, completion(answer + " (rephrased)"), 0.0

        server.responder = echo
        out = tmp_path / "rw"
        assert run([*base, "--out", str(out), "--rewrite", f"openai:{server.url}#writer"]) == 0
        assert len(server.requests) == n_long
        items = json.loads((out / "instruct.json").read_text())
        stats = json.loads((out / "stats.json").read_text())["rewrite"]
        assert stats["rewritten"] == n_long and stats["failed"] == 0 and stats["kept_detection"] > 0
        for a, b in zip(templ, items, strict=True):
            for ta, tb in zip(a["conversations"], b["conversations"], strict=True):
                if ta["from"] == "human" or ta["value"].strip().rstrip(".").lower() in ("yes", "no"):
                    assert ta == tb
                else:
                    assert tb["value"] == ta["value"] + " (rephrased)"
        validate(items)

        # a rerun asks nothing: every rewrite comes from the cache
        again = tmp_path / "rw2"
        cache = out / "rewrite_cache.jsonl"
        n = len(server.requests)
        assert (
            run(
                [
                    *base,
                    "--out",
                    str(again),
                    "--rewrite",
                    f"openai:{server.url}#writer",
                    "--rewrite-cache",
                    str(cache),
                ]
            )
            == 0
        )
        assert len(server.requests) == n
        assert json.loads((again / "stats.json").read_text())["rewrite"]["from_cache"] == n_long
    finally:
        server.close()

    # the endpoint is gone: the templates stay, the run succeeds, the reason is recorded
    down = tmp_path / "down"
    assert run([*base, "--out", str(down), "--rewrite", f"openai:{server.url}#writer"]) == 0
    assert json.loads((down / "instruct.json").read_text()) == templ
    stats = json.loads((down / "stats.json").read_text())["rewrite"]
    assert stats["rewritten"] == 0 and stats["failed"] == n_long and "cannot reach" in stats["endpoint_error"]
    assert run([*base, "--out", str(tmp_path / "x"), "--rewrite", "rule"]) == 2


def test_rejected_rewrites_keep_the_template(tmp_path) -> None:
    from instruct_data.instruct.rewrite import AnswerRewriter, RewriteCache

    items = [
        {
            "id": "0",
            "image": "a.png",
            "conversations": [
                {"from": "human", "value": "<image>\\nIs there a defect?"},
                {"from": "gpt", "value": "Yes."},
                {"from": "human", "value": "Where?"},
                {"from": "gpt", "value": "In the lower-right, about 2% of the surface."},
            ],
        }
    ]
    r = AnswerRewriter(lambda p, h: "Somewhere on the part.", "m", RewriteCache(tmp_path / "c.jsonl"))
    r.rewrite_items(items)
    assert items[0]["conversations"][3]["value"] == "In the lower-right, about 2% of the surface."
    assert r.stats.rejected == 1 and r.stats.kept_detection == 1 and r.stats.reasons == {"location": 1}
    assert not (tmp_path / "c.jsonl").exists()  # nothing rejected is cached
