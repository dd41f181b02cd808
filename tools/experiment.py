"""Experiment runner: a Hydra multirun over strategy x scenario x seed, each job one in-process simulation.

    python -m tools.experiment -m strategy=fedamole,fedit_ft,local scenario=bigbench_tasks seed=0,1,2
    python -m tools.experiment -m budget=cpu_small strategy=fedamole,fedit scenario=bigbench_tasks,snli_dir0.1 \\
        ++scenario.local_path=/data/snli seed=0

Any override of ``conf/`` goes on the command line; ``seed`` is the run seed (``federation.seed`` follows it), and
``++`` sets a key that only some of the swept presets have (the SNLI path in a sweep that includes BIG-bench).
Every job composes ``conf/`` with its overrides, names its run ``<scenario>-<strategy>-s<seed>`` and runs it
under ``federation.runs_dir`` (default here ``runs/experiments``; ``federation.name`` is ignored). A job

* skips a run whose checkpoint already holds all planned rounds, and resumes one that stopped part-way (its
  config must match the command's, apart from the keys in ``OPERATIONAL``, which follow the command);
* runs the federation with ``flwr.simulation.run_simulation`` and ``federation.num_clients`` SuperNodes, in
  chunks when ``experiment.rounds_per_call`` or ``experiment.time_limit_s`` is set (see below);
* writes ``experiment.json`` beside the run's own files: the command line, the Hydra choices (budget ...),
  planned and completed rounds, status, and for every simulation call its wall time and peak memory;
  ``experiment.log`` gets the server's log and, if the run failed, the traceback.

Peak memory and CPU time are sampled over the runner and all its descendants (``tools.resources``); the
chunk and time-limit planning is ``tools.chunking``.

Exit code: 0 when every run is complete, 1 when any failed, 3 when some were left for a later call.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
import psutil
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from amole.backbones.loader import compute_dtype_here
from amole.compose import CONF_DIR, GROUPS, settings_from_cfg
from amole.config import Settings
from amole.util.atomic import write_text
from server_app.logs import setup_logging
from tools.archive import archive_run, archived_rounds
from tools.chunking import (
    EXPERIMENT_FILE,
    config_mismatch,
    estimate,
    metrics_rounds,
    note_call,
    plan_step,
    retarget_checkpoint,
    rounds_done,
)
from tools.resources import host_info
from tools.simulation import simulate

DEFAULT_RUNS_DIR = "runs/experiments"
LOG_FILE = "experiment.log"
BASE_COMMAND = "python -m tools.experiment"
EXIT_OK, EXIT_FAILED, EXIT_INCOMPLETE = 0, 1, 3

log = logging.getLogger("amole.experiment")
_STARTED = psutil.Process().create_time()  # experiment.time_limit_s counts from the process start (epoch s)
_RESULTS: list[JobResult] = []  # every job of this process, for the summary and the exit code
_TOTAL_JOBS: int | None = None  # jobs in this sweep, counted from the command line before Hydra starts
_COMMAND = BASE_COMMAND  # the command as typed (without the Hydra settings the runner adds)
_ROUND_ESTIMATE: dict[str, float] = {}  # largest round / start-up seconds seen in this process: a prior
_now = time.time  # the clock of the time limit (a test replaces it)


@dataclass
class JobResult:
    name: str
    status: str  # completed | skipped | incomplete | failed
    run_dir: Path
    message: str = ""


# ------------------------------------------------------------------------------------------------ config


def compose_job(overrides: Sequence[str]) -> tuple[DictConfig, dict[str, str]]:
    """The config one job gets (without the ``hydra`` node) and its Hydra choices, via Hydra's compose API."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    choices = {g: str(cfg.hydra.runtime.choices.get(g)) for g in GROUPS}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def run_name(settings: Settings) -> str:
    """scenario-strategy-seed, plus what else changes the numbers: a protocol, a backbone compute dtype."""
    protocol = "" if settings.protocol.name == "default" else f"-{settings.protocol.name}"
    compute = "" if settings.model.compute_dtype is None else f"-{settings.model.compute_dtype}"
    return f"{settings.scenario.name}-{settings.federation.strategy}-s{settings.federation.seed}{protocol}{compute}"


