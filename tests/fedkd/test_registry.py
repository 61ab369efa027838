"""``fedkd.registry.Registry``: lookups, and names whose module is imported at first use."""

from __future__ import annotations

import sys
import textwrap

import pytest
from helpers import python_stdout

from fedkd.errors import ConfigError
from fedkd.registry import Registry


def _module(tmp_path, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body), encoding="utf-8")
    return name


def test_a_lazy_name_is_known_at_once_and_imported_at_its_first_lookup(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("widget")
    registry.register("eager")(int)
    mod = _module(
        tmp_path,
        "lazy_widget_mod",
        """
        import sys
        REG = sys.modules["__registry_under_test__"]
        @REG.register("late")
        class Late:
            pass
        """,
    )
    monkeypatch.setitem(sys.modules, "__registry_under_test__", registry)
    registry.lazy("late", mod)
    assert registry.names() == ["eager", "late"] and "late" in registry
    assert list(registry) == ["eager", "late"]
    assert mod not in sys.modules  # known, not imported
    assert registry.get("late").__name__ == "Late"
    assert mod in sys.modules
    assert registry.get("late") is sys.modules[mod].Late  # imported once, then registered


def test_a_lazy_name_twice_or_a_module_that_does_not_register_it_is_a_bug(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    registry: Registry = Registry("widget")
    registry.lazy("x", _module(tmp_path, "widget_without_x", "VALUE = 1\n"))
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.lazy("x", "anything")
    with pytest.raises(RuntimeError, match="does not register 'x'"):
        registry.get("x")
    registry.register("y")(int)
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.lazy("y", "anything")


def test_an_unknown_name_lists_the_lazy_names_too():
    registry: Registry = Registry("widget")
    registry.register("alpha")(int)
    registry.lazy("beta", "no_such_module_needed")
    with pytest.raises(
        ConfigError, match=r"unknown widget 'betta'; known: alpha, beta; did you mean beta\?"
    ):
        registry.get("betta")


def test_looking_up_a_strategy_imports_only_its_own_module():
    """``fd`` computes nothing on the server: finding it loads no torch; ``dsfl`` trains a
    server model and loads it (server/strategies/__init__.py)."""
    code = (
        "import sys\n"
        "from server.strategies import STRATEGIES\n"
        "names = STRATEGIES.names()\n"
        "STRATEGIES.get('fd')\n"
        "print(len(names), 'torch' in sys.modules, 'server.strategies.dsfl' in sys.modules)\n"
        "STRATEGIES.get('dsfl')\n"
        "print('torch' in sys.modules)\n"
    )
    assert python_stdout(code).split() == ["10", "False", "False", "True"]
