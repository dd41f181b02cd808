"""Collect experiment run directories into the results tables: ``docs/results.md`` and two CSV files.

    python -m tools.results [--runs runs/experiments docs/runs] [--out docs]

Every ``metrics.json`` under ``--runs`` (at any depth, so ``runs/experiments/<budget>/<run>/`` works too) is one
run (the same run in ``runs/`` and in the committed archive ``docs/runs/``, tools.archive, counts once);
``experiment.json`` beside it, written by the experiment runner (``tools.experiment``), adds the command line,
the budget preset, the planned rounds and the peak memory. Runs are grouped into one table per scenario and budget
(the budget preset plus every config value that is not a strategy's own, so runs of different sizes never share a
table); a table's rows are the strategies, each with the mean ± sample standard deviation over seeds of
the last round's mean personalized score (the mean over clients of each client's own test score). Only complete
runs enter a table; incomplete and failed ones are listed under it.

FedAMoLE's relative gain is ``(fedamole - best) / best``, both means taken over the seeds the two ran (each seed
draws its own splits), with ``best`` the baseline (``BASELINES``) FedAMoLE gains least over on those seeds; when it
is not positive the table says in words that FedAMoLE does not win. Where the seeds differ, the means over all of
each one's seeds follow.

Each table also gives the (seed, client)-paired difference of FedAMoLE and the best baseline with its standard
error, the no-model yardstick of each client and how many (client, seed) pairs each strategy beats it by more
than two standard errors (``tools.results_yardstick``), and a plot of the mean score by round per strategy
(``tools.results_plot``).

Files: ``results.md`` (tables, budgets, commands), ``results.csv`` (one row per table and strategy, the numbers of
the tables), ``results_runs.csv`` (one row per run) and ``results_<scenario>_<budget>.png`` (one per table).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from amole.util.atomic import write_text
from server_app.run_report import METRICS_FILE, load_metrics
from tools.chunking import EXPERIMENT_FILE  # written by tools.experiment beside the run's own files
from tools.config_keys import significant
from tools.results_churn import assignment_churn
from tools.results_numbers import finite, mean
from tools.results_table import (
    BASELINES,
    STRATEGY_ORDER,
    SUMMARY_COLUMNS,
    relative_gain,
    render,
    strategy_key,
    summarize,
    write_csv,
)
from tools.untrained import load_references, reference_key
from tools.yardstick import load_yardsticks, yardstick_key

__all__ = ["BASELINES", "EXPERIMENT_FILE", "NOT_BUDGET", "RUN_COLUMNS", "STRATEGY_ORDER", "SUMMARY_COLUMNS",
           "budget_fingerprint", "collect", "load_run", "main", "relative_gain", "round_score", "summarize",
           "write_results"]

# Config keys that are a strategy's own, a run's identity or where things are on a machine: they may differ
# between the rows of one table. Everything else must be equal for two runs to share a table. (evaluate,
# communicate, client_state_dir and private_adapter are in the configs of runs made before strategies were
# objects.)
NOT_BUDGET = {
    "federation": {"strategy", "evaluate", "communicate", "seed", "name", "runs_dir", "reply_timeout",
                   "query_timeout", "wait_for_nodes", "num_rounds", "client_state_dir", "site_dir", "eval_round0",
                   "update_bound"},
    "adapter": {"num_experts", "shared_expert"},
    "assign": {"mode"},
    "scenario": {"local_path", "local_dir", "cache_dir"},
    "model": {"cache_dir", "compile"},
    "fusion": {"private_adapter"},
    "eval": {"gen_batch_size"},
}
RUN_COLUMNS = ["scenario", "budget", "protocol", "strategy", "seed", "status", "rounds_done", "rounds_planned",
               "final_score",
               "best_score", "best_round", "kb_up_per_client_round", "kb_down_per_client_round",
               "seconds_per_round", "client_s", "train_s", "eval_s", "gen_tokens", "lost_client_rounds",
               "peak_total_mb", "peak_client_mb",
               "peak_gpu_mb", "cpu_s", "model", "num_clients",
               "steps", "batch_size", "max_seq_len", "error", "run_dir", "command", "job_command"]


# ------------------------------------------------------------------------------------------------ runs


def round_score(rnd: dict) -> float:
    """A round's mean personalized score: the mean over clients of each one's own test score (NaNs left out)."""
    return mean(finite(c.get("score") for c in rnd.get("clients", {}).values()))


def budget_fingerprint(config: dict[str, Any]) -> str:
    """The config without the keys a strategy, a seed or a machine may change (see NOT_BUDGET), as JSON.

    A key set to null counts as absent (tools.config_keys): runs stored before a setting existed group with runs
    that leave it unset. Numbers compare by value: a config stored as 16 and one stored as 16.0 share a table."""
    return json.dumps(significant(config, NOT_BUDGET), sort_keys=True, default=str)


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
    scored = [(n, s) for n, s in scores if math.isfinite(s)]
    best_round, best = max(scored, key=lambda t: t[1]) if scored else (None, math.nan)
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
        "protocol": (config.get("protocol") or {}).get("name", "default"),
        "metric": "/".join(sorted({str(c["metric"]) for c in per_client if c.get("metric")})),
        "strategy": header.get("strategy", "?"),
        "seed": header.get("seed", fed.get("seed")),
        "status": status, "rounds_done": done, "rounds_planned": planned,
        "final_score": scores[-1][1] if scores else math.nan,
        "best_score": best, "best_round": best_round,
        "kb_up_per_client_round": mean(finite(c.get("bytes_up") for c in per_client)) / 1e3,
        "kb_down_per_client_round": mean(finite(c.get("bytes_down") for c in per_client)) / 1e3,
        "seconds_per_round": mean(finite(r.get("seconds") for r in rounds)),
        # per client·round: its whole reply, the training and evaluation inside it, and the mean generated answer
        # length in tokens (multiple choice, and runs before these were recorded: NaN)
        **{key: mean(finite(c.get(src) for c in per_client))
           for key, src in (("client_s", "seconds"), ("train_s", "train_s"), ("eval_s", "eval_s"),
                            ("gen_tokens", "gen_tokens"))},
        # a client's reply the server rejected or never got: the run went on without it (a protocol deviation)
        "lost_client_rounds": sum(len(r.get("rejected") or {}) + len(r.get("absent") or []) for r in rounds),
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
        "_round_scores": dict(scores), "_churn": assignment_churn(rounds),
        "_round_clients": {int(r["round"]): {c: v.get("score") for c, v in r.get("clients", {}).items()}
                           for r in rounds},
        "_round0": {c: v.get("score") for c, v in (metrics.get("round0") or {}).get("clients", {}).items()},
        "_last_clients": {c: {"task": str(v.get("task", "")), "metric": v.get("metric"), "score": v.get("score"),
                              "score_se": v.get("score_se"), "test_n": v.get("test_n")}  # the last two: newer runs
                          for c, v in (rounds[-1].get("clients", {}) if rounds else {}).items()},
    }


def collect(runs_dir: Path | Sequence[Path]) -> list[dict[str, Any]]:
    """Every run under ``runs_dir`` (one folder or several: a folder with metrics.json, at any depth; hidden
    folders skipped), each with the untrained backbone's scores for its settings where an ``untrained_*.json``
    under ``runs_dir`` has them (``tools.untrained``). A run found twice (in ``runs/`` and in the archive,
    tools.archive) counts once: the copy with the most rounds, the first listed on a tie. Each also gets the
    yardstick cells kept for its settings (``yardstick_*.json``, tools.yardstick --out)."""
    dirs = [Path(runs_dir)] if isinstance(runs_dir, str | Path) else [Path(d) for d in runs_dir]
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for base in dirs:
        for path in sorted(base.rglob(METRICS_FILE)) if base.is_dir() else []:
            rel = path.relative_to(base)
            if any(part.startswith(".") for part in rel.parts[:-1]):
                continue
            try:
                row = load_run(path.parent)
            except (ValueError, KeyError, TypeError) as err:
                print(f"skipping {path.parent}: {err}", file=sys.stderr)
                continue
            key = (path.parent.name, str(row["budget"]))
            if key not in rows or row["rounds_done"] > rows[key]["rounds_done"]:
                rows[key] = row
    refs, kept = load_references(dirs), load_yardsticks(dirs)
    for row in rows.values():
        try:
            row["_untrained"] = refs.get(reference_key(row["_config"]), {})
            row["_yardstick"] = kept.get(yardstick_key(row["_config"]), {})
        except Exception:  # noqa: BLE001 - a config that does not load has no references; the table says why
            row.setdefault("_untrained", {})
            row["_yardstick"] = {}
    return list(rows.values())


def write_results(runs_dir: Path | Sequence[Path], out_dir: Path, command: str | None = None, notes: Path | None = None,
                  yardstick: bool = True) -> tuple[dict[str, Path], list[dict[str, Any]]]:
    """Collect ``runs_dir``, write results.md, results.csv, results_runs.csv and one plot per table
    (results_<scenario>_<budget>.png) into ``out_dir``; (paths, runs).

    ``notes`` (a markdown file, if it exists) is the written analysis of the numbers; it goes in verbatim.
    ``yardstick`` False skips the no-model yardstick (it rebuilds every client's data from the stored config).
    """
    dirs = [Path(runs_dir)] if isinstance(runs_dir, str | Path) else [Path(d) for d in runs_dir]
    out_dir = Path(out_dir)
    command = command or f"python -m tools.results --runs {' '.join(map(str, dirs))} --out {out_dir}"
    rows = collect(dirs)
    text_notes = notes.read_text(encoding="utf-8") if notes is not None and notes.is_file() else None
    out_dir.mkdir(parents=True, exist_ok=True)
    text, summary_rows = render(rows, " and ".join(map(str, dirs)), command, text_notes, out_dir, yardstick)
    paths = {"md": out_dir / "results.md", "csv": out_dir / "results.csv", "runs_csv": out_dir / "results_runs.csv"}
    write_text(paths["md"], text)
    write_csv(paths["csv"], SUMMARY_COLUMNS, summary_rows)
    write_csv(paths["runs_csv"], RUN_COLUMNS, sorted(rows, key=lambda r: (r["scenario"], str(r["budget"]),
                                                                         strategy_key(r["strategy"]), str(r["seed"]))))
    return paths, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=["runs/experiments"],
                   help="folders of run directories (searched recursively; a run in several counts once)")
    p.add_argument("--out", default="docs", help="where results.md, results.csv and results_runs.csv go")
    p.add_argument("--notes", default="docs/results_notes.md",
                   help="written analysis included verbatim in results.md (skipped if the file does not exist)")
    p.add_argument("--no-yardstick", action="store_true",
                   help="skip the no-model yardstick (it rebuilds each client's data from the run's stored config)")
    args = p.parse_args(argv)
    if not any(Path(d).is_dir() for d in args.runs):
        print(f"no runs folder among {args.runs}: run an experiment sweep first (make experiments-medium)",
              file=sys.stderr)
        return 1
    paths, rows = write_results([Path(d) for d in args.runs], Path(args.out), notes=Path(args.notes),
                                yardstick=not args.no_yardstick)
    bad = [r for r in rows if r["status"] != "completed"]
    print(f"{len(rows)} runs ({len(rows) - len(bad)} complete) -> {', '.join(str(p) for p in paths.values())}")
    for r in bad:
        print(f"  not complete: {r['run_dir']} ({r['status']}, {r['rounds_done']}/{r['rounds_planned']} rounds)"
              + (f": {r['error']}" if r["error"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
