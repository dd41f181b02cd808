"""Collect experiment run directories into the results tables: ``docs/results.md`` and two CSV files.

    python -m amole.results [--runs runs/experiments] [--out docs]

Every ``metrics.json`` under ``--runs`` (at any depth, so ``runs/experiments/<budget>/<run>/`` works too) is one
run; ``experiment.json`` beside it, written by the experiment runner (``server_app.experiment``), adds the command
line, the budget preset, the planned rounds and the peak memory. Runs are grouped into one table per scenario and
budget (the budget preset plus every config value that is not a strategy's own, so runs of different sizes never
share a table); a table's rows are the strategies, each with the mean ± sample standard deviation over seeds of
the last round's mean personalized score (the mean over clients of each client's own test score). Only complete
runs enter a table; incomplete and failed ones are listed under it.

FedAMoLE's relative gain is ``(fedamole - best) / best`` with ``best`` the highest mean score among the baselines
present (``BASELINES``); when it is not positive the table says in words that FedAMoLE does not win.

Files: ``results.md`` (tables, budgets, commands), ``results.csv`` (one row per table and strategy, the numbers of
the tables) and ``results_runs.csv`` (one row per run).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from amole.report import METRICS_FILE, load_metrics

EXPERIMENT_FILE = "experiment.json"  # written by server_app.experiment beside the run's own files
BASELINES = ("fedit", "fedit_ft", "local", "fdlora")
STRATEGY_ORDER = ("fedamole", "static", "random", "homogeneous", "no_shared", "fedit", "fedit_ft", "fdlora", "local")
# Config keys that are a strategy's own, a run's identity or where things are on a machine: they may differ
# between the rows of one table. Everything else must be equal for two runs to share a table.
NOT_BUDGET = {
    "federation": {"strategy", "evaluate", "communicate", "seed", "name", "runs_dir", "reply_timeout",
                   "query_timeout", "wait_for_nodes", "num_rounds"},
    "adapter": {"num_experts", "shared_expert"},
    "assign": {"mode"},
    "scenario": {"local_path", "local_dir", "cache_dir"},
    "model": {"cache_dir"},
}
RUN_COLUMNS = ["scenario", "budget", "strategy", "seed", "status", "rounds_done", "rounds_planned", "final_score",
               "best_score", "best_round", "kb_up_per_client_round", "kb_down_per_client_round",
               "seconds_per_round", "peak_total_mb", "peak_client_mb", "peak_gpu_mb", "cpu_s", "model", "num_clients",
               "steps", "batch_size", "max_seq_len", "error", "run_dir", "command", "job_command"]
SUMMARY_COLUMNS = ["scenario", "budget", "strategy", "n_seeds", "score_mean", "score_std", "best_score_mean",
                   "kb_up_per_client_round", "kb_down_per_client_round", "seconds_per_round", "peak_total_mb",
                   "peak_client_mb", "peak_gpu_mb", "gain_vs_best_baseline", "best_baseline", "model",
                   "num_clients", "num_rounds", "steps", "batch_size", "max_seq_len", "commands"]


# ------------------------------------------------------------------------------------------------ runs


def _finite(xs: Iterable[Any]) -> list[float]:
    out = []
    for x in xs:
        try:
            v = float(x)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out.append(v)
    return out


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def round_score(rnd: dict) -> float:
    """A round's mean personalized score: the mean over clients of each one's own test score (NaNs left out)."""
    return _mean(_finite(c.get("score") for c in rnd.get("clients", {}).values()))


def budget_fingerprint(config: dict[str, Any]) -> str:
    """The config without the keys a strategy, a seed or a machine may change (see NOT_BUDGET), as JSON."""
    kept = {section: {k: v for k, v in values.items() if k not in NOT_BUDGET.get(section, set())}
            for section, values in config.items() if isinstance(values, dict)}
    return json.dumps(kept, sort_keys=True, default=str)


def load_run(run_dir: Path) -> dict[str, Any]:
    """One run directory as a row (see RUN_COLUMNS) plus the config and host it ran with."""
    run_dir = Path(run_dir)
    metrics = load_metrics(run_dir)
    header = metrics.get("run", {})
    config = header.get("config") or {}
    exp: dict[str, Any] = {}
    if (run_dir / EXPERIMENT_FILE).is_file():
        try:
            exp = json.loads((run_dir / EXPERIMENT_FILE).read_text(encoding="utf-8"))
        except ValueError:
            exp = {}
    rounds = sorted(metrics.get("rounds", []), key=lambda r: r["round"])
    scores = [(int(r["round"]), round_score(r)) for r in rounds]
    finite = [(n, s) for n, s in scores if math.isfinite(s)]
    best_round, best = max(finite, key=lambda t: t[1]) if finite else (None, math.nan)
    per_client = [c for r in rounds for c in r.get("clients", {}).values()]
    planned = int(exp.get("planned_rounds") or header.get("num_rounds") or 0)
    done = len(rounds)
    if done >= planned > 0:
        status = "completed"
    elif exp.get("status") == "failed":
        status = "failed"
    else:
        status = "incomplete"
    peak = exp.get("peak_memory", {})
    fed, train, model = config.get("federation", {}), config.get("train", {}), config.get("model", {})
    return {
        "scenario": header.get("scenario", "?"),
        "budget": exp.get("budget") or exp.get("choices", {}).get("budget") or "?",
        "strategy": header.get("strategy", "?"),
        "seed": header.get("seed", fed.get("seed")),
        "status": status, "rounds_done": done, "rounds_planned": planned,
        "final_score": scores[-1][1] if scores else math.nan,
        "best_score": best, "best_round": best_round,
        "kb_up_per_client_round": _mean(_finite(c.get("bytes_up") for c in per_client)) / 1e3,
        "kb_down_per_client_round": _mean(_finite(c.get("bytes_down") for c in per_client)) / 1e3,
        "seconds_per_round": _mean(_finite(r.get("seconds") for r in rounds)),
        "peak_total_mb": peak.get("peak_total_mb", math.nan),
        "peak_client_mb": peak.get("peak_client_mb", math.nan),
        "peak_gpu_mb": peak.get("peak_gpu_mb", math.nan),
        "cpu_s": exp.get("cpu_s", math.nan),
        "model": header.get("model", model.get("name", "?")),
        "num_clients": header.get("num_clients", fed.get("num_clients")),
        "steps": train.get("steps"), "batch_size": train.get("batch_size"), "max_seq_len": train.get("max_seq_len"),
        "error": exp.get("error", "") if status == "failed" else "",
        "run_dir": str(run_dir), "command": exp.get("command", ""), "job_command": exp.get("job_command", ""),
        "_config": config, "_host": exp.get("host", {}), "_fingerprint": budget_fingerprint(config),
    }


def collect(runs_dir: Path) -> list[dict[str, Any]]:
    """Every run under ``runs_dir`` (a folder with metrics.json, at any depth; hidden folders skipped)."""
    runs_dir = Path(runs_dir)
    rows = []
    for path in sorted(runs_dir.rglob(METRICS_FILE)):
        rel = path.relative_to(runs_dir)
        if any(part.startswith(".") for part in rel.parts[:-1]):
            continue
        try:
            rows.append(load_run(path.parent))
        except (ValueError, KeyError, TypeError) as err:
            print(f"skipping {path.parent}: {err}", file=sys.stderr)
    return rows


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
        finals = _finite(r["final_score"] for r in rs)
        out[strategy] = {
            "strategy": strategy, "n_seeds": len(rs), "seeds": sorted(str(r["seed"]) for r in rs),
            "score_mean": _mean(finals),
            "score_std": statistics.stdev(finals) if len(finals) >= 2 else math.nan,
            "best_score_mean": _mean(_finite(r["best_score"] for r in rs)),
            "kb_up_per_client_round": _mean(_finite(r["kb_up_per_client_round"] for r in rs)),
            "kb_down_per_client_round": _mean(_finite(r["kb_down_per_client_round"] for r in rs)),
            "seconds_per_round": _mean(_finite(r["seconds_per_round"] for r in rs)),
            "peak_total_mb": max(_finite(r["peak_total_mb"] for r in rs), default=math.nan),
            "peak_client_mb": max(_finite(r["peak_client_mb"] for r in rs), default=math.nan),
            "peak_gpu_mb": max(_finite(r["peak_gpu_mb"] for r in rs), default=math.nan),
        }
    return out


def relative_gain(rows: dict[str, dict[str, Any]]) -> tuple[float | None, str | None, str]:
    """(gain, best baseline, one sentence): FedAMoLE's ``(fedamole - best) / best`` over the best baseline."""
    base = {s: r for s, r in rows.items() if s in BASELINES and math.isfinite(r["score_mean"])}
    ours = rows.get("fedamole")
    if ours is None or not math.isfinite(ours["score_mean"]):
        return None, None, "No complete FedAMoLE run in this table: no relative gain."
    if not base:
        return None, None, f"No complete baseline run ({', '.join(BASELINES)}) in this table: no relative gain."
    best = max(base, key=lambda s: base[s]["score_mean"])
    f, b = ours["score_mean"], base[best]["score_mean"]
    if b <= 0:
        return None, best, (f"The best baseline, {best}, scores {b:.4f}: the relative gain is undefined "
                            f"(FedAMoLE scores {f:.4f}).")
    gain = (f - b) / b
    head = (f"FedAMoLE's relative gain over the best baseline ({best}): **{gain:+.1%}** "
            f"((fedamole − {best}) / {best} = ({f:.4f} − {b:.4f}) / {b:.4f}).")
    if gain <= 0:
        head += f" **FedAMoLE does not win here**: {best} scores {b:.4f} against FedAMoLE's {f:.4f}."
    spread = _finite([ours["score_std"], base[best]["score_std"]])
    if len(spread) == 2:
        if abs(f - b) <= max(spread):
            head += " The difference is within one standard deviation over seeds."
    else:
        head += " (Fewer than two seeds on a side: no spread over seeds to compare the difference with.)"
    return gain, best, head


