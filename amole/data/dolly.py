"""databricks-dolly-15k as generation: instruction (+ context when present) -> response, Rouge-L (spec §4).

Rows ``{"instruction", "context", "response", "category"}`` come from local JSON Lines / a JSON list (see
:mod:`amole.data.records`) or the hub (``databricks/databricks-dolly-15k``). The category (8 of them) is kept
as ``Example.group`` for the Dirichlet partitioner. Rows with an empty instruction or response are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable

from amole.data.errors import TaskFormatError
from amole.data.example import Example
from amole.data.prompt import DEFAULT_TEMPLATE, PromptFormat, alpaca_prompt, check_style
from amole.data.records import Origin, Row, load_rows

DOLLY_HUB_ID = "databricks/databricks-dolly-15k"
CATEGORIES = ("brainstorming", "classification", "closed_qa", "creative_writing", "general_qa",
              "information_extraction", "open_qa", "summarization")


def dolly_prompt(instruction: str, context: str = "", template: str = DEFAULT_TEMPLATE, prompts: str = "amole") -> str:
    """Instruction (+ context) in ``template``, or (``prompts="paper"``) the official code's Alpaca prompt."""
    if check_style(prompts) == "paper":
        return alpaca_prompt(instruction, context)
    body = instruction.strip()
    if context.strip():
        body += "\n\nContext:\n" + context.strip()
    return PromptFormat(template).render(body)


def parse_dolly(rows: Iterable[tuple[Row, Origin]], template: str = DEFAULT_TEMPLATE,
                prompts: str = "amole") -> list[Example]:
    """Generative examples, ``group`` = the row's category (paper prompts keep the response unstripped, as the
    official code)."""
    out: list[Example] = []
    for row, origin in rows:
        fields = {k: row.get(k, "") for k in ("instruction", "context", "response", "category")}
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad or "instruction" not in row or "response" not in row:
            raise TaskFormatError(f"{origin}: a Dolly row needs string 'instruction' and 'response' "
                                  f"(and optional string 'context', 'category'); bad or missing: "
                                  f"{bad or [k for k in ('instruction', 'response') if k not in row]}")
        if not fields["instruction"].strip() or not fields["response"].strip():
            continue
        target = fields["response"] if prompts == "paper" else fields["response"].strip()
        out.append(Example(dolly_prompt(fields["instruction"], fields["context"], template, prompts), target,
                           group=fields["category"]))
    return out


def load_dolly(
    local_path: str | None = None,
    hub_id: str | None = DOLLY_HUB_ID,
    hub_split: str = "train",
    template: str = DEFAULT_TEMPLATE,
    prompts: str = "amole",
) -> list[Example]:
    """Dolly examples from ``local_path`` (file, folder or glob), else from the hub."""
    return parse_dolly(load_rows("Dolly", local_path, hub_id, hub_split, "dolly.jsonl"), template, prompts)
