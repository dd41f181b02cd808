"""What a run records about itself, around the strategy's rounds: its name and header, its fresh state, the
routing codes kept for the next assignment, the DP guarantee of a round and the round's log line."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np
from torch import Tensor

from amole.config import Settings
from amole.evaluation.fidelity import protocol_report
from amole.moe.bank import create_bank
from amole.server.privacy import Guarantee
from amole.server.routing_codes import embedding_matrices
from amole.site.folder import safe_name
from server_app.checkpoint import ServerState
from server_app.run_report import round_summary

log = logging.getLogger("amole.server")


def run_name(settings: Settings) -> str:
    if settings.federation.name:
        return settings.federation.name
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{settings.federation.strategy}-{settings.scenario.name}-{stamp}"


def fresh_state(settings: Settings, clients: list[str], bank: Mapping[str, Tensor] | None = None) -> ServerState:
    """Round 0: the seeded bank (or ``bank``), no assignment yet, the server RNG seeded from the run seed."""
    if bank is None:
        from amole.backbones.loader import adapter_target_shapes  # transformers: only when a bank is built

        shapes = adapter_target_shapes(settings.model, settings.adapter.target_modules)
        bank = create_bank(shapes, settings.adapter, seed=settings.federation.seed)
    rng = np.random.default_rng(settings.federation.seed)
    return ServerState(settings=settings.to_dict(), bank=dict(bank), clients=clients, rng=rng)


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


def update_codes(state: ServerState, stats: list[dict], clients: list[str], modules: list[str], N: int,
                 r: int) -> None:
    """Keep this round's routing codes for the next plan (experts nobody held keep their last known code)."""
    previous, state.expert_codes = state.expert_codes or {}, {}
    for m in modules:
        E, T = embedding_matrices(stats, m, N, r, previous.get(m))
        state.expert_codes[m] = E.numpy()
        for i, c in enumerate(clients):
            state.client_codes.setdefault(c, {})[m] = T[i].numpy()


def privacy_entry(settings: Settings, stats: dict[str, dict], probes: dict[str, dict] | None = None) -> dict[str, Any]:
    """What the DP mechanism guaranteed this round: epsilon per vector and per client (amole.server.privacy).

    Every release counts: a joining site's probe statistics (sent once, before it trains) add to its round's
    vectors, also when its training reply then never arrives."""
    eta, clip = float(settings.assign.dp_eta), float(settings.assign.dp_clip)
    probes = probes or {}
    per_client = {c: {**Guarantee(eta, clip, len(stats.get(c, {})) + len(probes.get(c, {}))).to_dict(),
                      **({"probe_vectors": len(probes[c])} if c in probes else {})}
                  for c in [*stats, *(c for c in probes if c not in stats)]}
    return {"eta": eta, "clip": clip, "epsilon_per_vector": Guarantee(eta, clip, 1).epsilon_per_vector,
            "epsilon_round_max": max((g["epsilon_round"] for g in per_client.values()), default=0.0),
            "clients": per_client}


def log_round(entry: dict[str, Any]) -> None:
    scores = [c["score"] for c in entry["clients"].values()]
    mb = sum(c["bytes_up"] + c["bytes_down"] for c in entry["clients"].values()) / 1e6
    log.info("round %d: mean score %.4f over %d clients, %.2f MB moved, %.1f s%s", entry["round"],
             round_summary(entry)["score_mean"], len(scores), mb, entry["seconds"],
             f" (absent {entry['absent']}, rejected {sorted(entry['rejected'])})"
             if entry["absent"] or entry["rejected"] else "")
