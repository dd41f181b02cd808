"""The unit of data every other part of AMoLE consumes: one prompt/target pair, plus per-client splits."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """One training/evaluation example.

    ``prompt`` is the final, model-facing text (template already applied) so training and evaluation
    see exactly the same string. For multiple choice, ``choices`` holds the candidate answers, ``label``
    indexes the correct one and ``target`` is its text, so the same example can be trained on
    generatively and scored by per-choice LM loss. ``group`` is the class a partitioner skews on (SNLI's
    gold label, Dolly's category); empty where the source has none.
    """

    prompt: str
    target: str
    choices: tuple[str, ...] = ()
    label: int = -1
    group: str = ""

    def __post_init__(self) -> None:
        if self.choices and not (0 <= self.label < len(self.choices)):
            raise ValueError(f"label {self.label} out of range for {len(self.choices)} choices")
        if self.choices and self.target != self.choices[self.label]:
            raise ValueError("target must equal the text of the correct choice")

    @property
    def is_choice(self) -> bool:
        """Multiple choice (scored by LM loss per choice) rather than generative (scored by Rouge-L)."""
        return bool(self.choices)


@dataclass
class ClientSplits:
    """A client's disjoint data: local training, the RSEA embedding probe, model selection, final test."""

    train: list[Example]
    embed: list[Example]
    eval: list[Example]
    test: list[Example]
    task: str = ""

    @property
    def is_choice(self) -> bool:
        """Whether this client's task is multiple choice (decides the metric)."""
        return any(ex.is_choice for ex in self.test or self.train)
