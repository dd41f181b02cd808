"""Per-expert averaging over holders, and the statistics that feed RSEA."""

from __future__ import annotations

import pytest
import torch

from amole.moe import keys
from amole.moe.keys import expert_stat_key, router_stat_key
from amole.server.aggregate import aggregate
from amole.server.routing_codes import embedding_matrices

M = "model.layers.0.self_attn.q_proj"


def bank3() -> dict[str, torch.Tensor]:
    bank = {keys.router_key(M): torch.zeros(2, 3), keys.shared_key(M, "A"): torch.zeros(2, 3),
            keys.shared_key(M, "B"): torch.zeros(3, 2)}
    for i in range(3):
        bank[keys.expert_key(M, i, "A")] = torch.full((2, 3), 100.0 + i)
        bank[keys.expert_key(M, i, "B")] = torch.full((3, 2), -100.0 - i)
    return bank


def upload(value: float, experts: list[int]) -> dict[str, torch.Tensor]:
    bank = bank3()
    up = {k: torch.full_like(v, value) for k, v in bank.items() if keys.parse_key(k).kind != keys.EXPERTS}
    for i in experts:
        up[keys.expert_key(M, i, "A")] = torch.full((2, 3), value + i)
        up[keys.expert_key(M, i, "B")] = torch.full((3, 2), 2 * value + i)
    return up


def test_each_expert_averages_over_its_holders_only() -> None:
    new = aggregate(bank3(), [upload(1.0, [0, 1]), upload(3.0, [1]), upload(8.0, [])])
    assert torch.all(new[keys.router_key(M)] == 4.0)  # (1 + 3 + 8) / 3: every client
    assert torch.all(new[keys.shared_key(M, "B")] == 4.0)
    assert torch.all(new[keys.expert_key(M, 0, "A")] == 1.0)  # held by client 0 alone
    assert torch.all(new[keys.expert_key(M, 1, "A")] == 3.0)  # (2 + 4) / 2
    assert torch.all(new[keys.expert_key(M, 1, "B")] == 5.0)  # (3 + 7) / 2: B separately from A
    assert torch.all(new[keys.expert_key(M, 2, "A")] == 102.0)  # nobody held it: keeps its value


def test_weighted_by_examples() -> None:
    new = aggregate(bank3(), [upload(1.0, [1]), upload(3.0, [1])], weights=[3, 1])
    assert torch.allclose(new[keys.expert_key(M, 1, "A")], torch.full((2, 3), (2 * 3 + 4 * 1) / 4))


def test_unknown_tensor_and_bad_weights_are_rejected() -> None:
    bad = upload(1.0, [0])
    bad["model.layers.9.self_attn.q_proj.router"] = torch.zeros(2, 3)
    with pytest.raises(KeyError, match="does not have"):
        aggregate(bank3(), [bad])
    with pytest.raises(ValueError, match="weights"):
        aggregate(bank3(), [upload(1.0, [0])], weights=[1, 2])


def test_embedding_matrices_average_expert_codes_over_holders() -> None:
    ups = [
        {router_stat_key(M): torch.tensor([1.0, 0.0]), expert_stat_key(M, 0): torch.tensor([2.0, 2.0])},
        {router_stat_key(M): torch.tensor([0.0, 1.0]), expert_stat_key(M, 0): torch.tensor([4.0, 0.0]),
         expert_stat_key(M, 2): torch.tensor([1.0, 1.0])},
    ]
    E, T = embedding_matrices(ups, M, num_experts=3, r=2)
    assert torch.equal(E, torch.tensor([[3.0, 1.0], [0.0, 0.0], [1.0, 1.0]], dtype=torch.float64))
    assert torch.equal(T, torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))


def _bank_and_uploads(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    m = "model.layers.0.self_attn.q_proj"
    bank = {keys.router_key(m): torch.randn(6, 4, generator=g), keys.shared_key(m, "A"): torch.randn(4, 8, generator=g),
            keys.shared_key(m, "B"): torch.zeros(8, 4), keys.expert_key(m, 0, "A"): torch.randn(4, 8, generator=g)}
    uploads = {str(c): {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in bank.items()} for c in range(n)}
    return bank, uploads


def test_reliability_a_scaled_reply_is_left_out_and_a_healthy_round_is_untouched() -> None:
    from amole.server.aggregate import outside_bound

    bank, uploads = _bank_and_uploads()
    assert outside_bound(bank, uploads, None) == {}  # healthy: nobody outside, so averaging is exactly as before
    kept = [u for c, u in uploads.items() if c not in outside_bound(bank, uploads, None)]
    assert all(torch.equal(a, b) for a, b in zip(aggregate(bank, kept).values(),
                                                 aggregate(bank, list(uploads.values())).values(), strict=True))
    uploads["2"] = {k: v * 1e4 for k, v in uploads["2"].items()}  # finite, well-shaped, scaled x10^4
    out = outside_bound(bank, uploads, None)
    assert list(out) == ["2"] and "the median client's (federation.update_bound=10)" in out["2"]
    assert outside_bound(bank, uploads, 0) == {}  # off
    two = {c: uploads[c] for c in ("0", "2")}
    assert outside_bound(bank, two, None) == {}  # two clients: no median to hold one against
