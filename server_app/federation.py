"""The FedAMoLE round loop (spec §2-3) over the clients that are present: plan the round's architectures,
send each client its payload, check and aggregate the replies per expert, keep the routing statistics for the
next plan, checkpoint and report.

Faults do not stop a run: a client that misses the reply timeout, fails, or sends a reply that fails the
checks sits the round out (its experts keep their values, the next plan is made over those present), and a
node that reconnects is identified again and rejoins. Only fewer than ``min_clients`` valid replies stop it.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from amole.aggregate import aggregate
from amole.bank import create_bank, modules_of, payload
from amole.config import Settings
from amole.kept import safe_name
from amole.loader import adapter_target_shapes
from amole.planner import adapted_constraints, plan
from amole.privacy import Guarantee
from amole.report import RunReport, client_order, round_summary
from amole.statistics import embedding_matrices
from server_app import checkpoint
from server_app.checkpoint import ServerState
from server_app.registry import ClientRegistry
from server_app.replies import BadReply, check_upload

log = logging.getLogger("amole.server")
FUSION_METRICS = ("fusion_w_private", "fusion_w_global")  # FDLoRA clients report their tuned weights


def run_name(settings: Settings) -> str:
    if settings.federation.name:
        return settings.federation.name
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{settings.federation.strategy}-{settings.scenario.name}-{stamp}"


def settings_record(settings: Settings) -> str:
    return json.dumps(settings.to_dict(), sort_keys=True)


def run(grid: Grid, settings: Settings, runs_dir: Path | None = None, resume: str | Path | None = None) -> ServerState:
    """Run (or resume) a whole federation; returns the final server state."""
    fed = settings.federation
    if resume:
        run_dir = Path(resume)
        state: ServerState | None = checkpoint.load(run_dir)
        settings = Settings.from_dict(state.settings)  # the run keeps the config it started with
        fed = settings.federation
        log.info("resuming %s after round %d", run_dir, state.round)
    else:
        run_dir = Path(runs_dir or fed.runs_dir) / run_name(settings)
        state = None
        if settings.adapter.num_experts > 0:  # fail before any work
            adapted_constraints(settings.assign, settings.adapter.num_experts, fed.num_clients)
        check_strategy(settings)
    registry = ClientRegistry(grid, settings_record(settings), fed.query_timeout)
    nodes = registry.wait_for(fed.num_clients if state is None else fed.min_clients, fed.wait_for_nodes)
    if state is None:
        state = fresh_state(settings, client_order(nodes)[: fed.num_clients])
        state.metrics = {"run": run_header(settings, run_dir.name), "rounds": []}
    report = RunReport(run_dir)
    try:
        for server_round in range(state.round + 1, fed.num_rounds + 1):
            run_round(grid, registry, settings, state, server_round)
            checkpoint.save(state, run_dir)
            report.update(state.metrics)
            log_round(state.metrics["rounds"][-1])
    finally:
        report.close()
    return state


def check_strategy(settings: Settings) -> None:
    """Reject combinations the round loop cannot run, before any client does work."""
    fed, adapter = settings.federation, settings.adapter
    if settings.fusion.private_adapter and (adapter.num_experts or not adapter.shared_expert or not fed.communicate
                                            or fed.evaluate != "after_training"):
        raise ValueError("fusion.private_adapter (FDLoRA) fuses one federated plain LoRA per module with a private "
                         "one: it needs adapter.num_experts=0, adapter.shared_expert=true, federation.communicate=true "
                         f"and federation.evaluate=after_training (got {adapter.num_experts}, {adapter.shared_expert}, "
                         f"{fed.communicate}, {fed.evaluate})")


def fresh_state(settings: Settings, clients: list[str]) -> ServerState:
    shapes = adapter_target_shapes(settings.model, settings.adapter.target_modules)
    bank = create_bank(shapes, settings.adapter, seed=settings.federation.seed)
    rng = np.random.default_rng(settings.federation.seed)
    return ServerState(settings=settings.to_dict(), bank=bank, clients=clients, rng=rng)


def run_header(settings: Settings, name: str) -> dict[str, Any]:
    fed = settings.federation
    return {"name": name, "strategy": fed.strategy, "scenario": settings.scenario.name, "model": settings.model.name,
            "num_rounds": fed.num_rounds, "num_clients": fed.num_clients, "seed": fed.seed,
            "id": safe_name(f"{name}-{uuid.uuid4().hex[:8]}"),
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "config": settings.to_dict()}


def run_id(state: ServerState) -> str:
    """This federation's id, drawn once and kept in the checkpoint: clients key the files they keep by it."""
    run = state.metrics["run"]
    return str(run.get("id") or safe_name(run["name"]))  # checkpoints from before ids


