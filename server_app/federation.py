"""The round loop (spec §2-3) over the clients that are present: plan the round's architectures, send each
client its payload, check and aggregate the replies per expert, keep the routing statistics for the next plan,
checkpoint and report. What is sent, averaged and planned is asked of the run's strategy (amole.strategies.registry);
every message is built and read by client_app.messages.

Faults do not stop a run: a client that misses the reply timeout, fails, or sends a reply that fails the
checks sits the round out (its experts keep their values, the next plan is made over those present), and a
node that reconnects is identified again and rejoins. Only fewer than ``min_clients`` valid replies stop it.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from amole.backbones.loader import adapter_target_shapes
from amole.client.routing_stats import router_stat_key
from amole.config import Settings
from amole.evaluation.fidelity import protocol_report
from amole.moe.bank import create_bank, modules_of
from amole.server.planner import adapted_constraints, plan
from amole.server.privacy import Guarantee
from amole.server.routing_codes import embedding_matrices
from amole.site.folder import safe_name
from amole.strategies.registry import strategy_named
from client_app import messages as protocol
from server_app import checkpoint
from server_app.checkpoint import ServerState
from server_app.client_ids import ClientRegistry, client_order
from server_app.replies import collect, collect_probes, collect_scores, sent_to
from server_app.run_report import RunReport, copy_client_models, round_summary

log = logging.getLogger("amole.server")


def run_name(settings: Settings) -> str:
    if settings.federation.name:
        return settings.federation.name
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{settings.federation.strategy}-{settings.scenario.name}-{stamp}"


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
        if strategy_named(fed.strategy).routed:  # fail before any work, for as many clients as may ever join
            adapted_constraints(settings.assign, settings.adapter.num_experts, max(fed.num_clients,
                                                                                   fed.max_clients or 0))
    registry = ClientRegistry(grid, protocol.settings_json(settings), fed.query_timeout)
    nodes = registry.wait_for(fed.num_clients if state is None else fed.min_clients, fed.wait_for_nodes)
    if state is None:
        state = fresh_state(settings, client_order(nodes)[: fed.num_clients])
        state.metrics = {"run": run_header(settings, run_dir.name), "rounds": []}
    report = RunReport(run_dir)
    try:
        for server_round in range(state.round + 1, fed.num_rounds + 1):
            federated_round(grid, registry, settings, state, server_round)
            checkpoint.save(state, run_dir)
            report.update(state.metrics)
            copy_client_models(run_dir, fed.site_dir, run_id(state), state.clients)
            log_round(state.metrics["rounds"][-1])
    finally:
        report.close()
    return state


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
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "config": settings.to_dict(),
            "protocol": protocol_of(settings)}


def protocol_of(settings: Settings) -> dict[str, Any]:
    """Which evaluation protocol (conf/protocol) made this run's numbers, what was changed after the preset, and
    what the data could not follow; data notes need the data, which a deployed server may not have."""
    try:
        return protocol_report(settings)
    except Exception as err:  # noqa: BLE001 - the notes are informative; a server without the data still runs
        report = protocol_report(settings, with_data=False)
        report["notes"] = [f"data notes unavailable on the server ({type(err).__name__}: {err})"]
        return report


def run_id(state: ServerState) -> str:
    """This federation's id, drawn once and kept in the checkpoint: clients key the files they keep by it."""
    run = state.metrics["run"]
    return str(run.get("id") or safe_name(run["name"]))  # checkpoints from before ids


def federated_round(grid: Grid, registry: ClientRegistry, settings: Settings, state: ServerState,
                    server_round: int) -> None:
    """One round: plan, dispatch, collect and check, aggregate, keep the statistics for the next plan."""
    start = time.perf_counter()
    fed, r, N = settings.federation, settings.adapter.r, settings.adapter.num_experts
    strategy = strategy_named(fed.strategy)
    nodes = registry.refresh()
    joined = admit(grid, settings, state, nodes, server_round)
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

    sent = {c: strategy.payload(state.bank, used.held(c)) for c in present}
    messages, down = dispatch(settings, state, nodes, sent, server_round, MessageType.TRAIN)
    replies = grid.send_and_receive(messages, timeout=fed.reply_timeout)
    valid, rejected = collect(replies, sent_to(messages, present), sent, r, server_round)
    absent = [c for c in present if c not in valid and c not in rejected]
    if absent:
        log.warning("round %d: no reply from clients %s within %.0f s", server_round, absent, fed.reply_timeout)
    if len(valid) < fed.min_clients:
        raise RuntimeError(f"round {server_round}: {len(valid)} valid replies, fewer than min_clients "
                           f"{fed.min_clients} (absent {absent}, rejected {sorted(rejected)})")

    order = [c for c in present if c in valid]
    weights = [float(valid[c].metrics["num_examples"]) for c in order] if fed.weighted else None
    state.bank = strategy.aggregate(state.bank, [valid[c].adapters for c in order], weights)
    if strategy.routed:
        update_codes(state, [valid[c].stats for c in order], order, modules, N, r)
    clients = {c: {**valid[c].metrics, "bytes_down": int(down[c]),
                   "experts": {m: len(ids) for m, ids in used.held(c).items()}} for c in order}
    if strategy.scores_aggregate:
        score_aggregate(grid, settings, state, used, {c: nodes[c] for c in order}, clients, server_round)
    state.round = server_round
    state.metrics["rounds"].append({
        "round": server_round, "seconds": time.perf_counter() - start, "assign_seconds": assign_seconds,
        "clients": clients, "absent": absent, "rejected": rejected, "joined": joined,
        "assignment": {m: [used.held(c)[m] for c in used.clients] for m in modules},
        "assignment_clients": used.clients, "num_experts": N,
        **({"privacy": privacy_entry(settings, {c: valid[c].stats for c in order})}
           if settings.assign.dp_eta is not None else {}),
    })


