"""Reply checks: what a client sends back must be exactly what it was sent, trained, and finite."""

from __future__ import annotations

import pytest
import torch

from amole.moe import keys
from amole.moe.keys import expert_stat_key, router_stat_key
from server_app.replies import BadReply, check_upload

M, R = "model.layers.0.self_attn.q_proj", 4


def sent() -> dict[str, torch.Tensor]:
    out = {keys.router_key(M): torch.zeros(R, 6), keys.shared_key(M, "A"): torch.zeros(R, 6),
           keys.shared_key(M, "B"): torch.zeros(5, R)}
    for i in (1, 3):
        out[keys.expert_key(M, i, "A")] = torch.zeros(R, 6)
        out[keys.expert_key(M, i, "B")] = torch.zeros(5, R)
    return out


def stats(ids=(1, 3)) -> dict[str, torch.Tensor]:
    return {router_stat_key(M): torch.zeros(R), **{expert_stat_key(M, i): torch.zeros(R) for i in ids}}


def test_a_faithful_reply_passes() -> None:
    check_upload("0", sent(), {k: v + 1 for k, v in sent().items()}, stats(), R)


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a.update({keys.expert_key(M, 7, "A"): torch.zeros(R, 6)}), "not assigned"),
    (lambda a: a.pop(keys.expert_key(M, 3, "B")), "missing"),
    (lambda a: a.update({keys.router_key(M): torch.zeros(R, 7)}), "shape"),
    (lambda a: a.update({keys.shared_key(M, "B"): torch.full((5, R), float("inf"))}), "NaN or Inf"),
])
def test_bad_adapters_are_rejected(change, message: str) -> None:
    adapters = sent()
    change(adapters)
    with pytest.raises(BadReply, match=message):
        check_upload("2", sent(), adapters, stats(), R)


def test_bad_statistics_are_rejected() -> None:
    with pytest.raises(BadReply, match="statistics"):
        check_upload("2", sent(), sent(), stats(ids=(1, 4)), R)  # a statistic for an expert it did not hold
    bad = stats()
    bad[router_stat_key(M)] = torch.tensor([float("nan")] * R)
    with pytest.raises(BadReply, match="finite"):
        check_upload("2", sent(), sent(), bad, R)
