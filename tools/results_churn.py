"""How much RSEA moves experts between rounds, and how concentrated each expert's clients are: the "why" beside a
results table's "whether" (issue 33).

A round's assignment is a set of (module, expert, client) pairs. Its **kept share** is the fraction of them that
the previous round had too: 1 for ``static`` (nothing moves), about h/C for ``random`` (h holders of an expert out
of C clients), and in between for ``fedamole`` when experts keep choosing the clients whose data suit them. An
expert's **concentration** is the share of all its holdings over the run that went to its h most frequent clients
(h: its usual number of holders): 1 when it always had the same clients.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from tools.results_numbers import fmt, in_order, mean

__all__ = ["assignment_churn", "render_churn"]


def _pairs(rnd: dict[str, Any]) -> set[tuple[str, int, str]]:
    clients = rnd.get("assignment_clients") or []
    return {(m, int(e), c) for m, held in (rnd.get("assignment") or {}).items()
            for c, experts in zip(clients, held, strict=False) for e in experts}


def assignment_churn(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``kept_by_round`` {round: kept share} from the second round on, and ``concentration`` (mean over experts);
    empty for runs without routed experts."""
    ordered = sorted(rounds, key=lambda r: r["round"])
    pairs = [(int(r["round"]), _pairs(r)) for r in ordered]
    if not any(p for _, p in pairs):
        return {}
    kept = {n: len(cur & prev) / len(cur) for (_, prev), (n, cur) in zip(pairs, pairs[1:], strict=False) if cur}
    holdings: dict[tuple[str, int], Counter] = {}
    rounds_held: Counter = Counter()  # (module, expert) -> rounds in which it had any holder
    for _, p in pairs:
        for m, e, c in p:
            holdings.setdefault((m, e), Counter())[c] += 1
        rounds_held.update({(m, e) for m, e, _ in p})
    shares = []
    for key, counts in holdings.items():
        total = sum(counts.values())
        usual = max(1, round(total / rounds_held[key]))  # its usual number of holders in a round
        shares.append(sum(n for _, n in counts.most_common(usual)) / total)
    return {"kept_by_round": kept, "concentration": mean(shares)}


def render_churn(runs: Sequence[dict[str, Any]], strategies: list[str]) -> list[str]:
    """Kept share by round and concentration per routed strategy (means over seeds), with how to read them."""
    done = [r for r in runs if r["status"] == "completed" and r.get("_churn")]
    shown = [s for s in strategies if any(r["strategy"] == s for r in done)]
    if not shown:
        return []
    rounds = sorted({n for r in done for n in r["_churn"]["kept_by_round"]})
    lines = ["How the assignment moved (routed strategies; mean over seeds): the share of a round's expert–client "
             "pairs the previous round also had (1: nothing moved), and each expert's concentration (the share of "
             "its holdings that went to its usual clients; 1: always the same).", "",
             "| strategy | " + " | ".join(f"kept, round {n}" for n in rounds) + " | concentration | seeds |",
             "|---|" + "---|" * (len(rounds) + 2)]
    for s in shown:
        rs = [r for r in done if r["strategy"] == s]
        cells = [fmt(mean([r["_churn"]["kept_by_round"][n] for r in rs if n in r["_churn"]["kept_by_round"]]),
                     ".3f") for n in rounds]
        seeds = ", ".join(in_order({str(r["seed"]) for r in rs}))
        concentration = fmt(mean([r["_churn"]["concentration"] for r in rs]), ".3f")
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {concentration} | {seeds} |")
    return [*lines, ""]
