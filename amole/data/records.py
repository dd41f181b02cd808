"""Raw rows of a data set from local JSON Lines / JSON files, or from the Hugging Face hub as a fallback.

A local copy always wins, so nothing here needs the network once the files are in place. ``local_path`` may be
a ``.jsonl`` file (one JSON object per line), a ``.json`` file (a list of objects), a folder (every ``*.jsonl``
and ``*.json`` in it, in name order) or a glob pattern; ``~`` and ``$VARS`` are expanded on the machine that
reads it, so one config works for clients whose home folders differ. When the local copy is missing and a hub
id is configured, the rows come from ``datasets.load_dataset`` and a JSON Lines copy is written to
``local_path`` for the next run (and for the other clients on the same machine).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from amole.data.errors import DataSourceError, TaskFormatError
from amole.util.atomic import atomic_path
from amole.util.paths import expand

Row = dict[str, Any]
Origin = str  # "file:line" (or "hub-id[split]:index") named in parse errors


def local_files(path: str | os.PathLike[str]) -> list[Path]:
    """The data files ``path`` names (file, folder or glob), sorted; empty when there are none."""
    p = expand(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix in (".jsonl", ".json"))
    if glob.has_magic(str(p)):
        return sorted(Path(f) for f in glob.glob(str(p)) if Path(f).is_file())
    return []


def files_signature(path: str | os.PathLike[str] | None) -> tuple[tuple[str, int, int], ...]:
    """(name, size, mtime) of the files ``path`` names: a cache key that changes when the data does."""
    if path is None:
        return ()
    return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in local_files(path))


def read_file_rows(path: Path) -> list[tuple[Row, Origin]]:
    """Rows of one ``.jsonl`` (or ``.json`` list) file, each with its ``file:line`` origin."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise TaskFormatError(f"{path}: invalid JSON ({err})") from err
        if not all(isinstance(r, Mapping) for r in rows):
            raise TaskFormatError(f"{path}: a .json data file must be a list of objects")
        return [(dict(r), f"{path}[{i}]") for i, r in enumerate(rows)]
    out: list[tuple[Row, Origin]] = []
    for n, row, why in json_lines(text):
        if row is None:
            raise TaskFormatError(f"{path}:{n}: {why}")
        out.append((row, f"{path}:{n}"))
    return out


def json_lines(text: str) -> Iterator[tuple[int, Row | None, str | None]]:
    """Each non-empty line of a JSON Lines text: (line number, the object, None), or (line number, None, why)
    for a line that is not a JSON object, so each caller decides whether a bad line stops it or is skipped."""
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            yield n, None, f"invalid JSON ({err.msg})"
            continue
        if isinstance(row, Mapping):
            yield n, dict(row), None
        else:
            yield n, None, f"a row must be a JSON object, got {type(row).__name__}"


def hub_rows(hub_id: str, split: str, what: str, local_path: str | None) -> list[Row]:
    """All rows of ``hub_id``/``split`` through ``datasets.load_dataset``; a clear error when it cannot be had."""
    try:
        from datasets import load_dataset

        data = load_dataset(hub_id, split=split)
    except Exception as err:  # offline, unknown id or split, gated data set: all end the same way
        where = f"scenario.local_path={local_path}" if local_path else "scenario.local_path"
        raise DataSourceError(
            f"could not load {what} from the Hugging Face hub ({hub_id!r}, split {split!r}): "
            f"{type(err).__name__}: {err}. Without internet, put a local copy (JSON Lines) at {where}, "
            "or point scenario.local_path at the copy you have"
        ) from err
    return [dict(row) for row in data]


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows atomically (temp file, then rename), so concurrent clients never read half a file."""
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_rows(
    what: str, local_path: str | None, hub_id: str | None, hub_split: str, copy_name: str
) -> list[tuple[Row, Origin]]:
    """Rows from ``local_path`` if it names files, else from the hub (then saved under ``local_path``).

    ``copy_name`` is the file name of that copy when ``local_path`` is a folder (a path ending in ``.jsonl``
    is used as the file itself).
    """
    if local_path is not None:
        files = local_files(local_path)
        if files:
            return [item for f in files for item in read_file_rows(f)]
    if not hub_id:
        raise DataSourceError(
            f"no {what} data: scenario.local_path={local_path!r} names no .jsonl/.json file and no "
            "scenario.hub_id is set; point scenario.local_path at a local copy (file, folder or glob)"
        )
    rows = hub_rows(hub_id, hub_split, what, local_path)
    origin = f"{hub_id}[{hub_split}]"
    if local_path is not None and not glob.has_magic(str(local_path)):
        target = expand(local_path)
        target = target if target.suffix == ".jsonl" else target / copy_name
        try:
            write_jsonl(target, rows)
            print(f"[amole.data] saved {len(rows)} {what} rows to {target}", file=sys.stderr, flush=True)
        except OSError as err:  # a read-only cache is not fatal: the rows are in memory
            print(f"[amole.data] could not save a copy to {target}: {err}", file=sys.stderr, flush=True)
    return [(row, f"{origin}:{i}") for i, row in enumerate(rows)]