def group_runs(rows: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """One group per (scenario, budget preset, planned rounds, budget fingerprint), in a stable order."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["scenario"], str(r["budget"]), r["rounds_planned"], r["_fingerprint"])
        groups.setdefault(key, []).append(r)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3]))]


# ------------------------------------------------------------------------------------------------ rendering


def _fmt(x: Any, spec: str = ".4f", empty: str = "–") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return empty
    return format(v, spec) if math.isfinite(v) else empty


def _plural(n: Any, word: str) -> str:
    return f"{n} {word}" + ("" if str(n) == "1" else "s")


def budget_line(runs: Sequence[dict[str, Any]]) -> str:
    """The key numbers of the budget a table ran with."""
    r0 = runs[0]
    cfg = r0["_config"]
    m, t, s, e = cfg.get("model", {}), cfg.get("train", {}), cfg.get("scenario", {}), cfg.get("eval", {})
    ours = next((r["_config"] for r in runs if r["strategy"] == "fedamole"), None)
    parts = [f"budget preset `{r0['budget']}`",
             f"model {m.get('name', r0['model'])} ({m.get('quantization', '?')}, {m.get('dtype', '?')})",
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
        text = f"{h.get('cpus', '?')} CPU cores, {h.get('memory_gb', '?')} GB RAM, {gpus}"
        if text not in hosts:
            hosts.append(text)
    return "; ".join(hosts) if hosts else "not recorded"


def render_table(runs: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A table's markdown and its summary rows (for results.csv)."""
    rows = summarize(runs)
    gain, best, sentence = relative_gain(rows)
    r0 = runs[0]
    gpu = any(math.isfinite(r["peak_gpu_mb"]) for r in rows.values())
    lines = [f"## {r0['scenario']} — budget `{r0['budget']}`", "",
             f"Budget: {budget_line(runs)}", "", f"Machine: {host_line(runs)}.", ""]
    commands = sorted({r["command"] for r in runs if r["command"]})
    lines.append("Produced by:" if commands else "Produced by: (no command recorded: runs not made by "
                 "`server_app.experiment`)")
    if commands:
        lines += ["", "```", *commands, "```"]
    lines.append("")
    if rows:
        head = ["strategy", "score, last round (mean ± std)", "seeds", "best-round score",
                "kB up / down per client·round", "s / round", "peak MB all / one client"]
        if gpu:
            head.append("peak GPU MB")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for s, row in rows.items():
            score = _fmt(row["score_mean"]) + (f" ± {_fmt(row['score_std'])}" if row["n_seeds"] > 1 else "")
            cells = [f"**{s}**" if s == "fedamole" else s, score, str(row["n_seeds"]), _fmt(row["best_score_mean"]),
                     f"{_fmt(row['kb_up_per_client_round'], ',.1f')} / {_fmt(row['kb_down_per_client_round'], ',.1f')}",
                     _fmt(row["seconds_per_round"], ".1f"),
                     f"{_fmt(row['peak_total_mb'], ',.0f')} / {_fmt(row['peak_client_mb'], ',.0f')}"]
            if gpu:
                cells.append(_fmt(row["peak_gpu_mb"], ",.0f"))
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", sentence, ""]
    else:
        lines += ["No complete run in this group.", ""]
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
            "commands": " ; ".join(commands),
        })
    return "\n".join(lines), summary_rows


