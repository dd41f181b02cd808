"""Reverse-selection expert assignment (RSEA): scores and the per-module b-matching solve.

Framework-free on purpose (numpy + scipy only) so that the server, the tests and the benchmark can use it
without torch or Flower. The problem per module is: choose a binary ``X`` (N experts x C clients)
maximising ``sum(S * X)`` with every expert taking exactly ``K`` clients and every client receiving
between ``min_experts`` and ``max_experts`` experts. That is a bipartite b-matching (a min-cost flow with
a totally unimodular matrix), so the paper's MILP (cvxpy + SCIP) is not needed. Two exact methods:

- ``"flow"`` (default): successive shortest paths on the flow network, vectorised over all modules of a
  round in numpy; it ends with an optimality certificate (no negative cycle). Fastest: ~0.2 ms per module
  at the paper defaults on 2 CPU cores (see ``benchmarks/bench_assign.py``).
- ``"lp"``: the LP relaxation with scipy's HiGHS on a block-diagonal sparse LP; integral at a vertex, still
  checked, with ``scipy.optimize.milp`` as the fallback. ~1.2 ms per module. Also the fallback of "flow".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from amole.config import AssignConfig

__all__ = [
    "METHODS",
    "MODES",
    "AssignmentError",
    "assignment_to_clients",
    "check_assignment",
    "check_feasible",
    "client_scores",
    "effective_bounds",
    "held_experts",
    "homogeneous_bounds",
    "initial_assignment",
    "next_assignment",
    "random_assignment",
    "solve",
    "solve_many",
]

MODES = ("rsea", "static", "random", "homogeneous")
METHODS = ("flow", "lp")

# Method "lp": modules solved together in one block-diagonal LP. One LP per module pays scipy/HiGHS
# set-up costs 32 times; one huge LP makes simplex superlinear. Measured on 2 CPU cores (N=30, C=10): ~2.2 ms per
# module alone, ~1.2 ms per module in blocks of 8-32, ~1.6 ms per module in a block of 128.
_BLOCK = 32
_INT_TOL = 1e-6
# Presolve only costs time here: the LP is already tight and tiny (measured ~25-50 % slower with it).
_HIGHS_OPTIONS = {"presolve": False}


class AssignmentError(ValueError):
    """The assignment problem is infeasible, ill-formed, or a solver failed on it."""


def check_feasible(num_experts: int, num_clients: int, K: int, min_experts: int, max_experts: int) -> None:
    """Raise :class:`AssignmentError` unless some assignment can satisfy every constraint.

    Called at start-up so a bad config fails in seconds with the numbers, not after a training round.
    """
    N, C = num_experts, num_clients
    values = {
        "num_experts": N,
        "num_clients": C,
        "K": K,
        "min_experts": min_experts,
        "max_experts": max_experts,
    }
    negative = {k: v for k, v in values.items() if v < 0}
    if negative:
        raise AssignmentError(f"infeasible assignment: negative values {negative}")
    if N == 0 or C == 0:
        raise AssignmentError(
            f"infeasible assignment: need at least one expert and one client (N={N}, C={C})"
        )
    if K == 0:
        raise AssignmentError("infeasible assignment: K (clients_per_expert) must be >= 1")
    if K > C:
        raise AssignmentError(
            f"infeasible assignment: K {K} > {C} clients (each expert must pick K distinct clients)"
        )
    if min_experts > max_experts:
        raise AssignmentError(f"infeasible assignment: min_experts {min_experts} > max_experts {max_experts}")
    total = N * K
    if C * min_experts > total:
        raise AssignmentError(
            f"infeasible assignment: {C} clients x min_experts {min_experts} = {C * min_experts} > "
            f"{N} experts x K {K} = {total}; need clients * min_experts <= experts * K "
            f"(lower min_experts or raise K / num_experts)"
        )
    if total > C * max_experts:
        raise AssignmentError(
            f"infeasible assignment: {N} experts x K {K} = {total} > {C} clients x max_experts "
            f"{max_experts} = {C * max_experts}; need experts * K <= clients * max_experts "
            f"(raise max_experts or lower K / num_experts)"
        )


def client_scores(E: np.ndarray, T: np.ndarray, r: int) -> np.ndarray:
    """Return ``softmax_over_clients(E T^T / sqrt(r))`` of shape (N, C).

    The softmax runs over clients (axis 1) because in RSEA experts choose clients ("reverse selection"):
    each expert spreads one unit of preference over the clients.
    """
    E = np.asarray(E, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    if E.ndim != 2 or T.ndim != 2 or E.shape[1] != r or T.shape[1] != r:
        raise AssignmentError(
            f"client_scores: expected E (N, {r}) and T (C, {r}), got {E.shape} and {T.shape}"
        )
    logits = E @ T.T / np.sqrt(r)
    if not np.all(np.isfinite(logits)):
        raise AssignmentError("client_scores: non-finite expert or client embeddings")
    logits -= logits.max(axis=1, keepdims=True)  # stability: exp() of values <= 0 cannot overflow
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


def _validated(S: np.ndarray) -> np.ndarray:
    S = np.asarray(S, dtype=np.float64)
    if S.ndim != 2:
        raise AssignmentError(f"score matrix must be 2-D (experts x clients), got shape {S.shape}")
    if not np.all(np.isfinite(S)):
        raise AssignmentError("score matrix contains non-finite values")
    return S


# ----------------------------------------------------------------------------------------------------------
# Method "flow": exact min-cost flow by successive shortest paths, vectorised over all modules of a shape.
#
# Network per module: expert i -> client c (capacity 1, cost -S_ic), every expert saturated with K units,
# client c -> sink with the convex penalty f(n) = B * (max(0, lo - n) + max(0, n - hi)) on its count n.
# Start: every expert takes its top-K clients. That is optimal if the client bounds are ignored, so the
# residual graph has no negative cycle. Each iteration runs Bellman-Ford from the sink side ("every client a
# is a source at the marginal cost of giving one expert away") and cancels negative cycles sink -> a ~> b ->
# sink along shortest-path-tree paths: one per tree root, so the paths are vertex-disjoint and can be applied
# together. Tree paths have zero reduced cost, hence no negative cycle appears among experts and clients;
# the loop ends when no cycle through the sink is negative, which certifies optimality (LP duality).
# With B larger than any path cost the penalised optimum meets the bounds whenever they are feasible.
# ----------------------------------------------------------------------------------------------------------
_BF_TOL = 1e-12  # a label must improve by more than this (scores are normalised to [0, 1] per module)
_CYCLE_TOL = 1e-9  # a cycle must be at least this negative to be cancelled


def _penalty(n: np.ndarray, lo: int, hi: int, big: float) -> np.ndarray:
    """Convex penalty on a client's expert count: zero inside [lo, hi], slope ``big`` outside."""
    return big * (np.maximum(lo - n, 0) + np.maximum(n - hi, 0))


