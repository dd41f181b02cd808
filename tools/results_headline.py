"""The paper's headline beside ours. The tables headline the last round; the paper's code reports, per run, the best
round over rounds 0–R, the untrained round 0 included (``--test_init``), chosen on the test set. Both are shown,
with FedAMoLE's paired differences on each.

Round 0 is the run's own ``metrics["round0"]`` where it recorded one (``federation.eval_round0``), else the
untrained backbone's score on the same test split (``tools.untrained``), which round 0 equals by construction (every
LoRA B starts at zero; tests/test_round0.py).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from tools.results_numbers import finite, fmt, id_key, in_order, mean

__all__ = ["headline", "headline_lines", "paired_diffs", "paired_on"]


def _round0(run: dict[str, Any]) -> dict[str, float]:
    if run.get("_round0"):
        return dict(run["_round0"])
    return {c: float(rec["score"]) for c, rec in (run.get("_untrained") or {}).items() if "score" in rec}


def headline(run: dict[str, Any]) -> tuple[int | None, dict[str, float]]:
    """The run's best round incl. round 0 (by mean client score; the earliest on ties) and its clients' scores;
    (None, {}) when round 0 is unknown (no recorded round 0 and no untrained reference)."""
    rounds = {0: _round0(run), **(run.get("_round_clients") or {})}
    if not rounds[0]:
        return None, {}
    scored = {n: mean(finite(c.values())) for n, c in rounds.items()}
    best = max((n for n in sorted(scored) if math.isfinite(scored[n])), key=lambda n: scored[n], default=None)
    return (best, rounds[best]) if best is not None else (None, {})


def paired_diffs(runs: Sequence[dict[str, Any]], a: str, b: str, last: bool) -> list[tuple[str, float]]:
    """(client, ``a − b``) for each client score paired by (seed, client): at the last round, or at each run's best
    round incl. round 0."""
    per = {}
    for r in runs:
        if r["status"] == "completed":
            per[(r["strategy"], str(r["seed"]))] = (
                {c: v.get("score") for c, v in r["_last_clients"].items()} if last else headline(r)[1])
    diffs = []
    for (strategy, seed), scores in per.items():
        other = per.get((b, seed)) if strategy == a else None
        for c, v in scores.items() if other else ():
            pair = finite([v, other.get(c)])
            if len(pair) == 2:
                diffs.append((c, pair[0] - pair[1]))
    return diffs


def paired_on(runs: Sequence[dict[str, Any]], a: str, b: str, last: bool) -> tuple[float, float, int]:
    """Mean and standard error of ``a − b`` over client scores paired by (seed, client) (``paired_diffs``)."""
    diffs = [d for _, d in paired_diffs(runs, a, b, last)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) >= 2 else math.nan
    return (mean(diffs) if diffs else math.nan), se, len(diffs)


def headline_lines(runs: Sequence[dict[str, Any]], strategies: list[str], best_baseline: str | None) -> list[str]:
    """Last round and the paper's headline side by side per strategy, and FedAMoLE's paired differences on both
    against its ablations and the best baseline."""
    done = [r for r in runs if r["status"] == "completed"]
    heads = {id(r): headline(r) for r in done}
    if not any(n is not None for n, _ in heads.values()):
        return []
    lines = ["Two headline metrics: the **last round** (ours, above) and the **best round incl. round 0** (the "
             "paper's: the best of rounds 0–R by mean client score, chosen on the test set; round 0 is the untrained "
             "model). Means over seeds; in brackets, the round each seed's best was reached in, and the seeds left "
             "out of the mean because round 0 is unknown for them (no recorded round 0 and no untrained reference "
             "at that precision).", "",
             "| strategy | last round | best round incl. round 0 (paper's headline) | seeds |", "|---|---|---|---|"]
    for s in strategies:
        rs = sorted((r for r in done if r["strategy"] == s), key=lambda r: id_key(str(r["seed"])))
        best = [(mean(finite(heads[id(r)][1].values())), f"seed {r['seed']}: round {heads[id(r)][0]}")
                for r in rs if heads[id(r)][0] is not None]
        unknown = [f"seed {r['seed']}: no round 0" for r in rs if heads[id(r)][0] is None]
        cell = (f"{fmt(mean([b for b, _ in best]))} ({'; '.join([n for _, n in best] + unknown)})" if best else "–")
        lines.append(f"| {s} | {fmt(mean(finite(r['final_score'] for r in rs)))} | {cell} | "
                     f"{', '.join(in_order({str(r['seed']) for r in rs}))} |")
    others = [s for s in ("static", "random", best_baseline) if s and s in strategies and s != "fedamole"]
    if "fedamole" in strategies and others:
        lines += ["", "FedAMoLE's paired differences by (seed, client), ± standard error of the mean difference:", ""]
        for s in dict.fromkeys(others):
            parts = []
            for label, last in (("last round", True), ("best round incl. round 0", False)):
                d, se, n = paired_on(done, "fedamole", s, last)
                parts.append(f"{label} {d:+.4f} ± {se:.4f} ({n} pairs)" if n >= 2 else f"{label}: fewer than 2 pairs")
            lines.append(f"- fedamole − {s}: " + "; ".join(parts))
    return [*lines, ""]