PREAMBLE = """# Results

Collected by `{command}` from {n} run directories under `{runs}` ({complete} complete). Regenerate with
`make results` after `make experiments-small` (or any `python -m server_app.experiment` sweep).

- **score**: each client's personalized test score after the last round (accuracy by LM scoring for multiple
  choice, Rouge-L F1 for generation), averaged over the clients, then mean ± sample standard deviation over seeds;
  FedIT is scored on the aggregated model, the others right after local training. best-round score: the same
  mean for each run's best round.
- **kB**: 1000 bytes per client per round, counted from the records actually sent (up: adapters and routing
  statistics; down: the payload, plus the aggregate FedIT's clients score).
- **s / round**: wall-clock of a round on the server, clients included (they share the machine in simulation).
- **peak MB**: all = the largest sum of PSS over the runner and its descendants (Ray head and client workers),
  one client = the largest RSS of one Ray worker; sampled every 0.5 s (`experiment.json` in each run).
"""


def render(rows: Sequence[dict[str, Any]], runs_dir: str, command: str) -> tuple[str, list[dict[str, Any]]]:
    complete = sum(r["status"] == "completed" for r in rows)
    parts = [PREAMBLE.format(command=command, n=len(rows), runs=runs_dir, complete=complete)]
    summary_rows: list[dict[str, Any]] = []
    if not rows:
        parts.append(f"No run directory found under `{runs_dir}`.\n")
    for group in group_runs(rows):
        text, srows = render_table(group)
        parts.append(text)
        summary_rows += srows
    if rows:
        parts.append("## All runs\n")
        parts.append("| run | budget | seed | status | rounds | last-round score | best (round) | s / round |")
        parts.append("|---|---|---|---|---|---|---|---|")
        for r in sorted(rows, key=lambda r: (r["scenario"], str(r["budget"]), strategy_key(r["strategy"]),
                                             str(r["seed"]))):
            parts.append(f"| `{Path(r['run_dir']).name}` | {r['budget']} | {r['seed']} | {r['status']} | "
                         f"{r['rounds_done']}/{r['rounds_planned']} | {_fmt(r['final_score'])} | "
                         f"{_fmt(r['best_score'])} ({r['best_round'] if r['best_round'] is not None else '–'}) | "
                         f"{_fmt(r['seconds_per_round'], '.1f')} |")
        parts.append("")
    return "\n".join(parts), summary_rows


