"""Client-side evaluation (spec §4): LM-scoring accuracy for multiple choice, Rouge-L F1 for generation.

Multiple choice: every candidate is appended to the prompt and the one with the lowest mean token loss wins,
so the score needs no answer parsing; each prompt is encoded once for all its choices (``amole.evaluation.choices``).
Generation: greedy decoding (or, under the paper's protocol, the model's own generation config) in wide batches
(``amole.evaluation.generation``), Rouge-L F1 against the reference by the implementation ``eval.rouge`` names.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import nn

from amole.client.losses import sequence_losses
from amole.config import EvalConfig
from amole.data import Example, collate, encode, pad_id_of
from amole.evaluation.choices import choice_losses
from amole.evaluation.generation import GEN_BATCH_SIZE, answer_length, generate, generate_ids
from amole.evaluation.rouge_l import metric_name, rouge_l_f

__all__ = ["Prediction", "answer_length", "answer_loss", "choice_accuracy", "choice_hits", "choice_losses",
           "evaluate", "evaluate_examples", "generate", "pick", "rouge_l", "rouge_predictions", "sequence_losses",
           "standard_error"]


@torch.no_grad()
def answer_loss(model: nn.Module, tokenizer, examples: Sequence[Example], max_len: int, batch_size: int) -> float:
    """Mean over ``examples`` of the answer-token loss of their targets (teacher forcing): a cheap, smooth
    validation objective that works for multiple choice and generation alike."""
    if not examples:
        raise ValueError("no examples to compute a validation loss on")
    pad = pad_id_of(tokenizer)
    rows = [encode(tokenizer, ex, max_len) for ex in examples]
    was_training = model.training
    model.eval()
    try:
        total = sum(sequence_losses(model, collate(rows[i : i + batch_size], pad)).sum().item()
                    for i in range(0, len(rows), batch_size))
    finally:
        model.train(was_training)
    return total / len(rows)


@torch.no_grad()
def pick(scores: Sequence[float]) -> int:
    """The model's choice: the one with the lowest mean answer-token loss."""
    return min(range(len(scores)), key=scores.__getitem__)


@torch.no_grad()
def choice_hits(model: nn.Module, tokenizer, examples: Sequence[Example], max_len: int, batch_size: int) -> list[int]:
    """Per example, 1 when its correct choice has the lowest mean answer-token loss (each prompt encoded once)."""
    losses = choice_losses(model, tokenizer, examples, max_len, batch_size)
    return [int(pick(scores) == ex.label) for ex, scores in zip(examples, losses, strict=True)]


@torch.no_grad()
def choice_accuracy(model: nn.Module, tokenizer, examples: Sequence[Example], max_len: int, batch_size: int) -> float:
    """Share of examples whose correct choice has the lowest mean answer-token loss."""
    return sum(choice_hits(model, tokenizer, examples, max_len, batch_size)) / max(len(examples), 1)


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean of per-example scores (sample std / sqrt(n)); NaN below two examples.

    Reported with every score so a results table can tell a difference from the noise of a small test split.
    """
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) >= 2 else math.nan


class Prediction(NamedTuple):
    text: str
    rouge_l: float
    tokens: int  # generated before EOS


@torch.no_grad()
def rouge_predictions(model: nn.Module, tokenizer, examples: Sequence[Example], max_len: int,
                      cfg: EvalConfig) -> list[Prediction]:
    """Every example's generation, its Rouge-L F1 (implementation ``cfg.rouge``) against the reference and its
    length in tokens."""
    score = rouge_l_f(cfg.rouge)
    out: list[Prediction] = []
    new = generate_ids(model, tokenizer, [ex.prompt for ex in examples], max_len, cfg.max_new_tokens, cfg.decoding,
                       cfg.gen_batch_size or GEN_BATCH_SIZE)
    texts = [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    for ex, t, ids in zip(examples, texts, new, strict=True):
        out.append(Prediction(t, score(ex.target, t), answer_length(ids, tokenizer.eos_token_id)))
    return out


@torch.no_grad()
def rouge_l(model: nn.Module, tokenizer, examples: Sequence[Example], max_len: int, cfg: EvalConfig) -> float:
    """Mean Rouge-L F1 (implementation ``cfg.rouge``) of generations against the references."""
    return sum(p.rouge_l for p in rouge_predictions(model, tokenizer, examples, max_len, cfg)) / max(len(examples), 1)


def evaluate(model: nn.Module, tokenizer, examples: Sequence[Example], max_len: int, cfg: EvalConfig) -> dict:
    """The client's score on ``examples`` (accuracy for multiple-choice tasks, Rouge-L for generative ones), its
    standard error over the examples (``score_se``), the number of examples scored (``n``) and, for generation,
    the mean answer length in tokens (``gen_tokens``: longer answers cost evaluation time and move Rouge-L)."""
    return evaluate_examples(model, tokenizer, examples, max_len, cfg)[0]


def evaluate_examples(model: nn.Module, tokenizer, examples: Sequence[Example], max_len: int,
                      cfg: EvalConfig) -> tuple[dict, list[dict]]:
    """:func:`evaluate`'s result and one row per example (prompt, target, prediction and its score): what the
    federation reports and what ``amole evaluate`` writes, computed one way."""
    if not examples:
        raise ValueError("no evaluation examples")
    was_training = model.training
    model.eval()
    extra: dict[str, float] = {}
    try:
        if all(ex.is_choice for ex in examples):
            losses = choice_losses(model, tokenizer, examples, max_len, cfg.batch_size)
            rows = [{"prompt": ex.prompt, "choices": list(ex.choices), "target": ex.target,
                     "prediction": ex.choices[pick(scores)], "losses": scores, "correct": pick(scores) == ex.label}
                    for ex, scores in zip(examples, losses, strict=True)]
            values = [float(row["correct"]) for row in rows]
            metric = "accuracy"
        else:
            preds = rouge_predictions(model, tokenizer, examples, max_len, cfg)
            rows = [{"prompt": ex.prompt, "target": ex.target, "prediction": p.text, "rougeL": p.rouge_l,
                     "tokens": p.tokens} for ex, p in zip(examples, preds, strict=True)]
            values = [p.rouge_l for p in preds]
            extra["gen_tokens"] = statistics.fmean(p.tokens for p in preds)
            metric = metric_name(cfg.rouge)
    finally:
        model.train(was_training)
    result = {"score": sum(values) / len(values), "score_se": standard_error(values), "metric": metric,
              "n": len(examples), **extra}
    return result, rows
