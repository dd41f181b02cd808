"""The results tables: per-strategy summaries over seeds, FedAMoLE's relative gain, results.md and the CSVs.

Kept apart from ``tools.results`` (which reads run directories into rows) so the rendering can change without
touching how runs are collected; ``python -m tools.results`` is the entry point for both.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from amole.strategies.registry import names as strategy_names
from amole.util.atomic import atomic_path
from tools.results_diagnostics import diagnostics
from tools.results_headline import headline_lines, paired_on
from tools.results_numbers import finite, fmt, in_order, mean
from tools.results_plot import plot_file_name, plot_rounds
from tools.results_rsea import rsea_lines
from tools.results_yardstick import (
    above_counts,
    above_untrained,
    render_yardstick,
    table_untrained,
    table_yardsticks,
    yardstick_by_client,
)

# Baselines compete for "best baseline"; ablations do not. Both, and the table order, come from the registry.
BASELINES = tuple(strategy_names("baseline"))
STRATEGY_ORDER = tuple(strategy_names())
SUMMARY_COLUMNS = ["scenario", "budget", "strategy", "n_seeds", "score_mean", "score_std", "best_score_mean",
                   "kb_up_per_client_round", "kb_down_per_client_round", "seconds_per_round", "client_s",
                   "train_s", "eval_s", "peak_total_mb",
                   "peak_client_mb", "peak_gpu_mb", "gain_vs_best_baseline", "best_baseline", "model",
                   "num_clients", "num_rounds", "steps", "batch_size", "max_seq_len", "commands", "yardstick_mean",
                   "above_yardstick", "untrained_mean", "above_untrained"]


# ------------------------------------------------------------------------------------------------ tables


def strategy_key(name: str) -> tuple[int, str]:
    return (STRATEGY_ORDER.index(name), name) if name in STRATEGY_ORDER else (len(STRATEGY_ORDER), name)


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per strategy, over the complete runs given (its seeds): the numbers of one table row."""
    out: dict[str, dict[str, Any]] = {}
    for strategy in sorted({r["strategy"] for r in runs}, key=strategy_key):
        rs = [r for r in runs if r["strategy"] == strategy and r["status"] == "completed"]
        if not rs:
            continue
        finals = finite(r["final_score"] for r in rs)
        out[strategy] = {
            "strategy": strategy, "n_seeds": len(rs),
            "final_by_seed": {str(r["seed"]): r["final_score"] for r in rs},
            "score_mean": mean(finals),
            "score_std": statistics.stdev(finals) if len(finals) >= 2 else math.nan,
            "best_score_mean": mean(finite(r["best_score"] for r in rs)),
            "kb_up_per_client_round": mean(finite(r["kb_up_per_client_round"] for r in rs)),
            "kb_down_per_client_round": mean(finite(r["kb_down_per_client_round"] for r in rs)),
            "seconds_per_round": mean(finite(r["seconds_per_round"] for r in rs)),
            **{k: mean(finite(r[k] for r in rs)) for k in ("client_s", "train_s", "eval_s")},
            **{k: max(finite(r[k] for r in rs), default=math.nan)
               for k in ("peak_total_mb", "peak_client_mb", "peak_gpu_mb")},
        }
    return out


