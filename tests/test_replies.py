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


def test_reliability_a_tensor_of_another_dtype_is_rejected() -> None:
    adapters = sent()
    adapters[keys.shared_key(M, "A")] = adapters[keys.shared_key(M, "A")].double()
    with pytest.raises(BadReply, match="dtype torch.float64, sent torch.float32"):
        check_upload("2", sent(), adapters, stats(), R)


def _reply(client: str, to: str):
    from types import SimpleNamespace

    from client_app.messages import TRAIN_METRICS, ClientResult, train_reply

    result = ClientResult({**dict.fromkeys(TRAIN_METRICS, 1.0), "num_examples": 3},
                          {k: v.numpy() for k, v in sent().items()}, {k: v.numpy() for k, v in stats().items()},
                          {"task": "t", "metric": "accuracy"})
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to), has_error=lambda: False,
                           content=train_reply(client, result))


def test_reliability_a_reply_claiming_another_client_or_answering_an_old_round() -> None:
    from server_app.replies import collect

    by_message = {"m2": "2", "m3": "3"}
    replies = [_reply("2", "m2"), _reply("7", "m3"), _reply("2", "message-of-round-1")]
    valid, rejected = collect(replies, by_message, {"2": sent(), "3": sent()}, R, 2)
    assert list(valid) == ["2"]  # the old round's reply is ignored, not averaged in
    assert "claims to come from client '7'" in rejected["3"]


def test_reliability_two_supernodes_claiming_one_client_id(monkeypatch, caplog) -> None:
    from types import SimpleNamespace

    from flwr.supercore.task_identity import TaskIdentity

    from client_app.messages import identify_reply
    from server_app.client_ids import ClientRegistry

    for key, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, key, value)

    class Grid:
        def __init__(self) -> None:
            self.nodes = [11]

        def get_node_ids(self):
            return self.nodes

        def send_and_receive(self, msgs, timeout=None):
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m.metadata.message_id),
                                    has_error=lambda: False, content=identify_reply("0", "t")) for m in msgs]

    grid = Grid()
    registry = ClientRegistry(grid, "{}", 1.0)
    assert registry.refresh() == {"0": 11}
    grid.nodes = [11, 12]  # a second node says it is client 0 as well: the first keeps it, the second waits
    assert registry.refresh() == {"0": 11} and registry.refresh() == {"0": 11} and registry.duplicates == {12: "0"}
    assert "node 12 says it is client 0, which node 11 serves" in caplog.text
    grid.nodes = [12]  # the first node leaves (a crashed SuperNode that came back under a new id): the second serves
    assert registry.refresh() == {"0": 12}
