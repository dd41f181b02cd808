"""Turn BIG-bench ``task.json`` files into :class:`Example` lists, from a local folder, the bundle or the cache."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from amole.data.errors import TaskFormatError, UnknownTaskError
from amole.data.example import Example
from amole.data.fetch import fetch_tasks, unknown_task_message
from amole.data.prompt import (
    BIGBENCH_CHOICE_PREFIX,
    BIGBENCH_INPUT_PREFIX,
    BIGBENCH_OUTPUT_PREFIX,
    DEFAULT_TEMPLATE,
    PromptFormat,
)

# A source is a folder of task files, None (download cache) or any callable name -> examples (e.g. synthetic).
TaskSource = str | os.PathLike[str] | Callable[[str], list[Example]] | None
# `local_dir: bundled`: the demo's task subsets that ship in the package (tools/bundle_tasks.py), so the demo
# needs no download.
BUNDLED = "bundled"
BUNDLED_DIR = Path(__file__).parent / "bundled" / "bigbench"


def _fail(origin: str, what: str) -> TaskFormatError:
    return TaskFormatError(f"malformed BIG-bench task file {origin}: {what}")


def _str_field(data: Mapping[str, Any], key: str, default: str, origin: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise _fail(origin, f"{key!r} must be a string, got {type(value).__name__}")
    return value


def prompt_format(data: Mapping[str, Any], origin: str, template: str = DEFAULT_TEMPLATE) -> PromptFormat:
    """The task's own prefixes (BIG-bench defaults where absent) inside the model template."""
    return PromptFormat(
        template=template,
        task_prefix=_str_field(data, "task_prefix", "", origin),
        input_prefix=_str_field(data, "example_input_prefix", BIGBENCH_INPUT_PREFIX, origin),
        output_prefix=_str_field(data, "example_output_prefix", BIGBENCH_OUTPUT_PREFIX, origin),
        choice_prefix=_str_field(data, "choice_prefix", BIGBENCH_CHOICE_PREFIX, origin),
    )


def _example(raw: Any, i: int, fmt: PromptFormat, rng: random.Random | None, origin: str) -> Example:
    where = f"examples[{i}]"
    if not isinstance(raw, Mapping) or not isinstance(raw.get("input"), str):
        raise _fail(origin, f"{where} has no string 'input'")
    scores = raw.get("target_scores")
    if scores is not None:  # multiple choice wins when both are present (e.g. strategyqa)
        if not isinstance(scores, Mapping) or not scores:
            raise _fail(origin, f"{where} 'target_scores' must be a non-empty mapping choice -> score")
        if not all(isinstance(v, int | float) for v in scores.values()):
            raise _fail(origin, f"{where} 'target_scores' values must be numbers")
        choices = [str(c) for c in scores]
        best = str(max(scores, key=scores.__getitem__))  # first of the top-scored choices
        if rng is not None:  # files often list the correct choice first: avoid a positional shortcut
            rng.shuffle(choices)
        choices_t = tuple(choices)
        return Example(fmt.render(raw["input"], choices_t), best, choices_t, choices_t.index(best))
    target = raw.get("target")
    if isinstance(target, list):
        target = target[0] if target else None
    if not isinstance(target, str | int | float) or isinstance(target, bool):
        raise _fail(origin, f"{where} needs 'target' (string or non-empty list) or 'target_scores'")
    return Example(fmt.render(raw["input"]), str(target))


def parse_task(
    data: Any, origin: str, template: str = DEFAULT_TEMPLATE, shuffle_choices: bool = True
) -> list[Example]:
    """Examples of one decoded ``task.json``; ``origin`` names the file in errors."""
    if not isinstance(data, Mapping):
        raise _fail(origin, "top level must be a JSON object")
    examples = data.get("examples")
    if not isinstance(examples, list) or not examples:
        hint = "; a parent of sub-tasks loads as '<task>/<subtask>', programmatic tasks have no task.json"
        raise _fail(origin, f"missing or empty 'examples' list{hint}")
    fmt = prompt_format(data, origin, template)
    rng = random.Random(f"choices:{data.get('name', origin)}") if shuffle_choices else None
    return [_example(raw, i, fmt, rng, origin) for i, raw in enumerate(examples)]


def read_task_file(path: str | os.PathLike[str], **kwargs: Any) -> list[Example]:
    """Parse one task file, reporting undecodable JSON with the file name."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise _fail(str(path), f"invalid JSON ({err})") from err
    return parse_task(data, str(path), **kwargs)


def local_task_path(folder: Path, task: str) -> Path:
    """``<dir>/<task>.json`` or ``<dir>/<task>/task.json``; a clear error listing what the folder has."""
    for path in (folder / f"{task}.json", folder / task / "task.json"):
        if path.is_file():
            return path
    if not folder.is_dir():
        raise UnknownTaskError(f"task source folder {folder} does not exist")
    available = [p.stem for p in folder.glob("*.json")] + [p.parent.name for p in folder.glob("*/task.json")]
    raise UnknownTaskError(unknown_task_message([task], available, f"folder {folder}"))


def load_tasks(
    tasks: Iterable[str],
    source: TaskSource = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> dict[str, list[Example]]:
    """Examples per task; ``source`` None downloads into the cache (one sdist pass for all missing tasks)."""
    names = list(dict.fromkeys(tasks))
    if callable(source):
        return {t: source(t) for t in names}
    local = None if source is None else BUNDLED_DIR if str(source) == BUNDLED else Path(source).expanduser()
    paths = fetch_tasks(names, cache_dir) if local is None else {t: local_task_path(local, t) for t in names}
    return {t: read_task_file(paths[t], **kwargs) for t in names}


def load_task(
    task: str, source: TaskSource = None, cache_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> list[Example]:
    """Examples of one task; see :func:`load_tasks`."""
    return load_tasks([task], source, cache_dir, **kwargs)[task]