def relative_gain(rows: dict[str, dict[str, Any]]) -> tuple[float | None, str | None, str]:
    """(gain, best baseline, one sentence): FedAMoLE's ``(fedamole - best) / best`` over the best baseline.

    Each seed draws its own splits, so a baseline is compared with FedAMoLE on the seeds both ran: the best
    baseline is the one FedAMoLE gains least over there (a one-seed baseline on an easy split must not look
    better than a three-seed one, nor worse), and the gain is taken on those seeds.
    """
    base = {s: r for s, r in rows.items() if s in BASELINES and math.isfinite(r["score_mean"])}
    ours = rows.get("fedamole")
    if ours is None or not math.isfinite(ours["score_mean"]):
        return None, None, "No complete FedAMoLE run in this table: no relative gain."
    if not base:
        return None, None, f"No complete baseline run ({', '.join(BASELINES)}) in this table: no relative gain."
    pairs = {s: _on_shared_seeds(ours, r) for s, r in base.items()}
    comparable = {s: (f, b) for s, (f, b, shared) in pairs.items() if shared and b > 0}
    if comparable:
        best = min(comparable, key=lambda s: (comparable[s][0] - comparable[s][1]) / comparable[s][1])
    else:  # no baseline shares a seed with FedAMoLE: the plain means are all there is
        best = max(base, key=lambda s: base[s]["score_mean"])
    f, b, shared = pairs[best]
    if not shared:
        f, b = ours["score_mean"], base[best]["score_mean"]
    if b <= 0:
        return None, best, (f"The best baseline, {best}, scores {b:.4f}: the relative gain is undefined "
                            f"(FedAMoLE scores {f:.4f}).")
    gain = (f - b) / b
    mine, theirs = in_order(ours["final_by_seed"]), in_order(base[best]["final_by_seed"])
    where = ""
    if mine != theirs:
        where = (f", on the seed{'s' if len(shared) > 1 else ''} both ran ({', '.join(shared)})" if shared
                 else ", which shares no seed with FedAMoLE (the two means come from different splits)")
    head = (f"FedAMoLE's relative gain over the best baseline ({best}){where}: **{gain:+.1%}** "
            f"((fedamole − {best}) / {best} = ({f:.4f} − {b:.4f}) / {b:.4f}).")
    if gain <= 0:
        head += f" **FedAMoLE does not win here**: {best} scores {b:.4f} against FedAMoLE's {f:.4f}."
    spread = finite([ours["score_std"], base[best]["score_std"]])
    if len(spread) == 2:
        if abs(f - b) <= max(spread):
            head += " The difference is within one standard deviation over seeds."
    else:
        head += " (Fewer than two seeds on a side: no spread over seeds to compare the difference with.)"
    if mine != theirs:
        head += (f" Over all their seeds (FedAMoLE {', '.join(mine)}; {best} {', '.join(theirs)}) the means are "
                 f"{ours['score_mean']:.4f} and {base[best]['score_mean']:.4f}.")
    return gain, best, head


def _on_shared_seeds(ours: dict[str, Any], base: dict[str, Any]) -> tuple[float, float, list[str]]:
    """FedAMoLE's and a baseline's mean final score over the seeds both ran, and those seeds."""
    mine, theirs = ours.get("final_by_seed", {}), base.get("final_by_seed", {})
    shared = [k for k in in_order(set(mine) & set(theirs))
              if math.isfinite(mine[k]) and math.isfinite(theirs[k])]
    if not shared:
        return math.nan, math.nan, []
    return mean([mine[k] for k in shared]), mean([theirs[k] for k in shared]), shared


