"""The LM head at answer positions gives today's losses, and shared-prompt choice scores equal per-choice ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amole.client.losses import lm_loss, sequence_losses
from amole.data import Example, collate, encode
from amole.data.tokenize import IGNORE_INDEX
from amole.evaluation.choices import choice_losses
from amole.evaluation.evaluate import choice_accuracy
from amole.moe.bank import create_bank, payload
from amole.moe.model import import_adapters, inject, load_balance_loss, token_mask

EXAMPLES = [
    Example("Q: what colour is the sky?\nA:", "blue", choices=("blue", "green and long", "x"), label=0),
    Example("Hi", "b" * 25, choices=("a", "b" * 25), label=1),
    Example("A longer prompt, so that rows pad differently. " * 2, "maybe", choices=("yes", "no", "maybe", "n"),
            label=2),
    Example("Q: what colour is the sky?\nA:", "green and long", choices=("blue", "green and long"), label=1),
]


@pytest.fixture
def adapted(tiny, adapter_cfg):
    """The tiny model with AMoLE injected and non-zero experts, so routing shapes every score."""
    model, tok = tiny
    layers = inject(model, adapter_cfg)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    bank = {k: torch.randn_like(v) * 0.3 for k, v in create_bank(shapes, adapter_cfg, seed=0).items()}
    import_adapters(model, payload(bank, {n: [0, 2, 3] for n in layers}))
    return model, tok


def rows_of(tok, max_len: int) -> list[dict[str, list[int]]]:
    return [encode(tok, Example(ex.prompt, c), max_len) for ex in EXAMPLES for c in ex.choices]


def full_sequence_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The reference: logits at every position, masked cross-entropy (what evaluation did before)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    tok = nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    return tok.sum(1) / (labels != IGNORE_INDEX).sum(1).clamp_min(1)


def test_answer_position_loss_equals_the_full_loss_and_keeps_the_balance_term(adapted) -> None:
    model, tok = adapted
    batch = collate(rows_of(tok, 48), pad_id=0)
    model.train()
    with token_mask(model, batch["attention_mask"]):
        full = model(**batch).loss
    full_lb = load_balance_loss(model)
    full_grad = torch.autograd.grad(full, [p for p in model.parameters() if p.requires_grad])
    with token_mask(model, batch["attention_mask"]):
        mine = lm_loss(model, batch)
    assert torch.isclose(mine, full, rtol=0, atol=1e-5)
    assert torch.isclose(load_balance_loss(model), full_lb, rtol=0, atol=1e-6) and full_lb > 0
    mine_grad = torch.autograd.grad(mine, [p for p in model.parameters() if p.requires_grad])
    for a, b in zip(full_grad, mine_grad, strict=True):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_sequence_losses_equal_full_logit_scoring(adapted) -> None:
    model, tok = adapted
    model.eval()
    batch = collate(rows_of(tok, 48), pad_id=0)
    with torch.no_grad():
        assert torch.allclose(sequence_losses(model, batch), full_sequence_losses(model, batch), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("max_len", "batch_size"), [(48, 1), (48, 3), (24, 2), (12, 8)])
def test_shared_prompt_choice_scores_equal_per_choice_scores(adapted, max_len: int, batch_size: int) -> None:
    """Small windows truncate prompts differently per choice (their own prefixes); batches pad prompts."""
    model, tok = adapted
    model.eval()
    with torch.no_grad():
        per_row = full_sequence_losses(model, collate(rows_of(tok, max_len), pad_id=0)).tolist()
        shared = [x for losses in choice_losses(model, tok, EXAMPLES, max_len, batch_size) for x in losses]
    assert shared == pytest.approx(per_row, abs=1e-5, rel=0)
    argmin_hits = 0
    for ex, losses in zip(EXAMPLES, choice_losses(model, tok, EXAMPLES, max_len, batch_size), strict=True):
        argmin_hits += int(min(range(len(losses)), key=losses.__getitem__) == ex.label)
    assert choice_accuracy(model, tok, EXAMPLES, max_len, batch_size) == argmin_hits / len(EXAMPLES)


class _NoKeep(nn.Module):
    """A causal LM whose forward has no ``logits_to_keep`` slicing: it must still get exact losses."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits_to_keep=None, **inputs):
        return self.inner(**inputs)


def test_models_without_logit_slicing_fall_back_to_full_logits(adapted) -> None:
    model, tok = adapted
    model.eval()
    batch = collate(rows_of(tok, 48), pad_id=0)
    with torch.no_grad():
        expected = full_sequence_losses(model, batch)
        assert torch.allclose(sequence_losses(_NoKeep(model), batch), expected, atol=1e-5, rtol=0)
        shared = [x for losses in choice_losses(_NoKeep(model), tok, EXAMPLES, 48, 2) for x in losses]
    assert shared == pytest.approx(expected.tolist(), abs=1e-5, rel=0)


def test_prompts_with_many_choices_are_scored_in_smaller_chunks(adapted, monkeypatch) -> None:
    """At most ROWS_PER_PROMPT * batch_size choice rows share one pass (each copies its prompt's KV cache): the
    scores stay those of one big chunk, and every chunk respects the bound unless one prompt alone exceeds it."""
    import amole.evaluation.choices as choices

    model, tok = adapted
    model.eval()
    with torch.no_grad():
        whole = choice_losses(model, tok, EXAMPLES, 48, 8)
        seen: list[int] = []
        real = choices._score_chunk
        monkeypatch.setattr(choices, "ROWS_PER_PROMPT", 1)  # 4 rows a chunk at batch size 4
        monkeypatch.setattr(choices, "_score_chunk", lambda m, c, p, o: (seen.append(sum(len(x.rows) for x in c)),
                                                                         real(m, c, p, o)))
        split = choice_losses(model, tok, EXAMPLES, 48, 4)
    assert [x for r in split for x in r] == pytest.approx([x for r in whole for x in r], abs=1e-5, rel=0)
    # Rows: 3 | 2 | four of 1 (the long prompt is cut differently per choice: a prefix each) | 2.
    assert seen == [3, 4, 4]  # 3 | 2+1+1 | 1+1+2
