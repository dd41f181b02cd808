"""The run directory a person reads after a federation: ``runs/<name>/``.

The server calls :meth:`RunReport.update` once per round with *all* metrics so far (a JSON-able dict, schema
below), so every file is rebuilt from that dict and written atomically (tmp file, then ``os.replace``): a crash
mid-write never leaves a half file, and calling ``update`` twice with the same dict is harmless. TensorBoard is
the one append-only output, so the report remembers the last round it logged and logs only newer ones.

Files: ``metrics.json`` (the dict, read back by :func:`load_metrics` to resume), ``report.md`` (tables to read
first), ``score_by_round.png``, ``assignment_<module>.png`` (experts x clients of the last round for the first,
middle and last module) and ``tb/`` (TensorBoard scalars, step = round).

Schema::

    {"run": {"name", "strategy", "scenario", "model", "num_rounds", "num_clients", "seed", "started", "config"},
     "rounds": [{"round", "seconds", "assign_seconds", "num_experts",
                 "clients": {"<id>": {"task", "metric", "score", "train_loss", "experts": {"<module>": int},
                                      "experts_mean", "bytes_up", "bytes_down", "num_examples", "seconds",
                                      "overhead_s"}},
                 "assignment": {"<module>": [[expert ids of client 0], ...]}}]}

``assignment`` lists clients in :func:`client_order` (numeric order when every id is an integer).
"""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # Figure without pyplot: Agg canvas, no global state, nothing to close

from amole.evaluation.gains import gains_markdown, site_gains
from amole.server.privacy import EXPLANATION
from amole.site.folder import model_folder, site_folder
from amole.site.personal import copy_model
from amole.util.atomic import atomic_path, write_text
from server_app.client_ids import client_order, natural_key

METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
SCORE_PNG = "score_by_round.png"
TB_DIR = "tb"


def short_module_name(name: str) -> str:
    """``model.layers.3.self_attn.q_proj`` -> ``L3.q_proj``: readable in titles and file names."""
    leaf = name.rsplit(".", 1)[-1]
    m = re.search(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)", name)
    return f"L{m.group(1)}.{leaf}" if m else leaf


