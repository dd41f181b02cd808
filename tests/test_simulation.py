"""FedAMoLE end to end in Flower's in-process simulation: 3 clients x 2 rounds with a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from amole.compose import ConfigError, compose
from amole.moe import keys
from amole.server.assign import AssignmentError
from client_app.app import app as client_app
from client_app.messages import pack, unpack_torch
from server_app import checkpoint
from server_app.outcome import read_outcome
from server_app.strategy import run

OVERRIDES = ["model=tiny", "scenario=synthetic", "budget=smoke"]


class RecordingGrid:
    """Delegates to Flower's grid, keeps every message and reply, and can crash the server after N train rounds.

    Counted in train exchanges, not all exchanges: how many identity queries a run sends depends on when the
    simulated nodes come up, so counting those made the crash point (and the test) depend on machine speed.
    """

    def __init__(self, grid: Grid, log: list, crash_after: int | None = None, tamper=None,
                 late_joiner: bool = False) -> None:
        self.grid, self.log, self.crash_after, self.tamper = grid, log, crash_after, tamper
        self.late_joiner = late_joiner  # hide the last node during round 1 (after all were identified)

    def get_node_ids(self):
        ids = list(self.grid.get_node_ids())
        if self.late_joiner and not self._trained():
            identified = {r.metadata.src_node_id for m, rs in self.log if m[0].metadata.message_type == "query"
                          for r in rs}
            if len(identified) >= len(ids) > 1:
                ids = sorted(ids)[:-1]
        return ids

    def _trained(self) -> int:
        return sum(m[0].metadata.message_type == "train" for m, _ in self.log if m)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        trained = self._trained()
        is_train = bool(messages) and messages[0].metadata.message_type == "train"
        if self.crash_after is not None and is_train and trained >= self.crash_after:
            raise SystemExit("simulated ServerApp crash")
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        if self.tamper is not None:
            replies = self.tamper(len(self.log), replies)
        self.log.append((messages, replies))
        return replies


def simulate(tmp: Path, name: str, resume: Path | None = None, log: list | None = None,
             crash_after: int | None = None, tamper=None, overrides: tuple[str, ...] = (),
             late_joiner: bool = False):
    settings = compose([*OVERRIDES, f"federation.name={name}", f"federation.site_dir={tmp / 'kept'}",
                        *overrides])
    result = {}
    server = ServerApp()
    log = [] if log is None else log

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        result["state"] = run(RecordingGrid(grid, log, crash_after, tamper, late_joiner), settings, runs_dir=tmp,
                              resume=resume)

    nodes = max(settings.federation.num_clients, settings.federation.max_clients or 0)
    run_simulation(server_app=server, client_app=client_app, num_supernodes=nodes,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    return result.get("state")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated crash
def test_round_loop_payloads_aggregation_and_resume(tmp_path: Path) -> None:
    log: list = []
    state = simulate(tmp_path, "full", log=log)
    assert state is not None and state.round == 2
    train_rounds = [(m, r) for m, r in log if m[0].metadata.message_type == "train"]
    assert len(train_rounds) == 2

    # Per-node payloads differ: each node gets only its own experts.
    messages, replies = train_rounds[-1]
    key_sets = [frozenset(unpack_torch(m.content["adapters"])) for m in messages]
    assert len(set(key_sets)) == len(key_sets)
    dst = [m.metadata.dst_node_id for m in messages]
    assert len(set(dst)) == 3

    # The final bank is the last round's per-expert mean over exactly the clients that held each expert.
    sent = {m.metadata.dst_node_id: unpack_torch(m.content["adapters"]) for m in messages}
    ups = {r.metadata.src_node_id: unpack_torch(r.content["adapters"]) for r in replies}
    bank_sent = {}
    for d in sent.values():
        bank_sent.update(d)
    checked = 0
    for key, value in state.bank.items():
        holders = [u[key] for u in ups.values() if key in u]
        if holders:
            assert torch.allclose(value, torch.stack(holders).mean(0), atol=1e-6), key
            checked += 1
        elif key in bank_sent:
            raise AssertionError(f"{key} was sent but came back from nobody")
    assert checked > 0
    k = keys.parse_key
    n_holders = {key: sum(key in u for u in ups.values()) for key in state.bank if k(key).kind == keys.EXPERTS}
    assert set(n_holders.values()) <= {0, 2}  # K=2 clients per expert, never averaged over all
    assert any(n == 2 for n in n_holders.values())

    # Clients hold different numbers of experts somewhere, and the run directory has its files.
    run_dir = tmp_path / "full"
    assert {"metrics.json", "report.md", "checkpoint.safetensors"} <= {p.name for p in run_dir.iterdir()}

    # The ServerApp dies after round 1 (as it sends round 2); resume gives the unbroken run's tensors.
    assert simulate(tmp_path, "resumed", crash_after=1) is None
    assert checkpoint.load(tmp_path / "resumed").round == 1
    resumed = simulate(tmp_path, "ignored", resume=tmp_path / "resumed")
    assert resumed is not None and resumed.round == 2
    assert resumed.bank.keys() == state.bank.keys()
    for key in state.bank:
        assert torch.equal(resumed.bank[key], state.bank[key]), key
    for m in state.assignment.X:
        assert np.array_equal(resumed.assignment.X[m], state.assignment.X[m])
    # wall-clock: what a resumed run may not repeat
    timing = {"seconds", "overhead_s", "startup_s", "startup_cpu_s", "train_s", "eval_s", "stats_s", "fusion_s"}
    for a, b in zip(resumed.metrics["rounds"], state.metrics["rounds"], strict=True):
        assert a["assignment"] == b["assignment"]
        for c in b["clients"]:
            assert {k: v for k, v in a["clients"][c].items() if k not in timing} == \
                   {k: v for k, v in b["clients"][c].items() if k not in timing}, (a["round"], c)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated crash
@pytest.mark.parametrize("strategy", ["local", "fdlora"])
def test_client_kept_adapters_survive_a_server_crash(tmp_path: Path, strategy: str) -> None:
    """Local-only and FDLoRA clients keep adapters on their disk, so a resumed run equals an unbroken one."""
    overrides = (f"strategy={strategy}",)
    full = simulate(tmp_path, "full", overrides=overrides)
    assert full is not None and full.round == 2
    assert simulate(tmp_path, "resumed", crash_after=1, overrides=overrides) is None
    resumed = simulate(tmp_path, "ignored", resume=tmp_path / "resumed", overrides=overrides)
    assert resumed is not None and resumed.round == 2
    for a, b in zip(resumed.metrics["rounds"], full.metrics["rounds"], strict=True):
        for c in b["clients"]:
            assert a["clients"][c]["score"] == b["clients"][c]["score"], (a["round"], c)
            assert a["clients"][c]["train_loss"] == b["clients"][c]["train_loss"], (a["round"], c)
    # Each run keeps its own files (by run id) in each client's site folder, at most the two newest rounds.
    sites = list((tmp_path / "kept").iterdir())
    assert len(sites) == 3
    for site in sites:
        runs = sorted(p.name for p in (site / "private").iterdir())
        assert len(runs) == 2 and runs[0].startswith("full-") and runs[1].startswith("resumed-")
        assert all(len(list(run.iterdir())) <= 2 for run in (site / "private").iterdir())


def client_of(reply) -> str:
    return str(reply.content["info"]["client-id"])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_bad_and_missing_replies_are_left_out_and_the_run_goes_on(tmp_path: Path) -> None:
    def tamper(exchange: int, replies: list) -> list:
        if exchange == 1:  # round 1: client 1 uploads a NaN
            for reply in replies:
                if client_of(reply) == "1":
                    adapters = unpack_torch(reply.content["adapters"])
                    first = next(iter(adapters))
                    adapters[first] = torch.full_like(adapters[first], float("nan"))
                    reply.content["adapters"] = pack(adapters)
        if exchange == 2:  # round 2: client 2's reply never arrives (as if past the timeout)
            replies = [r for r in replies if client_of(r) != "2"]
        return replies

    log: list = []
    state = simulate(tmp_path, "faults", log=log, tamper=tamper)
    assert state is not None and state.round == 2
    r1, r2 = state.metrics["rounds"]
    assert set(r1["rejected"]) == {"1"} and "NaN" in r1["rejected"]["1"] and set(r1["clients"]) == {"0", "2"}
    assert r2["absent"] == ["2"] and set(r2["clients"]) == {"0", "1"}

    # Round 1's aggregate (carried by round 2's payloads) averaged clients 0 and 2 only.
    (_, replies1), (messages2, replies2) = log[1], log[2]
    up1 = {client_of(r): unpack_torch(r.content["adapters"]) for r in replies1}
    sent2 = unpack_torch(messages2[0].content["adapters"])
    router = next(k for k in sent2 if k.endswith(".router"))
    assert torch.allclose(sent2[router], (up1["0"][router] + up1["2"][router]) / 2, atol=1e-6)
    up2 = {client_of(r): unpack_torch(r.content["adapters"]) for r in replies2}
    assert torch.allclose(state.bank[router], (up2["0"][router] + up2["1"][router]) / 2, atol=1e-6)


def test_every_strategy_runs_a_short_round(tmp_path: Path) -> None:
    """The ablations are presets of the same loop: one simulation runs a one-round federation of each."""
    strategies = ["static", "random", "homogeneous", "no_shared", "fedit_ft", "fedit", "local", "fdlora", "fedsa_lora"]
    results = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        for name in strategies:
            settings = compose([*OVERRIDES, f"strategy={name}", "federation.num_rounds=1", f"federation.name={name}",
                                f"federation.site_dir={tmp_path / 'kept'}"])
            results[name] = run(grid, settings, runs_dir=tmp_path)

    run_simulation(server_app=server, client_app=client_app, num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    assert set(results) == set(strategies)
    for name, state in results.items():
        assert state.round == 1 and len(state.metrics["rounds"][0]["clients"]) == 3, name
        # Every client's score comes with its spread over its test examples, in the file tools.results reads.
        stored = json.loads((tmp_path / name / "metrics.json").read_text())["rounds"][0]["clients"]
        assert all(c["test_n"] >= 2 and math.isfinite(c["score_se"]) and c["score_se"] >= 0
                   for c in stored.values()), (name, stored)
        # A generated answer's score comes with its mean length in tokens (under fedit, the aggregate's own).
        assert all(("gen_tokens" in c) == (c["metric"] != "accuracy") for c in stored.values()), (name, stored)
    counts = {c: sum(len(ids) for ids in results["homogeneous"].assignment.held(c).values())
              for c in results["homogeneous"].clients}
    assert len(set(counts.values())) == 1  # every client holds the same number of experts
    assert not any(".shared." in k for k in results["no_shared"].bank)
    assert not any(k.endswith(".router") or ".experts." in k for k in results["fedit_ft"].bank)
    fedit = results["fedit"].metrics["rounds"][0]["clients"]
    assert all("score_after_training" in m for m in fedit.values())  # scored after aggregation
    local = results["local"].metrics["rounds"][0]["clients"]
    assert all(m["bytes_up"] == 0 and m["bytes_down"] == 0 for m in local.values())  # nothing leaves a client
    fdlora = results["fdlora"].metrics["rounds"][0]["clients"]
    assert all(m["bytes_up"] > 0 and 0 <= m["fusion_w_private"] <= 1.5 and 0 <= m["fusion_w_global"] <= 1.5
               for m in fdlora.values())  # the global LoRA goes up; each client tuned its own fusion
    assert set(results["fdlora"].bank) == set(results["fedit_ft"].bank)  # the server sees one plain LoRA


def test_fdlora_with_routed_experts_cannot_be_configured() -> None:
    """A strategy fixes its architecture: FDLoRA (or FedIT) always trains one plain LoRA per module. Asking it for
    routed experts is an error naming the key (never a silent reset), and the old flags that could combine
    FDLoRA's private adapter with routed experts no longer exist."""
    with pytest.raises(ConfigError, match="adapter.num_experts=30 contradicts strategy=fdlora"):
        compose([*OVERRIDES, "strategy=fdlora", "adapter.num_experts=30"])
    settings = compose([*OVERRIDES, "strategy=fdlora"])
    assert settings.adapter.num_experts == 0 and settings.adapter.shared_expert
    with pytest.raises(ConfigError, match="private_adapter"):
        compose([*OVERRIDES, "strategy=fedamole", "fusion.private_adapter=true"])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_static_mode_gives_a_late_joiner_an_architecture(tmp_path: Path) -> None:
    """A client absent from round 1 is not in the static assignment; when it appears it gets one and trains."""
    state = simulate(tmp_path, "static", overrides=("strategy=static",), late_joiner=True)
    assert state is not None and state.round == 2
    r1, r2 = state.metrics["rounds"]
    assert len(r1["clients"]) == 2 and len(r2["clients"]) == 3
    (joiner,) = set(r2["clients"]) - set(r1["clients"])
    assert all(n >= 1 for n in r2["clients"][joiner]["experts"].values())
    assert joiner in state.assignment.clients  # kept for the rounds to come


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_bad_score_of_the_aggregate_is_left_out(tmp_path: Path) -> None:
    def tamper(exchange: int, replies: list) -> list:
        for reply in replies:
            if reply.metadata.message_type != "evaluate" or reply.has_error():
                continue
            who = reply.metadata.src_node_id
            if who == min(r.metadata.src_node_id for r in replies):
                reply.content["metrics"]["score"] = float("nan")  # NaN score
            elif who == max(r.metadata.src_node_id for r in replies):
                del reply.content["metrics"]["score"]  # malformed
        return replies

    state = simulate(tmp_path, "fedit", overrides=("strategy=fedit",), tamper=tamper)
    assert state is not None and state.round == 2
    for rnd in state.metrics["rounds"]:
        scores = [c["score"] for c in rnd["clients"].values()]
        assert sum(np.isnan(scores)) == 2 and len(scores) == 3  # two left out, the run went on
        assert all("score_after_training" in c for c in rnd["clients"].values())


