"""Super-NaturalInstructions tasks (one per client, generation scored by Rouge-L; spec §4).

No local copy ships with this project, so there are two ways in:

- a folder of the original task files (``git clone https://github.com/allenai/natural-instructions``, then
  ``scenario.local_dir=<clone>/tasks``): ``<dir>/<task>.json`` with ``"Definition"`` and
  ``"Instances": [{"input", "output": [...]}]``;
- a hub id (``Muennighoff/natural-instructions``: rows ``task_name``, ``definition``, ``inputs``, ``targets``),
  loaded with ``datasets.load_dataset`` and filtered by task name; this needs internet and fails with a
  clear message without it.

The prompt is the task definition followed by the instance input; the target is the first listed output.
With ``prompts="paper"`` it is the official code's: the Alpaca template, the definition's first string as the
instruction and the instance input as the ``### Input:``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from amole.data.errors import DataSourceError, TaskFormatError, UnknownTaskError
from amole.data.example import Example
from amole.data.fetch import unknown_task_message
from amole.data.prompt import DEFAULT_TEMPLATE, PromptFormat, alpaca_prompt, check_style
from amole.data.records import expand, hub_rows

NATINST_HUB_ID = "Muennighoff/natural-instructions"


def natinst_prompt(definition: str, text: str, template: str = DEFAULT_TEMPLATE, prompts: str = "amole") -> str:
    if check_style(prompts) == "paper":
        return alpaca_prompt(definition, text)
    return PromptFormat(template).render(f"{definition.strip()}\n\nInput: {text.strip()}")


def _definition(value: Any, origin: str, first: bool = False) -> str:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = (value[0] if value else "") if first else "\n".join(value)
    if not isinstance(value, str):
        raise TaskFormatError(f"{origin}: 'Definition' must be a string or a list of strings")
    return value


def parse_natinst_task(data: Any, origin: str, task: str = "", template: str = DEFAULT_TEMPLATE,
                       prompts: str = "amole") -> list[Example]:
    """Examples of one decoded task file of allenai/natural-instructions (``group`` = ``task``)."""
    if not isinstance(data, dict) or not isinstance(data.get("Instances"), list) or not data["Instances"]:
        raise TaskFormatError(f"{origin}: a Natural-Instructions task file needs a non-empty 'Instances' list")
    definition = _definition(data.get("Definition", ""), origin, first=prompts == "paper")
    out: list[Example] = []
    for i, inst in enumerate(data["Instances"]):
        output = inst.get("output") if isinstance(inst, dict) else None
        target = output[0] if isinstance(output, list) and output else output
        if not isinstance(inst, dict) or not isinstance(inst.get("input"), str) or not isinstance(target, str):
            raise TaskFormatError(f"{origin}: Instances[{i}] needs a string 'input' and 'output' (string or list)")
        out.append(Example(natinst_prompt(definition, inst["input"], template, prompts), target, group=task))
    return out


@lru_cache(maxsize=2)
def _hub_by_task(hub_id: str, split: str) -> dict[str, list[dict[str, Any]]]:
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in hub_rows(hub_id, split, "Natural Instructions", None):
        by_task.setdefault(str(row.get("task_name")), []).append(row)
    return by_task


def load_natinst_task(
    task: str,
    local_dir: str | None = None,
    hub_id: str | None = NATINST_HUB_ID,
    hub_split: str = "train",
    template: str = DEFAULT_TEMPLATE,
    prompts: str = "amole",
) -> list[Example]:
    """Examples of ``task`` (e.g. ``task190_snli_classification``) from ``local_dir`` or else the hub."""
    if local_dir is not None:
        folder = expand(local_dir)
        for path in (folder / f"{task}.json", folder / "tasks" / f"{task}.json"):
            if path.is_file():
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                except json.JSONDecodeError as err:
                    raise TaskFormatError(f"{path}: invalid JSON ({err})") from err
                return parse_natinst_task(data, str(path), task, template, prompts)
        if not hub_id:
            available = [p.stem for p in folder.glob("*.json")] if folder.is_dir() else []
            raise UnknownTaskError(unknown_task_message([task], available, f"folder {folder}"))
    if not hub_id:
        raise DataSourceError("Natural Instructions needs scenario.local_dir (a folder of allenai task files) "
                              "or scenario.hub_id")
    rows = _hub_by_task(hub_id, hub_split).get(task)
    if not rows:
        raise UnknownTaskError(unknown_task_message([task], list(_hub_by_task(hub_id, hub_split)),
                                                    f"{hub_id}[{hub_split}]"))
    return [Example(natinst_prompt(str(r["definition"]), str(r["inputs"]), template, prompts), str(r["targets"]),
                    group=task) for r in rows]
