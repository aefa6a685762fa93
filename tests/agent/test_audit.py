"""The logical-anomaly audit: spec parsing, drafting, checking each anomaly kind, and the CLI."""

from __future__ import annotations

import json
from functools import cache

import numpy as np
import pytest
import yaml
from PIL import Image

from agent.audit.check import audit_image, normalized_structural
from agent.audit.draft import draft_spec, validate_on_references
from agent.audit.spec import Spec, SpecError, load_spec, parse_spec
from agent.cli import main
from instruct_data.synthesis.scenes import KINDS, SCENES, make_scene, write_scene_set

FLAVOURS = ("orange", "purple")


def _refs(scene: str) -> list:
    return [make_scene(scene, "good", seed=9000 + i, flavour=FLAVOURS[i % 2]).image for i in range(4)]


@cache
def _spec(scene: str) -> Spec:
    return draft_spec(_refs(scene))


MINIMAL = {
    "background": {"rgb": [0.9, 0.9, 0.8]},
    "components": [{"name": "pin", "find": {"rgb": [0.1, 0.3, 0.8]}, "count": 12}],
}


def _write(tmp_path, data, name="spec.yaml"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return p


# ---------------------------------------------------------------------------------------------- spec
def test_spec_minimal_and_round_trip(tmp_path) -> None:
    spec = load_spec(_write(tmp_path, MINIMAL))
    assert spec.components[0].count.min == spec.components[0].count.max == 12
    again = load_spec(_write(tmp_path, spec.to_yaml(), "again.yaml"))
    assert again == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("components"), r"spec\.yaml: components: required field is missing"),
        (lambda d: d["components"][0].update(count="many"), r"spec\.yaml: components\[0\]\.count"),
        (
            lambda d: d["components"][0].update(count={"min": 5, "max": 2}),
            r"components\[0\]\.count: .*below min",
        ),
        (
            lambda d: d["components"][0].update(colur={"rgb": [1, 0, 0]}),
            r"components\[0\]\.colur: unknown field",
        ),
        (lambda d: d["components"][0].update(find={}), r"components\[0\]\.find: .*one of rgb"),
        (
            lambda d: d.update(pairs=[{"a": "pin", "b": "cap"}]),
            r"spec\.yaml: pairs\[0\]\.b: unknown component 'cap'",
        ),
        (
            lambda d: d["components"][0].update(position={"slots": [[0.1, 0.1]], "box": [0, 0, 1, 1]}),
            r"components\[0\]\.position: give exactly one",
        ),
        (lambda d: d["components"].append(dict(d["components"][0])), r"repeated: pin"),
    ],
)
def test_spec_errors_name_file_and_field(tmp_path, change, message) -> None:
    data = json.loads(json.dumps(MINIMAL))
    change(data)
    with pytest.raises(SpecError, match=message) as info:
        load_spec(_write(tmp_path, data))
    assert "\n" not in str(info.value)


def test_spec_file_errors(tmp_path) -> None:
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match=r"not valid YAML \(line"):
        load_spec(_write(tmp_path, "components: [\n  - name: x\n bad"))
    with pytest.raises(SpecError, match="must be a mapping"):
        load_spec(_write(tmp_path, "- 1\n- 2\n"))


def test_clip_and_sam_finders_without_their_models_are_reported_skipped() -> None:
    """No CLIP model / SAM mask generator (agent.audit.finders): the components found only that way are
    skipped rules that say why, and so is the unexpected-objects rule (their parts would look
    unexpected); the rest is checked. tests/agent/test_audit_finders.py runs them with models."""
    data = json.loads(json.dumps(MINIMAL))
    data["components"].append({"name": "screw", "find": {"clip_prompt": "a small screw"}, "count": 2})
    data["components"].append({"name": "part", "find": {"sam": True}})
    spec = parse_spec(data, "s.yaml")
    result = audit_image(make_scene("tray", seed=1).image, spec)
    skipped = {r.rule: r.explanation for r in result.rules if r.skipped}
    assert set(skipped) == {"segmenter", "screw.find", "part.find", "unexpected_objects"}
    assert "CLIP" in skipped["screw.find"] and "--clip" in skipped["screw.find"]
    assert "SAM" in skipped["part.find"] and "segmented by colour" in skipped["segmenter"]
    assert any(r.rule == "pin.count" and not r.skipped for r in result.rules)


# ---------------------------------------------------------------------------------------------- draft
def test_draft_tray_from_four_references() -> None:
    spec = _spec("tray")
    assert len(spec.components) == 1
    pins = spec.components[0]
    assert pins.name == "blue" and pins.count.min == pins.count.max == 12
    assert len(pins.position.slots) == 12 and pins.colour is not None and pins.area is not None
    assert spec.dropped == []
    for im in _refs("tray"):
        assert not audit_image(im, spec).anomalous


