"""scenario.prompts "paper": the official code's prompt strings for SNLI, Dolly and Natural Instructions."""

from __future__ import annotations

import pytest

from amole.data.dolly import parse_dolly
from amole.data.natinst import parse_natinst_task
from amole.data.prompt import DEFAULT_TEMPLATE
from amole.data.snli import parse_snli

ALPACA_HEAD_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further "
                     "context. Write a response that appropriately completes the request.\n\n")
ALPACA_HEAD = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
               "request.\n\n")


def test_snli_paper_prompt() -> None:
    row = {"premise": "A man plays a guitar on stage .", "hypothesis": "A man is performing music .",
           "label": "entailment"}
    (ex,) = parse_snli([(row, "snli.jsonl:1")], prompts="paper")
    assert ex.prompt == ('Suppose A man plays a guitar on stage. Can we infer that "A man is performing music."? '
                         "Yes, No, or Maybe?\n")
    assert (ex.target, ex.choices, ex.label) == ("Yes", ("Yes", "Maybe", "No"), 0)


def test_dolly_paper_prompts_with_and_without_context() -> None:
    rows = [
        ({"instruction": "Who wrote {it}?", "context": "Hamlet is a play.", "response": "Shakespeare.\n",
          "category": "closed_qa"}, "d:1"),
        ({"instruction": "Name three fruits.", "context": "", "response": "Apple, pear, plum.",
          "category": "brainstorming"}, "d:2"),
    ]
    with_context, without = parse_dolly(rows, prompts="paper")
    assert with_context.prompt == (ALPACA_HEAD_INPUT + "### Instruction:\nWho wrote {it}?\n\n### Input:\n"
                                   "Hamlet is a play.\n\n### Response:\n")
    assert with_context.target == "Shakespeare.\n"  # the official target is the response as it is
    assert without.prompt == ALPACA_HEAD + "### Instruction:\nName three fruits.\n\n### Response:\n"
    assert (with_context.group, without.group) == ("closed_qa", "brainstorming")


def test_natural_instructions_paper_prompt_uses_the_first_definition() -> None:
    data = {"Definition": ["Translate the sentence to French.", "Second definition, unused."],
            "Instances": [{"input": "Good morning.", "output": ["Bonjour.", "Salut."]}]}
    (ex,) = parse_natinst_task(data, "task1.json", "task1_translate", prompts="paper")
    assert ex.prompt == (ALPACA_HEAD_INPUT + "### Instruction:\nTranslate the sentence to French.\n\n### Input:\n"
                         "Good morning.\n\n### Response:\n")
    assert ex.target == "Bonjour."


def test_default_prompts_are_ours() -> None:
    row = {"premise": "A dog runs .", "hypothesis": "An animal moves .", "label": 0}
    (ex,) = parse_snli([(row, "x")])
    assert ex.prompt.startswith("### Instruction:\nPremise: A dog runs.") and DEFAULT_TEMPLATE.endswith("\n")


def test_unknown_style_is_an_error() -> None:
    with pytest.raises(ValueError, match="scenario.prompts"):
        parse_snli([({"premise": "a", "hypothesis": "b", "label": 0}, "x")], prompts="alpaca")