def _branches(parent: np.ndarray, pred_c: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Root of every client in the shortest-path forest, and the first expert on its path from the root.

    Binary lifting over the parent pointers (a root is its own parent); ``None`` if the pointers cycle.
    Paths from one root that start with different experts share nothing but the root.
    """
    ups = [parent]
    for _ in range(int(np.ceil(np.log2(max(parent.shape[1], 2))))):
        ups.append(np.take_along_axis(ups[-1], ups[-1], axis=1))
    root = np.take_along_axis(ups[-1], ups[-1], axis=1)
    if not np.array_equal(np.take_along_axis(root, root, axis=1), root):
        return None
    below = np.broadcast_to(np.arange(parent.shape[1]), parent.shape).copy()  # highest ancestor below root
    for up in reversed(ups):
        step = np.take_along_axis(up, below, axis=1)
        below = np.where(step != root, step, below)
    return root, np.take_along_axis(pred_c, below, axis=1)


def _cancel_cycles(Sn: np.ndarray, X: np.ndarray, n: np.ndarray, lo: int, hi: int, big: float) -> np.ndarray | None:
    """One iteration on modules (M, N, C): update ``X`` and ``n`` in place; return which modules changed.

    A module that does not change has no negative cycle left, so it is optimal and can be dropped.
    ``None`` means a floating-point pathology (labels never settle, a pointer cycle): the caller falls back.
    """
    M, N, C = Sn.shape
    here = _penalty(n, lo, hi, big)
    give = _penalty(n - 1, lo, hi, big) - here  # marginal cost: the client loses one expert
    take = _penalty(n + 1, lo, hi, big) - here  # marginal cost: the client gains one expert
    leave = np.where(X, Sn, np.inf)  # residual arc client -> expert (the expert leaves the client)
    join = np.where(X, np.inf, -Sn)  # residual arc expert -> client (the expert joins the client)
    dist_c = give.copy()
    pred_c = np.full((M, C), -1)  # expert through which the client was reached; -1 = still its own source
    dist_e = np.full((M, N), np.inf)
    pred_e = np.zeros((M, N), dtype=np.intp)  # client from which the expert was reached
    for _ in range(N + C + 2):  # Bellman-Ford; a label path has at most C clients
        cand = leave + dist_c[:, None, :]
        arg = cand.argmin(axis=2)
        val = np.take_along_axis(cand, arg[:, :, None], axis=2)[:, :, 0]
        better = val < dist_e - _BF_TOL
        dist_e = np.where(better, val, dist_e)
        pred_e = np.where(better, arg, pred_e)
        cand = join + dist_e[:, :, None]
        arg = cand.argmin(axis=1)
        val = np.take_along_axis(cand, arg[:, None, :], axis=1)[:, 0, :]
        better = val < dist_c - _BF_TOL
        if not better.any():
            break
        dist_c = np.where(better, val, dist_c)
        pred_c = np.where(better, arg, pred_c)
    else:
        return None  # labels still improving: a negative cycle, impossible in exact arithmetic
    cost = dist_c + take  # cheapest cycle sink -> a ~> b -> sink, per end client b
    negative = cost < -_CYCLE_TOL
    changed = negative.any(axis=1)
    if not changed.any():
        return changed
    from_e = np.take_along_axis(pred_e, np.maximum(pred_c, 0), axis=1)  # parent client in the forest
    forest = _branches(np.where(pred_c >= 0, from_e, np.arange(C)[None, :]), pred_c)
    if forest is None:
        return None
    root, first = forest
    # Candidate end clients b; keep the best per (module, root, first expert): those paths are disjoint.
    mods, ends = np.nonzero(negative)
    roots, firsts, costs = root[mods, ends], first[mods, ends], cost[mods, ends]
    order = np.lexsort((costs, firsts, roots, mods))
    mods, ends, roots, firsts, costs = mods[order], ends[order], roots[order], firsts[order], costs[order]
    head = np.r_[True, (np.diff(mods) != 0) | (np.diff(roots) != 0) | (np.diff(firsts) != 0)]
    mods, ends, roots, costs = mods[head], ends[head], roots[head], costs[head]
    # Within a root, the k-th unit given away costs the k-th marginal of its penalty: keep a negative prefix.
    order = np.lexsort((costs, roots, mods))
    mods, ends, roots, costs = mods[order], ends[order], roots[order], costs[order]
    start = np.r_[True, (np.diff(mods) != 0) | (np.diff(roots) != 0)]
    rank = np.arange(mods.size) - np.maximum.accumulate(np.where(start, np.arange(mods.size), 0))
    held = n[mods, roots]
    kth_give = _penalty(held - rank - 1, lo, hi, big) - _penalty(held - rank, lo, hi, big)
    keep = costs - give[mods, roots] + kth_give < -_CYCLE_TOL  # rank 0 always kept
    mods, cur, roots = mods[keep], ends[keep].copy(), roots[keep]
    np.add.at(n, (mods, cur), 1)
    np.add.at(n, (mods, roots), -1)
    walking = np.ones(cur.size, dtype=bool)
    for _ in range(C + 1):  # walk back to the root, moving one expert per hop
        e = pred_c[mods, cur]
        walking &= e >= 0
        if not walking.any():
            break
        m_, e_, c_ = mods[walking], e[walking], cur[walking]
        prev = pred_e[m_, e_]
        X[m_, e_, c_] = True
        X[m_, e_, prev] = False
        cur[walking] = prev
    else:
        return None
    return changed


def _solve_flow(S: np.ndarray, K: int, lo: int, hi: int) -> np.ndarray | None:
    """Optimal assignments (M, N, C) for the score stack ``S`` (M, N, C); ``None`` if it gave up.

    Giving up (an iteration cap, a pathology in :func:`_cancel_cycles`, a failed final check) could only
    come from floating-point trouble and has never been observed; the caller then uses the LP.
    """
    M, N, C = S.shape
    lowest = S.min(axis=(1, 2), keepdims=True)
    span = S.max(axis=(1, 2), keepdims=True) - lowest
    Sn = (S - lowest) / np.where(span > 0, span, 1.0)  # [0, 1]: fixed tolerances make sense; argmax unchanged
    big = 4.0 * C + 4.0  # penalty B: any simple path costs at most C in normalised units
    X = np.zeros((M, N, C), dtype=bool)
    np.put_along_axis(X, np.argsort(-Sn, axis=2, kind="stable")[:, :, :K], True, axis=2)
    n = X.sum(axis=1)  # (M, C) experts per client
    active = np.arange(M)
    for _ in range(4 * N * K + 2 * C + 16):  # every iteration lowers the penalised cost of changed modules
        if active.size == M:
            changed = _cancel_cycles(Sn, X, n, lo, hi, big)
        else:
            sub_X, sub_n = X[active], n[active]
            changed = _cancel_cycles(Sn[active], sub_X, sub_n, lo, hi, big)
            X[active], n[active] = sub_X, sub_n
        if changed is None:
            return None
        active = active[changed]
        if active.size == 0:
            break
    else:
        return None
    counts = X.sum(axis=1)
    if not (np.all(X.sum(axis=2) == K) and np.all((counts >= lo) & (counts <= hi)) and np.all(counts == n)):
        return None
    return X


# ----------------------------------------------------------------------------------------------------------
# Method "lp": the LP relaxation with scipy's HiGHS (integral because the matrix is totally unimodular),
# checked for integrality, with a true MILP as the fallback. Also the fallback of "flow".
# ----------------------------------------------------------------------------------------------------------
@lru_cache(maxsize=32)
def _block_matrices(m: int, N: int, C: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Sparse constraint matrices for ``m`` stacked modules (variable order: module, expert, client).

    Cached: they depend on the shapes only, which are fixed for a whole run.
    """
    rows = sp.kron(sp.eye(N), np.ones((1, C)))  # expert i: sum_c X[i, c]
    cols = sp.kron(np.ones((1, N)), sp.eye(C))  # client c: sum_i X[i, c]
    eye = sp.eye(m, format="csr")
    a_eq = sp.kron(eye, rows, format="csr")
    a_ub = sp.kron(eye, sp.vstack([cols, -cols]), format="csr")
    a_eq.data.flags.writeable = False  # shared through the cache
    a_ub.data.flags.writeable = False
    return a_eq, a_ub


def _solve_milp(S: np.ndarray, K: int, lo: int, hi: int) -> np.ndarray:
    """Exact 0/1 solve; only the fallback if the LP vertex is ever not integral."""
    N, C = S.shape
    a_eq, a_ub = _block_matrices(1, N, C)
    cols = a_ub[:C]
    A = sp.vstack([a_eq, cols]).tocsr()
    lb = np.r_[np.full(N, K), np.full(C, lo)].astype(float)
    ub = np.r_[np.full(N, K), np.full(C, hi)].astype(float)
    res = milp(-S.ravel(), constraints=LinearConstraint(A, lb, ub), bounds=Bounds(0, 1), integrality=1)
    if res.x is None or res.status != 0:
        raise AssignmentError(f"MILP fallback failed: {res.message}")
    return np.round(res.x).reshape(N, C).astype(bool)


def _solve_block(mats: Sequence[np.ndarray], K: int, lo: int, hi: int) -> list[np.ndarray | None]:
    """Solve same-shape modules as one block-diagonal LP; ``None`` marks a non-integral module."""
    m = len(mats)
    N, C = mats[0].shape
    a_eq, a_ub = _block_matrices(m, N, C)
    b_ub = np.tile(np.r_[np.full(C, hi), np.full(C, -lo)].astype(float), m)
    b_eq = np.full(m * N, float(K))
    c = -np.concatenate([S.ravel() for S in mats])
    res = linprog(
        c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=(0, 1), method="highs", options=_HIGHS_OPTIONS
    )
    if res.status != 0 or res.x is None:
        raise AssignmentError(
            f"assignment LP failed ({res.message}) for {m} module(s) N={N} C={C} K={K} min={lo} max={hi}"
        )
    out: list[np.ndarray | None] = []
    for x in res.x.reshape(m, N, C):
        rounded = np.round(x)
        out.append(rounded.astype(bool) if np.abs(x - rounded).max() <= _INT_TOL else None)
    return out


def _solve_lp(mats: Sequence[np.ndarray], K: int, lo: int, hi: int) -> list[np.ndarray]:
    result: list[np.ndarray] = []
    for start in range(0, len(mats), _BLOCK):
        chunk = mats[start : start + _BLOCK]
        for S, X in zip(chunk, _solve_block(chunk, K, lo, hi), strict=True):
            result.append(X if X is not None else _solve_milp(S, K, lo, hi))
    return result


def _solve_same_shape(mats: Sequence[np.ndarray], K: int, lo: int, hi: int, method: str) -> list[np.ndarray]:
    if method == "lp":
        return _solve_lp(mats, K, lo, hi)
    if method != "flow":
        raise AssignmentError(f"unknown solver method {method!r}; expected one of {METHODS}")
    X = _solve_flow(np.stack(mats), K, lo, hi)
    return list(X) if X is not None else _solve_lp(mats, K, lo, hi)


def solve(S: np.ndarray, K: int, min_experts: int, max_experts: int, method: str = "flow") -> np.ndarray:
    """Optimal boolean assignment (N, C) for one module: rows sum to K, columns within [min, max].

    ``method``: "flow" (default, exact min-cost flow in numpy, fastest) or "lp" (scipy HiGHS LP).
    """
    S = _validated(S)
    check_feasible(S.shape[0], S.shape[1], K, min_experts, max_experts)
    return _solve_same_shape([S], K, min_experts, max_experts, method)[0]


def solve_many(
    scores: Mapping[str, np.ndarray], K: int, min_experts: int, max_experts: int, method: str = "flow"
) -> dict[str, np.ndarray]:
    """Solve every module at once: same-shape modules are batched (one vectorised flow, or block LPs)."""
    mats = {name: _validated(S) for name, S in scores.items()}
    by_shape: dict[tuple[int, int], list[str]] = {}
    for name, S in mats.items():
        by_shape.setdefault(S.shape, []).append(name)
    out: dict[str, np.ndarray] = {}
    for (N, C), names in by_shape.items():
        check_feasible(N, C, K, min_experts, max_experts)
        solved = _solve_same_shape([mats[n] for n in names], K, min_experts, max_experts, method)
        out.update(zip(names, solved, strict=True))
    return {name: out[name] for name in scores}  # keep the caller's module order


def check_assignment(X: np.ndarray, K: int, min_experts: int, max_experts: int) -> None:
    """Raise :class:`AssignmentError` unless ``X`` is boolean and meets every constraint.

    Cheap guard for assignments coming from elsewhere (a checkpoint, the static ablation).
    """
    X = np.asarray(X)
    if X.ndim != 2 or X.dtype != np.bool_:
        raise AssignmentError(f"assignment must be a 2-D bool array, got {X.dtype} {X.shape}")
    per_expert = X.sum(axis=1)
    per_client = X.sum(axis=0)
    if np.any(per_expert != K):
        bad = np.flatnonzero(per_expert != K)
        raise AssignmentError(f"experts {bad.tolist()} hold {per_expert[bad].tolist()} clients, not K={K}")
    bad = np.flatnonzero((per_client < min_experts) | (per_client > max_experts))
    if bad.size:
        raise AssignmentError(
            f"clients {bad.tolist()} hold {per_client[bad].tolist()} experts, "
            f"outside [{min_experts}, {max_experts}]"
        )


def random_assignment(
    module_names: Iterable[str],
    N: int,
    C: int,
    K: int,
    min_experts: int,
    max_experts: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Round-0 assignment: optimal for uniform random scores, so random but within the same constraints."""
    names = list(module_names)
    check_feasible(N, C, K, min_experts, max_experts)
    scores = {name: rng.random((N, C)) for name in names}
    return solve_many(scores, K, min_experts, max_experts)


def homogeneous_bounds(N: int, C: int, K: int) -> tuple[int, int]:
    """(floor, ceil) of N*K/C: the tightest bounds, i.e. every client gets the same number of experts."""
    if C <= 0:
        raise AssignmentError(f"homogeneous_bounds: need at least one client, got C={C}")
    total = N * K
    return total // C, -(-total // C)


def effective_bounds(cfg: AssignConfig, N: int, C: int) -> tuple[int, int]:
    """Per-client (min, max) experts for the configured mode; the homogeneous ablation overrides them."""
    if cfg.mode not in MODES:
        raise AssignmentError(f"unknown assignment mode {cfg.mode!r}; expected one of {MODES}")
    if cfg.mode == "homogeneous":
        return homogeneous_bounds(N, C, cfg.clients_per_expert)
    return cfg.min_experts, cfg.max_experts


def initial_assignment(
    cfg: AssignConfig, module_names: Iterable[str], N: int, C: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Round 0 for every mode: random scores under the mode's bounds (the paper's random first layout)."""
    lo, hi = effective_bounds(cfg, N, C)
    return random_assignment(module_names, N, C, cfg.clients_per_expert, lo, hi, rng)


def next_assignment(
    cfg: AssignConfig,
    previous: Mapping[str, np.ndarray],
    *,
    scores: Mapping[str, np.ndarray] | None = None,
    embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    r: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """Assignment for the next round, dispatched on ``cfg.mode``; called by the server once per round.

    - ``rsea``: solve on ``scores`` (per-module (N, C) matrices) or on ``embeddings`` (per-module (E, T),
      turned into scores by :func:`client_scores`, which then needs ``r``);
    - ``static``: ``previous`` unchanged (ablation "no RSEA": the round-0 random architecture is kept);
    - ``random``: fresh random assignment each round (needs ``rng``);
    - ``homogeneous``: like ``rsea`` but every client gets floor/ceil(N*K/C) experts.
    Module names and shapes come from ``previous``, so scores for every module are required.
    """
    if not previous:
        raise AssignmentError("next_assignment needs the previous assignment (round 0: initial_assignment)")
    shapes = {name: np.asarray(X).shape for name, X in previous.items()}
    N, C = next(iter(shapes.values()))
    K = cfg.clients_per_expert
    lo, hi = effective_bounds(cfg, N, C)
    if cfg.mode == "static":
        return {name: np.array(X, dtype=bool, copy=True) for name, X in previous.items()}
    if cfg.mode == "random":
        if rng is None:
            raise AssignmentError("mode 'random' needs an rng")
        return random_assignment(previous.keys(), N, C, K, lo, hi, rng)
    # rsea and homogeneous: solve on scores
    if (scores is None) == (embeddings is None):
        raise AssignmentError(f"mode {cfg.mode!r} needs exactly one of scores= or embeddings=")
    if embeddings is not None:
        if r is None:
            raise AssignmentError("embeddings= needs the adapter rank r")
        scores = {name: client_scores(E, T, r) for name, (E, T) in embeddings.items()}
    assert scores is not None
    missing = sorted(set(previous) - set(scores))
    extra = sorted(set(scores) - set(previous))
    if missing or extra:
        raise AssignmentError(f"score modules differ from the assignment: missing {missing}, extra {extra}")
    for name, S in scores.items():
        if np.shape(S) != shapes[name]:
            raise AssignmentError(f"scores for {name!r} have shape {np.shape(S)}, expected {shapes[name]}")
    return solve_many({name: scores[name] for name in previous}, K, lo, hi)


def held_experts(X: np.ndarray, client: int) -> list[int]:
    """Sorted expert ids assigned to ``client`` (column ``client`` of the (N, C) assignment)."""
    return np.flatnonzero(np.asarray(X)[:, client]).tolist()


def assignment_to_clients(assignments: Mapping[str, np.ndarray]) -> list[dict[str, list[int]]]:
    """Per-client view ``[{module: sorted expert ids}, ...]``: what the server dispatches to each client."""
    if not assignments:
        return []
    num_clients = {np.asarray(X).shape[1] for X in assignments.values()}
    if len(num_clients) != 1:
        raise AssignmentError(f"modules disagree on the number of clients: {sorted(num_clients)}")
    C = num_clients.pop()
    return [{name: held_experts(X, c) for name, X in assignments.items()} for c in range(C)]
