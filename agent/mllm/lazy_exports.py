"""Module-level `__getattr__`, `__dir__` and `__all__` that import a package's public names on first
use, so `import agent.mllm` (and `agent.mllm.train`) stays cheap: torch, transformers, accelerate and
peft load only when a name that needs them is touched."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """(`__getattr__`, `__dir__`, `__all__`) for `package`, whose `exports` map each defining module to
    the names it gives the package. A name is imported when first asked for and kept in the package's
    `namespace` (its `globals()`), so later lookups are plain attribute reads."""
    where = {name: module for module, names in exports.items() for name in names}

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(set(namespace) | set(where))

    return getattr_, dir_, sorted(where)