def admit(grid: Grid, settings: Settings, state: ServerState, nodes: dict[str, int], server_round: int) -> list[str]:
    """Let sites that were not in the federation join (up to ``max_clients``). With routed experts each is first
    probed: it returns its routing statistics under the shared expert and router, so RSEA assigns it experts
    from its own data this very round. Returns the clients admitted."""
    fed = settings.federation
    room = (fed.max_clients or fed.num_clients) - len(state.clients)
    new = [c for c in client_order(nodes) if c not in state.clients][: max(room, 0)]
    if not new:
        return []
    strategy = strategy_named(fed.strategy)
    if strategy.routed:
        modules = modules_of(state.bank)
        sent = {c: strategy.payload(state.bank, {m: [] for m in modules}) for c in new}
        messages, _ = dispatch(settings, state, nodes, sent, server_round, protocol.PROBE_MESSAGE)
        replies = grid.send_and_receive(messages, timeout=fed.reply_timeout)
        probes = collect_probes(replies, sent_to(messages, new), modules, settings.adapter.r, server_round)
        for client, stats in probes.items():
            state.client_codes[client] = {m: stats[router_stat_key(m)].double().numpy() for m in modules}
        new = [c for c in new if c in probes]
    for client in new:
        log.info("round %d: client %s joined the federation", server_round, client)
    state.clients.extend(new)
    return new


def dispatch(settings: Settings, state: ServerState, nodes: dict[str, int], adapters: dict[str, dict],
             server_round: int, kind: str) -> tuple[list[Message], dict[str, int]]:
    """One message per client carrying its adapters; and the bytes each message carries down."""
    text = protocol.settings_json(settings)
    messages, down = [], {}
    for client, tensors in adapters.items():
        record, down[client] = protocol.sent_bytes(tensors)
        content = protocol.round_request(text, server_round, client, run_id(state), record)
        messages.append(Message(content, dst_node_id=nodes[client], message_type=kind, group_id=str(server_round)))
    return messages, down


def update_codes(state: ServerState, stats: list[dict], clients: list[str], modules: list[str], N: int,
                 r: int) -> None:
    """Keep this round's routing codes for the next plan (experts nobody held keep their last known code)."""
    previous, state.expert_codes = state.expert_codes or {}, {}
    for m in modules:
        E, T = embedding_matrices(stats, m, N, r, previous.get(m))
        state.expert_codes[m] = E.numpy()
        for i, c in enumerate(clients):
            state.client_codes.setdefault(c, {})[m] = T[i].numpy()


def privacy_entry(settings: Settings, stats: dict[str, dict]) -> dict[str, Any]:
    """What the DP mechanism guaranteed this round: epsilon per vector and per client (amole.server.privacy)."""
    eta, clip = float(settings.assign.dp_eta), float(settings.assign.dp_clip)
    per_client = {c: Guarantee(eta, clip, len(s)).to_dict() for c, s in stats.items()}
    return {"eta": eta, "clip": clip, "epsilon_per_vector": Guarantee(eta, clip, 1).epsilon_per_vector,
            "epsilon_round_max": max((g["epsilon_round"] for g in per_client.values()), default=0.0),
            "clients": per_client}


def score_aggregate(grid: Grid, settings: Settings, state: ServerState, used, nodes: dict[str, int],
                    clients: dict[str, dict], server_round: int) -> None:
    """FedIT's protocol: every client scores the aggregated model; that score replaces the post-training one."""
    strategy = strategy_named(settings.federation.strategy)
    sent = {c: strategy.payload(state.bank, used.held(c)) for c in nodes}
    messages, down = dispatch(settings, state, nodes, sent, server_round, MessageType.EVALUATE)
    replies = grid.send_and_receive(messages, timeout=settings.federation.reply_timeout)
    scores = collect_scores(replies, sent_to(messages, list(nodes)), server_round)
    for client, m in clients.items():
        m["bytes_down"] += down[client]
        m["score_after_training"] = m["score"]
        got = scores.get(client, {})
        m["score"] = got.get("score", float("nan"))  # no valid score of the aggregate: left out, not the local one
        for key in protocol.SPREAD_METRICS:  # the spread of the score now kept, never the post-training one's
            if key in got:
                m[key] = got[key]
            else:
                m.pop(key, None)


def log_round(entry: dict[str, Any]) -> None:
    scores = [c["score"] for c in entry["clients"].values()]
    mb = sum(c["bytes_up"] + c["bytes_down"] for c in entry["clients"].values()) / 1e6
    log.info("round %d: mean score %.4f over %d clients, %.2f MB moved, %.1f s%s", entry["round"],
             round_summary(entry)["score_mean"], len(scores), mb, entry["seconds"],
             f" (absent {entry['absent']}, rejected {sorted(entry['rejected'])})"
             if entry["absent"] or entry["rejected"] else "")
