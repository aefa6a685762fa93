"""A small name -> factory registry, used for detectors, brains and datasets.

Entries are registered by a decorator where the class is defined; lookups fail with a message that
lists what is available, so a typo on the command line teaches the user the valid names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class RegistryError(KeyError):
    """An unknown name was asked of a registry."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to factories (usually classes) of one kind of interchangeable part."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}
        self._lazy: dict[str, str] = {}  # name -> "package.module:Attribute", imported on first use
        self._help: dict[str, str] = {}

    def register_lazy(self, name: str, target: str, help: str = "") -> None:
        """Register by import path, so heavy optional dependencies load only when the entry is used."""
        if ":" not in target:
            raise ValueError(f"lazy target must look like 'module:Attribute', got {target!r}")
        self._lazy[name] = target
        self._help[name] = help

    def register(self, name: str, help: str = "") -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries and self._entries[name] is not factory:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = factory
            doc = (factory.__doc__ or "").strip().splitlines()
            self._help[name] = help or (doc[0] if doc else "")
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        if name in self._entries:
            return self._entries[name]
        if name in self._lazy:
            module_name, attr = self._lazy[name].split(":", 1)
            factory = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = factory
            return factory
        known = ", ".join(self.names()) or "none"
        raise RegistryError(f"unknown {self.kind} {name!r}; available: {known}")

    def build(self, name: str, **kwargs: object) -> T:
        return self.get(name)(**kwargs)

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._lazy))

    def describe(self, name: str) -> str:
        return self._help.get(name, "")

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
