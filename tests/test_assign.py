"""Tests of the RSEA scores and the per-module assignment solve (numpy/scipy/highspy only, fast)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.special import softmax

from amole.server import assign
from amole.server.assign import (
    AssignmentError,
    check_assignment,
    check_feasible,
    client_scores,
    homogeneous_bounds,
    random_assignment,
    solve,
    solve_many,
)

# (N, C, K, min, max): all feasible, C*min <= N*K <= C*max
SHAPES = [
    (30, 10, 2, 2, 8),  # paper defaults
    (30, 50, 4, 2, 8),  # many clients
    (30, 10, 2, 6, 6),  # homogeneous, exact
    (31, 10, 2, 6, 7),  # homogeneous, not divisible
    (8, 3, 1, 2, 3),
    (12, 5, 5, 12, 12),  # K = C: every expert to every client
    (30, 10, 2, 0, 30),  # loose bounds
]


def _satisfies(X: np.ndarray, K: int, lo: int, hi: int) -> bool:
    return (
        X.dtype == np.bool_
        and bool(np.all(X.sum(axis=1) == K))
        and bool(np.all((X.sum(axis=0) >= lo) & (X.sum(axis=0) <= hi)))
    )


def _milp_objective(S: np.ndarray, K: int, lo: int, hi: int) -> float:
    """The paper's formulation as an explicit 0/1 MILP (independent of assign.py's matrices)."""
    N, C = S.shape
    rows = sp.kron(sp.eye(N), np.ones((1, C)))
    cols = sp.kron(np.ones((1, N)), sp.eye(C))
    A = sp.vstack([rows, cols]).tocsr()
    lb = np.r_[np.full(N, K), np.full(C, lo)]
    ub = np.r_[np.full(N, K), np.full(C, hi)]
    res = milp(-S.ravel(), constraints=LinearConstraint(A, lb, ub), bounds=Bounds(0, 1), integrality=1)
    assert res.status == 0
    return -res.fun


def _brute_force_objective(S: np.ndarray, K: int, lo: int, hi: int) -> float:
    """Enumerate every way each expert picks K clients; keep those meeting the client bounds."""
    N, C = S.shape
    choices = list(itertools.combinations(range(C), K))
    best = -np.inf
    for pick in itertools.product(choices, repeat=N):
        counts = np.zeros(C, dtype=int)
        value = 0.0
        for i, clients in enumerate(pick):
            for c in clients:
                counts[c] += 1
                value += S[i, c]
        if np.all((counts >= lo) & (counts <= hi)):
            best = max(best, value)
    return best


@pytest.mark.parametrize(("N", "C", "K", "lo", "hi"), SHAPES)
def test_solve_satisfies_constraints(N: int, C: int, K: int, lo: int, hi: int) -> None:
    rng = np.random.default_rng(N * 1000 + C)
    for _ in range(3):
        X = solve(rng.random((N, C)), K, lo, hi)
        assert X.shape == (N, C)
        assert _satisfies(X, K, lo, hi)
        check_assignment(X, K, lo, hi)


@pytest.mark.parametrize("scores", ["constant", "integer_ties", "softmax", "shared_ranking", "tiny_spread", "huge"])
@pytest.mark.parametrize(
    ("N", "C", "K", "lo", "hi"), [(30, 10, 2, 2, 8), (30, 50, 4, 2, 8), (31, 10, 2, 6, 7), (12, 5, 5, 12, 12)]
)
def test_solve_degenerate_scores(scores: str, N: int, C: int, K: int, lo: int, hi: int) -> None:
    rng = np.random.default_rng(1)
    if scores == "constant":
        S = np.ones((N, C))
    elif scores == "integer_ties":
        S = rng.integers(0, 3, size=(N, C)).astype(float)
    elif scores == "softmax":
        S = client_scores(rng.normal(size=(N, 8)), rng.normal(size=(C, 8)), 8)
    elif scores == "shared_ranking":  # every expert prefers the same clients: the bounds do all the work
        S = np.linspace(1.0, 0.0, C)[None, :] + rng.random((N, C)) * 1e-3
    elif scores == "tiny_spread":
        S = 0.5 + rng.random((N, C)) * 1e-9
    else:
        S = rng.normal(size=(N, C)) * 1e6 - 3e6
    X = solve(S, K, lo, hi)
    assert _satisfies(X, K, lo, hi)
    assert float((S * X).sum()) == pytest.approx(_milp_objective(S, K, lo, hi), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    ("N", "C", "K", "lo", "hi"),
    [(4, 3, 1, 1, 2), (4, 3, 2, 2, 3), (5, 4, 2, 2, 3), (6, 3, 1, 2, 2), (5, 3, 2, 0, 5), (3, 3, 3, 3, 3)],
)
def test_solve_matches_brute_force(N: int, C: int, K: int, lo: int, hi: int) -> None:
    rng = np.random.default_rng(7)
    for trial in range(6):
        S = rng.random((N, C)) if trial % 2 else rng.integers(0, 2, size=(N, C)).astype(float)
        X = solve(S, K, lo, hi)
        assert _satisfies(X, K, lo, hi)
        assert float((S * X).sum()) == pytest.approx(_brute_force_objective(S, K, lo, hi), rel=1e-12)


@pytest.mark.parametrize(
    ("N", "C", "K", "lo", "hi"), [(30, 10, 2, 2, 8), (30, 50, 4, 2, 8), (20, 7, 3, 5, 12), (30, 10, 2, 0, 30)]
)
def test_solve_matches_milp(N: int, C: int, K: int, lo: int, hi: int) -> None:
    rng = np.random.default_rng(3)
    for _ in range(3):
        S = softmax(rng.normal(size=(N, C)) * 3, axis=1)
        X = solve(S, K, lo, hi)
        assert float((S * X).sum()) == pytest.approx(_milp_objective(S, K, lo, hi), rel=1e-9)


def test_solve_matches_milp_on_many_random_instances() -> None:
    """Random shapes, bounds and score kinds, all against scipy's MILP."""
    rng = np.random.default_rng(2024)
    for _ in range(12):
        C = int(rng.integers(2, 16))
        N = int(rng.integers(1, 25))
        K = int(rng.integers(1, C + 1))
        lo = int(rng.integers(0, N * K // C + 1))
        hi = int(rng.integers(-(-N * K // C), N + 1))
        check_feasible(N, C, K, lo, hi)
        scores = {f"m{j}": rng.random((N, C)) ** int(rng.integers(1, 6)) for j in range(4)}
        out = solve_many(scores, K, lo, hi)
        for name, S in scores.items():
            assert _satisfies(out[name], K, lo, hi)
            assert float((S * out[name]).sum()) == pytest.approx(_milp_objective(S, K, lo, hi), rel=1e-9)


def test_lp_solutions_are_integral() -> None:
    """The raw HiGHS answer, before any rounding, is a 0/1 vertex (total unimodularity)."""
    rng = np.random.default_rng(8)
    for N, C, K, lo, hi in SHAPES:
        for _ in range(4):
            S = client_scores(rng.normal(size=(N, 8)), rng.normal(size=(C, 8)), 8)
            x = assign._solve_lp(S, K, lo, hi)
            assert x is not None
            assert np.abs(x - np.round(x)).max() <= 1e-6


def test_solve_is_deterministic_and_order_independent() -> None:
    """The cached HiGHS model carries nothing from one module to the next."""
    rng = np.random.default_rng(12)
    scores = {f"m{i}": client_scores(rng.normal(size=(30, 8)), rng.normal(size=(10, 8)), 8) for i in range(16)}
    forward = solve_many(scores, 2, 2, 8)
    backward = solve_many(dict(reversed(list(scores.items()))), 2, 2, 8)
    again = solve_many(scores, 2, 2, 8)
    for name in scores:
        np.testing.assert_array_equal(forward[name], backward[name])
        np.testing.assert_array_equal(forward[name], again[name])


def test_solve_many_equals_per_module_solve_and_keeps_order() -> None:
    rng = np.random.default_rng(11)
    scores = {f"layers.{i}.{p}": rng.random((30, 10)) for i in range(40) for p in ("v_proj", "q_proj")}
    scores["odd_shape"] = rng.random((12, 4))  # a module with a different pool gets its own cached model
    out = solve_many(scores, 2, 2, 8)
    assert list(out) == list(scores)
    for name, S in scores.items():
        assert _satisfies(out[name], 2, 2, 8)
        np.testing.assert_array_equal(out[name], solve(S, 2, 2, 8))


@pytest.mark.parametrize("lp_answer", ["fractional", "no_optimum"])
def test_solve_falls_back_to_milp(monkeypatch: pytest.MonkeyPatch, lp_answer: str) -> None:
    calls = []

    def fake_lp(S, K, lo, hi):
        calls.append(S.shape)
        return np.full(S.shape, 0.5) if lp_answer == "fractional" else None

    monkeypatch.setattr(assign, "_solve_lp", fake_lp)
    rng = np.random.default_rng(5)
    scores = {"a": rng.random((30, 10)), "b": rng.random((30, 10))}
    out = solve_many(scores, 2, 2, 8)
    assert calls == [(30, 10), (30, 10)]
    for name, S in scores.items():
        assert _satisfies(out[name], 2, 2, 8)
        assert float((S * out[name]).sum()) == pytest.approx(_milp_objective(S, 2, 2, 8), rel=1e-9)


def test_integrality_check() -> None:
    assert assign._rounded(None) is None
    assert assign._rounded(np.array([[0.4, 0.6]])) is None
    np.testing.assert_array_equal(assign._rounded(np.array([[1 - 1e-9, 1e-9]])), [[True, False]])


def test_solve_rejects_bad_scores() -> None:
    with pytest.raises(AssignmentError, match="non-finite"):
        solve(np.full((30, 10), np.nan), 2, 2, 8)
    with pytest.raises(AssignmentError, match="2-D"):
        solve(np.ones(30), 2, 2, 8)


def test_client_scores_softmax_over_clients() -> None:
    rng = np.random.default_rng(0)
    r = 8
    E, T = rng.normal(size=(30, r)), rng.normal(size=(10, r))
    S = client_scores(E, T, r)
    assert S.shape == (30, 10)
    np.testing.assert_allclose(S.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(S, softmax(E @ T.T / np.sqrt(r), axis=1), rtol=1e-12)
    # numerically stable for huge logits
    big = client_scores(E * 1e4, T * 1e4, r)
    assert np.all(np.isfinite(big))
    np.testing.assert_allclose(big.sum(axis=1), 1.0, atol=1e-12)


def test_client_scores_rejects_bad_shapes() -> None:
    with pytest.raises(AssignmentError, match="expected E"):
        client_scores(np.ones((30, 8)), np.ones((10, 4)), 8)


@pytest.mark.parametrize(
    ("args", "numbers"),
    [
        ((30, 10, 1, 4, 8), ["10 clients", "min_experts 4", "40", "30 experts", "K 1", "= 30"]),
        ((30, 10, 4, 2, 8), ["30 experts", "K 4", "120", "10 clients", "max_experts 8", "80"]),
        ((30, 10, 11, 0, 40), ["K 11", "10 clients"]),
        ((30, 10, 2, 9, 8), ["min_experts 9", "max_experts 8"]),
        ((30, -1, 2, 2, 8), ["negative", "num_clients"]),
    ],
)
def test_check_feasible_errors_name_the_numbers(args: tuple[int, ...], numbers: list[str]) -> None:
    with pytest.raises(AssignmentError) as info:
        check_feasible(*args)
    message = str(info.value)
    assert message.startswith("infeasible assignment")
    for piece in numbers:
        assert piece in message
    assert isinstance(info.value, ValueError)


def test_solve_and_random_check_feasibility_first() -> None:
    with pytest.raises(AssignmentError, match="infeasible"):
        solve(np.ones((30, 10)), 1, 4, 8)
    with pytest.raises(AssignmentError, match="infeasible"):
        random_assignment(["m"], 30, 10, 4, 2, 8, np.random.default_rng(0))


@pytest.mark.parametrize("args", [(30, 10, 2, 2, 8), (30, 50, 4, 2, 8), (30, 10, 2, 6, 6), (1, 1, 1, 1, 1)])
def test_check_feasible_accepts(args: tuple[int, ...]) -> None:
    check_feasible(*args)


def test_random_assignment_constraints_and_determinism() -> None:
    names = [f"m{i}" for i in range(32)]
    a = random_assignment(names, 30, 10, 2, 2, 8, np.random.default_rng(42))
    b = random_assignment(names, 30, 10, 2, 2, 8, np.random.default_rng(42))
    c = random_assignment(names, 30, 10, 2, 2, 8, np.random.default_rng(43))
    assert list(a) == names
    for name in names:
        assert _satisfies(a[name], 2, 2, 8)
        np.testing.assert_array_equal(a[name], b[name])
    assert any(not np.array_equal(a[n], c[n]) for n in names)
    assert any(not np.array_equal(a["m0"], a[n]) for n in names[1:])  # modules differ from each other


def test_homogeneous_bounds() -> None:
    assert homogeneous_bounds(30, 10, 2) == (6, 6)
    assert homogeneous_bounds(31, 10, 2) == (6, 7)
    assert homogeneous_bounds(30, 50, 4) == (2, 3)
    lo, hi = homogeneous_bounds(30, 10, 2)
    X = solve(np.random.default_rng(0).random((30, 10)), 2, lo, hi)
    assert np.all(X.sum(axis=0) == 6)  # divisible: every client gets the same number of experts


def test_check_assignment_rejects_violations() -> None:
    X = solve(np.random.default_rng(0).random((30, 10)), 2, 2, 8)
    bad = X.copy()
    i = int(np.flatnonzero(~bad[0])[0])
    bad[0, i] = True
    with pytest.raises(AssignmentError, match="not K=2"):
        check_assignment(bad, 2, 2, 8)
    with pytest.raises(AssignmentError, match="outside"):
        check_assignment(X, 2, 3, 3)
    with pytest.raises(AssignmentError, match="bool"):
        check_assignment(X.astype(int), 2, 2, 8)
