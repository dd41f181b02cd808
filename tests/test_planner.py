"""Round planning: the modes, and RSEA over the clients that are actually present."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from amole.config import AssignConfig
from amole.server.assign import AssignmentError, check_assignment, client_scores, solve_many
from amole.server.planner import Assignment, adapted_constraints, plan

MODULES = ["m.q", "m.v"]
N, R = 30, 8
CLIENTS = [str(i) for i in range(10)]


def codes(seed: int = 0, clients=CLIENTS):
    rng = np.random.default_rng(seed)
    E = {m: rng.normal(size=(N, R)) for m in MODULES}
    T = {c: {m: rng.normal(size=R) for m in MODULES} for c in clients}
    return E, T


def first(cfg: AssignConfig, clients=CLIENTS, seed: int = 0) -> Assignment:
    return plan(cfg, clients, MODULES, N, R, None, None, {}, np.random.default_rng(seed))


def test_round_zero_is_random_within_constraints_and_deterministic() -> None:
    cfg = AssignConfig()
    a, b = first(cfg), first(cfg)
    for m in MODULES:
        check_assignment(a.X[m], 2, 2, 8)
        assert np.array_equal(a.X[m], b.X[m])
    assert not np.array_equal(a.X["m.q"], first(cfg, seed=1).X["m.q"])


def test_rsea_solves_on_the_scores_of_the_present_clients() -> None:
    cfg = AssignConfig()
    E, T = codes()
    got = plan(cfg, CLIENTS, MODULES, N, R, first(cfg), E, T, np.random.default_rng(0))
    for m in MODULES:
        Tm = np.stack([T[c][m] for c in CLIENTS])
        expected = solve_many({m: client_scores(E[m], Tm, R)}, 2, 2, 8)[m]
        assert np.array_equal(got.X[m], expected)


def test_assignment_over_a_subset_adapts_and_checks_constraints() -> None:
    cfg = AssignConfig()
    E, T = codes()
    present = ["0", "2", "5"]  # 30 experts x K=2 = 60 slots > 3 clients x max 8: max must widen to 20
    got = plan(cfg, present, MODULES, N, R, first(cfg), E, T, np.random.default_rng(0))
    assert got.clients == present
    for m in MODULES:
        assert got.X[m].shape == (N, 3)
        check_assignment(got.X[m], 2, 2, 20)
        Tm = np.stack([T[c][m] for c in present])
        assert np.array_equal(got.X[m], solve_many({m: client_scores(E[m], Tm, R)}, 2, 2, 20)[m])
    one = plan(cfg, ["7"], MODULES, N, R, first(cfg), E, T, np.random.default_rng(0))
    assert all(X.sum() == N for X in one.X.values())  # K shrinks to 1: the lone client holds every expert


def test_adapted_constraints_keep_the_configured_values_when_all_are_present() -> None:
    cfg = AssignConfig(clients_per_expert=2, min_experts=2, max_experts=8)
    assert adapted_constraints(cfg, N, 10) == cfg
    small = adapted_constraints(cfg, N, 3)
    assert (small.clients_per_expert, small.min_experts, small.max_experts) == (2, 2, 20)
    homo = adapted_constraints(AssignConfig(mode="homogeneous"), N, 10)
    assert (homo.min_experts, homo.max_experts) == (6, 6)
    with pytest.raises(AssignmentError, match="no clients"):
        adapted_constraints(cfg, N, 0)
    with pytest.raises(AssignmentError, match="unknown assignment mode"):
        adapted_constraints(AssignConfig(mode="greedy"), N, 10)


def test_rejoining_and_unseen_clients_get_experts() -> None:
    cfg = AssignConfig()
    E, T = codes(clients=CLIENTS[:9])  # client "9" has never uploaded statistics
    got = plan(cfg, CLIENTS, MODULES, N, R, first(cfg, CLIENTS[:9]), E, T, np.random.default_rng(0))
    assert all(len(ids) >= 2 for ids in got.held("9").values())


def test_static_keeps_round_zero_and_restricts_to_present_clients() -> None:
    cfg = AssignConfig(mode="static")
    base = first(cfg)
    E, T = codes()
    same = plan(cfg, CLIENTS, MODULES, N, R, base, E, T, np.random.default_rng(5))
    assert all(np.array_equal(same.X[m], base.X[m]) for m in MODULES)
    sub = plan(cfg, ["3", "1"], MODULES, N, R, base, E, T, np.random.default_rng(5))
    assert sub.held("3") == base.held("3") and sub.held("1") == base.held("1")


def test_random_mode_redraws_and_homogeneous_gives_equal_counts() -> None:
    E, T = codes()
    cfg = AssignConfig(mode="random")
    a = plan(cfg, CLIENTS, MODULES, N, R, first(cfg), E, T, np.random.default_rng(1))
    b = plan(cfg, CLIENTS, MODULES, N, R, first(cfg), E, T, np.random.default_rng(2))
    assert not np.array_equal(a.X["m.q"], b.X["m.q"])
    cfg = AssignConfig(mode="homogeneous")
    h = plan(cfg, CLIENTS, MODULES, N, R, first(cfg), E, T, np.random.default_rng(0))
    assert all((X.sum(axis=0) == 6).all() for X in h.X.values())


def test_a_config_that_would_leave_a_client_without_experts_is_refused_with_the_numbers() -> None:
    cfg = AssignConfig(clients_per_expert=2, min_experts=1, max_experts=8)
    with pytest.raises(AssignmentError, match=r"N=8 x clients_per_expert K=2 = 16 expert slots < C=20"):
        adapted_constraints(cfg, 8, 20)
    with pytest.raises(AssignmentError, match="min_experts=0"):
        adapted_constraints(AssignConfig(min_experts=0), N, 10)
    # Whenever a plan is made, every client holds at least one expert in every module.
    for C in (1, 2, 7, 16):
        got = first(AssignConfig(min_experts=1), clients=[str(i) for i in range(C)])
        assert all(X.sum(0).min() >= 1 for X in got.X.values())


def test_static_gives_a_late_joiner_an_architecture_and_keeps_it() -> None:
    cfg = AssignConfig(mode="static")
    start = first(cfg, clients=CLIENTS[:8])
    rng = np.random.default_rng(3)
    got = plan(cfg, CLIENTS, MODULES, N, R, start, None, {}, rng)  # clients 8 and 9 were absent in round 1
    assert got.clients == CLIENTS
    lo, hi = adapted_constraints(cfg, N, len(CLIENTS)).min_experts, 8
    for m in MODULES:
        assert np.array_equal(got.X[m][:, :8], start.X[m])  # the others keep theirs
        assert all(lo <= got.X[m][:, c].sum() <= hi for c in (8, 9))
    kept = start.extended(got)
    again = plan(cfg, ["9", "0"], MODULES, N, R, kept, None, {}, rng)
    for m in MODULES:
        assert np.array_equal(again.X[m][:, 0], got.X[m][:, 9])  # the joiner's architecture is kept


def test_an_expert_nobody_held_keeps_its_last_known_code() -> None:
    from amole.moe.keys import expert_stat_key, router_stat_key
    from amole.server.routing_codes import embedding_matrices

    m, r = MODULES[0], 2
    previous = np.array([[9.0, 9.0], [5.0, -5.0], [7.0, 7.0]])
    ups = [{router_stat_key(m): torch.tensor([1.0, 0.0]), expert_stat_key(m, 0): torch.tensor([2.0, 2.0])}]
    E, _ = embedding_matrices(ups, m, num_experts=3, r=r, previous=previous)
    assert E.tolist() == [[2.0, 2.0], [5.0, -5.0], [7.0, 7.0]]  # expert 0 re-measured, 1 and 2 remembered
    E0, _ = embedding_matrices(ups, m, num_experts=3, r=r)
    assert E0[1].tolist() == [0.0, 0.0]  # never measured: zero code
    # RSEA then scores a remembered expert by its code, not as a zero vector.
    T = np.array([[1.0, 0.0], [0.0, 1.0]])
    scores = client_scores(E.numpy(), T, r)
    assert scores[1, 0] > scores[1, 1]


def test_most_held_bounds_every_assignment_the_planner_makes() -> None:
    """The expert slots of a model compiled whole: the configured maximum, or the widened one where N*K/C needs it
    (4 clients of a 30-expert pool hold 15 each), so that no assignment outgrows them."""
    from amole.server.planner import most_held

    cfg = AssignConfig()  # K=2, 2..8 experts
    assert most_held(cfg, 30, 10) == 8
    assert most_held(cfg, 30, 4) == 15
    assert most_held(cfg, 30, 7) == 9
    assert most_held(cfg, 6, 3) == 6  # never more than the pool
    assert most_held(replace(cfg, mode="homogeneous"), 30, 10) == 6
    assert most_held(cfg, 0, 10) == 0  # plain LoRA: no routed experts
    assert most_held(cfg, 3, 10) == 3  # refused at the server's start (N*K < C); the client sizes to the setting
    rng = np.random.default_rng(0)
    for clients in (4, 7, 10):
        X = plan(cfg, [str(c) for c in range(clients)], ["m"], 30, 4, None, None, {}, rng).X["m"]
        assert X.sum(0).max() <= most_held(cfg, 30, clients)
