"""Detector settings checked against what each detector declares (tools.settings)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from tools.detectors import DETECTORS
from tools.settings import declared_settings, describe, matches, setting_problems


def test_refmatch_settings_come_from_its_config_dataclass():
    from tools.detectors.reference_matching import ReferenceMatchingConfig, ReferenceMatchingDetector

    declared, open_ended = declared_settings(ReferenceMatchingDetector)
    assert not open_ended and set(declared) == {f.name for f in fields(ReferenceMatchingConfig)}
    assert declared["blur_sigma"].default == 4.0 and declared["blocks"].default == (4, 10)


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
