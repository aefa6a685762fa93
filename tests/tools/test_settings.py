"""Detector settings checked against what each detector declares (tools.settings)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal

from PIL import Image

from tools.detectors import DETECTORS
from tools.settings import Range, declared_settings, describe, matches, setting_problems


def test_refmatch_settings_come_from_its_config_dataclass():
    from tools.detectors.reference_matching import ReferenceMatchingConfig, ReferenceMatchingDetector

    declared, open_ended = declared_settings(ReferenceMatchingDetector)
    assert not open_ended and set(declared) == {f.name for f in fields(ReferenceMatchingConfig)}
    assert declared["blur_sigma"].default == 2.0 and declared["blocks"].default == (4, 10)


def test_every_registered_detector_declares_typed_settings():
    for name in DETECTORS.names():
        declared, _ = declared_settings(DETECTORS.get(name))
        assert declared, name
        assert setting_problems(name, DETECTORS.get(name), {}) == []


def test_bad_values_get_one_line_each_with_name_value_and_what_is_allowed():
    factory = DETECTORS.get("refmatch")
    problems = setting_problems(
        "refmatch",
        factory,
        {"score_margin": "abc", "blocks": 4, "augment": "hflip", "standardize": "maybe", "resolution": 1.5,
         "blur_sigma": 3, "align": "sideways", "nonsense": 1},
    )
    assert problems == [
        "unknown refmatch settings ['nonsense']; known: " + str(sorted(declared_settings(factory)[0])),
        "refmatch setting score_margin='abc': expected a number; default 0.1",
        "refmatch setting blocks=4: expected a list of whole numbers, e.g. [4, 10]; default [4, 10]",
        "refmatch setting augment='hflip': expected one of 'auto' or a list of text, e.g. [a, b]; default 'auto'",
        "refmatch setting standardize='maybe': expected true or false; default true",
        "refmatch setting resolution=1.5: expected a whole number; default 192",
        "refmatch setting align='sideways': expected one of 'auto', 'on', 'off' or true or false; default 'auto'",
    ]  # blur_sigma=3: an integer is a fine number


def test_constructor_signatures_are_checked_too():
    problems = setting_problems("winclip", DETECTORS.get("winclip"), {"temperature": [1], "scales": [2, 3]})
    assert problems == ["winclip setting temperature=[1]: expected a number; default 0.07"]
    assert setting_problems("fused", DETECTORS.get("fused"), {"weights": None, "sam": "facebook/sam-vit-base"}) == []
    assert "unknown winclip settings ['nope']" in setting_problems("winclip", DETECTORS.get("winclip"), {"nope": 1})[0]


@dataclass
class _FutureConfig:
    mode: Literal["fast", "exact"] = "fast"
    margin: float | None = None
    names: tuple[str, ...] = ()


class _FutureDetector:
    """A detector added later: declares its settings the same way, nothing else to register."""

    def __init__(self, config: _FutureConfig | None = None, **overrides: Any) -> None:
        self.config = config


def test_a_new_detector_is_checked_without_new_code():
    problems = setting_problems("future", _FutureDetector, {"mode": "slow", "margin": "x", "names": ["a", 2]})
    assert problems == [
        "future setting mode='slow': expected one of 'fast', 'exact'; default 'fast'",
        "future setting margin='x': expected a number or null; default null",
        "future setting names=[\"a\", 2]: expected a list of text, e.g. [a, b]; default []",
    ]
    assert setting_problems("future", _FutureDetector, {"mode": "exact", "margin": None, "names": ["a"]}) == []


def test_matches_and_describe_basics():
    assert matches(float, 2) and not matches(float, True) and not matches(int, 2.0) and matches(bool, False)
    assert matches(tuple[int, int], [1, 2]) and not matches(tuple[int, int], [1, 2, 3])
    assert matches(dict[str, Any], {"a": 1}) and not matches(dict[str, Any], [1])
    assert describe(int | None) == "a whole number or null"


@dataclass
class _RangedConfig:
    blur_sigma: float = 4.0
    offset: Annotated[float, Range(-1.0, 1.0)] = 0.0
    shift: float = -0.5  # a negative default declares a signed setting


class _RangedDetector:
    def __init__(self, config: _RangedConfig | None = None, **overrides: object) -> None:
        pass


def test_numeric_ranges_declared_or_not_negative_by_default():
    assert setting_problems("demo", _RangedDetector, {"blur_sigma": 0, "offset": -0.5, "shift": -3}) == []
    problems = setting_problems("demo", _RangedDetector, {"blur_sigma": -3, "offset": 2})
    assert problems == [
        "demo setting blur_sigma=-3: must be 0 or more; default 4.0",
        "demo setting offset=2: must be from -1.0 to 1.0; default 0.0",
    ]


def test_negative_blur_is_refused_by_the_command_line(tmp_path, capsys):
    from agent.cli import main

    image = tmp_path / "part.png"
    Image.new("RGB", (32, 32), (120, 120, 120)).save(image)
    assert main(["inspect", str(image), "--set", "blur_sigma=-3", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "blur_sigma=-3: must be 0 or more" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
