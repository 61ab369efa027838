"""One small registry class, used once per kind of component.

A new method, model or dataset is one decorated function or class in its own
file plus one config file; nothing else is edited. Lookups of unknown names
raise :class:`~fedkd.errors.ConfigError` listing the known names.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from fedkd.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> component mapping for one kind (e.g. ``"model"``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._checks: dict[str, Callable[[Mapping[str, Any]], None]] = {}
        self._modules: dict[str, str] = {}  # name -> module that registers it when imported

    def lazy(self, name: str, module: str) -> None:
        """Know ``name`` now and import ``module`` (which registers it) at its first ``get``:
        a process that never uses a component does not pay for its imports."""
        if name in self._items or name in self._modules:
            raise RuntimeError(f"{self.kind} '{name}' is registered twice")
        self._modules[name] = module

    def register(
        self, name: str, check: Callable[[Mapping[str, Any]], None] | None = None
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``; duplicate names are a bug.

        ``check(section)``: checks the component's config section (e.g. ``cfg["partition"]``)
        without data or torch; ``check`` runs it right after the config is composed.
        """

        def decorator(obj: T) -> T:
            self._modules.pop(name, None)  # a lazy name's module registering it
            if name in self._items:
                raise RuntimeError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            if check is not None:
                self._checks[name] = check
            return obj

        return decorator

    def get(self, name: str) -> T:
        """Return the component called ``name`` or raise a one-line ConfigError."""
        if name not in self._items and name in self._modules:
            importlib.import_module(self._modules[name])
            if name not in self._items:
                raise RuntimeError(f"module {self._modules[name]} does not register {name!r}")
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(self.names()) or "(none)"
            close = difflib.get_close_matches(str(name), self.names(), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigError(f"unknown {self.kind} '{name}'; known: {known}{hint}") from None

    def check(self, name: str, section: Mapping[str, Any]) -> None:
        """Look ``name`` up and run its registered check on its config ``section``
        (a one-line ConfigError); components without a check pass."""
        self.get(name)
        if name in self._checks:
            self._checks[name](section)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a component registered for one test or plugin session)."""
        self.get(name)
        del self._items[name]
        self._checks.pop(name, None)

    def names(self) -> list[str]:
        return sorted({*self._items, *self._modules})

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
