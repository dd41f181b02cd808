"""Skip, resume and chunk planning for the experiment runner: which rounds a run still needs, whether its checkpoint
matches the command, how many rounds the next simulation call may run within ``experiment.time_limit_s``.

Chunks. ``run(resume=dir)`` takes its settings from the checkpoint, so a run of ``num_rounds=k`` is continued by
rewriting ``federation.num_rounds`` (and the metrics header) in the checkpoint before resuming; the round loop
is deterministic given the checkpoint, so the chunks end where one uninterrupted run ends. With
``experiment.time_limit_s=T`` a call starts no chunk it expects to end after T seconds from the runner's start
(estimated from the run's round times and the start-up overhead seen so far; a run with no estimate yet starts
with one round), leaves the rest ``incomplete`` and exits with code 3: run the same command again to go on.
Every strategy splits: what local-only and FDLoRA clients keep to themselves is on disk, keyed by the run id the
checkpoint holds (``amole.site.folder``), so a resumed chunk finds it.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from amole.config import Settings
from server_app import checkpoint
from tools.config_keys import significant

EXPERIMENT_FILE = "experiment.json"
# Keys a resumed run takes from the command rather than from its checkpoint: where things are on this machine,
# how long to wait, how many rounds in all. Any other difference is an error (the run would mix two configs).
OPERATIONAL = {
    "federation": ("num_rounds", "runs_dir", "name", "reply_timeout", "query_timeout", "wait_for_nodes",
                   "site_dir"),
    "scenario": ("local_path", "local_dir", "cache_dir"),
    "model": ("cache_dir",),
}


# ------------------------------------------------------------------------------------------------ resume


def config_mismatch(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys whose value differs between a checkpoint's settings and the command's, operational keys aside."""
    a, b = significant(saved, OPERATIONAL), significant(wanted, OPERATIONAL)
    diff = []
    for section in sorted(set(a) | set(b)):
        was, now = a.get(section, {}), b.get(section, {})
        diff += [f"{section}.{key}: {was.get(key)!r} in the run, {now.get(key)!r} now"
                 for key in sorted(set(was) | set(now)) if was.get(key) != now.get(key)]
    return diff


def retarget_checkpoint(run_dir: Path, settings: Settings, num_rounds: int) -> None:
    """Before a resume: the checkpoint's operational keys follow the command, and it plans ``num_rounds``."""
    state = checkpoint.load(run_dir)
    saved = state.settings
    wanted = settings.to_dict()
    for section, keys in OPERATIONAL.items():
        for key in keys:
            saved[section][key] = wanted[section][key]
    saved["federation"]["num_rounds"] = num_rounds
    saved["federation"]["name"] = run_dir.name
    header = state.metrics.setdefault("run", {})
    header["num_rounds"] = num_rounds
    header["config"] = copy.deepcopy(saved)
    checkpoint.save(state, run_dir)


def rounds_done(run_dir: Path) -> tuple[int, dict[str, Any] | None]:
    """(rounds in the run's checkpoint, its settings); (0, None) when it has none yet."""
    if not checkpoint.exists(run_dir):
        return 0, None
    state = checkpoint.load(run_dir)
    return int(state.round), state.settings


def metrics_rounds(run_dir: Path) -> list[dict]:
    """The rounds of the run's metrics.json; empty when it is missing or half-written."""
    path = run_dir / "metrics.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("rounds", []))
    except (OSError, ValueError):
        return []


# ------------------------------------------------------------------------------------------------ time limit


def estimate(record: dict[str, Any], rounds: list[dict], prior: dict[str, float],
             runs_dir: Path | None = None) -> tuple[float | None, float | None]:
    """(seconds per round, start-up seconds per simulation), the largest seen: from this run's history, else
    from ``prior`` (the runs of this process), else from the other runs in ``runs_dir``, which then fill
    ``prior`` (None when nothing ran yet)."""
    secs = [float(r["seconds"]) for r in rounds if "seconds" in r]
    overheads = _overheads(record)
    if not secs and "round" not in prior and runs_dir is not None:
        for path in Path(runs_dir).glob(f"*/{EXPERIMENT_FILE}"):  # a previous call's runs: a prior
            try:
                other = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            seen = [float(r["seconds"]) for r in metrics_rounds(path.parent) if "seconds" in r]
            if seen:
                prior["round"] = max(prior.get("round", 0.0), max(seen))
            for o in _overheads(other):
                prior["overhead"] = max(prior.get("overhead", 0.0), o)
    per_round = max(secs) if secs else prior.get("round")
    overhead = max(overheads) if overheads else prior.get("overhead")
    return per_round, overhead


def _overheads(record: dict[str, Any]) -> list[float]:
    return [c["wall_s"] - c.get("round_seconds", 0.0) for c in record.get("calls", []) if c.get("status") != "failed"]


def note_call(prior: dict[str, float], round_secs: list[float], wall: float, failed: bool) -> None:
    """After a simulation call: its round times (and, if it succeeded, its start-up time) raise the prior."""
    if round_secs:
        prior["round"] = max(prior.get("round", 0.0), max(round_secs))
        if not failed:
            prior["overhead"] = max(prior.get("overhead", 0.0), wall - sum(round_secs))


def plan_step(*, planned: int, done: int, opts: dict[str, Any], per_round: float | None,
              overhead: float | None, elapsed: float) -> tuple[int, str]:
    """(rounds the next simulation call runs, why none fits): 0 rounds when the time limit leaves no room.

    Every strategy resumes exactly (the server's state is checkpointed, what clients keep is on their disk), so
    any run may be cut after any round.
    """
    step = planned - done
    if opts.get("rounds_per_call"):
        step = min(step, int(opts["rounds_per_call"]))
    limit = opts.get("time_limit_s")
    if not limit:
        return step, ""
    left = float(limit) - elapsed
    step = min(step, 1) if per_round is None else min(step, math.floor((left - (overhead or 0.0)) / per_round))
    if step >= 1:
        return step, ""
    need = (overhead or 0.0) + per_round if per_round else math.nan
    return step, f"time limit: {left:.0f} s left of {float(limit):.0f}, a round needs about {need:.0f} s"