def test_draft_box_finds_the_pair_rule() -> None:
    spec = _spec("box")
    assert len(spec.components) == 4
    assert len(spec.pairs) == 1 and spec.pairs[0].attribute == "hue"
    varying = {c.name for c in spec.components if c.find.region is not None}
    assert {spec.pairs[0].a, spec.pairs[0].b} == varying


def test_rules_failing_on_a_good_reference_are_dropped() -> None:
    spec = _spec("tray")
    odd = make_scene("tray", "extra", seed=4).image  # pretend a 13-pin tray is good
    kept = validate_on_references(spec.model_copy(deep=True), [odd], ["odd.png"])
    assert any(d.startswith("blue.count: failed on odd.png") for d in kept.dropped)
    assert kept.components[0].count is None
    assert "dropped rules" in kept.to_yaml()


# ---------------------------------------------------------------------------------------------- check
CASES = [(s, k, seed) for s in SCENES for k in KINDS[s] for seed in (0, 1, 2)]


@pytest.mark.parametrize(("scene", "kind", "seed"), CASES)
def test_each_anomaly_kind_is_found_and_located(scene: str, kind: str, seed: int) -> None:
    sc = make_scene(scene, kind, seed=seed)
    result = audit_image(sc.image, _spec(scene))
    assert result.anomalous and result.score > 0.5, result.explanation
    top = result.violations[0]
    marked = result.offending_mask(sc.image.size, [top])
    assert (marked & sc.mask).any(), f"{top.rule}: {top.explanation}"


@pytest.mark.parametrize("scene", SCENES)
def test_good_scenes_pass(scene: str) -> None:
    for seed in range(4):
        result = audit_image(make_scene(scene, "good", seed=seed).image, _spec(scene))
        assert not result.anomalous, result.explanation
        assert result.score < 0.5 and result.explanation.startswith("All ")


def test_explanations_in_words() -> None:
    sc = make_scene("tray", "missing", seed=0)
    text = audit_image(sc.image, _spec("tray")).explanation
    assert text.startswith("2 of 12 blue missing: places ") and " and " in text
    sc = make_scene("box", "mismatched", seed=0)
    assert "do not match" in audit_image(sc.image, _spec("box")).explanation


def test_structural_score_is_fused_by_max() -> None:
    assert normalized_structural(0.25, 0.5) == pytest.approx(0.25)
    assert normalized_structural(0.75, 0.5) == pytest.approx(0.75)
    assert normalized_structural(0.2, 0.2) == pytest.approx(0.5)
    good = make_scene("tray", seed=0).image
    spec = _spec("tray")
    calm = audit_image(good, spec, structural=(0.1, 0.5))
    assert not calm.anomalous and calm.score == pytest.approx(max(calm.logical_score, 0.1))
    loud = audit_image(good, spec, structural=(0.9, 0.5))
    assert loud.anomalous and loud.score == pytest.approx(0.9) and "structural detector" in loud.explanation


def test_white_balance_keeps_rules_under_other_light() -> None:
    spec = _spec("box")
    for kind in ("good", "recoloured", "mismatched"):
        sc = make_scene("box", kind, seed=5)
        px = np.asarray(sc.image).astype(float) * np.array([0.88, 0.92, 0.85])  # dimmer, warmer light
        dim = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))
        assert audit_image(dim, spec).anomalous == (kind != "good"), kind


