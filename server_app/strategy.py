"""FedAMoLE's server half as a Flower ``Strategy``, usable from any ServerApp:

    strategy = FedAMoLE(compose(["model=tiny", "budget=smoke"]))
    result = strategy.start(grid=grid)

The same class runs every method of ``amole.strategies`` (``federation.strategy``: FedAMoLE, its ablations, the
baselines): what is sent, averaged and planned follows the method's server rules. One round (spec §2-3):

1. ``configure_train``: sites that joined are identified and probed, RSEA assigns experts over the clients
   present, each client gets one message with its own experts from the bank;
2. ``aggregate_train``: replies are checked (names, shapes, finiteness) and each expert is averaged over its
   holders; the routing codes for the next assignment are kept;
3. for FedIT only, ``configure_evaluate`` / ``aggregate_evaluate``: clients score the aggregated model;
4. ``start`` then checkpoints the round (``resume`` continues from it) and updates the run report.

Unlike FedAvg there is no single global model to broadcast: the bank is the strategy's state, each client gets
its slice of it, so the ``arrays`` arguments are not read; ``aggregate_train`` returns the bank as it now is.
Faults do not stop a run: a client that misses the reply timeout, fails, or sends a reply that fails the checks
sits the round out, and a node that reconnects rejoins. Fewer than ``min_clients`` valid replies stop it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from amole.config import COMPILE_CHOICES, Settings
from amole.moe.bank import modules_of
from amole.moe.keys import router_stat_key
from amole.server.aggregate import outside_bound
from amole.server.planner import Assignment, adapted_constraints, plan
from amole.strategies.registry import check_fixed, method_named
from client_app import messages
from server_app import checkpoint
from server_app.checkpoint import ServerState
from server_app.client_ids import ClientRegistry, client_order
from server_app.outcome import COMPLETED, FAILED, error_line, write_outcome
from server_app.replies import collect, collect_probes, collect_scores, sent_to
from server_app.run_report import RunReport, copy_client_models
from server_app.run_state import (
    fresh_state,
    log_round,
    privacy_entry,
    run_header,
    run_id,
    run_name,
    update_codes,
)

log = logging.getLogger("amole.server")


@dataclass
class _Round:
    """What ``configure_train`` planned, for ``aggregate_train`` and the evaluate step to finish."""

    started: float
    assign_seconds: float
    used: Assignment
    present: list[str]
    joined: list[str]
    nodes: dict[str, int]
    sent: dict[str, dict]
    out: list[Message]  # the messages sent: Flower gives them their ids as it sends them
    down: dict[str, int]
    order: list[str] = field(default_factory=list)  # clients whose train replies were valid, in client order
    clients: dict[str, dict] = field(default_factory=dict)  # their metrics for the round's entry
    absent: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


class FedAMoLE(Strategy):
    """FedAMoLE's server (or, by ``settings.federation.strategy``, any method of ``amole.strategies``).

    ``runs_dir``: where the run folder goes (default ``federation.runs_dir``); ``resume``: a run folder to
    continue from its last checkpoint, with the settings it started with.
    """

    def __init__(self, settings: Settings, runs_dir: str | Path | None = None,
                 resume: str | Path | None = None) -> None:
        self.state: ServerState | None = None
        if resume:
            self.run_dir = Path(resume)
            self.state = checkpoint.load(self.run_dir)
            settings = Settings.from_dict(self.state.settings)  # the run keeps the config it started with
            log.info("resuming %s after round %d", self.run_dir, self.state.round)
        else:
            self.run_dir = Path(runs_dir or settings.federation.runs_dir) / run_name(settings)
        self.settings = settings
        fed = settings.federation
        try:
            check_fixed(settings)
            check_clients_have_tasks(settings)
            self.rules = method_named(fed.strategy).server
            if self.state is None and self.rules.routed:  # fail before any work, for all clients that may join
                adapted_constraints(settings.assign, settings.adapter.num_experts, max(fed.num_clients,
                                                                                       fed.max_clients or 0))
        except Exception as err:
            write_outcome(self.run_dir, FAILED, 0, fed.num_rounds, err)
            log.error("run %s failed after 0 of %d rounds: %s", self.run_dir.name, fed.num_rounds, error_line(err))
            raise
        self.registry: ClientRegistry | None = None
        self._round: _Round | None = None
        self._privacy: dict[str, Any] = {}
        self._probes: dict[str, dict] = {}  # this round's probe statistics by client (released under DP too)

    def summary(self, num_rounds: int | None = None) -> None:
        """The run header: strategy, clients x rounds (those this start() runs to), scenario, folder, speed options."""
        fed = self.settings.federation
        compute = self.settings.model.compute_dtype
        matmuls = {None: "", "auto": ", backbone matmuls auto (bf16 where a site's CPU has bf16 units, else fp32)"}
        compiled = {None: "training's decoder compiled whole on CUDA sites, eager on CPUs",
                    "adapters": "adapter path compiled", "model": "training's decoder compiled whole",
                    "off": "eager"}[COMPILE_CHOICES.get(str(self.settings.model.compile).lower(), "off")]
        log.info("%s: %d clients x %d rounds, %s, run folder %s%s, %s (model.compile)", fed.strategy,
                 fed.num_clients, num_rounds or fed.num_rounds, self.settings.scenario.name, self.run_dir,
                 matmuls.get(compute, f", backbone matmuls {compute}"), compiled)

    # -- the loop -------------------------------------------------------------------------------------------------
    def start(self, grid: Grid, initial_arrays: ArrayRecord | None = None, num_rounds: int | None = None,
              timeout: float | None = None, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
        """Run (or resume) the federation to ``num_rounds`` (default ``federation.num_rounds``). The bank starts
        from ``initial_arrays`` when given (else seeded from the config); ``timeout`` defaults to
        ``federation.reply_timeout``."""
        num_rounds = num_rounds or self.settings.federation.num_rounds
        try:
            result = self._run(grid, initial_arrays, num_rounds, timeout or self.settings.federation.reply_timeout,
                               train_config, evaluate_config)
        except BaseException as err:
            done = self.state.round if self.state is not None else 0
            write_outcome(self.run_dir, FAILED, done, num_rounds, err)
            log.error("run %s failed after %d of %d rounds: %s", self.run_dir.name, done, num_rounds,
                      error_line(err))
            raise
        write_outcome(self.run_dir, COMPLETED, self.state.round, num_rounds)
        log.info("run %s completed after %d of %d rounds", self.run_dir.name, self.state.round, num_rounds)
        return result

    def _run(self, grid: Grid, initial_arrays: ArrayRecord | None, num_rounds: int, timeout: float,
             train_config: ConfigRecord | None, evaluate_config: ConfigRecord | None) -> Result:
        fed = self.settings.federation
        self.summary(num_rounds)
        self.registry = ClientRegistry(grid, messages.settings_json(self.settings), fed.query_timeout)
        nodes = self.registry.wait_for(fed.num_clients if self.state is None else fed.min_clients,
                                       fed.wait_for_nodes)
        if self.state is None:
            bank = initial_arrays.to_torch_state_dict() if initial_arrays else None
            self.state = fresh_state(self.settings, client_order(nodes)[: fed.num_clients], bank)
            self.state.metrics = {"run": run_header(self.settings, self.run_dir.name), "rounds": []}
        if fed.eval_round0 and self.state.round == 0 and "round0" not in self.state.metrics:
            self.score_untrained(grid, nodes, timeout)
        result = Result()
        with RunReport(self.run_dir) as report:
            for server_round in range(self.state.round + 1, num_rounds + 1):
                sent = list(self.configure_train(server_round, ArrayRecord(), train_config or ConfigRecord(), grid))
                _, result.train_metrics_clientapp[server_round] = self.aggregate_train(
                    server_round, grid.send_and_receive(sent, timeout=timeout))
                sent = list(self.configure_evaluate(server_round, ArrayRecord(), evaluate_config or ConfigRecord(),
                                                    grid))
                if sent:
                    result.evaluate_metrics_clientapp[server_round] = self.aggregate_evaluate(
                        server_round, grid.send_and_receive(sent, timeout=timeout))
                self.end_round(server_round, report)
        result.arrays = ArrayRecord(torch_state_dict=self.state.bank)
        return result

    def score_untrained(self, grid: Grid, nodes: dict[str, int], timeout: float) -> None:
        """Round 0 (the paper's ``--test_init``): every client scores its untrained model on its test split, so
        each site's personalized score can be read against where it started; kept as ``metrics["round0"]``."""
        started, state = time.perf_counter(), self.state
        present = [c for c in state.clients if c in nodes]
        out, _ = self._messages({c: nodes[c] for c in present}, {c: {} for c in present}, 0, MessageType.EVALUATE)
        scores = collect_scores(grid.send_and_receive(out, timeout=timeout), sent_to(out, present), 0)
        state.metrics["round0"] = {"round": 0, "seconds": time.perf_counter() - started, "clients": scores,
                                   "absent": [c for c in present if c not in scores]}
        mean = np.mean([s["score"] for s in scores.values()]) if scores else float("nan")
        log.info("round 0 (untrained): mean score %.4f over %d clients, %.1f s", mean, len(scores),
                 state.metrics["round0"]["seconds"])

    def end_round(self, server_round: int, report: RunReport) -> None:
        """Record the round, checkpoint it, update the report and copy the sites' kept models into the run."""
        state, p = self.state, self._round
        state.round = server_round
        state.metrics["rounds"].append({
            "round": server_round, "seconds": time.perf_counter() - p.started, "assign_seconds": p.assign_seconds,
            "clients": p.clients, "absent": p.absent, "rejected": p.rejected, "joined": p.joined,
            "assignment": {m: [p.used.held(c)[m] for c in p.used.clients] for m in modules_of(state.bank)},
            "assignment_clients": p.used.clients, "num_experts": self.settings.adapter.num_experts,
            **({"privacy": self._privacy} if self.settings.assign.dp_eta is not None else {}),
        })
        checkpoint.save(state, self.run_dir)
        report.update(state.metrics)
        copy_client_models(self.run_dir, self.settings.federation.site_dir, run_id(state), list(p.clients))
        log_round(state.metrics["rounds"][-1])

    # -- Flower's four steps -----------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Admit new sites, assign experts over the clients present, one message per client."""
        started = time.perf_counter()
        settings, state, fed = self.settings, self.state, self.settings.federation
        nodes = self.registry.refresh()
        self._probes = {}
        joined = self._admit(grid, nodes, server_round)
        present = [c for c in state.clients if c in nodes]
        if len(present) < fed.min_clients:
            raise RuntimeError(f"round {server_round}: only clients {present} are connected, min_clients is "
                               f"{fed.min_clients}")
        t0 = time.perf_counter()
        used = plan(settings.assign, present, modules_of(state.bank), settings.adapter.num_experts,
                    settings.adapter.r, state.assignment, state.expert_codes, state.client_codes, state.rng)
        assign_seconds = time.perf_counter() - t0
        if state.assignment is None or settings.assign.mode != "static":
            state.assignment = used
        else:  # static: late joiners keep the architecture drawn for them
            state.assignment = state.assignment.extended(used)
        log.info("round %d/%d: training clients %s (experts held per module, mean: %s)", server_round,
                 fed.num_rounds, present, ", ".join(f"{np.mean([len(v) for v in used.held(c).values()]):.1f}"
                                                    for c in present))
        sent = {c: self.rules.payload(state.bank, used.held(c)) for c in present}
        out, down = self._messages(nodes, sent, server_round, MessageType.TRAIN)
        self._round = _Round(started, assign_seconds, used, present, joined, nodes, sent, out, down)
        return out

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, average each expert over its holders, keep the routing codes for the next plan."""
        settings, state, p = self.settings, self.state, self._round
        fed, r = settings.federation, settings.adapter.r
        valid, p.rejected = collect(replies, sent_to(p.out, p.present), p.sent, r, server_round)
        for client, why in outside_bound(state.bank, {c: v.adapters for c, v in valid.items()},
                                         fed.update_bound).items():
            log.warning("round %d: left out the reply of client %s: %s", server_round, client, why)
            p.rejected[client] = why
            del valid[client]
        p.absent = [c for c in p.present if c not in valid and c not in p.rejected]
        if p.absent:
            log.warning("round %d: no reply from clients %s within %.0f s", server_round, p.absent,
                        fed.reply_timeout)
        if len(valid) < fed.min_clients:
            raise RuntimeError(f"round {server_round}: {len(valid)} valid replies, fewer than min_clients "
                               f"{fed.min_clients} (absent {p.absent}, rejected {sorted(p.rejected)})")
        p.order = [c for c in p.present if c in valid]
        weights = [float(valid[c].metrics["num_examples"]) for c in p.order] if fed.weighted else None
        state.bank = self.rules.aggregate(state.bank, [valid[c].adapters for c in p.order], weights)
        if self.rules.routed:
            update_codes(state, [valid[c].stats for c in p.order], p.order, modules_of(state.bank),
                         settings.adapter.num_experts, r)
        p.clients = {c: {**valid[c].metrics, "bytes_down": int(p.down[c]),
                         "experts": {m: len(ids) for m, ids in p.used.held(c).items()}} for c in p.order}
        if settings.assign.dp_eta is not None:
            self._privacy = privacy_entry(settings, {c: valid[c].stats for c in p.order}, self._probes)
        return ArrayRecord(torch_state_dict=state.bank), _mean_scores(p.clients)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """FedIT's protocol only: every client that trained scores the aggregated model."""
        if not self.rules.scores_aggregate:
            return []
        p = self._round
        nodes = {c: p.nodes[c] for c in p.order}
        sent = {c: self.rules.payload(self.state.bank, p.used.held(c)) for c in nodes}
        out, down = self._messages(nodes, sent, server_round, MessageType.EVALUATE)
        p.out = out
        for client in nodes:
            p.clients[client]["bytes_down"] += down[client]
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The aggregate's score replaces each client's post-training one (kept as ``score_after_training``)."""
        p = self._round
        scores = collect_scores(replies, sent_to(p.out, p.order), server_round)
        for client, m in p.clients.items():
            m["score_after_training"] = m["score"]
            got = scores.get(client, {})
            m["score"] = got.get("score", float("nan"))  # no valid score of the aggregate: left out
            for key in messages.SPREAD_METRICS:  # the spread of the score now kept, never the post-training one's
                if key in got:
                    m[key] = got[key]
                else:
                    m.pop(key, None)
        return _mean_scores(p.clients)

    # -- helpers -------------------------------------------------------------------------------------------------
    def _admit(self, grid: Grid, nodes: dict[str, int], server_round: int) -> list[str]:
        """Let sites that were not in the federation join (up to ``max_clients``). With routed experts each is
        first probed: it returns its routing statistics under the shared expert and router, so RSEA assigns it
        experts from its own data this very round. Returns the clients admitted."""
        state, fed = self.state, self.settings.federation
        room = (fed.max_clients or fed.num_clients) - len(state.clients)
        new = [c for c in client_order(nodes) if c not in state.clients][: max(room, 0)]
        if not new:
            return []
        if self.rules.routed:
            modules = modules_of(state.bank)
            sent = {c: self.rules.payload(state.bank, {m: [] for m in modules}) for c in new}
            out, _ = self._messages(nodes, sent, server_round, messages.PROBE_MESSAGE)
            replies = grid.send_and_receive(out, timeout=fed.reply_timeout)
            probes = collect_probes(replies, sent_to(out, new), modules, self.settings.adapter.r, server_round)
            self._probes = probes
            for client, stats in probes.items():
                state.client_codes[client] = {m: stats[router_stat_key(m)].double().numpy() for m in modules}
            new = [c for c in new if c in probes]
        for client in new:
            log.info("round %d: client %s joined the federation", server_round, client)
        state.clients.extend(new)
        return new

    def _messages(self, nodes: dict[str, int], adapters: dict[str, dict], server_round: int,
                  kind: str) -> tuple[list[Message], dict[str, int]]:
        """One message per client carrying its adapters; and the bytes each message carries down."""
        text = messages.settings_json(self.settings)
        out, down = [], {}
        for client, tensors in adapters.items():
            record, down[client] = messages.sent_bytes(tensors)
            content = messages.round_request(text, server_round, client, run_id(self.state), record)
            out.append(Message(content, dst_node_id=nodes[client], message_type=kind, group_id=str(server_round)))
        return out, down


def _mean_scores(clients: dict[str, dict[str, Any]]) -> MetricRecord:
    scores = [float(m["score"]) for m in clients.values() if np.isfinite(m["score"])]
    return MetricRecord({"score_mean": float(np.mean(scores)) if scores else float("nan"),
                         "clients": len(clients)})


def run(grid: Grid, settings: Settings, runs_dir: str | Path | None = None,
        resume: str | Path | None = None) -> ServerState:
    """Run (or resume) a whole federation with the strategy ``settings`` names; returns the final server state."""
    strategy = FedAMoLE(settings, runs_dir=runs_dir, resume=resume)
    strategy.start(grid)
    return strategy.state


def check_clients_have_tasks(settings: Settings) -> None:
    """Before any node is contacted: a task scenario gives client i its i-th task, so more clients than tasks can
    never all identify themselves (a scenario without a task list leaves each site's data to its node config)."""
    scenario, fed = settings.scenario, settings.federation
    most = max(fed.num_clients, fed.max_clients or 0)
    if scenario.partition == "task" and scenario.tasks and most > len(scenario.tasks):
        key = "max_clients" if (fed.max_clients or 0) > fed.num_clients else "num_clients"
        raise ValueError(f"federation.{key}={most} but scenario {scenario.name!r} lists {len(scenario.tasks)} "
                         f"tasks, one per client: use at most {len(scenario.tasks)} clients or list more "
                         "scenario.tasks")
