"""Benchmark: RSEA assignment with amole.server.assign vs the paper's MILP (cvxpy + SCIP).

All solvers get the SAME score matrices (softmax over clients of random expert/client embeddings, as the
server computes them) for every module of a round; the wall-clock time of a whole round (all modules) is
measured after a warm-up, several times, and medians are reported. Objective values must agree per module
(rel. tol 1e-6) with the MILP optimum: amole's LP is exact (b-matching, totally unimodular).

amole.server.assign (HiGHS dual simplex through highspy, one cached model per shape) is the headline. For reference,
the same LP through ``scipy.optimize.linprog(method="highs")``, one call per module. Two MILP variants are
timed: "fresh" builds a cvxpy problem per module, as the authors' code does (optimize.py,
``optimize_expert_dispatch``); "param" compiles one problem with a cvxpy Parameter and re-solves it (the
cheapest use of cvxpy). The headline speedup uses the faster of the two MILP variants per setting, so it is
a conservative figure.

Run from the repository root: ``python tests/benchmarks/bench_assign.py`` (needs cvxpy and pyscipopt:
``make bench-assign`` installs them first). Last line: ``assign: speedup_vs_milp=<x> objective_equal=<true|false>``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse as sp
from scipy.optimize import linprog

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: import this checkout's amole
import highspy  # noqa: E402

from amole.server.assign import check_feasible, client_scores, solve_many  # noqa: E402

REL_TOL = 1e-6


@dataclass(frozen=True)
class Setting:
    name: str
    modules: int
    N: int
    C: int
    K: int
    lo: int
    hi: int
    r: int = 8


SETTINGS = [
    Setting("paper defaults", modules=32, N=30, C=10, K=2, lo=2, hi=8),
    Setting("many clients", modules=32, N=30, C=50, K=4, lo=2, hi=8),
]


def make_scores(s: Setting, seed: int) -> dict[str, np.ndarray]:
    """Per-module (N, C) score matrices as the server builds them: softmax over clients of E T^T / sqrt(r)."""
    rng = np.random.default_rng(seed)
    names = [f"layers.{i // 2}.self_attn.{'qv'[i % 2]}_proj" for i in range(s.modules)]
    return {n: client_scores(rng.normal(size=(s.N, s.r)), rng.normal(size=(s.C, s.r)), s.r) for n in names}


def objective(S: np.ndarray, X: np.ndarray) -> float:
    return float((S * X).sum())


def valid(X: np.ndarray, s: Setting) -> bool:
    cols = X.sum(axis=0)
    return bool(np.all(X.sum(axis=1) == s.K) and np.all((cols >= s.lo) & (cols <= s.hi)))


def scipy_linprog(scores: dict[str, np.ndarray], s: Setting) -> dict[str, np.ndarray]:
    """Reference: the same LP relaxation with scipy's linprog (HiGHS), one call per module, no caching."""
    a_eq = sp.kron(sp.eye(s.N), np.ones((1, s.C)), format="csr")
    cols = sp.kron(np.ones((1, s.N)), sp.eye(s.C), format="csr")
    a_ub = sp.vstack([cols, -cols], format="csr")
    b_ub = np.r_[np.full(s.C, s.hi), np.full(s.C, -s.lo)]
    b_eq = np.full(s.N, s.K)
    out = {}
    for name, S in scores.items():
        res = linprog(-S.ravel(), A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq, bounds=(0, 1), method="highs")
        out[name] = np.round(res.x).reshape(s.N, s.C).astype(bool)
    return out


