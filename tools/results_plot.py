"""A results table's plot: mean score by round per strategy (mean over seeds, ± std band where there are two or
more), with the no-model yardstick as a dashed line and, where scored, the untrained backbone as a dotted one, so
the curves show whether and when a strategy leaves them."""

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
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
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
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)