def experiment_options(cfg: DictConfig) -> dict[str, Any]:
    opts = {"rounds_per_call": None, "time_limit_s": None, "client_num_cpus": 1, "client_num_gpus": 0.0,
            "archive_dir": None}
    if cfg.get("experiment") is not None:
        opts.update(OmegaConf.to_container(cfg.experiment, resolve=True))  # type: ignore[arg-type]
    return opts


# ------------------------------------------------------------------------------------------------ one job


def _write_record(run_dir: Path, record: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    record["updated"] = datetime.now(UTC).isoformat(timespec="seconds")
    peaks: dict[str, float] = {}
    for call in record.get("calls", []):
        for k, v in call.get("resources", {}).items():
            if k.startswith("peak_"):
                peaks[k] = max(peaks.get(k, 0.0), v)
    record["peak_memory"] = peaks
    record["cpu_s"] = round(sum(c.get("resources", {}).get("cpu_s", 0.0) for c in record.get("calls", [])), 1)
    write_text(run_dir / EXPERIMENT_FILE, json.dumps(record, indent=1) + "\n")


def run_job(cfg: DictConfig, *, index: int = 1, total: int | None = None, command: str = BASE_COMMAND,
            job_overrides: Sequence[str] = (), choices: dict[str, str] | None = None) -> JobResult:
    """Skip, resume or start one run; never raises for a failed run (the result says it), so a sweep goes on."""
    tag = f"[{index}/{total or '?'}]"
    try:
        return _run_job(cfg, tag, command, job_overrides, choices)
    except Exception as err:  # a bug or a disk error outside the simulation: still name the job and go on
        traceback.print_exc()
        print(f"{tag} FAILED: job {list(job_overrides)}: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        return _finish(JobResult(f"job {index}", "failed", Path("."), f"{type(err).__name__}: {err}"))


def _run_job(cfg: DictConfig, tag: str, command: str, job_overrides: Sequence[str],
             choices: dict[str, str] | None) -> JobResult:
    try:
        settings = settings_from_cfg(cfg)
        # Every simulated client runs on this host: decide `auto` here, once, so the name and tables say it.
        settings.model.compute_dtype = compute_dtype_here(settings.model)
        opts = experiment_options(cfg)
    except Exception as err:  # a config error: name the job, go on with the next
        print(f"{tag} FAILED: invalid config for overrides {list(job_overrides)}: {err}", flush=True)
        return _finish(JobResult(f"job {tag}", "failed", Path("."), str(err)))
    fed = settings.federation
    fed.name = run_name(settings)
    runs_dir = Path(fed.runs_dir)
    run_dir = runs_dir / fed.name
    planned = fed.num_rounds
    record_path = run_dir / EXPERIMENT_FILE
    record: dict[str, Any] = {}
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except ValueError:
            record = {}
    record.update({
        "name": fed.name, "command": command,
        "job_command": " ".join([BASE_COMMAND, shlex.join(list(job_overrides))]).strip(),
        "overrides": list(job_overrides), "choices": choices or record.get("choices", {}),
        "budget": (choices or {}).get("budget", record.get("budget")), "planned_rounds": planned,
        "options": opts, "host": host_info(),
        "memory_note": "peak_total_mb: largest sum of PSS over the runner and all its descendants (Ray head, "
                       "client workers); peak_client_mb: largest RSS of one Ray worker; peak_server_mb: the "
                       "runner's RSS; peak_gpu_mb: GPU memory used (nvidia-smi, all processes); cpu_s: CPU seconds "
                       "of the runner and all its descendants",
    })
    record.setdefault("calls", [])
    record.pop("error", None)  # from an earlier call that failed

    try:
        done, saved = rounds_done(run_dir)
    except Exception as err:
        return _fail(tag, run_dir, record, f"cannot read its checkpoint: {err}")
    if saved is not None:
        diff = config_mismatch(saved, settings.to_dict())
        if diff:
            return _fail(tag, run_dir, record, _other_config("its run directory", diff, "federation.runs_dir"))
    archive = Path(opts["archive_dir"]) if opts.get("archive_dir") else None
    if archive is not None and done < planned:
        kept, diff = archived_rounds(archive, fed.name, settings.to_dict())
        if kept >= planned and not diff:
            print(f"{tag} {fed.name}: skipped, complete ({kept}/{planned} rounds) in the archive {archive}",
                  flush=True)
            return _finish(JobResult(fed.name, "skipped", archive / fed.name))
        if kept and diff:
            return _fail(tag, run_dir, record,
                         _other_config(f"the archive {archive}", diff, "experiment.archive_dir", fed.name))
    if done >= planned:
        # A finished record is left as it is, so skipping a run never rewrites its archived copy.
        if (record.get("status"), record.get("rounds_done")) != ("completed", done):
            record.update(status="completed", rounds_done=done)
            _write_record(run_dir, record)
        if archive is not None:
            archive_run(run_dir, archive)
        print(f"{tag} {fed.name}: skipped, complete ({done}/{planned} rounds) in {run_dir}", flush=True)
        return _finish(JobResult(fed.name, "skipped", run_dir))
    while done < planned:
        per_round, overhead = estimate(record, metrics_rounds(run_dir) if done else [], _ROUND_ESTIMATE,
                                       runs_dir if opts.get("time_limit_s") else None)
        step, msg = plan_step(planned=planned, done=done, opts=opts, per_round=per_round,
                              overhead=overhead, elapsed=_now() - _STARTED)
        if step < 1:
            print(f"{tag} {fed.name}: incomplete ({done}/{planned} rounds), {msg}; run the same command "
                  f"again to continue", flush=True)
            record.update(status="incomplete", rounds_done=done)
            _write_record(run_dir, record)
            return _finish(JobResult(fed.name, "incomplete", run_dir, msg))
        target = done + step
        verb = f"resuming after round {done}" if done else "starting"
        print(f"{tag} {fed.name}: {verb}, rounds {done + 1}-{target} of {planned} -> {run_dir}", flush=True)
        chunk = copy.deepcopy(settings)
        chunk.federation.num_rounds = target
        if done:
            retarget_checkpoint(run_dir, settings, target)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        state, error, resources, wall = simulate(chunk, runs_dir, run_dir if done else None, opts, run_dir / LOG_FILE)
        after, _ = rounds_done(run_dir)
        round_secs = [float(r["seconds"]) for r in metrics_rounds(run_dir) if r.get("round", 0) > done]
        call = {"started": started, "wall_s": round(wall, 1), "rounds_before": done, "rounds_after": after,
                "round_seconds": round(sum(round_secs), 1), "resources": resources,
                "status": "failed" if error else "ok"}
        record["calls"].append(call)
        note_call(_ROUND_ESTIMATE, round_secs, wall, bool(error))
        if error or state is None or after < target:
            last = (error or "").strip().splitlines()[-1:] or ["no final state"]
            return _fail(tag, run_dir, record, f"{last[0]} (after {after}/{planned} rounds)", rounds=after)
        done = after
        print(f"{tag} {fed.name}: {done}/{planned} rounds done ({wall:.0f} s, peak memory "
              f"{resources.get('peak_total_mb', 0):.0f} MB, {resources.get('cpu_s', 0):.0f} CPU-s)", flush=True)
        record.update(status="running" if done < planned else "completed", rounds_done=done)
        _write_record(run_dir, record)
    if archive is not None:
        print(f"{tag} {fed.name}: archived in {archive_run(run_dir, archive)}", flush=True)
    print(f"{tag} {fed.name}: completed ({planned} rounds) in {run_dir}", flush=True)
    return _finish(JobResult(fed.name, "completed", run_dir))


def _other_config(where: str, diff: list[str], option: str, name: str = "") -> str:
    """The refusal when ``where`` already holds a run (``name``) of another config: the first differences, and
    how to keep both."""
    shown = "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
    run = f"a run {name}" if name else "a run"
    return f"{where} holds {run} of another config ({shown}): move it away or choose another {option}"


def _fail(tag: str, run_dir: Path, record: dict[str, Any], why: str, rounds: int | None = None) -> JobResult:
    name = record.get("name", run_dir.name)
    logs = run_dir / LOG_FILE
    print(f"{tag} FAILED: run {name}: {why}\n    logs: {logs if logs.is_file() else '(none written)'}; the "
          f"console output above has the clients' side. The sweep goes on; fix it and run the same command "
          f"again (completed runs are skipped, this one resumes from its last checkpoint).", file=sys.stderr,
          flush=True)
    record.update(status="failed", error=why)
    if rounds is not None:
        record["rounds_done"] = rounds
    with contextlib.suppress(OSError):
        _write_record(run_dir, record)
    return _finish(JobResult(name, "failed", run_dir, why))


def _finish(result: JobResult) -> JobResult:
    _RESULTS.append(result)
    return result


def summary(results: Sequence[JobResult]) -> int:
    """Print one line per job and return the exit code."""
    if not results:
        return EXIT_OK
    counts = {s: sum(r.status == s for r in results) for s in ("completed", "skipped", "incomplete", "failed")}
    print("\nexperiment summary: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n), flush=True)
    for r in results:
        print(f"  {r.status:10s} {r.name:40s} {r.run_dir}" + (f"  ({r.message})" if r.message else ""), flush=True)
    if counts["failed"]:
        print(f"{counts['failed']} run(s) failed: see the FAILED lines above and each run's {LOG_FILE}",
              file=sys.stderr, flush=True)
        return EXIT_FAILED
    if counts["incomplete"]:
        print("some runs are incomplete (time limit): run the same command again to continue", flush=True)
        return EXIT_INCOMPLETE
    return EXIT_OK


def run_sweep(jobs: Sequence[Sequence[str]], command: str = BASE_COMMAND) -> list[JobResult]:
    """Run jobs given as override lists, without Hydra's launcher (tests, notebooks)."""
    results = []
    for i, overrides in enumerate(jobs, 1):
        overrides = list(overrides)
        if not any(o.startswith("federation.runs_dir=") for o in overrides):
            overrides.append(f"federation.runs_dir={DEFAULT_RUNS_DIR}")
        cfg, choices = compose_job(overrides)
        results.append(run_job(cfg, index=i, total=len(jobs), command=command, job_overrides=overrides,
                               choices=choices))
    return results


# ------------------------------------------------------------------------------------------------ Hydra entry


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    index = int(hc.job.num) + 1 if multirun else 1
    total = _TOTAL_JOBS if multirun else 1
    choices = {g: str(hc.runtime.choices.get(g)) for g in GROUPS}
    run_job(cfg, index=index, total=total, command=_COMMAND, job_overrides=list(hc.overrides.task), choices=choices)


def count_jobs(args: Sequence[str]) -> int | None:
    """How many jobs a multirun command line makes (None when a sweep cannot be counted here)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-") and "=" in a and not a.startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        n = 1
        for o in parsed:
            if o.is_sweep_override():
                n *= len(list(o.sweep_string_iterator()))
        return n
    except Exception:
        return None


def hydra_args(args: list[str]) -> list[str]:
    """The command line plus the runner's Hydra settings: no logging setup, outputs under the runs folder."""
    extra = []
    given = " ".join(args)
    if "federation.runs_dir=" not in given:
        extra.append(f"federation.runs_dir={DEFAULT_RUNS_DIR}")
    if "hydra/job_logging" not in given:
        extra.append("hydra/job_logging=none")
    if "hydra/hydra_logging" not in given:
        extra.append("hydra/hydra_logging=none")
    stamp = "${now:%Y%m%d-%H%M%S}"
    if "hydra.run.dir=" not in given:
        extra.append(f"hydra.run.dir=${{federation.runs_dir}}/.hydra/{stamp}")
    if "hydra.sweep.dir=" not in given:
        extra.append(f"hydra.sweep.dir=${{federation.runs_dir}}/.hydra/{stamp}")
    return args + extra


def cli(argv: list[str] | None = None) -> int:
    global _TOTAL_JOBS, _COMMAND
    args = list(sys.argv[1:] if argv is None else argv)
    _COMMAND = " ".join([BASE_COMMAND, shlex.join(args)]).strip()
    multirun = "-m" in args or "--multirun" in args
    _TOTAL_JOBS = count_jobs(args) if multirun else 1
    setup_logging()
    print(f"$ {_COMMAND}" + (f"  ({_TOTAL_JOBS} runs)" if _TOTAL_JOBS else ""), flush=True)
    sys.argv = [sys.argv[0], *hydra_args(args)]
    main()
    return summary(_RESULTS)


if __name__ == "__main__":
    sys.exit(cli())
