"""Tables that show where a results table's scores come from: per client (beside its no-model yardstick and the
untrained backbone), by round, and, for the routed strategies, how the assignment moved between rounds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tools.results_churn import render_churn
from tools.results_numbers import finite, fmt, in_order, mean


def diagnostics(runs: Sequence[dict[str, Any]], strategies: list[str],
                yardstick: dict[str, float] | None = None, untrained: dict[str, float] | None = None) -> list[str]:
    """Two small tables that show where scores come from: per client (beside its no-model yardstick and, where
    scored, the untrained backbone), and by round (means over seeds)."""
    done = [r for r in runs if r["status"] == "completed"]
    if not done or not strategies:
        return []
    clients = in_order({c for r in done for c in r["_last_clients"]})
    refs = {"yardstick": yardstick or {}, **({"untrained": untrained} if untrained else {})}
    over = _over_seeds(done, strategies)
    lines = [f"Per client, last round ({over}):", "",
             "| client | task | " + " | ".join([*refs, *strategies]) + " |",
             "|---|---|" + "---|" * (len(refs) + len(strategies))]
    for c in clients:
        tasks = sorted({r["_last_clients"][c]["task"] for r in done if c in r["_last_clients"]})
        cells = [fmt(mean(finite(r["_last_clients"].get(c, {}).get("score") for r in done if r["strategy"] == s)))
                 for s in strategies]
        lines.append(f"| {c} | {', '.join(tasks)} | " + " | ".join([*(fmt(v.get(c)) for v in refs.values()), *cells])
                     + " |")
    rounds = sorted({n for r in done for n in r["_round_scores"]})
    lines += ["", f"Mean score by round ({over}):", "",
              "| round | " + " | ".join(strategies) + " |", "|---|" + "---|" * len(strategies)]
    for n in rounds:
        cells = [fmt(mean(finite(r["_round_scores"].get(n) for r in done if r["strategy"] == s))) for s in strategies]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return [*lines, "", *render_churn(done, strategies)]


def _over_seeds(done: Sequence[dict[str, Any]], strategies: list[str]) -> str:
    """"mean over seeds", naming each strategy's seeds when they differ (each seed draws its own splits)."""
    seeds = {s: in_order({str(r["seed"]) for r in done if r["strategy"] == s}) for s in strategies}
    if len({tuple(v) for v in seeds.values()}) <= 1:
        return "mean over seeds"
    named = "; ".join(f"{s} {', '.join(v)}" for s, v in seeds.items())
    return f"mean over each strategy's seeds, which differ: {named}; each seed draws its own splits"