def _csv_value(v: Any) -> Any:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else round(v, 6)
    if isinstance(v, list | tuple):
        return " ".join(map(str, v))
    return "" if v is None else v


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: _csv_value(row.get(k)) for k in columns})


def write_results(runs_dir: Path, out_dir: Path,
                  command: str | None = None) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """Collect ``runs_dir``, write results.md, results.csv and results_runs.csv into ``out_dir``; (paths, runs)."""
    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    command = command or f"python -m amole.results --runs {runs_dir} --out {out_dir}"
    rows = collect(runs_dir)
    text, summary_rows = render(rows, str(runs_dir), command)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "runs_csv": out_dir / "results_runs.csv"}
    paths["md"].write_text(text, encoding="utf-8")
    write_csv(paths["csv"], SUMMARY_COLUMNS, summary_rows)
    write_csv(paths["runs_csv"], RUN_COLUMNS, sorted(rows, key=lambda r: (r["scenario"], str(r["budget"]),
                                                                         strategy_key(r["strategy"]), str(r["seed"]))))
    return paths, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/experiments", help="folder of run directories (searched recursively)")
    p.add_argument("--out", default="docs", help="where results.md, results.csv and results_runs.csv go")
    args = p.parse_args(argv)
    if not Path(args.runs).is_dir():
        print(f"no runs folder {args.runs}: run an experiment sweep first (make experiments-small)", file=sys.stderr)
        return 1
    paths, rows = write_results(Path(args.runs), Path(args.out))
    bad = [r for r in rows if r["status"] != "completed"]
    print(f"{len(rows)} runs ({len(rows) - len(bad)} complete) -> {', '.join(str(p) for p in paths.values())}")
    for r in bad:
        print(f"  not complete: {r['run_dir']} ({r['status']}, {r['rounds_done']}/{r['rounds_planned']} rounds)"
              + (f": {r['error']}" if r["error"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
