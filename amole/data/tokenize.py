"""Causal-LM encoding with prompt masking, padding, and an endless shuffled batch stream for step loops."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from amole.data.example import Example

IGNORE_INDEX = -100  # torch cross-entropy's ignore_index: the loss is on the response only


def _ids(tokenizer: Any, text: str, special: bool) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode(tokenizer: Any, ex: Example, max_len: int) -> dict[str, list[int]]:
    """Prompt tokens (with the tokenizer's BOS, if any) masked, target tokens + EOS learned.

    Over ``max_len`` the prompt is cut from the LEFT (keeping BOS) so the answer survives. A target that
    would leave less than half the window to the prompt is cut on the right and loses its EOS (the model
    must not learn to stop mid-answer).
    """
    if max_len < 2:
        raise ValueError(f"max_len must be at least 2, got {max_len}")
    prompt = _ids(tokenizer, ex.prompt, special=True)
    target = _ids(tokenizer, ex.target, special=False)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token_id; set one so generation can learn to stop")
    target.append(tokenizer.eos_token_id)
    if len(prompt) + len(target) > max_len:
        target = target[: max(max_len - min(len(prompt), max_len // 2), 1)]
        bos = tokenizer.bos_token_id
        head = prompt[:1] if bos is not None and prompt[:1] == [bos] else []
        room = max_len - len(target) - len(head)
        prompt = head + (prompt[len(prompt) - room :] if room > 0 else [])
        prompt = prompt[: max_len - len(target)]
    return {"input_ids": prompt + target, "labels": [IGNORE_INDEX] * len(prompt) + target}


def collate(features: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest feature; padding is masked out of attention and loss."""
    width = max(len(f["input_ids"]) for f in features)
    ids, mask, labels = [], [], []
    for f in features:
        pad = width - len(f["input_ids"])
        ids.append(list(f["input_ids"]) + [pad_id] * pad)
        mask.append([1] * len(f["input_ids"]) + [0] * pad)
        labels.append(list(f["labels"]) + [IGNORE_INDEX] * pad)
    rows = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    return {k: torch.tensor(v, dtype=torch.long) for k, v in rows.items()}


def pad_id_of(tokenizer: Any) -> int:
    """The pad id, falling back to EOS (Llama-style tokenizers ship without a pad token)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pad


def batches(
    tokenizer: Any, examples: Sequence[Example], batch_size: int, max_len: int, rng: random.Random
) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches forever, reshuffled each epoch (the last batch of an epoch may be smaller).

    Each example is encoded once, on first use, so starting the stream is cheap.
    """
    if not examples:
        raise ValueError("cannot batch an empty example list")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pad = pad_id_of(tokenizer)
    cache: dict[int, dict[str, list[int]]] = {}
    order = list(range(len(examples)))
    while True:
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i in chunk:
                if i not in cache:
                    cache[i] = encode(tokenizer, examples[i], max_len)
            yield collate([cache[i] for i in chunk], pad)