class CvxpyScip:
    """The paper's formulation: boolean X, maximise sum(S * X), row sums == K, column sums in [min, max]."""

    def __init__(self, cp, s: Setting) -> None:
        self.cp = cp
        self.s = s
        self.param = cp.Parameter((s.N, s.C))
        self.param_problem, self.param_x = self._build(self.param)
        self.scip_seconds = 0.0

    def _build(self, S):
        cp, s = self.cp, self.s
        X = cp.Variable((s.N, s.C), boolean=True)
        constraints = [cp.sum(X, axis=1) == s.K, cp.sum(X, axis=0) >= s.lo, cp.sum(X, axis=0) <= s.hi]
        return cp.Problem(cp.Maximize(cp.sum(cp.multiply(S, X))), constraints), X

    def _run(self, problem, X) -> np.ndarray:
        problem.solve(solver=self.cp.SCIP)
        if problem.status != self.cp.OPTIMAL:
            raise RuntimeError(f"SCIP status {problem.status}")
        self.scip_seconds += problem.solver_stats.solve_time or 0.0
        return np.round(X.value).astype(bool)

    def fresh(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self._run(*self._build(S)) for name, S in scores.items()}

    def param_solve(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {}
        for name, S in scores.items():
            self.param.value = S
            out[name] = self._run(self.param_problem, self.param_x)
        return out


def timed(fn: Callable[[], dict[str, np.ndarray]], repeats: int) -> tuple[float, dict[str, np.ndarray]]:
    """Median wall-clock seconds of ``fn`` after one warm-up call, and the warm-up's result."""
    result = fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats of each amole round (after warm-up)")
    parser.add_argument("--milp-repeats", type=int, default=5, help="timed repeats of each MILP round")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        import cvxpy as cp
        import pyscipopt  # SCIP's Python interface, used by cvxpy's SCIP backend
    except ImportError as exc:
        print(
            f"bench_assign: missing optional dependency ({exc.name}). This benchmark needs cvxpy and "
            "pyscipopt; run `make bench-assign`, which installs them first.",
            file=sys.stderr,
        )
        return 2
    if "SCIP" not in cp.installed_solvers():
        print(
            f"bench_assign: cvxpy {cp.__version__} does not see SCIP (installed solvers: "
            f"{cp.installed_solvers()}); cannot run the MILP baseline. Run `make bench-assign`.",
            file=sys.stderr,
        )
        return 3

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"highspy {highspy.Highs().version()}, cvxpy {cp.__version__}, pyscipopt {pyscipopt.__version__}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load}"
    )
    total_ours = total_linprog = total_milp = total_fresh = 0.0
    all_equal = True
    for k, s in enumerate(SETTINGS):
        check_feasible(s.N, s.C, s.K, s.lo, s.hi)
        scores = make_scores(s, args.seed + k)
        t_ours, x_ours = timed(lambda scores=scores, s=s: solve_many(scores, s.K, s.lo, s.hi), args.repeats)
        t_linprog, x_linprog = timed(lambda scores=scores, s=s: scipy_linprog(scores, s), args.repeats)
        milp = CvxpyScip(cp, s)
        t_fresh, x_fresh = timed(lambda scores=scores, milp=milp: milp.fresh(scores), args.milp_repeats)
        milp.scip_seconds = 0.0
        t_param, x_param = timed(lambda scores=scores, milp=milp: milp.param_solve(scores), args.milp_repeats)
        scip_only = milp.scip_seconds / (args.milp_repeats + 1)

        equal = True
        worst = 0.0
        for name, S in scores.items():
            ref = objective(S, x_fresh[name])  # the MILP optimum
            for other in (x_ours[name], x_linprog[name], x_param[name]):
                equal &= valid(other, s)
                rel = abs(objective(S, other) - ref) / max(abs(ref), 1e-12)
                worst = max(worst, rel)
                equal &= rel <= REL_TOL
            equal &= valid(x_fresh[name], s)
        all_equal &= equal
        t_milp = min(t_fresh, t_param)
        total_ours += t_ours
        total_linprog += t_linprog
        total_milp += t_milp
        total_fresh += t_fresh

        m = s.modules
        print(f"\n## {s.name}: {m} modules, N={s.N} C={s.C} K={s.K} min={s.lo} max={s.hi}")
        print(f"{'solver':34s} {'round ms':>10s} {'ms/module':>10s} {'x amole':>8s}")
        rows = [
            ("amole (highspy, cached model)", t_ours),
            ("scipy linprog HiGHS, per module", t_linprog),
            ("MILP cvxpy+SCIP, fresh problem", t_fresh),
            ("MILP cvxpy+SCIP, cached Parameter", t_param),
            ("  of which SCIP solve_time", scip_only),
        ]
        for label, t in rows:
            print(f"{label:34s} {t * 1e3:10.2f} {t * 1e3 / m:10.3f} {t / t_ours:7.1f}x")
        total_obj = sum(objective(S, x_ours[n]) for n, S in scores.items())
        print(
            f"objective (sum over modules) {total_obj:.9f}; max rel. diff vs MILP {worst:.1e}; "
            f"equal={str(equal).lower()}"
        )

    speedup = total_milp / total_ours
    print(
        f"\ntotal over both settings: amole {total_ours * 1e3:.1f} ms, scipy linprog {total_linprog * 1e3:.1f} ms, "
        f"MILP faster variant {total_milp * 1e3:.1f} ms, MILP as in the authors' code {total_fresh * 1e3:.1f} ms"
    )
    print(
        f"speedups: amole vs MILP(faster) {speedup:.1f}x, amole vs MILP(authors' code) "
        f"{total_fresh / total_ours:.1f}x, scipy linprog vs MILP(faster) {total_milp / total_linprog:.1f}x"
    )
    print(f"assign: speedup_vs_milp={speedup:.1f} objective_equal={str(all_equal).lower()}")
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())
