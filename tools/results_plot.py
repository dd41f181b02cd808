"""A results table's plot: mean score by round per strategy (mean over seeds, ± std band where there are two or
more), with the no-model yardstick as a dashed line and, where scored, the untrained backbone as a dotted one, so
the curves show whether and when a strategy leaves them. Where routed strategies ran, a second panel beside it shows
how much of each round's assignment the previous round also had (tools/results_churn.py): the "why" beside the
"whether"."""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # Figure without pyplot: Agg canvas, no global state, nothing to close

from amole.util.atomic import atomic_path
from tools.results_numbers import finite, mean

__all__ = ["plot_file_name", "plot_rounds"]


def plot_file_name(scenario: str, budget: str, taken: set[str]) -> str:
    """``results_<scenario>_<budget>.png`` (numbered when two tables share both), safe as a file name."""
    parts = (re.sub(r"[^A-Za-z0-9._-]+", "-", str(x)).strip("-") or "unknown" for x in (scenario, budget))
    stem = "results_" + "_".join(parts)
    name, n = f"{stem}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}.png"
    taken.add(name)
    return name


def plot_rounds(runs: Sequence[dict[str, Any]], strategies: Sequence[str], yardstick: float, title: str,
                path: Path, untrained: float = math.nan) -> Path:
    """Mean score by round per strategy over the complete runs given, with the yardstick and (where scored) the
    untrained backbone as horizontal lines; written atomically to ``path``."""
    done = [r for r in runs if r["status"] == "completed"]
    metrics = sorted({m for r in done for m in str(r.get("metric", "")).split("/") if m})
    churned = [s for s in strategies if any(r["strategy"] == s and r.get("_churn") for r in done)]
    fig = Figure(figsize=(12.5, 4.2) if churned else (7.5, 4.2))
    ax = fig.add_subplot(1, 2, 1) if churned else fig.add_subplot()
    rounds_all: set[int] = set()
    for s in strategies:
        rs = [r for r in done if r["strategy"] == s]
        rounds = sorted({n for r in rs for n in r["_round_scores"]})
        if not rounds:
            continue
        rounds_all.update(rounds)
        values = [finite(r["_round_scores"].get(n) for r in rs) for n in rounds]
        means = [mean(v) for v in values]
        line = ax.plot(rounds, means, marker="o", markersize=3, linewidth=2.2 if s == "fedamole" else 1.4,
                       label=f"{s} ({len(rs)} seed{'' if len(rs) == 1 else 's'})")[0]
        stds = [statistics.stdev(v) if len(v) >= 2 else math.nan for v in values]
        if any(math.isfinite(x) for x in stds):
            ax.fill_between(rounds, [m - d for m, d in zip(means, stds, strict=True)],
                            [m + d for m, d in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.15,
                            linewidth=0)
    if math.isfinite(yardstick):
        ax.axhline(yardstick, color="0.35", linestyle="--", linewidth=1.2,
                   label=f"yardstick, no model ({yardstick:.3f})")
    if math.isfinite(untrained):
        ax.axhline(untrained, color="0.2", linestyle=":", linewidth=1.4, label=f"untrained model ({untrained:.3f})")
    ax.set_xlabel("round")
    ax.set_ylabel(f"mean client score ({' / '.join(metrics)})" if metrics else "mean client score")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if 0 < len(rounds_all) <= 12:
        ax.set_xticks(sorted(rounds_all))
    if churned:
        _plot_churn(fig.add_subplot(1, 2, 2), done, churned)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=7, frameon=False)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)


def _plot_churn(ax: Any, done: Sequence[dict[str, Any]], strategies: Sequence[str]) -> None:
    """Kept share of the assignment by round per routed strategy (mean over seeds)."""
    for s in strategies:
        rs = [r["_churn"]["kept_by_round"] for r in done if r["strategy"] == s and r.get("_churn")]
        rounds = sorted({n for k in rs for n in k})
        ax.plot(rounds, [mean([k[n] for k in rs if n in k]) for n in rounds], marker="o", markersize=3,
                linewidth=2.2 if s == "fedamole" else 1.4, label=s)
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("expert-client pairs kept from the round before")
    ax.set_xticks(sorted({n for s in strategies for r in done if r["strategy"] == s and r.get("_churn")
                          for n in r["_churn"]["kept_by_round"]}))
    ax.set_title("how much the assignment moved", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, frameon=False)
