"""Rouge-L F1 of one generation against its reference, by implementation name (``eval.rouge``).

The two disagree a lot on short answers, so a score is only comparable with scores of the same implementation:

- ``rouge_score`` (ours): Google's ``rouge-score`` with Porter stemming; its tokenizer lowercases and keeps
  only ``[a-z0-9]`` runs, so "Yes." and "yes" match; one LCS over the whole text.
- ``rouge_paper`` (the official FedAMoLE code): the ``rouge`` package (1.0.1),
  ``Rouge().get_scores(hyp, ref)[0]["rouge-l"]["f"]``: case-sensitive whitespace tokens (punctuation stays part
  of a token), summary-level union LCS over '.'-split sentences, lengths counted in distinct tokens (a repeated
  word counts once). As the official code does, an empty
  generation, and one the package rejects (ValueError, e.g. nothing left after its cleaning), scores 0.
  The package rebuilds its LCS recursively, one call per word of both texts, so a long reference (Dolly has
  1,000-word ones with no period) exceeds Python's recursion limit; then the same reconstruction runs as a loop
  (``_recon_lcs_iterative``: the same table, the same tie-breaking, the same result), never a crash.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache
from unittest import mock

from rouge import Rouge
from rouge import rouge_score as rouge_package
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
        try:
            return float(_rouge().get_scores(generated, reference)[0]["rouge-l"]["f"])
        except RecursionError:  # a long sentence: the same computation with the LCS rebuilt by a loop
            with mock.patch.object(rouge_package, "_recon_lcs", _recon_lcs_iterative):
                return float(_rouge().get_scores(generated, reference)[0]["rouge-l"]["f"])
    except ValueError:  # "Hypothesis is empty." / "Reference is empty." after the package's own cleaning
        return 0.0


def _recon_lcs_iterative(x: Sequence[str], y: Sequence[str], exclusive: bool = True) -> rouge_package.Ngrams:
    """``rouge.rouge_score._recon_lcs`` without recursion: walk the package's own LCS table back from the end,
    taking the same branch at every step (a match; else up when the cell above is strictly larger; else left)."""
    table = rouge_package._lcs(x, y)
    i, j, picked = len(x), len(y), []
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            picked.append(x[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1, j] > table[i, j - 1]:
            i -= 1
        else:
            j -= 1
    return rouge_package.Ngrams(picked[::-1], exclusive=exclusive)


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
