"""How a task's raw input becomes the model-facing prompt (one place, so training and evaluation agree)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_TEMPLATE = "### Instruction:\n{input}\n\n### Response:\n"
BIGBENCH_INPUT_PREFIX = "\nQ: "  # BIG-bench's defaults when a task does not set its own
BIGBENCH_OUTPUT_PREFIX = "\nA: "
BIGBENCH_CHOICE_PREFIX = "\n  choice: "

# ``scenario.prompts``: "amole" wraps every task in DEFAULT_TEMPLATE; "paper" uses the official FedAMoLE code's
# wording: SNLI_PAPER for SNLI, the Alpaca templates for Dolly and Natural Instructions (BIG-bench is not in
# the official code and keeps ours).
PROMPT_STYLES = ("amole", "paper")
SNLI_PAPER = 'Suppose {premise} Can we infer that "{hypothesis}"? Yes, No, or Maybe?\n'
ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def check_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"unknown scenario.prompts {style!r}; expected one of {PROMPT_STYLES}")
    return style


def alpaca_prompt(instruction: str, context: str = "") -> str:
    """The Alpaca prompt, with the ``### Input:`` section only when there is a context (text kept verbatim;
    ``str.format`` does not re-read braces inside the values)."""
    if context != "":
        return ALPACA_INPUT.format(instruction=instruction, input=context)
    return ALPACA_NO_INPUT.format(instruction=instruction)


@dataclass(frozen=True)
class PromptFormat:
    """Task-level wording (BIG-bench prefixes) wrapped in a model-level ``template`` with ``{input}``.

    Multiple-choice prompts always list the options: the model is fine-tuned to emit the choice text and
    evaluated by scoring each choice, and some tasks' inputs do not mention the options otherwise.
    """

    template: str = DEFAULT_TEMPLATE
    task_prefix: str = ""
    input_prefix: str = ""
    output_prefix: str = ""
    choice_prefix: str = BIGBENCH_CHOICE_PREFIX

    def __post_init__(self) -> None:
        if "{input}" not in self.template:
            raise ValueError(f"prompt template must contain '{{input}}', got {self.template!r}")

    def render(self, text: str, choices: Sequence[str] = ()) -> str:
        """Build the prompt; uses ``str.replace`` since task inputs (code, Dyck words) contain braces."""
        body = self.task_prefix + self.input_prefix + text
        body += "".join(self.choice_prefix + c for c in choices)
        body += self.output_prefix
        return self.template.replace("{input}", body.strip())
