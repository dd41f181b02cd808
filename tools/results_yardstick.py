"""The no-model yardstick of a results table, and how many clients a strategy beats it by more than the noise.

A client's yardstick is the better of two scores that need no model (:mod:`tools.yardstick`): always giving the
answer most common in its own training split, and, for multiple choice, the expected accuracy of a uniform
guess. Its test split is rebuilt from the config stored in the run's metrics.json, so the yardstick is scored on
the very examples the run scored; where a ``yardstick_*.json`` beside the runs keeps the cells of those settings
(``tools.yardstick --out``), they are used instead, so a table keeps its yardstick on a machine without the data.

A strategy that only learns each client's answer distribution reaches the yardstick; "above it by more than two
standard errors" is the count that says a strategy learned more.

A client score's standard error is the one its evaluation recorded (``score_se``: sample std over its test
examples / sqrt(n)); runs from before it was recorded fall back to the binomial sqrt(p(1-p)/n) for accuracy
(n = ``test_n`` or the rebuilt test split's size); otherwise it is unknown and the pair is not counted as above.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from amole.config import ScenarioConfig, Settings, from_dict
from amole.data.scenario import client_splits, task_name
from tools.results_numbers import finite, fmt, in_order, mean
from tools.yardstick import client_cell

__all__ = ["above_counts", "above_untrained", "client_se", "render_yardstick", "run_yardsticks", "table_untrained",
           "table_yardsticks", "yardstick_by_client"]

Cell = dict[str, Any]  # task, metric, test_n, majority, uniform (None for generation), yardstick


@lru_cache(maxsize=512)
def _client_yardstick(scenario_json: str, rouge: str, seed: int, client: str) -> Cell:
    """The yardstick of one client of one scenario and seed (cached: strategies of a table share their data)."""
    return client_cell(client_splits(from_dict(ScenarioConfig, json.loads(scenario_json)), client, seed), rouge)


def run_yardsticks(run: dict[str, Any]) -> tuple[dict[str, Cell], list[str]]:
    """Per client of the run's last round, its yardstick: kept for the run's settings (``run["_yardstick"]``,
    tools.yardstick --out), else computed from the data; and why any client's could not be had."""
    try:
        settings = Settings.from_dict(run["_config"])
    except Exception as err:  # noqa: BLE001 - any unreadable config is reported in the table, never a crash
        return {}, [f"the run's stored config does not load ({type(err).__name__}: {err})"]
    scenario = json.dumps(settings.to_dict()["scenario"], sort_keys=True)
    kept = run.get("_yardstick") or {}
    cells, why = {}, []
    for client, record in run["_last_clients"].items():
        try:
            expected = task_name(settings.scenario, client)
            if record.get("task") and record["task"] != expected:
                raise ValueError(f"the run's client {client} had task {record['task']!r}, the stored scenario gives "
                                 f"it {expected!r} (its node brought its own task or data)")
            cells[client] = kept.get(client) or _client_yardstick(scenario, settings.eval.rouge,
                                                                  settings.federation.seed, client)
        except Exception as err:  # noqa: BLE001 - e.g. the data is not on this machine: say so, go on
            why.append(f"client {client}: {type(err).__name__}: {err}")
    return cells, why


def table_yardsticks(runs: Sequence[dict[str, Any]]) -> tuple[dict[tuple[str, str], Cell], list[str]]:
    """(seed, client) -> yardstick for a table's complete runs (one run per seed: the seed fixes the splits)."""
    cells: dict[tuple[str, str], Cell] = {}
    why: list[str] = []
    seen: set[str] = set()
    for run in runs:
        seed = str(run["seed"])
        if run["status"] != "completed" or seed in seen:
            continue
        seen.add(seed)
        got, reasons = run_yardsticks(run)
        cells.update({(seed, c): cell for c, cell in got.items()})
        why += [f"seed {seed}, {r}" for r in reasons if f"seed {seed}, {r}" not in why]
    return cells, why


def yardstick_by_client(cells: dict[tuple[str, str], Cell], key: str = "yardstick") -> dict[str, float]:
    """Each client's yardstick (or another ``key`` of the cells), mean over seeds."""
    clients = {c for _, c in cells}
    return {c: mean(finite(v.get(key) for (_, k), v in cells.items() if k == c)) for c in clients}


