"""Detector settings checked against what each detector declares, before it is built.

Why a module of its own: settings arrive as text (`--set sigmas=2`, a YAML `--config`) and detectors
get new settings often. Each detector already declares its settings, as the fields of its config
dataclass (`ReferenceMatchingConfig`) or as the typed parameters of its constructor (`WinCLIPDetector`),
so one generic check gives every setting, present and future, a one-line message with its name, the
value given and what is allowed, instead of a `TypeError` deep inside the detector. Ranges and
choices a type cannot express (a resolution that must be a multiple of 32) stay the detector's own
checks; `typing.Literal[...]` choices are checked here, and so are numeric ranges: declared with
`typing.Annotated[float, Range(0, 1)]`, or, for a number whose default is not negative and that
declares no range, "0 or more" (sigmas, sizes, weights, fractions and counts are; `--set
blur_sigma=-3` is refused here instead of failing, or silently doing something else, in the detector).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class Range:
    """The bounds of a numeric setting, declared as `Annotated[float, Range(0.0, 1.0)]` (None: open)."""

    min: float | None = None
    max: float | None = None

    def holds(self, value: float) -> bool:
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def words(self) -> str:
        if self.min is not None and self.max is not None:
            return f"from {show(self.min)} to {show(self.max)}"
        if self.min is not None:
            return "0 or more" if self.min == 0 else f"at least {show(self.min)}"
        return f"at most {show(self.max)}"


@dataclass(frozen=True)
class Setting:
    """One declared setting: its type hint (`Any` when undeclared) and its default (`_MISSING` if none)."""

    name: str
    hint: Any = Any
    default: Any = _MISSING


def declared_settings(factory: Callable[..., Any]) -> tuple[dict[str, Setting], bool]:
    """The settings a detector factory takes, and whether it also takes undeclared ones (`**kwargs`
    without a config dataclass). A constructor taking `config: SomeConfig` plus `**overrides` declares
    the dataclass's fields."""
    init = factory.__init__ if inspect.isclass(factory) else factory
    try:
        params = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return {}, True
    hints = _hints(init)
    config = _config_dataclass(hints.get("config"))
    if config is not None and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        out = {}
        # A detector may pass settings on to a part (`delegated_settings`): those count as declared.
        for cfg in (*getattr(factory, "delegated_settings", ()), config):
            out.update(_dataclass_settings(cfg))
        return out, False
    out, open_ended = {}, False
    for name, p in params.items():
        if name == "self" or p.kind is inspect.Parameter.VAR_POSITIONAL:
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            open_ended = True
            continue
        default = p.default if p.default is not inspect.Parameter.empty else _MISSING
        out[name] = Setting(name, hints.get(name, Any), default)
    return out, open_ended


def setting_problems(detector: str, factory: Callable[..., Any], options: Mapping[str, Any]) -> list[str]:
    """One line per bad setting in `options` for `factory` (the detector named `detector`); [] if all
    are acceptable. Unknown names share one line listing the known ones."""
    declared, open_ended = declared_settings(factory)
    problems = []
    unknown = sorted(k for k in options if k not in declared)
    if unknown and not open_ended:
        problems.append(f"unknown {detector} settings {unknown}; known: {sorted(declared)}")
    for key, value in options.items():
        setting = declared.get(key)
        if setting is None:
            continue
        default = "" if setting.default is _MISSING else f"; default {show(setting.default)}"
        if not matches(setting.hint, value):
            problems.append(
                f"{detector} setting {key}={show(value)}: expected {describe(setting.hint)}{default}"
            )
            continue
        bounds = value_range(setting)
        if bounds is not None and _is_number(value) and not bounds.holds(float(value)):
            problems.append(f"{detector} setting {key}={show(value)}: must be {bounds.words()}{default}")
    return problems


def value_range(setting: Setting) -> Range | None:
    """The range a numeric setting declares (`Annotated[..., Range(...)]`), else "0 or more" for a
    number whose default is not negative, else None."""
    for meta in getattr(setting.hint, "__metadata__", ()):
        if isinstance(meta, Range):
            return meta
    if _is_number(setting.default) and setting.default >= 0:
        return Range(min=0)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def matches(hint: Any, value: Any) -> bool:
    """Whether `value` (as parsed from YAML) is acceptable for the type hint `hint`."""
    if hint is Any or hint is object:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return matches(args[0], value)
    if origin in (typing.Union, types.UnionType):
        return any(matches(a, value) for a in args)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list, Sequence, typing.Sequence) or hint in (tuple, list):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(matches(a, v) for a, v in zip(args, value, strict=True))
        item = args[0] if args else Any
        return all(matches(item, v) for v in value)
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        return isinstance(value, dict)
    if inspect.isclass(hint):
        return isinstance(value, hint)
    return True  # a hint this check does not know: leave it to the detector


def describe(hint: Any) -> str:
    """`hint` in words for a message: 'a number', 'a list of text, e.g. [a, b]', 'one of x, y', ..."""
    if hint is Any or hint is object:
        return "any value"
    if hint is None or hint is type(None):
        return "null"
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return describe(args[0])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(describe(a) for a in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(show(a) for a in args)
    words = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    if hint in words:
        return words[hint]
    if origin in (tuple, list, Sequence, typing.Sequence) or hint in (tuple, list):
        item = args[0] if args else Any
        plural = {"a whole number": "whole numbers", "a number": "numbers", "text": "text"}
        inner = plural.get(describe(item), describe(item))
        example = {"whole numbers": "[4, 10]", "numbers": "[0.5, 1.0]", "text": "[a, b]"}.get(inner, "[...]")
        return f"a list of {inner}, e.g. {example}"
    if origin in (dict, Mapping, typing.Mapping) or hint is dict:
        return "a mapping, e.g. {key: value}"
    return getattr(hint, "__name__", str(hint))


def show(value: Any) -> str:
    """A value as the user would write it (JSON/YAML style): 'abc', 1.5, [hflip, vflip], null."""
    if isinstance(value, str):
        return repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    """Type hints of `func`'s parameters; one that names a type imported only for type checkers
    (a `TYPE_CHECKING` import) counts as `Any` instead of hiding every other hint."""
    try:
        return typing.get_type_hints(func, include_extras=True)
    except NameError:
        pass
    out: dict[str, Any] = {}
    namespace = getattr(func, "__globals__", {})
    for name, hint in getattr(func, "__annotations__", {}).items():
        try:
            out[name] = eval(hint, namespace) if isinstance(hint, str) else hint  # noqa: S307 - annotations only
        except Exception:  # noqa: BLE001 - an unresolvable annotation
            out[name] = Any
    return out


def _dataclass_settings(config: type) -> dict[str, Setting]:
    field_hints = typing.get_type_hints(config, include_extras=True)
    out = {}
    for f in dataclasses.fields(config):
        default = f.default if f.default is not dataclasses.MISSING else _MISSING
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = Setting(f.name, field_hints.get(f.name, Any), default)
    return out


def _config_dataclass(hint: Any) -> type | None:
    """The dataclass in a `config: SomeConfig | None` hint, if any."""
    for candidate in (hint, *typing.get_args(hint)):
        if inspect.isclass(candidate) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


__all__ = ["Range", "Setting", "declared_settings", "value_range", "describe", "matches", "setting_problems", "show"]