def group_runs(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """One group per (scenario, budget preset, planned rounds, budget fingerprint), in a stable order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["scenario"], str(r["budget"]), r["rounds_planned"], r["_fingerprint"])
        groups.setdefault(key, []).append(r)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3]))]


# ------------------------------------------------------------------------------------------------ rendering


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if str(n) == "1" else "s")


def budget_line(runs: Sequence[dict[str, Any]]) -> str:
    """The key numbers of the budget a table ran with."""
    r0 = runs[0]
    cfg = r0["_config"]
    m, t, s, e = cfg.get("model", {}), cfg.get("train", {}), cfg.get("scenario", {}), cfg.get("eval", {})
    ours = next((r["_config"] for r in runs if r["strategy"] == "fedamole"), None)
    parts = [f"budget preset `{r0['budget']}`",
             f"model {m.get('name', r0['model'])} ({m.get('quantization', '?')}, {m.get('dtype', '?')}"
             + (f", {m['compute_dtype']} matmuls" if m.get("compute_dtype") else "") + ")",
             _plural(r0["num_clients"], "client"), _plural(r0["rounds_planned"], "round"),
             f"{t.get('steps')} local steps × batch {t.get('batch_size')}, max_seq_len {t.get('max_seq_len')}, "
             f"lr {t.get('lr')}",
             f"test ≤ {s.get('test_cap') if s.get('test_cap') is not None else 'default'} examples per client, "
             f"{s.get('examples_per_task') or 'all'} examples per task",
             f"generation ≤ {e.get('max_new_tokens')} new tokens"]
    if ours:
        a, g = ours.get("adapter", {}), ours.get("assign", {})
        parts.append(f"FedAMoLE: N={a.get('num_experts')} experts/module, top-{a.get('top_k')}, rank {a.get('r')}, "
                     f"K={g.get('clients_per_expert')}, {g.get('min_experts')}–{g.get('max_experts')} per client")
    return "; ".join(parts) + "."


def host_line(runs: Sequence[dict[str, Any]]) -> str:
    hosts = []
    for r in runs:
        h = r["_host"]
        if not h:
            continue
        gpus = ", ".join(h.get("gpus") or []) or "no GPU"
        cpu = f" ({h['cpu']})" if h.get("cpu") else ""
        text = f"{h.get('cpus', '?')} CPU cores{cpu}, {h.get('memory_gb', '?')} GB RAM, {gpus}"
        if text not in hosts:
            hosts.append(text)
    return "; ".join(hosts) if hosts else "not recorded"


def lost_line(runs: Sequence[dict[str, Any]]) -> str:
    """Which runs in the table went on without some client's reply (rejected or missing) in some round."""
    lost = [r for r in runs if r.get("lost_client_rounds")]
    if not lost:
        return "Client·rounds lost (a reply rejected or missing): none; every client took part in every round."
    return "Client·rounds lost (a reply rejected or missing; the run went on without it): " + ", ".join(
        f"`{Path(r['run_dir']).name}` {r['lost_client_rounds']}" for r in lost) + "."


def render_table(runs: Sequence[dict[str, Any]], out_dir: Path | None = None, taken: set[str] | None = None,
                 yardstick: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """A table's markdown and its summary rows (for results.csv); with ``out_dir``, its plot is written there
    (under a name not in ``taken``). ``yardstick`` False skips rebuilding the clients' data."""
    rows = summarize(runs)
    gain, best, sentence = relative_gain(rows)
    r0 = runs[0]
    gpu = any(math.isfinite(r["peak_gpu_mb"]) for r in rows.values())
    if best is not None:
        sentence += " " + paired_sentence(runs, "fedamole", best)
    metrics = sorted({m for r in runs for m in str(r.get("metric", "")).split("/") if m})
    rouge = "".join(f"; Rouge-L: `{m}`" for m in metrics if m.startswith("rougeL"))
    compute = r0["_config"].get("model", {}).get("compute_dtype")
    protocol = f"protocol `{r0.get('protocol', 'default')}`" + (f", {compute} backbone matmuls" if compute else "")
    lines = [f"## {r0['scenario']} — budget `{r0['budget']}`, {protocol}{rouge}", "",
             f"Budget: {budget_line(runs)}", "", f"Machine: {host_line(runs)}.", ""]
    commands = sorted({r["command"] for r in runs if r["command"]})
    lines.append("Produced by:" if commands else "Produced by: (no command recorded: runs not made by "
                 "`tools.experiment`)")
    if commands:
        lines += ["", "```", *commands, "```"]
    lines.append("")
    if rows:
        head = ["strategy", "score, last round (mean ± std)", "seeds", "best-round score",
                "kB up / down per client·round", "s / round", "s per client·round (train / evaluate)",
                "peak MB all / one client"]
        if gpu:
            head.append("peak GPU MB")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s, row in rows.items():
            score = fmt(row["score_mean"]) + (f" ± {fmt(row['score_std'])}" if row["n_seeds"] > 1 else "")
            cells = [f"**{s}**" if s == "fedamole" else s, score, str(row["n_seeds"]), fmt(row["best_score_mean"]),
                     f"{fmt(row['kb_up_per_client_round'], ',.1f')} / {fmt(row['kb_down_per_client_round'], ',.1f')}",
                     fmt(row["seconds_per_round"], ".1f"),
                     f"{fmt(row['client_s'], '.0f')} ({fmt(row['train_s'], '.0f')} / {fmt(row['eval_s'], '.0f')})",
                     f"{fmt(row['peak_total_mb'], ',.0f')} / {fmt(row['peak_client_mb'], ',.0f')}"]
            if gpu:
                cells.append(fmt(row["peak_gpu_mb"], ",.0f"))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", sentence, "", lost_line([r for r in runs if r["status"] == "completed"]), "",
                  *headline_lines(runs, list(rows), best)]
    else:
        lines += ["No complete run in this group.", ""]
    cells, why = table_yardsticks(runs) if yardstick and rows else ({}, ["skipped (--no-yardstick)"])
    untrained = table_untrained(runs)
    if rows:
        lines += render_yardstick(runs, list(rows), cells, why, untrained)
    per_client = yardstick_by_client(cells)
    per_client_untrained = yardstick_by_client(untrained, "score")
    lines += diagnostics(runs, list(rows), per_client, per_client_untrained)
    ys = mean([v["yardstick"] for v in cells.values()])
    us = mean(list(per_client_untrained.values()))
    if rows and out_dir is not None:
        name = plot_file_name(r0["scenario"], str(r0["budget"]), set() if taken is None else taken)
        title = (f"{r0['scenario']} — budget {r0['budget']}, protocol {r0.get('protocol', 'default')}: "
                 "mean score by round")
        plot_rounds(runs, list(rows), ys, title, Path(out_dir) / name, us)
        lines += [f"![{title}]({name})", ""]
    left_out = [r for r in runs if r["status"] != "completed"]
    if left_out:
        lines.append("Not in the table:")
        for r in left_out:
            why = f": {r['error']}" if r["error"] else ""
            lines.append(f"- `{Path(r['run_dir']).name}` {r['status']} ({r['rounds_done']}/{r['rounds_planned']} "
                         f"rounds){why}")
        lines.append("")
    summary_rows = []
    for s, row in rows.items():
        summary_rows.append({
            **{k: row[k] for k in SUMMARY_COLUMNS if k in row},
            "scenario": r0["scenario"], "budget": r0["budget"], "strategy": s,
            "gain_vs_best_baseline": gain if s == "fedamole" and gain is not None else "",
            "best_baseline": best if s == "fedamole" and best else "",
            "model": r0["model"], "num_clients": r0["num_clients"], "num_rounds": r0["rounds_planned"],
            "steps": r0["steps"], "batch_size": r0["batch_size"], "max_seq_len": r0["max_seq_len"],
            "commands": " ; ".join(commands), "yardstick_mean": ys,
            "above_yardstick": "{}/{}".format(*above_counts(runs, s, cells)[:2]) if cells else "",
            "untrained_mean": us if untrained else "",
            "above_untrained": "{}/{}".format(*above_untrained(runs, s, untrained)) if untrained else "",
        })
    return "\n".join(lines), summary_rows


def paired_difference(runs: Sequence[dict[str, Any]], a: str, b: str) -> tuple[float, float, int]:
    """Mean and standard error of ``a - b`` over last-round client scores paired by (seed, client)."""
    return paired_on(runs, a, b, last=True)


def paired_sentence(runs: Sequence[dict[str, Any]], a: str, b: str) -> str:
    d, se, n = paired_difference(runs, a, b)
    if n < 2:
        return ""
    return (f"Paired by seed and client ({n} pairs), {a} − {b} = {d:+.4f} ± {se:.4f} (standard error of the mean "
            f"difference{'; within two standard errors of zero' if abs(d) <= 2 * se else ''}).")


PREAMBLE = """# Results

Collected by `{command}` from {n} run directories under `{runs}` ({complete} complete). Regenerate with
`make results` after `make experiments-medium` (or any `python -m tools.experiment` sweep).

- **score**: each client's personalized test score after the last round (accuracy by LM scoring for multiple
  choice, Rouge-L F1 for generation), averaged over the clients, then mean ± sample standard deviation over seeds;
  FedIT is scored on the aggregated model, the others right after local training. best-round score: the same
  mean for each run's best round.
- **kB**: 1000 bytes per client per round, counted from the records actually sent (up: adapters and routing
  statistics; down: the payload, plus the aggregate FedIT's clients score).
- **s / round**: wall-clock of a round on the server, clients included (they share the machine in simulation).
- **s per client·round**: one client's reply, mean over clients and rounds, and the training and evaluation
  inside it (the rest: routing statistics, fusion, loading and (de)serializing); "–" for runs made before these
  were recorded.
- **peak MB**: all = the largest sum of PSS over the runner and its descendants (Ray head and client workers),
  one client = the largest RSS of one Ray worker; sampled every 5 s (PSS) and 1 s (RSS) (`experiment.json` in each run).
- **paired difference**: FedAMoLE − best baseline over last-round client scores paired by (seed, client), with
  the standard error of the mean difference.
- **yardstick**: per client, the better of the majority training answer and (multiple choice) a uniform guess,
  scored on the client's own test split with no model; "above by more than two standard errors" uses the standard
  error each client's score recorded over its test examples (older runs: √(p(1−p)/n) for accuracy).
- **untrained model** (where scored, `tools.untrained`): the frozen backbone with no adapter on the same test
  examples: what a client's score owes to the backbone before any training.
"""


def render(rows: Sequence[dict[str, Any]], runs_dir: str, command: str, notes: str | None = None,
           out_dir: Path | None = None, yardstick: bool = True) -> tuple[str, list[dict[str, Any]]]:
    """results.md's text and the summary rows; each table's plot goes into ``out_dir`` (none without it)."""
    complete = sum(r["status"] == "completed" for r in rows)
    parts = [PREAMBLE.format(command=command, n=len(rows), runs=runs_dir, complete=complete)]
    summary_rows: list[dict[str, Any]] = []
    if not rows:
        parts.append(f"No run directory found under `{runs_dir}`.\n")
    taken: set[str] = set()
    for group in group_runs(rows):
        text, srows = render_table(group, out_dir, taken, yardstick)
        parts.append(text)
        summary_rows += srows
    parts += rsea_lines(rows)
    if notes:
        parts.append(notes.rstrip() + "\n")
    if rows:
        parts.append("## All runs\n")
        parts.append("| run | budget | seed | status | rounds | last-round score | best (round) | s / round |")
        parts.append("|---|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (r["scenario"], str(r["budget"]), strategy_key(r["strategy"]),
                                             str(r["seed"]))):
            parts.append(f"| `{Path(r['run_dir']).name}` | {r['budget']} | {r['seed']} | {r['status']} | "
                         f"{r['rounds_done']}/{r['rounds_planned']} | {fmt(r['final_score'])} | "
                         f"{fmt(r['best_score'])} ({r['best_round'] if r['best_round'] is not None else '–'}) | "
                         f"{fmt(r['seconds_per_round'], '.1f')} |")
        parts.append("")
    return "\n".join(parts), summary_rows


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else round(v, 6)
    if isinstance(v, list | tuple):
        return " ".join(map(str, v))
    return "" if v is None else v


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _csv_value(row.get(k)) for k in columns})