def run_round(grid: Grid, registry: ClientRegistry, settings: Settings, state: ServerState, server_round: int) -> None:
    """One round: plan, dispatch, collect and check, aggregate, keep the statistics for the next plan."""
    start = time.perf_counter()
    fed, r, N = settings.federation, settings.adapter.r, settings.adapter.num_experts
    nodes = registry.refresh()
    present = [c for c in state.clients if c in nodes]
    if len(present) < fed.min_clients:
        raise RuntimeError(f"round {server_round}: only clients {present} are connected, min_clients is "
                           f"{fed.min_clients}")
    modules = modules_of(state.bank)
    t0 = time.perf_counter()
    used = plan(settings.assign, present, modules, N, r, state.assignment, state.expert_codes,
                state.client_codes, state.rng)
    assign_seconds = time.perf_counter() - t0
    if state.assignment is None or settings.assign.mode != "static":
        state.assignment = used
    else:  # static: late joiners keep the architecture drawn for them
        state.assignment = state.assignment.extended(used)
    log.info("round %d/%d: training clients %s (experts held per module, mean: %s)", server_round,
             fed.num_rounds, present, ", ".join(f"{np.mean([len(v) for v in used.held(c).values()]):.1f}"
                                                for c in present))

    sent, messages, down = {}, [], {}
    settings_json = settings_record(settings)
    for client in present:
        sent[client] = payload(state.bank, used.held(client)) if fed.communicate else {}
        record = ArrayRecord(sent[client])
        down[client] = record.count_bytes()
        config = ConfigRecord({"settings": settings_json, "round": server_round, "client-id": client,
                               "run-id": run_id(state)})
        messages.append(Message(RecordDict({"adapters": record, "config": config}), dst_node_id=nodes[client],
                                message_type=MessageType.TRAIN, group_id=str(server_round)))
    replies = grid.send_and_receive(messages, timeout=fed.reply_timeout)
    valid, rejected = collect(replies, sent_to(messages, present), sent, r, server_round)
    absent = [c for c in present if c not in valid and c not in rejected]
    if absent:
        log.warning("round %d: no reply from clients %s within %.0f s", server_round, absent, fed.reply_timeout)
    if len(valid) < fed.min_clients:
        raise RuntimeError(f"round {server_round}: {len(valid)} valid replies, fewer than min_clients "
                           f"{fed.min_clients} (absent {absent}, rejected {sorted(rejected)})")

    order = [c for c in present if c in valid]
    weights = [valid[c]["num_examples"] for c in order] if fed.weighted else None
    state.bank = aggregate(state.bank, [valid[c]["adapters"] for c in order], weights)
    stats = [valid[c]["stats"] for c in order]
    previous_codes, state.expert_codes = state.expert_codes or {}, {}
    for m in modules if N > 0 else []:
        E, T = embedding_matrices(stats, m, N, r, previous_codes.get(m))
        state.expert_codes[m] = E.numpy()
        for i, c in enumerate(order):
            state.client_codes.setdefault(c, {})[m] = T[i].numpy()
    if fed.evaluate == "after_aggregation":
        score_aggregate(grid, settings, state, used, {c: nodes[c] for c in order}, valid, down, server_round)
    state.round = server_round
    state.metrics["rounds"].append({
        "round": server_round, "seconds": time.perf_counter() - start, "assign_seconds": assign_seconds,
        "clients": {c: {**valid[c]["metrics"], "bytes_down": int(down[c]),
                        "experts": {m: len(ids) for m, ids in used.held(c).items()}} for c in order},
        "absent": absent, "rejected": rejected,
        "assignment": {m: [used.held(c)[m] for c in used.clients] for m in modules},
        "assignment_clients": used.clients, "num_experts": N,
        **({"privacy": privacy_entry(settings, {c: valid[c]["stats"] for c in order})}
           if settings.assign.dp_eta is not None else {}),
    })


def privacy_entry(settings: Settings, stats: dict[str, dict]) -> dict[str, Any]:
    """What the DP mechanism guaranteed this round: epsilon per vector and per client (amole.privacy)."""
    eta, clip = float(settings.assign.dp_eta), float(settings.assign.dp_clip)
    per_client = {c: Guarantee(eta, clip, len(s)).to_dict() for c, s in stats.items()}
    return {"eta": eta, "clip": clip, "epsilon_per_vector": Guarantee(eta, clip, 1).epsilon_per_vector,
            "epsilon_round_max": max((g["epsilon_round"] for g in per_client.values()), default=0.0),
            "clients": per_client}


