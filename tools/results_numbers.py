"""Small number helpers shared by the results modules (tables, yardstick, plot): missing values stay out of
means and render as a dash, so one failed measurement never breaks a table."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["finite", "fmt", "id_key", "in_order", "mean"]


def finite(xs: Iterable[Any]) -> list[float]:
    """The values that are finite numbers: missing or failed measurements (None, NaN) stay out of means."""
    out = []
    for x in xs:
        try:
            v = float(x)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def mean(xs: Sequence[float]) -> float:
    """NaN for no values, so an empty column renders as a dash rather than raising."""
    return sum(xs) / len(xs) if xs else math.nan


def fmt(x: Any, spec: str = ".4f", empty: str = "–") -> str:
    """``x`` formatted by ``spec``, or ``empty`` when it is missing or not finite."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return empty
    return format(v, spec) if math.isfinite(v) else empty


def id_key(x: str) -> tuple[int, str]:
    """Sort key of a client or seed id (a numeric string) in numeric order: 2 before 10."""
    return len(x), x


def in_order(ids: Iterable[str]) -> list[str]:
    """Client or seed ids (numeric strings) in numeric order: 2 before 10."""
    return sorted(ids, key=id_key)
