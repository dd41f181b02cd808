"""A site's own data files (``data-path``): JSON Lines, JSON or CSV rows with the usual instruction fields.

Accepted rows (first match wins; field names as in the public data sets they come from):

* multiple choice: ``choices`` (a list; in CSV a JSON list or ``a|b|c``) + ``answer`` (or ``label``) as an index
  or as the text of one choice, with the question in ``question``, ``instruction`` (+ ``input``/``context``),
  ``prompt`` or ``input``;
* Alpaca: ``instruction`` (+ optional ``input``) + ``output``;
* Dolly: ``instruction`` (+ optional ``context``) + ``response`` (the row's ``category`` becomes its group);
* ``prompt`` + ``completion``;
* ``question`` + ``answer``.

Files are read with the ``datasets`` library (``load_dataset("json" | "csv", data_files=...)``, local only).
Rows that match none of the layouts, or have an empty field, are skipped and reported with ``file:line``; a
file with no usable row is refused. A ``.json`` file holding a BIG-bench task (an object with ``examples``)
goes to :mod:`amole.data.bigbench`, so the ``data-path`` of existing sites keeps working. Prompts go through
the same :class:`PromptFormat` template as every built-in scenario, so training, evaluation and ``amole
generate`` see one prompt format.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amole.data.bigbench import read_task_file
from amole.data.dolly import dolly_prompt
from amole.data.errors import TaskFormatError
from amole.data.example import Example
from amole.data.prompt import DEFAULT_TEMPLATE, PromptFormat
from amole.data.records import Row, expand, json_lines

SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv"}
LAYOUTS = ("choices+answer", "instruction(+input)+output", "instruction(+context)+response",
           "prompt+completion", "question+answer")
_SHOWN = 10  # skipped rows listed one by one; the rest are counted


@dataclass
class OwnData:
    """The usable examples of some files and the rows that were skipped (``file:line: why``)."""

    examples: list[Example] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def data_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files ``path`` names: one file, or every .jsonl/.json/.csv in a folder (name order)."""
    p = expand(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SUFFIXES)
        if not files:
            raise TaskFormatError(f"data folder {p} holds no {'/'.join(SUFFIXES)} file")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist")
    if p.suffix.lower() not in SUFFIXES:
        raise TaskFormatError(f"{p}: unsupported data file type {p.suffix!r}; use one of {sorted(SUFFIXES)}")
    return [p]


def _is_bigbench(path: Path) -> bool:
    if path.suffix.lower() != ".json":
        return False
    with path.open("rb") as fh:
        head = fh.read(4096).lstrip()
    if not head.startswith(b"{"):
        return False
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False  # JSON Lines under a .json name, or broken: the row reader names the bad lines
    if isinstance(data, Mapping) and "examples" in data:
        return True
    raise TaskFormatError(f"{path}: a .json data file must hold a list of rows (or be a BIG-bench task.json "
                          "with an 'examples' list)")


# --------------------------------------------------------------------------------------------------
# where each row came from (datasets gives rows, not lines)