def table_untrained(runs: Sequence[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    """(seed, client) -> the untrained backbone's score record (``tools.untrained``, matched to the run's config by
    ``tools.results.collect``), for the seeds whose scores were computed."""
    cells: dict[tuple[str, str], Cell] = {}
    for run in runs:
        if run["status"] == "completed":
            for client, record in run.get("_untrained", {}).items():
                cells.setdefault((str(run["seed"]), client), record)
    return cells


def above_untrained(runs: Sequence[dict[str, Any]], strategy: str,
                    cells: dict[tuple[str, str], Cell]) -> tuple[int, int]:
    """(pairs whose score exceeds the untrained backbone's by > 2 SE of the difference, pairs with both scores
    and both standard errors). The SE of the difference is sqrt(SE^2 + SE_untrained^2), as if the two were
    independent: scored on the same examples they are positively correlated, so this overstates it."""
    above = total = 0
    for run in runs:
        if run["strategy"] != strategy or run["status"] != "completed":
            continue
        for client, record in run["_last_clients"].items():
            cell = cells.get((str(run["seed"]), client))
            score, se = finite([record.get("score")]), client_se(record, None)
            ref = finite([(cell or {}).get("score"), (cell or {}).get("score_se")])
            if not score or se is None or len(ref) < 2:
                continue
            total += 1
            above += score[0] - ref[0] > 2 * math.sqrt(se**2 + ref[1] ** 2)
    return above, total


def client_se(record: dict[str, Any], cell: Cell | None) -> float | None:
    """A client score's standard error: recorded, else binomial for accuracy, else None (unknown)."""
    recorded = finite([record.get("score_se")])
    if recorded:
        return recorded[0]
    metric = record.get("metric") or (cell or {}).get("metric")
    n = finite([record.get("test_n"), (cell or {}).get("test_n")])
    p = finite([record.get("score")])
    if metric == "accuracy" and n and n[0] > 0 and p:
        return math.sqrt(max(p[0] * (1 - p[0]), 0.0) / n[0])
    return None


def above_counts(runs: Sequence[dict[str, Any]], strategy: str,
                 cells: dict[tuple[str, str], Cell]) -> tuple[int, int, int]:
    """(pairs above the yardstick by > 2 SE, pairs with a score and a yardstick, pairs whose SE is unknown)."""
    above = total = unknown = 0
    for run in runs:
        if run["strategy"] != strategy or run["status"] != "completed":
            continue
        for client, record in run["_last_clients"].items():
            cell = cells.get((str(run["seed"]), client))
            score = finite([record.get("score")])
            if cell is None or not score:
                continue
            total += 1
            se = client_se(record, cell)
            if se is None:
                unknown += 1
            elif score[0] - cell["yardstick"] > 2 * se:
                above += 1
    return above, total, unknown


def _reasons(why: list[str], shown: int = 3) -> str:
    return "; ".join(why[:shown]) + (f"; and {len(why) - shown} more" if len(why) > shown else "")


def _seeds_range(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}–{hi}"


def render_yardstick(runs: Sequence[dict[str, Any]], strategies: list[str],
                     cells: dict[tuple[str, str], Cell], why: list[str],
                     untrained: dict[tuple[str, str], Cell] | None = None) -> list[str]:
    """The yardstick section of a table: per client, then per strategy how many pairs beat it beyond noise; with
    ``untrained`` scores (``table_untrained``), the same against the untrained backbone."""
    lines = ["**Yardstick** (no model, `tools.yardstick` on each client's test split rebuilt from the run's stored "
             "config): a client's yardstick is the better of always giving the answer most common in its "
             "training split (majority) and, for multiple choice, the expected accuracy of a uniform guess.", ""]
    if not cells:
        return [*lines, f"The yardstick could not be computed: {_reasons(why) if why else 'no complete run'}.", "",
                *_render_untrained(runs, strategies, untrained or {})]
    clients = in_order({c for _, c in cells})
    seeds = sorted({s for s, _ in cells})
    lines += ["| client | task | metric | test n | majority answer | uniform guess | yardstick |",
              "|---|---|---|---|---|---|---|"]
    for c in clients:
        mine = [cells[(s, c)] for s in seeds if (s, c) in cells]
        uniform = finite(v["uniform"] for v in mine)
        lines.append(f"| {c} | {', '.join(sorted({v['task'] for v in mine}))} | "
                     f"{'/'.join(sorted({v['metric'] for v in mine}))} | "
                     f"{_seeds_range([v['test_n'] for v in mine])} | {fmt(mean([v['majority'] for v in mine]))} | "
                     f"{fmt(mean(uniform))} | {fmt(mean([v['yardstick'] for v in mine]))} |")
    note = f" (mean over seeds {', '.join(seeds)})" if len(seeds) > 1 else ""
    lines += ["", f"Mean yardstick over clients{note}: **{fmt(mean([v['yardstick'] for v in cells.values()]))}**."]
    if why:
        lines.append(f"Not computed for: {_reasons(why)}.")
    lines += ["", "Clients above the yardstick by more than two standard errors (score − yardstick > 2 SE; SE: the "
              "recorded standard error of the client's score over its test examples, else √(p(1−p)/n) for "
              "accuracy):", ""]
    for s in strategies:
        above, total, unknown = above_counts(runs, s, cells)
        if not total:
            continue
        name = f"**{s}**" if s == "fedamole" else s
        tail = f"; SE unknown for {unknown} of them (not counted as above)" if unknown else ""
        lines.append(f"- {name}: {above} of {total} (client, seed) pairs{tail}")
    return [*lines, "", *_render_untrained(runs, strategies, untrained or {})]


def _render_untrained(runs: Sequence[dict[str, Any]], strategies: list[str],
                      cells: dict[tuple[str, str], Cell]) -> list[str]:
    if not cells:
        return []
    seeds = sorted({s for s, _ in cells})
    per_client = yardstick_by_client(cells, "score")
    clients = in_order(per_client)
    lines = [f"**Untrained model** (`tools.untrained`: the frozen backbone with no adapter, on the same test examples "
             f"and evaluation settings; seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}): mean over clients "
             f"**{fmt(mean(list(per_client.values())))}** "
             f"({'; '.join(f'client {c} {fmt(per_client[c])}' for c in clients)}).", "",
             "Clients above the untrained model by more than two standard errors of the difference "
             "(√(SE² + SE_untrained²), which overstates a paired difference's):", ""]
    for s in strategies:
        above, total = above_untrained(runs, s, cells)
        if total:
            lines.append(f"- {f'**{s}**' if s == 'fedamole' else s}: {above} of {total} (client, seed) pairs")
    return [*lines, ""]