def score_aggregate(grid: Grid, settings: Settings, state: ServerState, used, nodes: dict[str, int],
                    valid: dict[str, dict], down: dict[str, int], server_round: int) -> None:
    """FedIT's protocol: every client scores the aggregated model; that score replaces the post-training one."""
    settings_json = settings_record(settings)
    messages = []
    for client, node in nodes.items():
        record = ArrayRecord(payload(state.bank, used.held(client)))
        down[client] += record.count_bytes()
        config = ConfigRecord({"settings": settings_json, "round": server_round, "client-id": client,
                               "run-id": run_id(state)})
        messages.append(Message(RecordDict({"adapters": record, "config": config}), dst_node_id=node,
                                message_type=MessageType.EVALUATE, group_id=str(server_round)))
    replies = list(grid.send_and_receive(messages, timeout=settings.federation.reply_timeout))
    by_message = sent_to(messages, list(nodes))
    scores: dict[str, float] = {}
    for reply in replies:
        client = by_message.get(reply.metadata.reply_to_message_id)
        if client is None:
            log.warning("round %d: ignoring a reply to a message this round did not send", server_round)
            continue
        try:
            if reply.has_error():
                raise BadReply(f"client error: {reply.error.reason}")
            score = float(reply.content["metrics"]["score"])
            if not math.isfinite(score):
                raise BadReply(f"score {score} is not finite")
        except (BadReply, KeyError, TypeError, ValueError) as err:
            log.warning("round %d: left out client %s's score of the aggregate: %s", server_round, client, err)
            continue
        scores[client] = score
    for client in nodes:
        m = valid[client]["metrics"]
        m["score_after_training"] = m["score"]
        m["score"] = scores.get(client, float("nan"))  # no valid score of the aggregate: not the local one


def sent_to(messages: list[Message], clients: list[str]) -> dict[str, str]:
    """Message id -> client. Replies are matched by the message they answer, not by sender: when a node is
    gone, the SuperLink itself answers for it (as node 1, with a node-unavailable error)."""
    return {m.metadata.message_id: c for m, c in zip(messages, clients, strict=True)}


def collect(replies, by_message: dict[str, str], sent: dict[str, dict], r: int,
            server_round: int) -> tuple[dict[str, dict], dict[str, str]]:
    """Valid uploads by client, and the reason each rejected client was left out of the aggregation."""
    valid: dict[str, dict] = {}
    rejected: dict[str, str] = {}
    for reply in replies:
        client = by_message.get(reply.metadata.reply_to_message_id)
        if client is None:
            log.warning("round %d: ignoring a reply to a message this round did not send", server_round)
            continue
        if reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE:
            log.warning("round %d: client %s's node became unavailable", server_round, client)
            continue  # absent, not rejected: it may come back
        if reply.has_error():
            rejected[client] = f"client error: {reply.error.reason}"
            log.warning("round %d: client %s failed: %s", server_round, client, reply.error.reason)
            continue
        try:
            adapters = reply.content["adapters"].to_torch_state_dict()
            stats = reply.content["stats"].to_torch_state_dict()
            check_upload(client, sent[client], adapters, stats, r)
            m, info = dict(reply.content["metrics"]), reply.content["info"]
            metrics = {
                "task": str(info["task"]), "metric": str(info["metric"]), "score": float(m["score"]),
                "train_loss": float(m["train_lm_loss"]), "experts_mean": float(m["experts_mean"]),
                "num_examples": int(m["num-examples"]), "seconds": float(m["seconds"]),
                "bytes_up": int(reply.content["adapters"].count_bytes() + reply.content["stats"].count_bytes()),
                **{k: float(m[k]) for k in FUSION_METRICS if k in m},  # FDLoRA's tuned weights
            }
        except (BadReply, KeyError, TypeError, ValueError) as err:
            rejected[client] = str(err)
            log.warning("round %d: rejected the reply of client %s: %s", server_round, client, err)
            continue
        valid[client] = {"adapters": adapters, "stats": stats, "metrics": metrics,
                         "num_examples": float(metrics["num_examples"])}
    return valid, rejected


def log_round(entry: dict[str, Any]) -> None:
    scores = [c["score"] for c in entry["clients"].values()]
    mb = sum(c["bytes_up"] + c["bytes_down"] for c in entry["clients"].values()) / 1e6
    log.info("round %d: mean score %.4f over %d clients, %.2f MB moved, %.1f s%s", entry["round"],
             round_summary(entry)["score_mean"], len(scores), mb, entry["seconds"],
             f" (absent {entry['absent']}, rejected {sorted(entry['rejected'])})"
             if entry["absent"] or entry["rejected"] else "")
