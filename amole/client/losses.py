"""Causal-LM losses with the LM head applied only where a label counts.

The head of a small model is a large share of its FLOPs (SmolLM2: 49152 x 576, about a fifth of the
model), yet the loss reads its output only at the positions whose next token is a labelled answer token.
Hugging Face causal LMs take a boolean ``logits_to_keep`` mask and return the logits of those positions
only, flattened; training, the validation loss and LM scoring all go through ``token_losses`` so the head
runs on answer positions everywhere. The loss is the same as ``model(..., labels=labels).loss``: mean token
cross-entropy over the labelled tokens after the shift.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from amole.backbones.loader import model_device
from amole.data.tokenize import IGNORE_INDEX

# Model classes whose forward ignored or mis-read a boolean ``logits_to_keep``: they get full logits.
_FULL_LOGITS: set[type] = set()


def answer_positions(labels: Tensor) -> Tensor:
    """(B, T) bool: the positions whose logits predict a labelled token (the label one step to the right)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def kept_logits(model: nn.Module, keep: Tensor, **inputs) -> tuple[Tensor, object]:
    """Logits at the ``keep`` positions of a forward of ``model`` on ``inputs``, as (N, vocab) in row-major
    order, plus the forward's output (for its ``past_key_values``)."""
    if type(model) not in _FULL_LOGITS:
        out = model(**inputs, logits_to_keep=keep)
        if out.logits.dim() == 2 and out.logits.shape[0] == int(keep.sum()):
            return out.logits, out
        _FULL_LOGITS.add(type(model))  # an older forward that slices per row: fall back, once per class
    out = model(**inputs)
    return out.logits[keep], out


def token_losses(model: nn.Module, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Cross-entropy of every labelled token (float32, shape (N,)) and the row it belongs to (shape (N,))."""
    dev = model_device(model)
    labels = batch["labels"].to(dev)
    keep = answer_positions(labels)
    logits, _ = kept_logits(model, keep, input_ids=batch["input_ids"].to(dev),
                            attention_mask=batch["attention_mask"].to(dev))
    targets = labels[:, 1:][keep[:, :-1]]
    losses = nn.functional.cross_entropy(logits.float(), targets, reduction="none")
    return losses, keep.nonzero()[:, 0]


def lm_loss(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Mean token loss over the labelled tokens of the batch (what ``labels=`` gives Hugging Face models)."""
    losses, _ = token_losses(model, batch)
    return losses.mean()


def sequence_losses(model: nn.Module, batch: Mapping[str, Tensor]) -> Tensor:
    """Mean token loss of each row over its labelled tokens (0 for a row without any)."""
    losses, rows = token_losses(model, batch)
    n = batch["labels"].shape[0]
    sums = torch.zeros(n, device=losses.device).index_add_(0, rows, losses)
    counts = torch.zeros(n, device=losses.device).index_add_(0, rows, torch.ones_like(losses))
    return sums / counts.clamp_min(1)
