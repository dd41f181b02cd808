"""Batched decoding with a KV cache: prompts sorted by length, wide batches, finished rows leave the batch.

Decoding one token reads every weight of the model once, whatever the number of rows: on a CPU (and on a GPU at
small batches) a step of 32 rows costs about what a step of 8 does. So the prompts are sorted by length (little
padding) and decoded ``batch_size`` at a time, and under greedy decoding a row that produced EOS leaves the batch
(its cache rows are dropped), so a batch runs only as long as its longest answer and costs what its unfinished
rows cost. Each layer's keys and values go into a buffer sized for the batch's prompt and answer
(``_BufferedLayer``): a step writes its one position instead of copying the whole cache, as ``DynamicCache``'s
concatenation does. Greedy tokens equal ``model.generate``'s (``tests/test_generation.py``);
``generation_config`` decoding (the paper's, which may sample) stays with ``model.generate``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers.cache_utils import Cache, DynamicLayer

from amole.backbones.loader import model_device
from amole.config import CHOICES
from amole.data import pad_id_of

DECODINGS = CHOICES[("eval", "decoding")]
GEN_BATCH_SIZE = 32  # eval.gen_batch_size when unset


def prompt_ids(tokenizer, prompts: Sequence[str], max_len: int, max_new_tokens: int) -> list[list[int]]:
    """Each prompt's token ids, cut from the left so that prompt and answer fit ``max_len``."""
    room = max(max_len - max_new_tokens, 1)
    return [list(tokenizer(p, add_special_tokens=True)["input_ids"])[-room:] for p in prompts]


def left_pad(rows: Sequence[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask, padded on the left so that every row ends where generation starts."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


class _BufferedLayer(DynamicLayer):
    """One layer's keys and values, written into a buffer that holds the whole batch's decode.

    ``DynamicLayer`` concatenates every step, copying the layer's whole cache once per new token; here a step writes
    only its token's keys and values, and attention reads a view of the filled part.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity, self.length = capacity, 0

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        rows, heads, _, dim = key_states.shape
        self._k = key_states.new_empty(rows, heads, self.capacity, dim)
        self._v = value_states.new_empty(rows, value_states.shape[1], self.capacity, value_states.shape[-1])
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, : self.length], self._v[:, :, : self.length]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"KV buffer of {self.capacity} positions cannot take position {end}")
        self._k[:, :, self.length : end] = key_states
        self._v[:, :, self.length : end] = value_states
        self.length = end
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def batch_select_indices(self, indices: Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k[indices], self._v[indices]
            self._views()


@torch.no_grad()
def _greedy_batch(model: nn.Module, rows: Sequence[list[int]], max_new_tokens: int, eos_id: int | None,
                  pad: int) -> list[list[int]]:
    """Greedy continuations of one left-padded batch; a row ends with its EOS (kept) or at ``max_new_tokens``."""
    dev = model_device(model)
    ids, mask = left_pad(rows, pad)
    # Positions as model.generate computes them: the count of real tokens before, padding at 1.
    positions = (mask.cumsum(1) - 1).masked_fill(mask == 0, 1)
    cache = Cache(layers=[_BufferedLayer(ids.shape[1] + max_new_tokens)
                          for _ in range(model.config.get_text_config().num_hidden_layers)])
    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=positions.to(dev),
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    alive = torch.arange(len(rows))  # which input rows are still in the batch
    next_pos = mask.sum(1)
    answers: list[list[int]] = [[] for _ in rows]
    for step in range(max_new_tokens):
        token = out.logits[:, -1].argmax(-1).cpu()
        for r, t in zip(alive.tolist(), token.tolist(), strict=True):
            answers[r].append(t)
        going = token != eos_id if eos_id is not None else torch.ones_like(token, dtype=torch.bool)
        if step == max_new_tokens - 1 or not going.any():
            break
        if not going.all():  # finished rows leave: their cache rows go, the others' stay as they were
            keep = going.nonzero().squeeze(1)
            cache.batch_select_indices(keep.to(dev))
            alive, token, mask, next_pos = alive[keep], token[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, torch.ones(len(alive), 1, dtype=mask.dtype)], 1)
        out = model(input_ids=token[:, None].to(dev), attention_mask=mask.to(dev),
                    position_ids=next_pos[:, None].to(dev), past_key_values=cache, use_cache=True)
        next_pos = next_pos + 1
    return answers


@torch.no_grad()
def _sampled_batch(model: nn.Module, rows: Sequence[list[int]], max_new_tokens: int, pad: int) -> list[list[int]]:
    """The official code's ``generate(max_new_tokens, num_beams=1)``: the model's generation config decides."""
    dev = model_device(model)
    ids, mask = left_pad(rows, pad)
    out = model.generate(input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
                         pad_token_id=pad, num_beams=1)
    return out[:, ids.shape[1]:].cpu().tolist()


def decode(model: nn.Module, rows: Sequence[list[int]], max_new_tokens: int, eos_id: int | None, pad: int,
           decoding: str = "greedy", batch_size: int = GEN_BATCH_SIZE) -> list[list[int]]:
    """The new token ids after each row of prompt token ids, in the rows' order: rows sorted by length and decoded
    ``batch_size`` at a time. Greedy rows end with their EOS (kept) or at ``max_new_tokens``; ``eos_id=None`` runs
    every row to full length. Sampled rows (``generation_config``) may carry padding after their EOS."""
    if decoding not in DECODINGS:
        raise ValueError(f"unknown eval.decoding {decoding!r}; expected one of {DECODINGS}")
    if batch_size < 1:
        raise ValueError(f"eval.gen_batch_size must be positive, got {batch_size}")
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]), reverse=True)
    answers: list[list[int]] = [[] for _ in rows]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = [rows[i] for i in chunk]
        new = (_greedy_batch(model, batch, max_new_tokens, eos_id, pad) if decoding == "greedy"
               else _sampled_batch(model, batch, max_new_tokens, pad))
        for i, a in zip(chunk, new, strict=True):
            answers[i] = a
    return answers


def generate_ids(model: nn.Module, tokenizer, prompts: Sequence[str], max_len: int, max_new_tokens: int,
                 decoding: str = "greedy", batch_size: int = GEN_BATCH_SIZE) -> list[list[int]]:
    """The new token ids of every prompt, in the prompts' order, through the first EOS (greedy rows stop there;
    sampled rows may carry padding after it)."""
    ids = prompt_ids(tokenizer, prompts, max_len, max_new_tokens)
    return decode(model, ids, max_new_tokens, tokenizer.eos_token_id, pad_id_of(tokenizer), decoding, batch_size)


def answer_length(new_ids: Sequence[int], eos_id: int | None) -> int:
    """Tokens generated before the first EOS (all of them when the row never stopped): what an answer costs."""
    ids = list(new_ids)
    return ids.index(eos_id) if eos_id is not None and eos_id in ids else len(ids)


def generate(model: nn.Module, tokenizer, prompts: Sequence[str], max_len: int, max_new_tokens: int,
             decoding: str = "greedy", batch_size: int = GEN_BATCH_SIZE) -> list[str]:
    """Continuations of ``prompts`` as text (special tokens dropped).

    ``greedy``: argmax decoding, stopping at the tokenizer's EOS. ``generation_config``: the official code's
    ``generate(max_new_tokens, num_beams=1)``, so the model's ``generation_config`` decides (it may sample).
    """
    new = generate_ids(model, tokenizer, prompts, max_len, max_new_tokens, decoding, batch_size)
    return tokenizer.batch_decode(new, skip_special_tokens=True)
