"""SNLI as multiple choice: does the premise entail the hypothesis? Yes / Maybe / No (spec §4, LM scoring).

Rows are read from local JSON Lines (see :mod:`amole.data.records`) or the hub (``stanfordnlp/snli``). Accepted
row layouts: ``{"premise", "hypothesis", "label"}`` (the hub's and the local copy's) or the original SNLI
release's ``{"sentence1", "sentence2", "gold_label"}``. Labels are the strings entailment / neutral /
contradiction or the hub's integers 0 / 1 / 2; rows without a gold label (``-1`` or ``"-"``) are dropped.
PTB-tokenized text (``"a church ."``, ```` ``quoted'' ````) is detokenized to ordinary spacing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from amole.data.errors import TaskFormatError
from amole.data.example import Example
from amole.data.prompt import DEFAULT_TEMPLATE, SNLI_PAPER, PromptFormat, check_style
from amole.data.records import Origin, Row, load_rows

SNLI_HUB_ID = "stanfordnlp/snli"
LABELS = ("entailment", "neutral", "contradiction")  # the hub's label ids 0, 1, 2
ANSWERS = ("Yes", "Maybe", "No")  # the choice text of each label, in the same order
QUESTION = "Does the premise entail the hypothesis? Answer Yes, Maybe or No."
_NO_LABEL = ("-", "", "-1", -1, None)
# Rows per split of stanfordnlp/snli (unlabelled ones included): the official code's SNLI eval / test ratios are
# validation / total and test / total of these, over the pooled train+validation+test.
HUB_SPLIT_ROWS = {"train": 550_152, "validation": 10_000, "test": 10_000}
TRAIN_PAIRS = 549_367  # labelled pairs of the train split (the pool of all three holds 569,033)
PAPER_HUB_SPLIT = "train+validation+test"

_DETOK = [
    (re.compile(r"``\s*"), '"'),
    (re.compile(r"\s*''"), '"'),
    (re.compile(r" ([.,!?;:%])"), r"\1"),
    (re.compile(r" (n't|'s|'re|'m|'ll|'ve|'d)\b", re.IGNORECASE), r"\1"),
    (re.compile(r"([(\[$]) "), r"\1"),
    (re.compile(r" ([)\]])"), r"\1"),
]


def detokenize(text: str) -> str:
    """Undo PTB tokenization's spacing (a no-op on ordinary text)."""
    for pattern, repl in _DETOK:
        text = pattern.sub(repl, text)
    return text.strip()


def nli_prompt(premise: str, hypothesis: str, template: str = DEFAULT_TEMPLATE, prompts: str = "amole") -> str:
    """Our question in ``template``, or (``prompts="paper"``) the official code's SNLI prompt."""
    if check_style(prompts) == "paper":
        return SNLI_PAPER.format(premise=detokenize(premise), hypothesis=detokenize(hypothesis))
    body = f"Premise: {detokenize(premise)}\nHypothesis: {detokenize(hypothesis)}\n{QUESTION}"
    return PromptFormat(template).render(body)


def _label(raw: Any, origin: Origin) -> int | None:
    """Index into LABELS, None for a row without a gold label."""
    if raw in _NO_LABEL:
        return None
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < len(LABELS):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in LABELS:
        return LABELS.index(raw.strip().lower())
    raise TaskFormatError(f"{origin}: SNLI label {raw!r} is none of {LABELS}, 0/1/2, '-' or -1")


def parse_snli(rows: Iterable[tuple[Row, Origin]], template: str = DEFAULT_TEMPLATE,
               prompts: str = "amole") -> list[Example]:
    """Multiple-choice examples (choices Yes / Maybe / No, ``group`` the label name) of the labelled rows."""
    out: list[Example] = []
    for row, origin in rows:
        premise = row.get("premise", row.get("sentence1"))
        hypothesis = row.get("hypothesis", row.get("sentence2"))
        if not isinstance(premise, str) or not isinstance(hypothesis, str):
            raise TaskFormatError(f"{origin}: an SNLI row needs string 'premise' and 'hypothesis' "
                                  "(or 'sentence1' and 'sentence2')")
        label = _label(row["label"] if "label" in row else row.get("gold_label"), origin)
        if label is None:
            continue
        out.append(Example(nli_prompt(premise, hypothesis, template, prompts), ANSWERS[label], ANSWERS, label,
                           group=LABELS[label]))
    return out


def load_snli(
    local_path: str | None = None,
    hub_id: str | None = SNLI_HUB_ID,
    hub_split: str = "validation+test",
    template: str = DEFAULT_TEMPLATE,
    prompts: str = "amole",
) -> list[Example]:
    """SNLI examples from ``local_path`` (file, folder or glob of JSON Lines), else from the hub."""
    return parse_snli(load_rows("SNLI", local_path, hub_id, hub_split, "snli.jsonl"), template, prompts)
