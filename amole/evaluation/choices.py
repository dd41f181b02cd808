"""Multiple-choice LM scoring that encodes each prompt once and scores all its choices from the KV cache.

Scoring a choice reads the model only at its answer tokens, and every choice of a question starts with the
same prompt, so the prompt is run once (with a cache) and the choices continue from it, each at its true
positions. Rows are exactly those ``encode`` builds for prompt + choice; a choice whose encoding cut the
prompt differently (a long target truncates the prompt) simply gets a prefix of its own. The scores equal
those of encoding every prompt + choice row on its own (``amole.client.losses.sequence_losses``), up to float
rounding: attention never sees padding, RoPE positions are the row's own, and AMoLE routing is per token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from amole.backbones.loader import model_device
from amole.client.losses import kept_logits
from amole.data import Example, encode, pad_id_of
from amole.data.tokenize import IGNORE_INDEX

ROWS_PER_PROMPT = 4  # choice rows per chunk: this many times the eval batch size (64 rows at batch 16)


@dataclass
class _Prefix:
    ids: list[int]
    rows: list[tuple[int, list[int], list[int]]] = field(default_factory=list)  # (row, suffix ids, suffix labels)


def _split(row: dict[str, list[int]]) -> int:
    """Length of the shared part of a row: its unlabelled lead (at least one token, which is never scored)."""
    lead = 0
    while lead < len(row["labels"]) and row["labels"][lead] == IGNORE_INDEX:
        lead += 1
    return max(lead, 1)


def _prefixes(rows: Sequence[dict[str, list[int]]], groups: Sequence[range]) -> list[_Prefix]:
    out: list[_Prefix] = []
    for group in groups:
        mine: dict[tuple[int, ...], _Prefix] = {}
        for i in group:
            row = rows[i]
            p = min(_split(row), len(row["input_ids"]))
            key = tuple(row["input_ids"][:p])
            if key not in mine:
                mine[key] = _Prefix(list(key))
                out.append(mine[key])
            mine[key].rows.append((i, row["input_ids"][p:], row["labels"][p:]))
    return out


def _pad(seqs: Sequence[Sequence[int]], value: int) -> tuple[Tensor, Tensor]:
    width = max(max((len(s) for s in seqs), default=0), 1)
    ids = torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, mask


def _score_chunk(model: nn.Module, chunk: Sequence[_Prefix], pad: int, out: Tensor) -> None:
    """Write the mean answer-token loss of every row of ``chunk`` into ``out``."""
    dev = model_device(model)
    p_ids, p_mask = _pad([p.ids for p in chunk], pad)
    p_len = p_mask.sum(1)
    last = torch.zeros_like(p_mask, dtype=torch.bool)
    last[torch.arange(len(chunk)), p_len - 1] = True
    first_logits, p_out = kept_logits(model, last.to(dev), input_ids=p_ids.to(dev), attention_mask=p_mask.to(dev),
                                      use_cache=True)
    items = [(u, *r) for u, p in enumerate(chunk) for r in p.rows if r[1]]  # rows with an empty suffix score 0
    if not items:
        return
    unit = torch.tensor([u for u, *_ in items])
    s_ids, s_mask = _pad([s for *_, s, _ in items], pad)
    s_lab, _ = _pad([lab for *_, lab in items], IGNORE_INDEX)
    cache = p_out.past_key_values
    cache.batch_select_indices(unit.to(dev))
    keep = torch.zeros_like(s_lab, dtype=torch.bool)
    keep[:, :-1] = s_lab[:, 1:] != IGNORE_INDEX
    positions = p_len[unit, None] + torch.arange(s_ids.shape[1])
    logits, _ = kept_logits(
        model, keep.to(dev), input_ids=s_ids.to(dev), attention_mask=torch.cat([p_mask[unit], s_mask], 1).to(dev),
        position_ids=positions.to(dev), past_key_values=cache, use_cache=True,
    )
    s_lab = s_lab.to(dev)
    ce = nn.functional.cross_entropy
    later = ce(logits.float(), s_lab[:, 1:][keep[:, :-1].to(dev)], reduction="none")
    first_lab = s_lab[:, 0]  # predicted from the prompt's last position
    first = ce(first_logits[unit.to(dev)].float(), first_lab.clamp_min(0), reduction="none")
    sums = (first * (first_lab != IGNORE_INDEX)).index_add_(
        0, torch.arange(len(items), device=dev).repeat_interleave(keep.sum(1).to(dev)), later)
    counts = (s_lab != IGNORE_INDEX).sum(1).clamp_min(1)
    out[torch.tensor([i for _, i, *_ in items])] = (sums / counts).cpu()


@torch.no_grad()
def choice_losses(model: nn.Module, tokenizer, examples: Sequence[Example], max_len: int,
                  batch_size: int) -> list[list[float]]:
    """Mean answer-token loss of every choice of every example (teacher forcing), ``batch_size`` prompts at a time
    (fewer when they have many choices: at most ``ROWS_PER_PROMPT * batch_size`` choice rows)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    pad = pad_id_of(tokenizer)
    rows, groups = [], []
    for ex in examples:
        start = len(rows)
        rows += [encode(tokenizer, Example(ex.prompt, c), max_len) for c in ex.choices]
        groups.append(range(start, len(rows)))
    losses = torch.zeros(len(rows))
    for chunk in _chunks(_prefixes(rows, groups), batch_size, ROWS_PER_PROMPT * batch_size):
        _score_chunk(model, chunk, pad, losses)
    return [losses[g.start : g.stop].tolist() for g in groups]


def _chunks(prefixes: Sequence[_Prefix], max_prompts: int, max_rows: int) -> Iterator[list[_Prefix]]:
    """Consecutive prefixes, at most ``max_prompts`` prompts and ``max_rows`` choice rows a chunk (a prompt with
    more choices than that goes alone): every choice row gets its own copy of its prompt's KV cache, so 16
    prompts of 18-34 choices at ~130 tokens would copy 2-3 GB of cache per chunk (a client went out of memory)."""
    chunk: list[_Prefix] = []
    rows = 0
    for p in prefixes:
        if chunk and (len(chunk) >= max_prompts or rows + len(p.rows) > max_rows):
            yield chunk
            chunk, rows = [], 0
        chunk.append(p)
        rows += len(p.rows)
    if chunk:
        yield chunk
