"""Batched greedy decoding (amole.evaluation.generation) gives model.generate's greedy tokens, whatever the batch
width, the prompts' order and lengths, and rows that stop early and leave the batch."""

from __future__ import annotations

import torch

from amole.config import AdapterConfig
from amole.data import pad_id_of
from amole.evaluation.generation import decode, generate, generate_ids, prompt_ids
from amole.moe.bank import create_bank, payload
from amole.moe.model import import_adapters, inject

PROMPTS = ["copy: abc", "a much longer prompt, with more bytes in it: xyz", "q", "sort these words: b a c", "hi"]


def _amole(model) -> None:
    """AMoLE layers with random experts, so routing and adapters shape every token."""
    cfg = AdapterConfig(r=4, alpha=8.0, dropout=0.0, num_experts=6, top_k=2)
    layers = inject(model, cfg)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    bank = create_bank(shapes, cfg, seed=0)
    for t in bank.values():
        if t.is_floating_point():
            t.normal_(0, 0.05)
    import_adapters(model, payload(bank, {n: [0, 2, 3] for n in layers}))
    model.eval()


def _hf_greedy(model, tok, prompts, new: int, eos: int) -> list[list[int]]:
    """model.generate's greedy tokens for each prompt alone, cut after the first EOS."""
    out = []
    for ids in prompt_ids(tok, prompts, 256, new):
        gen = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=new, do_sample=False, eos_token_id=eos, pad_token_id=pad_id_of(tok))
        row = gen[0, len(ids):].tolist()
        out.append(row[: row.index(eos) + 1] if eos in row else row)
    return out


def test_generation_greedy_equals_model_generate_at_any_width(tiny) -> None:
    model, tok = tiny
    _amole(model)
    want = _hf_greedy(model, tok, PROMPTS, 10, tok.eos_token_id)
    for width in (1, 2, 32):
        assert generate_ids(model, tok, PROMPTS, 256, 10, "greedy", width) == want, width
    assert generate(model, tok, PROMPTS[:2], 256, 10) == tok.batch_decode(want[:2], skip_special_tokens=True)


def test_generation_rows_that_stop_leave_the_batch_and_the_rest_are_unchanged(tiny) -> None:
    model, tok = tiny
    _amole(model)
    free = _hf_greedy(model, tok, PROMPTS, 12, eos=-1)  # no row stops
    # an "EOS" that some rows produce early and others never: those rows must stop there, the rest go on
    counts: dict[int, int] = {}
    for row in free:
        for t in set(row[1:6]):
            counts[t] = counts.get(t, 0) + 1
    eos = max((t for t, c in counts.items() if c < len(free)), key=counts.__getitem__)
    want = _hf_greedy(model, tok, PROMPTS, 12, eos)
    assert any(len(r) < 12 for r in want) and any(len(r) == 12 for r in want)
    ids = prompt_ids(tok, PROMPTS, 256, 12)
    assert decode(model, ids, 12, eos, pad_id_of(tok), batch_size=len(ids)) == want