def _save_figure(fig: Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def load_metrics(run_dir: Path) -> dict:
    """Read ``metrics.json`` back (to resume a run); fail loudly rather than restart from nothing."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}: nothing to resume from")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is corrupt: {e}") from e
    if not isinstance(metrics, dict) or not isinstance(metrics.get("rounds"), list) or "run" not in metrics:
        raise ValueError(f"{path} is not a metrics file (expected an object with 'run' and a 'rounds' list)")
    return metrics


# ---------------------------------------------------------------------------------------------- round summaries


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else math.nan


def round_summary(rnd: dict) -> dict[str, float]:
    """The per-round numbers shown in report.md and TensorBoard, computed in one place so they agree."""
    clients = list(rnd.get("clients", {}).values())
    scores = [float(c["score"]) for c in clients if not math.isnan(float(c["score"]))]  # NaN: score left out
    return {
        "score_mean": _mean(scores),
        "score_min": min(scores, default=math.nan),
        "score_max": max(scores, default=math.nan),
        "train_loss_mean": _mean([float(c["train_loss"]) for c in clients]),
        "experts_mean": _mean([float(c["experts_mean"]) for c in clients]),
        "mb_up": sum(int(c["bytes_up"]) for c in clients) / 1e6,
        "mb_down": sum(int(c["bytes_down"]) for c in clients) / 1e6,
        "seconds": float(rnd.get("seconds", math.nan)),
        "assign_seconds": float(rnd.get("assign_seconds", math.nan)),
        # seconds from a client's ClientApp start to its round's first step (median over clients; the first
        # round of a deployment includes starting the site's worker and loading the model)
        "overhead_s": _median([float(c["overhead_s"]) for c in clients if "overhead_s" in c]),
    }


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _best_round(rounds: list[dict]) -> dict | None:
    """The round with the highest mean client score (the earliest on ties)."""
    scored = [r for r in rounds if not math.isnan(round_summary(r)["score_mean"])]
    return max(scored, key=lambda r: round_summary(r)["score_mean"], default=None)


# ---------------------------------------------------------------------------------------------------- report.md


def _client_table(rnd: dict) -> list[str]:
    lines = [
        "| client | task | metric | score | experts / module (mean) | min–max | KB up | KB down |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    clients = rnd.get("clients", {})
    for cid in client_order(clients):
        c = clients[cid]
        counts = list(c.get("experts", {}).values())
        span = f"{min(counts)}–{max(counts)}" if counts else "–"
        lines.append(
            f"| {cid} | {c['task']} | {c['metric']} | {_fmt(float(c['score']))} | {_fmt(float(c['experts_mean']), 2)}"
            f" | {span} | {int(c['bytes_up']) / 1e3:,.1f} | {int(c['bytes_down']) / 1e3:,.1f} |"
        )
    return lines


def render_markdown(metrics: dict, plots: list[str]) -> str:
    """report.md: the header, the final / best mean score, per-round and per-client tables, the plots."""
    run = metrics.get("run", {})
    rounds = metrics.get("rounds", [])
    lines = [
        f"# Run `{run.get('name', '?')}`",
        "",
        "| strategy | scenario | model | protocol | rounds | clients | seed | started |",
        "|---|---|---|---|---|---|---|---|",
        f"| {run.get('strategy', '?')} | {run.get('scenario', '?')} | {run.get('model', '?')}"
        f" | {run.get('protocol', {}).get('name', 'default')}"
        f" | {len(rounds)} / {run.get('num_rounds', '?')} | {run.get('num_clients', '?')} | {run.get('seed', '?')}"
        f" | {run.get('started', '?')} |",
        "",
        *_protocol_notes(run.get("protocol", {})),
    ]
    if not rounds:
        return "\n".join([*lines, "No round finished yet.", ""])

    last, best = rounds[-1], _best_round(rounds)
    final = round_summary(last)["score_mean"]
    best_line = f"**best-round mean score: {_fmt(round_summary(best)['score_mean'])}** (round {best['round']})"
    lines += [
        f"**Final mean score: {_fmt(final)}** (round {last['round']}) · {best_line if best else 'no best round'}",
        "",
        "Scores are each client's metric on its own test set, right after its local training; "
        "MB / KB are 10^6 / 10^3 bytes, summed over clients per round; overhead s: median over clients of the "
        "seconds from the ClientApp's start to its round's first step.",
        "",
        "## Rounds",
        "",
        "| round | mean score | min | max | mean train loss | experts / module | MB up | MB down"
        " | seconds | assign s | overhead s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rounds:
        s = round_summary(r)
        lines.append(
            f"| {r['round']} | {_fmt(s['score_mean'])} | {_fmt(s['score_min'])} | {_fmt(s['score_max'])}"
            f" | {_fmt(s['train_loss_mean'], 4)} | {_fmt(s['experts_mean'], 2)} | {_fmt(s['mb_up'], 2)}"
            f" | {_fmt(s['mb_down'], 2)} | {_fmt(s['seconds'], 1)} | {_fmt(s['assign_seconds'], 2)}"
            f" | {_fmt(s['overhead_s'], 1)} |"
        )
    if "round0" in metrics:
        r0 = metrics["round0"]
        s0 = [float(c["score"]) for c in r0.get("clients", {}).values()]
        lines.insert(lines.index("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|") + 1,
                     f"| 0 (untrained) | {_fmt(_mean(s0))} | {_fmt(min(s0, default=math.nan))}"
                     f" | {_fmt(max(s0, default=math.nan))} | – | – | – | –"
                     f" | {_fmt(float(r0.get('seconds', math.nan)), 1)} | – | – |")
    lines += _membership(rounds)
    lines += ["", *gains_markdown(site_gains(metrics), last["round"])]
    lines += ["", f"## Clients, last round ({last['round']})", "", *_client_table(last), ""]
    if best is not None and best is not last:
        lines += [f"## Clients, best round ({best['round']})", "", *_client_table(best), ""]
    elif best is last:
        lines += ["The last round is also the best round.", ""]
    lines += _privacy_section(rounds)
    if plots:
        lines += ["## Plots", "", *(f"![{Path(p).stem}]({p})" for p in plots), ""]
    return "\n".join(lines)


def _protocol_notes(protocol: dict) -> list[str]:
    """Where this run departs from its protocol preset (conf/protocol, docs/fidelity.md), one line each."""
    notes = [f"- changed after the `{protocol.get('name')}` preset: {o}" for o in protocol.get("overridden", [])]
    notes += [f"- {n}" for n in protocol.get("notes", [])]
    return [*notes, ""] if notes else []


def _membership(rounds: list[dict]) -> list[str]:
    """Who joined, sat a round out, or was left out: one line per round where anything happened."""
    lines = []
    for r in rounds:
        notes = [f"client {c} joined in round {r['round']}" for c in r.get("joined", [])]
        notes += [f"client {c} absent" for c in r.get("absent", [])]
        notes += [f"client {c} rejected ({why})" for c, why in r.get("rejected", {}).items()]
        if notes:
            lines.append(f"- round {r['round']}: " + "; ".join(notes))
    return ["", *lines] if lines else []


def _privacy_section(rounds: list[dict]) -> list[str]:
    """Per round, the metric-DP guarantee of the uploaded routing statistics (absent when DP is off)."""
    rows = [r for r in rounds if "privacy" in r]
    if not rows:
        return ["## Privacy", "", "Differential privacy of the routing statistics is off (`assign.dp_eta` unset): "
                "clients upload them clean.", ""]
    lines = ["## Privacy (routing statistics)", "", EXPLANATION, "",
             "| round | η | clip c | ε per vector (2ηc) | ε per client·round (max) | ε cumulative (max) |",
             "|---:|---:|---:|---:|---:|---:|"]
    total: dict[str, float] = {}
    for r in rows:
        p = r["privacy"]
        for cid, g in p.get("clients", {}).items():
            total[cid] = total.get(cid, 0.0) + float(g["epsilon_round"])
        lines.append(f"| {r['round']} | {p['eta']:g} | {p['clip']:g} | {p['epsilon_per_vector']:g} "
                     f"| {p['epsilon_round_max']:g} | {max(total.values(), default=0.0):g} |")
    probed = {c for r in rows for c, g in r["privacy"].get("clients", {}).items() if g.get("probe_vectors")}
    lines += ["", "ε cumulative per site (every release counted, a joining site's probe included"
              f"{': ' + ', '.join(sorted(probed, key=natural_key)) + ' probed' if probed else ''}): "
              + ", ".join(f"{c} {total[c]:g}" for c in sorted(total, key=natural_key)) + "."]
    return [*lines, ""]


# -------------------------------------------------------------------------------------------------------- plots


def plot_scores(rounds: list[dict], path: Path) -> None:
    """One line per client and the mean dashed: who improves, who lags, and whether the federation helps."""
    xs = [r["round"] for r in rounds]
    ids = client_order({cid for r in rounds for cid in r.get("clients", {})})
    metric_names = sorted({c["metric"] for r in rounds for c in r.get("clients", {}).values()})
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot()
    for cid in ids:
        ys = [float(r["clients"][cid]["score"]) if cid in r.get("clients", {}) else math.nan for r in rounds]
        ax.plot(xs, ys, marker="o", markersize=3, linewidth=1, alpha=0.75, label=f"client {cid}")
    ax.plot(xs, [round_summary(r)["score_mean"] for r in rounds], "k--", linewidth=2.2, label="mean")
    ax.set_xlabel("round")
    ax.set_ylabel(f"score ({' / '.join(metric_names)})" if metric_names else "score")
    ax.set_title("Client score by round")
    ax.grid(True, alpha=0.3)
    if len(xs) <= 12:
        ax.set_xticks(xs)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    _save_figure(fig, path)


def plot_assignment(rnd: dict, module: str, path: Path) -> None:
    """Experts x clients, filled where held: shows how specialised (or shared) the experts of a module are."""
    held = rnd["assignment"][module]
    ids = rnd.get("assignment_clients") or client_order(rnd.get("clients", {}))
    if len(ids) != len(held):  # ids unknown to this round: label columns by position
        ids = [str(i) for i in range(len(held))]
    n = max(int(rnd.get("num_experts") or 0), 1 + max((int(e) for h in held for e in h), default=0))
    grid = [[0] * len(held) for _ in range(n)]
    for col, experts in enumerate(held):
        for e in experts:
            grid[int(e)][col] = 1
    fig = Figure(figsize=(max(3.5, 0.45 * len(held) + 1.8), max(2.8, 0.3 * n + 1.4)))
    ax = fig.add_subplot()
    ax.imshow(grid, cmap="Blues", vmin=0, vmax=1.25, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(held)), [f"{cid}\n({len(h)})" for cid, h in zip(ids, held, strict=True)], fontsize=8)
    ax.set_yticks(range(n), [str(i) for i in range(n)], fontsize=8)
    ax.set_xticks([x - 0.5 for x in range(1, len(held))], minor=True)
    ax.set_yticks([y - 0.5 for y in range(1, n)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("client (experts held)")
    ax.set_ylabel("expert")
    ax.set_title(f"Round {rnd['round']} · {short_module_name(module)}", fontsize=10)
    _save_figure(fig, path)


def plotted_modules(modules: Any) -> list[str]:
    """First, middle and last module in layer order: a glance at the bottom, middle and top of the model."""
    ordered = sorted(modules, key=natural_key)
    picks = sorted({0, len(ordered) // 2, len(ordered) - 1}) if ordered else []
    return [ordered[i] for i in picks]


def _safe_file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


# ------------------------------------------------------------------------------------------------------ RunReport


class RunReport:
    """Rebuilds ``run_dir`` from the full metrics each round; logs only rounds not yet in TensorBoard.

    A fresh object on an existing run directory (a resumed run) counts the rounds already in ``metrics.json`` as
    logged, since ``update`` writes TensorBoard before ``metrics.json``; the resumed run then appends its new rounds
    (as a new events file in ``tb/``) and never logs a round twice.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tensorboard = tensorboard
        self._writer: Any = None
        self._last_logged = -math.inf
        if (self.run_dir / METRICS_FILE).is_file():
            try:
                done = [r["round"] for r in load_metrics(self.run_dir)["rounds"]]
            except (ValueError, KeyError, TypeError):
                done = []  # unreadable: update() will overwrite it; better a duplicate TB point than a lost one
            self._last_logged = max(done, default=-math.inf)

    def update(self, metrics: dict) -> None:
        """Log new rounds to TensorBoard, then rewrite metrics.json, the plots and report.md."""
        rounds = sorted(metrics.get("rounds", []), key=lambda r: r["round"])
        self._log_tensorboard(rounds)
        write_text(self.run_dir / METRICS_FILE, json.dumps(metrics, separators=(",", ":")) + "\n")
        plots: list[str] = []
        if rounds:
            plot_scores(rounds, self.run_dir / SCORE_PNG)
            plots.append(SCORE_PNG)
            last = rounds[-1]
            for module in plotted_modules(last.get("assignment", {})):
                name = f"assignment_{_safe_file_part(short_module_name(module))}.png"
                plot_assignment(last, module, self.run_dir / name)
                plots.append(name)
        write_text(self.run_dir / REPORT_FILE, render_markdown({**metrics, "rounds": rounds}, plots))

    def _log_tensorboard(self, rounds: list[dict]) -> None:
        new = [r for r in rounds if r["round"] > self._last_logged]
        if not self.tensorboard or not new:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # lazy: only runs that log pay for the import

            self._writer = SummaryWriter(log_dir=str(self.run_dir / TB_DIR))
        w = self._writer
        for r in new:
            step = int(r["round"])
            s = round_summary(r)
            for tag, key in [
                ("score/mean", "score_mean"), ("score/min", "score_min"), ("score/max", "score_max"),
                ("train_loss/mean", "train_loss_mean"), ("experts/mean_per_module", "experts_mean"),
                ("comm/MB_up", "mb_up"), ("comm/MB_down", "mb_down"),
                ("time/round_seconds", "seconds"), ("time/assign_seconds", "assign_seconds"),
            ]:
                if not math.isnan(s[key]):
                    w.add_scalar(tag, s[key], step)
            for cid, c in r.get("clients", {}).items():
                w.add_scalar(f"client_score/{cid}", float(c["score"]), step)
                w.add_scalar(f"client_train_loss/{cid}", float(c["train_loss"]), step)
            self._last_logged = step
        w.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the other files are complete after every update)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> RunReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def copy_client_models(run_dir: Path, site_dir: str | None, run_id: str, clients: list[str]) -> list[str]:
    """Simulation convenience: each client's latest kept model into ``clients/<id>/model/`` when the site
    folders are on this machine (in deployment only the site holds its model); returns the clients copied."""
    copied = []
    for client in clients:
        src = model_folder(site_folder(site_dir, client), run_id) / "latest"
        if not src.is_dir():
            continue
        copy_model(src, run_dir / "clients" / client / "model")
        copied.append(client)
    return copied
