"""Rouge-L F1 of one generation against its reference, by implementation name (``eval.rouge``).

The two disagree a lot on short answers, so a score is only comparable with scores of the same implementation:

- ``rouge_score`` (ours): Google's ``rouge-score`` with Porter stemming; its tokenizer lowercases and keeps
  only ``[a-z0-9]`` runs, so "Yes." and "yes" match; one LCS over the whole text.
- ``rouge_paper`` (the official FedAMoLE code): the ``rouge`` package (1.0.1),
  ``Rouge().get_scores(hyp, ref)[0]["rouge-l"]["f"]``: case-sensitive whitespace tokens (punctuation stays part
  of a token), summary-level union LCS over '.'-split sentences, lengths counted in distinct tokens (a repeated
  word counts once). As the official code does, an empty
  generation, and one the package rejects (ValueError, e.g. nothing left after its cleaning), scores 0.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from rouge import Rouge
from rouge_score import rouge_scorer

# The metric name each implementation reports (results tables must not mix them).
METRIC_NAMES = {"rouge_score": "rougeL", "rouge_paper": "rougeL_paper"}


@cache
def _scorer() -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


@cache
def _rouge() -> Rouge:
    return Rouge()  # all default metrics, as the official code: an error in any of them scores 0


def rouge_score_f(reference: str, generated: str) -> float:
    return _scorer().score(reference, generated)["rougeL"].fmeasure


def rouge_paper_f(reference: str, generated: str) -> float:
    if not generated:
        return 0.0
    try:
        return float(_rouge().get_scores(generated, reference)[0]["rouge-l"]["f"])
    except ValueError:  # "Hypothesis is empty." / "Reference is empty." after the package's own cleaning
        return 0.0


IMPLEMENTATIONS: dict[str, Callable[[str, str], float]] = {"rouge_score": rouge_score_f, "rouge_paper": rouge_paper_f}


def rouge_l_f(name: str) -> Callable[[str, str], float]:
    """``f(reference, generated) -> F1`` of the implementation called ``name``."""
    try:
        return IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(f"unknown eval.rouge {name!r}; expected one of {sorted(IMPLEMENTATIONS)}") from None


def metric_name(name: str) -> str:
    rouge_l_f(name)  # validates
    return METRIC_NAMES[name]
