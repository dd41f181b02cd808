"""What clients send back, checked before anything is aggregated.

A reply must carry exactly the adapter tensors its client was sent (same names, same shapes, finite values)
and the statistics for the experts it held; anything else is rejected with the reason, never averaged in.
Replies are matched to clients by the message they answer, not by sender: when a node is gone, the SuperLink
itself answers for it (with a node-unavailable error), and that client counts as absent, not rejected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import torch
from flwr.app import Message
from flwr.common.constant import ErrorCode
from torch import Tensor

from amole.moe.keys import expert_stat_key, held_experts, router_key, router_stat_key
from client_app.messages import BadReply, TrainReply, read_evaluate_reply, read_probe_reply, read_train_reply

log = logging.getLogger("amole.server")


def sent_to(messages: list[Message], clients: list[str]) -> dict[str, str]:
    """Message id -> client, to match each reply to the message it answers."""
    return {m.metadata.message_id: c for m, c in zip(messages, clients, strict=True)}


def collect(replies: Iterable[Message], by_message: dict[str, str], sent: Mapping[str, Mapping[str, Tensor]],
            r: int, server_round: int) -> tuple[dict[str, TrainReply], dict[str, str]]:
    """Valid train replies by client, and the reason each rejected client was left out of the aggregation."""
    valid: dict[str, TrainReply] = {}
    rejected: dict[str, str] = {}
    for reply in replies:
        client = by_message.get(reply.metadata.reply_to_message_id)
        if client is None:
            log.warning("round %d: ignoring a reply to a message this round did not send", server_round)
            continue
        if reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE:
            log.warning("round %d: client %s's node became unavailable", server_round, client)
            continue  # absent, not rejected: it may come back
        try:
            if reply.has_error():
                raise BadReply(f"client error: {reply.error.reason}")
            upload = read_train_reply(reply.content)
            if upload.client != client:
                raise BadReply(f"the reply claims to come from client {upload.client!r}; its message went to "
                               f"client {client!r}")
            check_upload(client, sent[client], upload.adapters, upload.stats, r)
        except BadReply as err:
            rejected[client] = str(err)
            log.warning("round %d: rejected the reply of client %s: %s", server_round, client, err)
            continue
        valid[client] = upload
    return valid, rejected


def collect_probes(replies: Iterable[Message], by_message: dict[str, str], modules: list[str], r: int,
                   server_round: int) -> dict[str, dict[str, Tensor]]:
    """Valid routing statistics of joining clients: exactly one finite r-vector per module's router."""
    expected = {router_stat_key(m) for m in modules}

    def parse(content) -> dict[str, Tensor]:
        stats = read_probe_reply(content)
        if set(stats) != expected:
            raise BadReply(f"statistics for {sorted(set(stats) ^ expected)[:3]} are missing or unexpected")
        if any(tuple(v.shape) != (r,) or not torch.isfinite(v).all() for v in stats.values()):
            raise BadReply(f"every statistic must be a finite vector of length {r}")
        return stats

    return _parse_each(replies, by_message, parse, f"round {server_round}: client %s cannot join yet: %s")


def collect_scores(replies: Iterable[Message], by_message: dict[str, str],
                   server_round: int) -> dict[str, dict[str, float | int]]:
    """Valid scores of the aggregate by client (score, and score_se / test_n when sent); failed, malformed and
    non-finite ones are logged and left out."""
    return _parse_each(replies, by_message, read_evaluate_reply,
                       f"round {server_round}: left out client %s's score of the aggregate: %s")


def _parse_each(replies: Iterable[Message], by_message: dict[str, str], parse, warning: str) -> dict:
    """``parse`` of each reply's content by client; a failed or bad reply is logged with ``warning`` and left out."""
    out = {}
    for reply in replies:
        client = by_message.get(reply.metadata.reply_to_message_id)
        if client is None:
            continue
        try:
            if reply.has_error():
                raise BadReply(f"client error: {reply.error.reason}")
            out[client] = parse(reply.content)
        except BadReply as err:
            log.warning(warning, client, err)
    return out


def check_upload(client: str, sent: Mapping[str, Tensor], adapters: Mapping[str, Tensor],
                 stats: Mapping[str, Tensor], r: int) -> None:
    missing = sorted(set(sent) - set(adapters))
    extra = sorted(set(adapters) - set(sent))
    if missing or extra:
        raise BadReply(f"client {client}: adapters differ from what it was sent (missing {missing[:3]}, "
                       f"not assigned {extra[:3]})")
    for key, value in adapters.items():
        if tuple(value.shape) != tuple(sent[key].shape):
            raise BadReply(f"client {client}: {key} has shape {tuple(value.shape)}, sent {tuple(sent[key].shape)}")
        if value.dtype != sent[key].dtype:
            raise BadReply(f"client {client}: {key} has dtype {value.dtype}, sent {sent[key].dtype}")
        if not torch.isfinite(value).all():
            raise BadReply(f"client {client}: {key} contains NaN or Inf")
    expected = set()
    for module, ids in held_experts(list(sent)).items():
        if router_key(module) in sent:  # modules without a routed pool have no statistics
            expected.add(router_stat_key(module))
            expected.update(expert_stat_key(module, i) for i in ids)
    if set(stats) != expected:
        raise BadReply(f"client {client}: statistics for {sorted(set(stats) ^ expected)[:3]} are missing or "
                       f"not for its experts")
    for key, value in stats.items():
        if tuple(value.shape) != (r,) or not torch.isfinite(value).all():
            raise BadReply(f"client {client}: statistic {key} must be a finite vector of length {r}")
