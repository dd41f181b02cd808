"""The registry of methods: every module of this package declares its methods with ``register`` (base.py), and
this module finds them all. The config (Hydra's ``strategy=<name>`` presets), both apps and the results tables
read it; adding a baseline is a new module here and its test.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import is_dataclass
from typing import Any

import amole.strategies as _package
from amole.strategies.base import METHODS, ClientProcedure, Method

_SKIP = {"base", "registry"}
for _info in pkgutil.iter_modules(_package.__path__):
    if _info.name not in _SKIP:
        importlib.import_module(f"{_package.__name__}.{_info.name}")


class StrategyConflict(ValueError):
    """A setting the user gave contradicts what the chosen method needs (never silently changed)."""


def method_named(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {', '.join(names())}") from None


def names(kind: str | None = None) -> list[str]:
    """Method names in table order, optionally of one kind (method / ablation / baseline)."""
    return [m.name for m in sorted(METHODS.values(), key=lambda m: m.order) if kind in (None, m.kind)]


def client_procedure(name: str) -> ClientProcedure:
    """The client half of method ``name``, imported only here (on the client)."""
    module, _, attr = method_named(name).client.partition(":")
    return getattr(importlib.import_module(module), attr)()


def preset(method: Method) -> dict[str, Any]:
    """The nested config a ``strategy=<name>`` preset sets: the method's name and every key it fixes."""
    node: dict[str, Any] = {"federation": {"strategy": method.name}}
    for key, value in method.fixed.items():
        *path, leaf = key.split(".")
        target = node
        for part in path:
            target = target.setdefault(part, {})
        target[leaf] = value
    return node


def _get(settings: Any, key: str) -> Any:
    value = settings
    for part in key.split("."):
        value = getattr(value, part) if is_dataclass(value) else value[part]
    return value


def check_fixed(settings: Any) -> None:
    """Refuse settings whose values contradict what their method fixes; ``settings`` is a Settings object or a
    nested mapping of the composed config."""
    name = _get(settings, "federation.strategy")
    method = method_named(name)
    for key, value in method.fixed.items():
        got = _get(settings, key)
        if got != value:
            raise StrategyConflict(f"{key}={_yaml(got)} contradicts strategy={name}, which fixes "
                                   f"{key}={_yaml(value)} ({method.summary}); drop the setting or choose another "
                                   "strategy")


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else str(value)


__all__ = ["METHODS", "Method", "StrategyConflict", "check_fixed", "client_procedure", "method_named",
           "names", "preset"]