def test_a_federation_that_would_leave_a_client_without_experts_fails_at_start(tmp_path: Path) -> None:
    class NoGrid:  # any contact with a node would be work done before the refusal
        def __getattr__(self, name):
            raise AssertionError(f"grid.{name} used before the config was checked")

    settings = compose([*OVERRIDES, "federation.num_clients=5", "adapter.num_experts=2",
                        "assign.clients_per_expert=2", "assign.min_experts=1"])
    with pytest.raises(AssignmentError, match=r"N=2 x clients_per_expert K=2 = 4 expert slots < C=5 clients"):
        run(NoGrid(), settings, runs_dir=tmp_path)
    (run_dir,) = tmp_path.iterdir()  # nothing but the recorded failure
    assert [p.name for p in run_dir.iterdir()] == ["outcome.json"]
    assert read_outcome(run_dir)["error"].startswith("AssignmentError: every client must hold")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_fedsa_lora_averages_a_and_keeps_b_at_the_client(tmp_path: Path) -> None:
    log: list = []
    state = simulate(tmp_path, "fedsa", overrides=("strategy=fedsa_lora",), log=log)
    assert state is not None and state.round == 2
    parts = {keys.parse_key(k).part for k in state.bank}
    assert parts == {"A", "B"} and all(keys.parse_key(k).kind == keys.SHARED for k in state.bank)
    trains = [(m, r) for m, r in log if m[0].metadata.message_type == "train"]
    for messages, replies in trains:
        for msg in messages:
            assert {keys.parse_key(k).part for k in unpack_torch(msg.content["adapters"])} == {"A"}  # B is never sent
        for reply in replies:
            assert {keys.parse_key(k).part for k in unpack_torch(reply.content["adapters"])} == {"A"}  # nor received
    assert all(not state.bank[k].any() for k in state.bank if k.endswith(".B"))  # the server's B: untouched zeros
    # Each client's trained B is in its own site folder, and differs between clients.
    sites = sorted((tmp_path / "kept").iterdir())
    b = [next((s / "private").iterdir()) for s in sites]
    from safetensors.torch import load_file

    latest = [load_file(sorted(d.iterdir())[-1]) for d in b]
    assert all(set(t) == {k for k in state.bank if k.endswith(".B")} for t in latest)
    some = next(iter(latest[0]))
    assert latest[0][some].any() and not torch.equal(latest[0][some], latest[1][some])
    # The bank's A is the mean of the last round's uploads.
    _, replies = trains[-1]
    ups = [unpack_torch(r.content["adapters"]) for r in replies]
    a = next(k for k in state.bank if k.endswith(".A"))
    assert torch.allclose(state.bank[a], torch.stack([u[a] for u in ups]).mean(0), atol=1e-6)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_new_site_joins_in_round_2_with_experts_chosen_from_its_statistics(tmp_path: Path) -> None:
    """Client 2 was not in round 1; it is probed in round 2 and RSEA assigns it experts from its codes."""
    from amole.moe.keys import router_stat_key
    from amole.server.planner import plan
    from amole.server.routing_codes import embedding_matrices
    from client_app import messages

    log: list = []

    def tamper(exchange: int, replies: list) -> list:  # client 2 does not answer who it is before round 2
        if any(m[0].metadata.message_type == "train" for m, _ in log if m):
            return replies
        return [r for r in replies if r.has_error() or r.metadata.message_type != "query" or client_of(r) != "2"]

    state = simulate(tmp_path, "join", log=log, tamper=tamper,
                     overrides=("federation.num_clients=2", "federation.max_clients=3"))
    assert state is not None and state.round == 2
    r1, r2 = state.metrics["rounds"]
    assert set(r1["clients"]) == {"0", "1"} and r2["joined"] == ["2"] and set(r2["clients"]) == {"0", "1", "2"}
    assert "client 2 joined in round 2" in (tmp_path / "join" / "report.md").read_text()
    # In simulation the run directory also gets each client's latest kept model.
    assert all((tmp_path / "join" / "clients" / c / "model" / "amole_model.json").is_file() for c in ("0", "1", "2"))

    probes = [(m, r) for m, r in log if m[0].metadata.message_type == messages.PROBE_MESSAGE]
    assert len(probes) == 1
    (sent_messages, replies), = probes
    sent = unpack_torch(sent_messages[0].content["adapters"])
    assert sent and not any(".experts." in k for k in sent)  # shared expert and router only
    probe_stats = messages.read_probe_reply(replies[0].content)
    # Round 2's plan is RSEA on round 1's uploads plus the newcomer's probe: recompute it and compare.
    settings = compose([*OVERRIDES, "federation.num_clients=2", "federation.max_clients=3"])
    (_, train1), = [(m, r) for m, r in log if m[0].metadata.message_type == "train"][:1]
    uploads = {client_of(r): unpack_torch(r.content["stats"]) for r in train1}
    order = [c for c in ("0", "1") if c in uploads]
    modules = list(r2["assignment"])
    N, rank = settings.adapter.num_experts, settings.adapter.r
    E, codes = {}, {c: {} for c in ("0", "1", "2")}
    for m in modules:
        e, T = embedding_matrices([uploads[c] for c in order], m, N, rank)
        E[m] = e.numpy()
        for i, c in enumerate(order):
            codes[c][m] = T[i].numpy()
        codes["2"][m] = probe_stats[router_stat_key(m)].double().numpy()
    expected = plan(settings.assign, ["0", "1", "2"], modules, N, rank, object(), E, codes, np.random.default_rng(0))
    for m in modules:
        assert r2["assignment"][m] == [expected.held(c)[m] for c in expected.clients], m
