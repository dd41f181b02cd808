"""Which of a run's stored settings count when two runs are compared.

Three tools compare stored configs: a resume (``tools.chunking``: may this checkpoint go on under this command?),
the results tables (``tools.results``: may these runs share a table?) and the untrained references
(``tools.untrained``: which reference scores this run?). Each ignores its own keys, and all three follow one rule:
a key set to null counts as absent, so a setting added later with a null default leaves every older run, key and
file as it was.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

__all__ = ["significant"]


def significant(config: Mapping[str, Any], ignored: Mapping[str, Collection[str]],
                sections: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Each section of ``config`` (all dict sections, or ``sections``) without its ``ignored`` keys or null values.

    Values compare as plain JSON: lists and tuples alike (a stored JSON config holds lists where a live one may
    hold tuples), and a whole number alike as 16 or 16.0 (runner versions stored float settings either way)."""
    names = [s for s in config if isinstance(config[s], Mapping)] if sections is None else list(sections)
    return {s: {k: _plain(v) for k, v in (config.get(s) or {}).items() if k not in ignored.get(s, ()) and v is not None}
            for s in names}


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return int(value) if isinstance(value, float) and value.is_integer() else value
