"""Local training learns, and the evaluation metrics score what they should."""

from __future__ import annotations

import random

import torch

from amole.client import train
from amole.client.routing_stats import collect_statistics
from amole.client.train import round_lr, train_steps
from amole.config import EvalConfig, TrainConfig
from amole.data import Example, batches, collate, encode, synthetic_task
from amole.evaluation.evaluate import (
    answer_length,
    choice_accuracy,
    evaluate,
    rouge_l,
    rouge_predictions,
    sequence_losses,
    standard_error,
)
from amole.moe.bank import create_bank, payload
from amole.moe.keys import expert_stat_key, router_stat_key
from amole.moe.model import export_adapters, import_adapters, inject


def setup(tiny, adapter_cfg, held=(0, 2, 3)):
    model, tok = tiny
    layers = inject(model, adapter_cfg)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    import_adapters(model, payload(create_bank(shapes, adapter_cfg, seed=0), {n: list(held) for n in layers}))
    return model, tok, layers


def test_local_round_lowers_the_loss_and_decays_lr(tiny, adapter_cfg) -> None:
    model, tok, _ = setup(tiny, adapter_cfg)
    data = synthetic_task("reverse", n=32, seed=0)
    cfg = TrainConfig(lr=3e-3, steps=25, batch_size=8, max_seq_len=64)
    first = train_steps(model, batches(tok, data, 8, 64, random.Random(0)), cfg, server_round=1)
    later = train_steps(model, batches(tok, data, 8, 64, random.Random(1)), cfg, server_round=3)
    assert later["train_loss"] < first["train_loss"]
    assert first["lr"] == 3e-3
    assert abs(later["lr"] - 3e-3 * 0.99**2) < 1e-12 and later["lr"] == round_lr(cfg, 3)
    assert first["train_lb_loss"] > 0


def test_fused_optimizer_makes_the_per_tensor_loops_update(tiny, adapter_cfg, monkeypatch) -> None:
    """Fused Adam and foreach clipping (one kernel over all adapter tensors) change the speed, not the update."""
    model, tok, _ = setup(tiny, adapter_cfg)
    start = export_adapters(model)
    data = synthetic_task("reverse", n=16, seed=0)
    cfg = TrainConfig(lr=3e-3, steps=4, batch_size=4, max_seq_len=64, max_grad_norm=0.05)
    used, adam = [], torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda *a, **kw: used.append(kw.get("fused")) or adam(*a, **kw))
    ends = []
    for devices in (train.FUSED_DEVICES, ()):
        monkeypatch.setattr(train, "FUSED_DEVICES", devices)
        import_adapters(model, start)
        train_steps(model, batches(tok, data, 4, 64, random.Random(0)), cfg, server_round=1)
        ends.append(export_adapters(model))
    assert used == [True, None]
    assert any(not torch.equal(start[k], ends[0][k]) for k in start)
    for k in start:
        torch.testing.assert_close(ends[0][k], ends[1][k], rtol=1e-5, atol=1e-7)


def test_statistics_cover_held_experts_only(tiny, adapter_cfg) -> None:
    model, tok, layers = setup(tiny, adapter_cfg, held=(1, 5))
    data = synthetic_task("copy", n=6)
    stream = batches(tok, data, 3, 64, random.Random(0))
    model.train()
    stats = collect_statistics(model, [next(stream), next(stream)])
    name = next(iter(layers))
    assert set(stats) == {router_stat_key(n) for n in layers} | {expert_stat_key(n, i) for n in layers for i in (1, 5)}
    assert stats[router_stat_key(name)].shape == (adapter_cfg.r,)
    assert model.training  # restored after the no-grad eval-mode pass


def test_choice_accuracy_prefers_the_lowest_loss_answer(tiny) -> None:
    model, tok = tiny
    ex = Example("Q: say aaaa\nA:", "x", choices=("x", "y"), label=0)
    # Whatever the random model prefers, accuracy must be the share of rows where the argmin is the label.
    losses = sequence_losses(model, collate([encode(tok, Example(ex.prompt, c), 64) for c in ex.choices], 0))
    best = int(torch.argmin(losses))
    flipped = Example(ex.prompt, ex.choices[best], choices=ex.choices, label=best)
    assert choice_accuracy(model, tok, [flipped], 64, 4) == 1.0
    other = 1 - best
    assert choice_accuracy(model, tok, [Example(ex.prompt, ex.choices[other], ex.choices, other)], 64, 4) == 0.0


def test_rouge_l_of_a_trained_copy_task_is_high(tiny, adapter_cfg) -> None:
    model, tok, _ = setup(tiny, adapter_cfg)
    data = [Example("Say hi:", "hi there")] * 4
    cfg = TrainConfig(lr=1e-2, steps=60, batch_size=4, max_seq_len=32)
    train_steps(model, batches(tok, data, 4, 32, random.Random(0)), cfg, server_round=1)
    score = rouge_l(model, tok, data[:2], 32, EvalConfig(max_new_tokens=12, batch_size=2))
    assert score > 0.9
    result = evaluate(model, tok, data[:2], 32, EvalConfig(max_new_tokens=12))
    assert result["metric"] == "rougeL" and result["n"] == 2
    assert result["score_se"] == 0.0  # both examples the same and both copied: no spread
    # the answer length: the tokens before EOS, the same for every example here, well under the 12 allowed
    lengths = [p.tokens for p in rouge_predictions(model, tok, data[:2], 32, EvalConfig(max_new_tokens=12))]
    assert result["gen_tokens"] == lengths[0] == lengths[1] and 0 < lengths[0] < 12


def test_answer_length_stops_at_the_first_eos() -> None:
    rows = [[5, 6, 2, 2], [5, 2, 7, 2], [5, 6, 7, 8]]  # EOS 2; sampled rows are padded with pad (= EOS)
    assert [answer_length(r, eos_id=2) for r in rows] == [2, 1, 4]  # the last row never stopped: all count
    assert [answer_length(r, eos_id=None) for r in rows] == [4, 4, 4]


def test_multiple_choice_scores_carry_no_answer_length(tiny) -> None:
    model, tok = tiny
    ex = Example("Q: say aaaa\nA:", "x", choices=("x", "y"), label=0)
    assert "gen_tokens" not in evaluate(model, tok, [ex], 64, EvalConfig())


def test_standard_error_is_the_sample_std_over_root_n() -> None:
    # hits 1, 1, 0, 0: sample std sqrt(1/3), n = 4 -> sqrt(1/3) / 2
    assert abs(standard_error([1, 1, 0, 0]) - (1 / 3) ** 0.5 / 2) < 1e-12
    assert standard_error([0.5]) != standard_error([0.5])  # NaN: no spread from one example