def _jsonl_lines(text: str) -> list[int]:
    return [n for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _json_array_lines(text: str, path: Path) -> list[int]:
    """Line of each element of a top-level JSON array (the position ``raw_decode`` starts at)."""
    decoder = json.JSONDecoder()
    lines, pos = [], text.index("[") + 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return lines
        try:
            _, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise TaskFormatError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from err
        lines.append(text.count("\n", 0, pos) + 1)
        pos = end


def _csv_lines(text: str) -> list[int]:
    """Line each CSV record starts on (quoted fields may span lines); the header is line 1."""
    reader = csv.reader(text.splitlines(keepends=True))
    starts, line = [], 1
    for i, record in enumerate(reader):
        if i and record:
            starts.append(line)
        line = reader.line_num + 1
    return starts


# --------------------------------------------------------------------------------------------------
# reading


def _load(path: Path, kind: str) -> list[Row]:
    """Rows of one file through ``datasets`` (in memory, a throwaway cache: nothing is left behind)."""
    import datasets

    datasets.disable_progress_bars()
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # its own "Failed to load JSON" line: we report the file ourselves
    try:
        with tempfile.TemporaryDirectory(prefix="amole-own-") as tmp:
            data = datasets.load_dataset(kind, data_files=str(path), split="train", cache_dir=tmp,
                                         keep_in_memory=True)
            return [dict(row) for row in data]
    finally:
        logger.setLevel(level)


def _jsonl_by_line(path: Path, text: str, skipped: list[tuple[int, str]]) -> list[tuple[Row, int]]:
    """Line-by-line fallback for JSON Lines that Arrow rejects as a whole (a broken line, mixed row types):
    the good rows still count, the broken lines are reported."""
    out = []
    for n, row, why in json_lines(text):
        if row is None:
            skipped.append((n, str(why)))
        else:
            out.append((row, n))
    return out


def _rows(path: Path, skipped: list[tuple[int, str]]) -> list[tuple[Row, int]]:
    """(row, line) pairs of one JSON Lines / JSON / CSV file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TaskFormatError(f"{path}: not UTF-8 text ({err})") from err
    if not text.strip():
        raise TaskFormatError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    is_array = suffix == ".json" and text.lstrip().startswith("[")
    try:
        rows = _load(path, SUFFIXES[suffix])
    except Exception as err:  # Arrow / pandas parse errors of every kind
        if suffix == ".csv" or is_array:
            raise TaskFormatError(f"{path}: cannot read it as {suffix[1:].upper()}: {err}") from err
        return _jsonl_by_line(path, text, skipped)
    if suffix == ".csv":
        lines = _csv_lines(text)
    elif is_array:
        lines = _json_array_lines(text, path)
    else:
        lines = _jsonl_lines(text)
    if len(lines) != len(rows):  # a layout the line maps do not follow: fall back to row numbers
        lines = list(range(1, len(rows) + 1))
    return list(zip(rows, lines, strict=True))


# --------------------------------------------------------------------------------------------------
# rows -> examples


def _text(row: Row, key: str) -> str | None:
    """The field as stripped text; None when absent or null (CSV and datasets fill missing columns with None)."""
    value = row.get(key)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"'{key}' must be text, got {type(value).__name__}")
    return value.strip()


def _choices(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, str):
        text = raw.strip()
        raw = json.loads(text) if text.startswith("[") else text.split("|")
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) < 2:
        raise ValueError("'choices' must list at least two answers")
    choices = tuple(str(c).strip() for c in raw)
    if not all(choices):
        raise ValueError("'choices' holds an empty answer")
    if len(set(choices)) != len(choices):
        raise ValueError("'choices' lists the same answer twice")
    return choices


def _answer_index(raw: Any, choices: tuple[str, ...]) -> int:
    """``answer`` as the text of a choice, an index (0-based) or a letter A, B, ..."""
    if isinstance(raw, str):
        text = raw.strip()
        if text in choices:
            return choices.index(text)
        if text.isdigit():
            raw = int(text)
        elif len(text) == 1 and text.isalpha() and ord(text.upper()) - ord("A") < len(choices):
            return ord(text.upper()) - ord("A")
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(choices):
        return raw
    raise ValueError(f"answer {raw!r} is neither one of the choices {list(choices)} nor an index 0..{len(choices) - 1}")


def _instruction(row: Row, template: str) -> str | None:
    instruction = _text(row, "instruction")
    if not instruction:
        return None
    context = _text(row, "context")
    if context:  # Dolly: the built-in Dolly scenario's exact prompt
        return dolly_prompt(instruction, context, template)
    extra = _text(row, "input")
    body = instruction + (f"\n\nInput:\n{extra}" if extra else "")
    return PromptFormat(template).render(body)


def row_example(row: Row, template: str = DEFAULT_TEMPLATE) -> Example:
    """One row as an Example; ValueError says why a row cannot be used."""
    group = _text(row, "category") or ""
    if row.get("choices") is not None:
        choices = _choices(row["choices"])
        raw = row.get("answer") if row.get("answer") is not None else row.get("label")
        if raw is None:
            raise ValueError("a multiple-choice row needs 'answer' (or 'label'): the index or text of the right choice")
        label = _answer_index(raw, choices)
        body = None
        for key in ("question", "instruction", "prompt", "input"):
            body = _text(row, key)
            if body:
                break
        if not body:
            raise ValueError("a multiple-choice row needs its question in 'question', 'instruction', 'prompt' "
                             "or 'input'")
        prompt = PromptFormat(template).render(body, choices)
        return Example(prompt, choices[label], choices, label, group=group)
    pairs = (("instruction", "output"), ("instruction", "response"), ("prompt", "completion"), ("question", "answer"))
    for source, target_key in pairs:
        if row.get(source) is None or row.get(target_key) is None:
            continue
        target = _text(row, target_key)
        prompt = _instruction(row, template) if source == "instruction" else _text(row, source)
        if not prompt:
            raise ValueError(f"'{source}' is empty")
        if not target:
            raise ValueError(f"'{target_key}' is empty")
        if source != "instruction":
            prompt = PromptFormat(template).render(prompt)
        return Example(prompt, target, group=group)
    present = sorted(k for k, v in row.items() if v is not None)
    for source in dict.fromkeys(s for s, _ in pairs):
        if row.get(source) is not None:
            wanted = " or ".join(repr(t) for s, t in pairs if s == source)
            raise ValueError(f"has '{source}' but no {wanted} (an empty CSV cell counts as missing)")
    raise ValueError(f"no known fields (has {present}); expected one of {list(LAYOUTS)}")


def read_own_data(path: str | os.PathLike[str], template: str = DEFAULT_TEMPLATE) -> OwnData:
    """Examples of every usable row of ``path`` (file or folder), plus the skipped rows; raises when none is usable.

    A BIG-bench task.json among the files is parsed as BIG-bench (its own prefixes, choices shuffled).
    """
    out = OwnData()
    for f in data_files(path):
        if _is_bigbench(f):
            out.examples += read_task_file(f, template=template)
            continue
        before = len(out.examples)
        bad: list[tuple[int, str]] = []
        for row, line in _rows(f, bad):
            try:
                out.examples.append(row_example(row, template))
            except ValueError as err:  # json.JSONDecodeError (a CSV 'choices' cell) is one too
                bad.append((line, str(err)))
        skipped = [f"{f}:{line}: {why}" for line, why in sorted(bad)]
        out.skipped += skipped
        if len(out.examples) == before:
            more = f" and {len(skipped) - _SHOWN} more" if len(skipped) > _SHOWN else ""
            raise TaskFormatError(f"{f}: no usable row: {'; '.join(skipped[:_SHOWN]) or 'no rows'}{more} "
                                  "(the accepted layouts: README, Your own data)")
    return out


def report_skipped(skipped: Sequence[str], stream=None) -> None:
    """Name the skipped rows on stderr (the first few one by one), so a site can fix its file."""
    if not skipped:
        return
    stream = stream or sys.stderr
    print(f"[amole.data] skipped {len(skipped)} row(s) that cannot be used:", file=stream)
    for line in skipped[:_SHOWN]:
        print(f"  {line}", file=stream)
    if len(skipped) > _SHOWN:
        print(f"  ... and {len(skipped) - _SHOWN} more", file=stream)
    stream.flush()


def load_own_examples(path: str | os.PathLike[str], template: str = DEFAULT_TEMPLATE) -> list[Example]:
    """What a client trains on from ``data-path``: the usable examples, skipped rows reported on stderr."""
    data = read_own_data(path, template)
    report_skipped(data.skipped)
    return data.examples