@pytest.mark.parametrize("scene", SCENES)
def test_hard_scenes_draft_and_check(scene: str) -> None:
    refs = [
        make_scene(scene, "good", seed=500 + i, flavour=FLAVOURS[i % 2], hard=True).image for i in range(4)
    ]
    spec = draft_spec(refs)
    if scene == "cable":
        # the clamps cut the cable into pieces whose sizes vary with the jitter: rules on those pieces
        # fail on some reference and are dropped (and listed); the clamps' rules stay
        kept = {c.name: c for c in spec.components}
        assert any(c.count is not None and c.count.min == c.count.max == 3 for c in kept.values())
        assert all(d.split(".")[0] not in [n for n, c in kept.items() if c.count] for d in spec.dropped)
    else:
        assert spec.dropped == []
    goods = [audit_image(make_scene(scene, "good", seed=s, hard=True).image, spec) for s in range(3)]
    assert not any(r.anomalous for r in goods)
    for kind in ("missing", "recoloured"):
        assert audit_image(make_scene(scene, kind, seed=1, hard=True).image, spec).anomalous


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_draft_and_run_end_to_end(tmp_path, capsys) -> None:
    write_scene_set(tmp_path / "data", 6, seed=2, scenes=("box",))
    refs, test = tmp_path / "data/box/refs", tmp_path / "data/box/test"
    spec_path = tmp_path / "spec.yaml"
    assert main(["audit", "draft", "--refs", str(refs), "--out", str(spec_path)]) == 0
    assert load_spec(spec_path).pairs
    assert main(["audit", "draft", "--refs", str(refs)]) == 0
    assert "components:" in capsys.readouterr().out

    out = tmp_path / "audit"
    args = [
        "audit",
        "run",
        str(test),
        "--refs",
        str(refs),
        "--out",
        str(out),
        "--detector",
        "none",
        "--quiet",
    ]
    assert main([*args, "--spec", str(spec_path)]) == 0
    for name in ("index.html", "results.jsonl", "results.csv", "results.db", "spec.yaml"):
        assert (out / name).is_file()
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    labels = json.loads((tmp_path / "data/labels.json").read_text())
    assert len(rows) == 6
    for row in rows:
        rel = "box/test/" + row["image_path"].rsplit("/", 1)[1]
        assert row["record"]["pred_label"] == bool(labels[rel]["label"]), row["record"]["explanation"]
        assert row["record"]["audit"]["rules"] and (out / row["files"]["overlay"]).is_file()
    assert "LookTwice audit" in (out / "index.html").read_text()

    assert main(args) == 2  # not empty, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0  # the drafted spec equals the one given: same settings
    assert "0 processed, 6 skipped" in capsys.readouterr().err
    first = sorted(test.glob("*.png"))[0]
    make_scene("box", "missing", seed=77).image.save(first)  # a changed file is redone on resume
    odd = test / "<i onmouseover=x>.png"
    make_scene("box", "good", seed=78).image.save(odd)
    assert main([*args, "--resume"]) == 0
    assert "2 processed, 5 skipped" in capsys.readouterr().err
    page = (out / "index.html").read_text()
    assert "<i onmouseover" not in page
    changed = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert next(r for r in changed if r["image_path"] == str(first))["record"]["pred_label"] is True

    bad = _write(tmp_path, {"background": {"rgb": [1, 1, 1]}, "components": []}, "bad.yaml")
    assert (
        main(
            ["audit", "run", str(test), "--refs", str(refs), "--out", str(tmp_path / "x"), "--spec", str(bad)]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "bad.yaml: components:" in err and err.count("\n") == 1
    assert main(["audit", "draft", "--refs", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- kill -9
def test_audit_resume_after_sigkill_loses_nothing_and_redoes_nothing(tmp_path, capsys) -> None:
    """A `kill -9` in the middle of `audit run`, then `--resume`: committed images keep their rows and
    files, the rest are done, nothing is done twice."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from tests.helpers import committed_rows, kill_after_commits

    root = Path(__file__).resolve().parents[2]
    n = 16
    write_scene_set(tmp_path / "data", n, seed=5, scenes=("tray",))
    refs, test, out = tmp_path / "data/tray/refs", tmp_path / "data/tray/test", tmp_path / "audit"
    # the structural detector makes each image slow enough (tenths of a second) to be killed mid-run
    args = ["run", str(test), "--refs", str(refs), "--out", str(out), "--resolution", "96", "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.commands.audit", *args],
        cwd=root,
        env=dict(os.environ, PYTHONPATH=str(root)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def committed() -> dict[str, tuple]:
        return {r[0]: r[1:] for r in committed_rows(out)}

    kill_after_commits(proc, out, 3, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    before = committed()
    assert 3 <= len(before) < n, "the kill should land in the middle of the run"
    for status, _, stem in before.values():
        assert status == "done"
        assert json.loads((out / "images" / f"{stem}.json").read_text())["verdict"] in ("good", "defective")
        with Image.open(out / "images" / f"{stem}_overlay.png") as im:
            im.load()

    capsys.readouterr()
    assert main(["audit", *args, "--resume"]) == 0
    assert f"{n - len(before)} processed, {len(before)} skipped" in capsys.readouterr().err
    after = committed()
    assert len(after) == n and all(v[0] == "done" for v in after.values())
    for path, (_, finished_at, _) in before.items():
        assert after[path][1] == finished_at, "a committed image was redone"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == n and all(r["record"]["audit"]["rules"] for r in rows)
    assert not (out / ".staging").exists()


# ---------------------------------------------------------------------------------------------- LLM draft
def _cable_refs() -> list:
    return [make_scene("cable", "good", seed=9000 + i, flavour=FLAVOURS[i % 2]).image for i in range(4)]


def test_llm_proposal_is_parsed_strictly() -> None:
    from agent.audit.llm_draft import ProposalError, parse_proposal

    spec = draft_spec(_cable_refs())
    known = [c.name for c in spec.components]
    a, b = known[0], known[1]
    ok = parse_proposal(
        f'Here: {{"names": {{"{a}": "Left Plug!"}}, "pairs": [{{"a": "{a}", "b": "{b}"}}]}}', spec
    )
    assert ok.names == {a: "left-plug"} and ok.pairs[0].attribute == "hue"
    for reply, message in [
        ("no json here", "no JSON object"),
        ('{"names": {"gizmo": "x"}}', "unknown component 'gizmo'"),
        (f'{{"pairs": [{{"a": "{a}", "b": "{a}"}}]}}', "two different components"),
        (f'{{"pairs": [{{"a": "{a}", "b": "{b}", "attribute": "smell"}}]}}', "attribute must be one of"),
        (f'{{"names": {{"{a}": "!!!"}}}}', "empty after cleaning"),
        ('{"names": [1, 2]}', "'names' must be an object"),
    ]:
        with pytest.raises(ProposalError, match=message):
            parse_proposal(reply, spec)


def test_llm_names_and_pairs_are_validated_on_the_references() -> None:
    from agent.audit.llm_draft import refine_with_llm
    from agent.brains.common import BrainError

    refs = _cable_refs()
    spec = draft_spec(refs)
    clamp = next(c.name for c in spec.components if c.count is not None and c.count.min == 3)
    left, right = (c.name for c in spec.components if c.name.startswith("part-"))
    proposal = {
        "names": {clamp: "clamp", left: "left plug", right: "right plug"},
        # the clamps are grey and the plugs teal or orange: the first pair fails on the references
        "pairs": [{"a": clamp, "b": left, "attribute": "hue"}, {"a": left, "b": right, "attribute": "y"}],
    }
    asked = []

    def chat(prompt, history):
        asked.append((prompt, history))
        return "garbage" if not history else json.dumps(proposal)  # repaired on the second try

    new = refine_with_llm(spec, refs, [f"ref{i}" for i in range(4)], chat, "llava")
    assert len(asked) == 2 and "could not be used" in asked[1][0] and clamp in asked[0][0]
    names = [c.name for c in new.components]
    assert {"clamp", "left-plug", "right-plug"} <= set(names)
    assert any(
        d.startswith("pair:clamp~left-plug.hue") and d.endswith("(proposed by the LLM)") for d in new.dropped
    )
    assert any(p.a == "left-plug" and p.b == "right-plug" and p.attribute == "y" for p in new.pairs)
    assert "1 kept" in new.notes[-1]
    assert audit_image(make_scene("cable", "mismatched", seed=3).image, new).anomalous
    assert not audit_image(make_scene("cable", "good", seed=3).image, new).anomalous

    kept = refine_with_llm(spec, refs, ["r"] * 4, lambda p, h: "no", "llava")
    assert [c.name for c in kept.components] == [c.name for c in spec.components]
    assert "rejected after one repair" in kept.notes[-1]

    def down(prompt, history):
        raise BrainError("cannot reach http://127.0.0.1:9/v1: refused")

    assert "cannot reach" in refine_with_llm(spec, refs, ["r"] * 4, down, "openai").notes[-1]


def test_cli_draft_with_an_llm_brain_over_http(tmp_path, capsys) -> None:
    from tests.openai_server import ScriptedServer, completion

    refs_dir = tmp_path / "refs"
    refs_dir.mkdir()
    for i, im in enumerate(_cable_refs()):
        im.save(refs_dir / f"ref{i}.png")
    spec = draft_spec(_cable_refs())
    clamp = next(c.name for c in spec.components if c.count is not None and c.count.min == 3)
    server = ScriptedServer()
    try:
        server.script = [(200, completion(json.dumps({"names": {clamp: "clamp"}, "pairs": []})), 0.0)]
        out = tmp_path / "spec.yaml"
        assert (
            main(
                [
                    "audit",
                    "draft",
                    "--refs",
                    str(refs_dir),
                    "--brain",
                    f"openai:{server.url}#m",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        sent = server.requests[0]["body"]["messages"][-1]["content"]
        assert clamp in sent and "pair rules" in sent.lower()
    finally:
        server.close()
    drafted = load_spec(out)
    assert "clamp" in [c.name for c in drafted.components] and "named 1 component" in drafted.notes[-1]
    capsys.readouterr()
    assert main(["audit", "draft", "--refs", str(refs_dir), "--brain", "nonsense:x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
