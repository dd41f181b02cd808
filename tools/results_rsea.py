"""Does re-assigning experts help? FedAMoLE against its two ablations, ``static`` (the first assignment kept) and
``random`` (a fresh random one each round), over every seed run of a scenario and budget (issue 33).

A results table holds runs of one backbone precision (``model.compute_dtype``: fp32 and bf16 matmuls are named
apart). Seeds of the ablation study may have run in either, so this pools the tables of one scenario and budget
that differ only in that: each pair is still formed inside one table (same seed, same precision, same client, so
the same test examples), and the pairs of all of them are averaged. The split by precision follows, so a reader
sees whether the two agree.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tools.results_headline import paired_diffs, paired_on
from tools.results_numbers import in_order, mean

__all__ = ["rsea_lines"]

ABLATIONS = ("static", "random")


def _precision(run: dict[str, Any]) -> str:
    return str(run["_config"].get("model", {}).get("compute_dtype") or "fp32")


def _family(run: dict[str, Any]) -> tuple[str, str, Any, str]:
    """The table a run would share if the backbone precision did not count."""
    config = json.loads(run["_fingerprint"])
    config.get("model", {}).pop("compute_dtype", None)
    return run["scenario"], str(run["budget"]), run["rounds_planned"], json.dumps(config, sort_keys=True)


def _difference(runs: Sequence[dict[str, Any]], other: str, last: bool) -> str:
    d, se, n = paired_on(runs, "fedamole", other, last)
    if n < 2:
        return "–"
    return f"{d:+.4f} ± {se:.4f} ({n}){' *' if abs(d) > 2 * se else ''}"


def _by_client(runs: Sequence[dict[str, Any]], other: str) -> str:
    """FedAMoLE − ``other`` per client at the last round, mean over the seeds both ran: where it helps."""
    diffs: dict[str, list[float]] = {}
    for c, d in paired_diffs(runs, "fedamole", other, last=True):
        diffs.setdefault(c, []).append(d)
    return ", ".join(f"{c} {mean(diffs[c]):+.3f}" for c in in_order(diffs))


def rsea_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The section: per scenario and budget where FedAMoLE and an ablation share seeds, the paired differences on
    both headline metrics, pooled over precisions and per precision."""
    families: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "completed" and r["strategy"] in ("fedamole", *ABLATIONS):
            families.setdefault(_family(r), []).append(r)
    out = []
    for (scenario, budget, _, _), runs in sorted(families.items(), key=lambda kv: kv[0]):
        # A seed of one precision is another seed of the study: pair within (seed, precision).
        tagged = [{**r, "seed": f"{r['seed']} {_precision(r)}"} for r in runs]
        if all(paired_on(tagged, "fedamole", s, True)[2] < 2 for s in ABLATIONS):
            continue
        seeds = sorted({r["seed"] for r in tagged if r["strategy"] != "fedamole"})
        out += [f"### {scenario} — budget `{budget}`", "",
                f"Seeds (with the backbone's matmul precision) where an ablation ran: {', '.join(seeds)}.", "",
                "| fedamole − | precision | last round | best round incl. round 0 (paper's headline) |",
                "|---|---|---|---|"]
        for other in ABLATIONS:
            precisions = sorted({_precision(r) for r in runs if r["strategy"] == other})
            rows_for = [("all, pooled", tagged)] + ([(p, [r for r in tagged if r["seed"].endswith(f" {p}")])
                                                    for p in precisions] if len(precisions) > 1 else [])
            for label, group in rows_for:
                last, best = _difference(group, other, True), _difference(group, other, False)
                if last != "–" or best != "–":
                    out.append(f"| {other} | {label} | {last} | {best} |")
        out += ["", "By client, last round, mean over the seeds (task and data as in the tables above): " + "; ".join(
            f"fedamole − {o}: {_by_client(tagged, o)}" for o in ABLATIONS if _by_client(tagged, o)) + ".", ""]
    if not out:
        return []
    return ["## Does re-assigning experts help? FedAMoLE against its ablations", "",
            "`static` keeps the first random assignment of experts to clients; `random` draws a new one each round; "
            "FedAMoLE re-assigns by reverse selection (RSEA). Cells: mean paired difference over (seed, client) "
            "pairs ± its standard error (pairs); `*` where it is more than two standard errors from zero. Pairs are "
            "formed within one seed and one backbone precision (the same test examples); seeds run in fp32 and in "
            "bf16 matmuls are pooled, and each precision is also shown alone.", "", *out]
