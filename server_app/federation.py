"""The FedAMoLE round loop (spec §2-3): per-client payloads out, trained experts and statistics in,
per-expert aggregation, reverse-selection assignment for the next round, checkpoint and report.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from amole.aggregate import aggregate
from amole.assign import (
    assignment_to_clients,
    check_feasible,
    effective_bounds,
    initial_assignment,
    next_assignment,
)
from amole.bank import create_bank, modules_of, payload
from amole.config import Settings
from amole.loader import adapter_target_shapes
from amole.report import RunReport, client_order
from amole.statistics import embedding_matrices
from server_app import checkpoint
from server_app.checkpoint import ServerState
from server_app.replies import BadReply, check_upload

log = logging.getLogger("amole.server")


def run_name(settings: Settings) -> str:
    if settings.federation.name:
        return settings.federation.name
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{settings.federation.strategy}-{settings.scenario.name}-{stamp}"


def settings_record(settings: Settings) -> str:
    return json.dumps(settings.to_dict(), sort_keys=True)


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {count} nodes connected within {timeout:.0f} s")
        time.sleep(1.0)


def discover_clients(grid: Grid, settings: Settings) -> dict[str, int]:
    """Ask every node who it is: clients are matched to assignment columns by reported id, never by order."""
    fed = settings.federation
    nodes = wait_for_nodes(grid, fed.num_clients, fed.wait_for_nodes)
    config = ConfigRecord({"settings": settings_record(settings)})
    msgs = [Message(RecordDict({"config": config}), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = list(grid.send_and_receive(msgs, timeout=fed.reply_timeout))
    by_client: dict[str, int] = {}
    for reply in replies:
        if reply.has_error():
            raise RuntimeError(f"node {reply.metadata.src_node_id} failed to identify: {reply.error.reason}")
        client = str(reply.content["info"]["client-id"])
        if client in by_client:
            raise RuntimeError(f"two nodes report client id {client}: give each SuperNode its own client-id")
        by_client[client] = reply.metadata.src_node_id
    if len(by_client) < fed.num_clients:
        raise RuntimeError(f"{len(by_client)} of {fed.num_clients} clients identified themselves")
    chosen = client_order(by_client)[: fed.num_clients]
    return {c: by_client[c] for c in chosen}


def fresh_state(settings: Settings, clients: list[str]) -> ServerState:
    a, fed = settings.assign, settings.federation
    N, C = settings.adapter.num_experts, len(clients)
    check_feasible(N, C, a.clients_per_expert, *effective_bounds(a, N, C))
    shapes = adapter_target_shapes(settings.model, settings.adapter.target_modules)
    bank = create_bank(shapes, settings.adapter, seed=fed.seed)
    rng = np.random.default_rng(fed.seed)
    assignment = initial_assignment(a, sorted(shapes), N, C, rng)
    return ServerState(settings=settings.to_dict(), bank=bank, assignment=assignment, clients=clients, rng=rng)


def run(grid: Grid, settings: Settings, runs_dir: Path | None = None, resume: str | Path | None = None) -> ServerState:
    """Run (or resume) a whole federation; returns the final server state."""
    if resume:
        run_dir = Path(resume)
        state = checkpoint.load(run_dir)
        settings = Settings.from_dict(state.settings)  # the run keeps the config it started with
        log.info("resuming %s after round %d", run_dir, state.round)
    else:
        run_dir = Path(runs_dir or settings.federation.runs_dir) / run_name(settings)
        state = None
        a = settings.assign
        lo, hi = effective_bounds(a, settings.adapter.num_experts, settings.federation.num_clients)
        check_feasible(settings.adapter.num_experts, settings.federation.num_clients, a.clients_per_expert, lo, hi)
    nodes = discover_clients(grid, settings)
    if state is None:
        state = fresh_state(settings, client_order(nodes))
        state.metrics = {"run": run_header(settings, run_dir.name), "rounds": []}
    elif sorted(nodes) != sorted(state.clients):
        raise RuntimeError(f"resumed run had clients {state.clients}, now {sorted(nodes)} are connected")
    report = RunReport(run_dir)
    try:
        for server_round in range(state.round + 1, settings.federation.num_rounds + 1):
            run_round(grid, settings, state, nodes, server_round)
            checkpoint.save(state, run_dir)
            report.update(state.metrics)
            log_round(state.metrics["rounds"][-1])
    finally:
        report.close()
    return state


def run_header(settings: Settings, name: str) -> dict[str, Any]:
    fed = settings.federation
    return {"name": name, "strategy": fed.strategy, "scenario": settings.scenario.name, "model": settings.model.name,
            "num_rounds": fed.num_rounds, "num_clients": fed.num_clients, "seed": fed.seed,
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "config": settings.to_dict()}


def run_round(grid: Grid, settings: Settings, state: ServerState, nodes: dict[str, int], server_round: int) -> None:
    """One round: dispatch, collect and check, aggregate, assign the next round's architectures."""
    start = time.perf_counter()
    held = assignment_to_clients(state.assignment)
    counts = [sum(len(ids) for ids in h.values()) / max(len(h), 1) for h in held]
    log.info("round %d/%d: training %d clients (experts held per module, mean: %s)", server_round,
             settings.federation.num_rounds, len(held), ", ".join(f"{c:.1f}" for c in counts))
    settings_json = settings_record(settings)
    sent, messages, down = {}, [], {}
    for c, client in enumerate(state.clients):
        sent[client] = payload(state.bank, held[c])
        record = ArrayRecord(sent[client])
        down[client] = record.count_bytes()
        config = ConfigRecord({"settings": settings_json, "round": server_round, "client-id": client})
        content = RecordDict({"adapters": record, "config": config})
        messages.append(Message(content, dst_node_id=nodes[client], message_type=MessageType.TRAIN,
                                group_id=str(server_round)))
    node_to_client = {n: c for c, n in nodes.items()}
    uploads, stats, weights, clients_metrics = {}, {}, {}, {}
    for reply in grid.send_and_receive(messages, timeout=settings.federation.reply_timeout):
        client = node_to_client.get(reply.metadata.src_node_id)
        if client is None:
            raise RuntimeError(f"reply from unknown node {reply.metadata.src_node_id}")
        if reply.has_error():
            raise RuntimeError(f"client {client} failed in round {server_round}: {reply.error.reason}")
        adapters = reply.content["adapters"].to_torch_state_dict()
        client_stats = reply.content["stats"].to_torch_state_dict()
        check_upload(client, sent[client], adapters, client_stats, settings.adapter.r)
        uploads[client], stats[client] = adapters, client_stats
        m = dict(reply.content["metrics"])
        weights[client] = float(m["num-examples"])
        info = reply.content["info"]
        clients_metrics[client] = {
            "task": str(info["task"]), "metric": str(info["metric"]), "score": float(m["score"]),
            "train_loss": float(m["train_lm_loss"]),
            "experts": {mod: len(ids) for mod, ids in held[state.clients.index(client)].items()},
            "experts_mean": float(m["experts_mean"]), "num_examples": int(m["num-examples"]),
            "bytes_down": int(down[client]),
            "bytes_up": int(reply.content["adapters"].count_bytes() + reply.content["stats"].count_bytes()),
            "seconds": float(m["seconds"]),
        }
    missing = [c for c in state.clients if c not in uploads]
    if missing:
        raise BadReply(f"round {server_round}: no reply from clients {missing} within the timeout")
    order = state.clients
    use_weights = [weights[c] for c in order] if settings.federation.weighted else None
    used = {m: [sorted(np.flatnonzero(X[:, c]).tolist()) for c in range(len(order))]
            for m, X in state.assignment.items()}
    state.bank = aggregate(state.bank, [uploads[c] for c in order], use_weights)
    t0 = time.perf_counter()
    r, N = settings.adapter.r, settings.adapter.num_experts
    embeddings = {}
    for module in modules_of(state.bank):
        E, T = embedding_matrices([stats[c] for c in order], module, N, r)
        embeddings[module] = (E.numpy(), T.numpy())
    state.assignment = next_assignment(settings.assign, state.assignment, embeddings=embeddings, r=r, rng=state.rng)
    assign_seconds = time.perf_counter() - t0
    state.round = server_round
    state.metrics["rounds"].append({
        "round": server_round, "seconds": time.perf_counter() - start, "assign_seconds": assign_seconds,
        "clients": clients_metrics, "assignment": used, "num_experts": N,
    })


def log_round(entry: dict[str, Any]) -> None:
    scores = [c["score"] for c in entry["clients"].values()]
    mb = sum(c["bytes_up"] + c["bytes_down"] for c in entry["clients"].values()) / 1e6
    log.info("round %d: mean score %.4f over %d clients, %.2f MB moved, %.1f s",
                entry["round"], float(np.mean(scores)), len(scores), mb, entry["seconds"])
