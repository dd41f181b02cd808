"""Experiment runner: a Hydra multirun over strategy x scenario x seed, each job one in-process simulation.

    python -m server_app.experiment -m strategy=fedamole,fedit_ft,local scenario=bigbench_tasks seed=0,1,2
    python -m server_app.experiment -m budget=cpu_small strategy=fedamole,fedit scenario=bigbench_tasks,snli_dir0.1 \\
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

Peak memory is sampled every 0.5 s with psutil over this process and all its descendants, which are the Ray
head (GCS, raylet) and the client workers: ``peak_total_mb`` is the largest sum of their PSS (proportional set
size: shared pages counted once), ``peak_client_mb`` the largest RSS of one Ray worker process (one simulated
client's model and training), ``peak_server_mb`` this process's RSS. Where ``nvidia-smi`` exists, ``peak_gpu_mb``
is the largest memory used on the GPUs as it reports it (every process on them, sampled every 2 s).

Chunks. ``run(resume=dir)`` takes its settings from the checkpoint, so a run of ``num_rounds=k`` is continued by
rewriting ``federation.num_rounds`` (and the metrics header) in the checkpoint before resuming; the round loop
is deterministic given the checkpoint, so the chunks end where one uninterrupted run ends. With
``experiment.time_limit_s=T`` a call starts no chunk it expects to end after T seconds from the runner's start
(estimated from the run's round times and the start-up overhead seen so far; a run with no estimate yet starts
with one round), leaves the rest ``incomplete`` and exits with code 3: run the same command again to go on.
The local-only baseline keeps its adapters inside the simulated clients, which a new simulation cannot restore:
it is never split, and a local run found unfinished is started again from round 0.

Exit code: 0 when every run is complete, 1 when any failed, 3 when some were left for a later call.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hydra
import psutil
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from amole.compose import CONF_DIR, GROUPS, settings_from_cfg
from amole.config import Settings
from client_app.app import app as client_app
from server_app import checkpoint
from server_app.federation import run

DEFAULT_RUNS_DIR = "runs/experiments"
EXPERIMENT_FILE = "experiment.json"
LOG_FILE = "experiment.log"
BASE_COMMAND = "python -m server_app.experiment"
# Keys a resumed run takes from the command rather than from its checkpoint: where things are on this machine,
# how long to wait, how many rounds in all. Any other difference is an error (the run would mix two configs).
OPERATIONAL = {
    "federation": ("num_rounds", "runs_dir", "name", "reply_timeout", "query_timeout", "wait_for_nodes"),
    "scenario": ("local_path", "local_dir", "cache_dir"),
    "model": ("cache_dir",),
}
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


# ------------------------------------------------------------------------------------------------ memory


class MemorySampler:
    """Peak memory of this process and all its descendants (Ray head and client workers), sampled in a thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak = {"peak_total_mb": 0.0, "peak_client_mb": 0.0, "peak_server_mb": 0.0}
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at its last sample (processes that end keep theirs)
        ct = psutil.Process().cpu_times()
        self._cpu_before = ct.user + ct.system  # this process's CPU time before the simulation
        self.gpu = shutil.which("nvidia-smi")
        self.gpu_baseline_mb = self._gpu_used() if self.gpu else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            self.sample(gpu=n % 4 == 0)
            n += 1

    def sample(self, gpu: bool = True) -> None:
        me = psutil.Process()
        try:
            procs = [me, *me.children(recursive=True)]
        except psutil.Error:
            procs = [me]
        total, workers, others = 0, [], []
        for p in procs:
            try:
                info = p.memory_full_info()
                total += getattr(info, "pss", info.rss)
                ct = p.cpu_times()
                self._cpu[p.pid] = ct.user + ct.system
                if p.pid == me.pid:
                    self._max("peak_server_mb", info.rss / 1e6)
                elif (p.name() or "").startswith("ray::") or " ".join(p.cmdline()[:1]).startswith("ray::"):
                    workers.append(info.rss)
                else:
                    others.append(info.rss)
            except psutil.Error:  # gone, zombie or not ours to read
                continue
        self._max("peak_total_mb", total / 1e6)
        self._max("peak_client_mb", max(workers or others or [0]) / 1e6)
        if gpu and self.gpu:
            used = self._gpu_used()
            if used is not None:
                self._max("peak_gpu_mb", used)

    def _max(self, key: str, value: float) -> None:
        self.peak[key] = max(self.peak.get(key, 0.0), round(value, 1))

    def _gpu_used(self) -> float | None:
        try:
            out = subprocess.run([self.gpu or "nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            return float(sum(float(x) for x in out.split()))  # MiB as nvidia-smi reports, summed over GPUs
        except (OSError, subprocess.SubprocessError, ValueError):
            return None

    def result(self) -> dict[str, float]:
        out = dict(self.peak)
        # CPU seconds of the runner (this call only) and of every descendant seen: a load-independent cost.
        out["cpu_s"] = round(sum(self._cpu.values()) - self._cpu_before, 1)
        if self.gpu_baseline_mb is not None:
            out["gpu_baseline_mb"] = self.gpu_baseline_mb
        return out


def host_info() -> dict[str, Any]:
    info: dict[str, Any] = {"host": platform.node(), "cpus": os.cpu_count(),
                            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1), "gpus": []}
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=10, check=True).stdout
            info["gpus"] = [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    return info


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
    return f"{settings.scenario.name}-{settings.federation.strategy}-s{settings.federation.seed}"


def experiment_options(cfg: DictConfig) -> dict[str, Any]:
    opts = {"rounds_per_call": None, "time_limit_s": None, "client_num_cpus": 1, "client_num_gpus": 0.0}
    if cfg.get("experiment") is not None:
        opts.update(OmegaConf.to_container(cfg.experiment, resolve=True))  # type: ignore[arg-type]
    return opts


def config_mismatch(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """Keys whose value differs between a checkpoint's settings and the command's, operational keys aside."""
    diff = []
    for section in sorted(set(saved) | set(wanted)):
        a, b = saved.get(section) or {}, wanted.get(section) or {}
        for key in sorted(set(a) | set(b)):
            if key in OPERATIONAL.get(section, ()):
                continue
            if _norm(a.get(key)) != _norm(b.get(key)):
                diff.append(f"{section}.{key}: {a.get(key)!r} in the run, {b.get(key)!r} now")
    return diff


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, tuple | list) else value


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


# ------------------------------------------------------------------------------------------------ one simulation


def simulate(settings: Settings, runs_dir: Path, resume: Path | None, opts: dict[str, Any],
             log_path: Path) -> tuple[Any, str | None, dict[str, float], float]:
    """One run_simulation of ``run``: (final state or None, the error's traceback, resources, wall seconds)."""
    box: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            box["state"] = run(grid, settings, runs_dir=runs_dir, resume=resume)
        except BaseException:
            box["error"] = traceback.format_exc()
            raise

    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger("amole"), logging.getLogger("flwr")]
    for lg in loggers:
        lg.addHandler(handler)
    start = time.perf_counter()
    try:
        with MemorySampler() as sampler:
            try:
                run_simulation(server_app=server, client_app=client_app,
                               num_supernodes=settings.federation.num_clients,
                               backend_config={"client_resources": {"num_cpus": opts["client_num_cpus"],
                                                                    "num_gpus": opts["client_num_gpus"]}})
            except (Exception, SystemExit):
                box.setdefault("error", traceback.format_exc())
        if "state" not in box and "error" not in box:
            box["error"] = "the ServerApp ended without a final state (no exception reached the runner)"
        if "error" in box:
            logging.getLogger("amole").error("run failed:\n%s", box["error"])
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
    return box.get("state"), box.get("error"), sampler.result(), time.perf_counter() - start


# ------------------------------------------------------------------------------------------------ one job


def rounds_done(run_dir: Path) -> tuple[int, dict[str, Any] | None]:
    if not (run_dir / checkpoint.CHECKPOINT).is_file():
        return 0, None
    state = checkpoint.load(run_dir)
    return int(state.round), state.settings


def _estimate(record: dict[str, Any], metrics_rounds: list[dict],
              runs_dir: Path | None = None) -> tuple[float | None, float | None]:
    """(seconds per round, start-up seconds per simulation), the largest seen: from this run's history, else
    from the runs of this process, else from the other runs in ``runs_dir`` (None when nothing ran yet)."""
    secs = [float(r["seconds"]) for r in metrics_rounds if "seconds" in r]
    overheads = _overheads(record)
    if not secs and "round" not in _ROUND_ESTIMATE and runs_dir is not None:
        for path in Path(runs_dir).glob(f"*/{EXPERIMENT_FILE}"):  # a previous call's runs: a prior
            try:
                other = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            rounds = [float(r["seconds"]) for r in _metrics_rounds(path.parent) if "seconds" in r]
            if rounds:
                _ROUND_ESTIMATE["round"] = max(_ROUND_ESTIMATE.get("round", 0.0), max(rounds))
            for o in _overheads(other):
                _ROUND_ESTIMATE["overhead"] = max(_ROUND_ESTIMATE.get("overhead", 0.0), o)
    per_round = max(secs) if secs else _ROUND_ESTIMATE.get("round")
    overhead = max(overheads) if overheads else _ROUND_ESTIMATE.get("overhead")
    return per_round, overhead


def _overheads(record: dict[str, Any]) -> list[float]:
    return [c["wall_s"] - c.get("round_seconds", 0.0) for c in record.get("calls", []) if c.get("status") != "failed"]


def _metrics_rounds(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.json"
    try:
        return list(json.loads(path.read_text(encoding="utf-8")).get("rounds", []))
    except (OSError, ValueError):
        return []


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
    tmp = run_dir / (EXPERIMENT_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, run_dir / EXPERIMENT_FILE)


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
            return _fail(tag, run_dir, record, "its run directory holds a run of another config ("
                         + "; ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
                         + "): move it away or choose another federation.runs_dir")
    if done >= planned:
        print(f"{tag} {fed.name}: skipped, complete ({done}/{planned} rounds) in {run_dir}", flush=True)
        record.update(status="completed", rounds_done=done)
        _write_record(run_dir, record)
        return _finish(JobResult(fed.name, "skipped", run_dir))
    splittable = fed.communicate
    if done > 0 and not splittable:
        print(f"{tag} {fed.name}: restarting from round 0 ({done}/{planned} rounds were done): the local-only "
              f"baseline keeps its adapters in the clients, which a resume cannot restore", flush=True)
        for child in run_dir.iterdir():
            if child.name != EXPERIMENT_FILE:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        done = 0
        record["restarted"] = record.get("restarted", 0) + 1

    while done < planned:
        per_round, overhead = _estimate(record, _metrics_rounds(run_dir) if done else [],
                                        runs_dir if opts.get("time_limit_s") else None)
        step = planned - done
        if splittable and opts.get("rounds_per_call"):
            step = min(step, int(opts["rounds_per_call"]))
        limit = opts.get("time_limit_s")
        if limit:
            left = float(limit) - (_now() - _STARTED)
            if per_round is None:
                step = min(step, 1) if splittable else step
            else:
                fit = math.floor((left - (overhead or 0.0)) / per_round)
                if splittable:
                    step = min(step, fit)
                elif fit < step:
                    step = 0
            if step < 1:
                need = (overhead or 0.0) + per_round * (1 if splittable else planned) if per_round else math.nan
                msg = (f"time limit: {left:.0f} s left of {float(limit):.0f}, "
                       f"{'a round' if splittable else 'the whole run'} needs about {need:.0f} s")
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
        round_secs = [float(r["seconds"]) for r in _metrics_rounds(run_dir) if r.get("round", 0) > done]
        call = {"started": started, "wall_s": round(wall, 1), "rounds_before": done, "rounds_after": after,
                "round_seconds": round(sum(round_secs), 1), "resources": resources,
                "status": "failed" if error else "ok"}
        record["calls"].append(call)
        if round_secs:
            _ROUND_ESTIMATE["round"] = max(_ROUND_ESTIMATE.get("round", 0.0), max(round_secs))
            if not error:
                _ROUND_ESTIMATE["overhead"] = max(_ROUND_ESTIMATE.get("overhead", 0.0), wall - sum(round_secs))
        if error or state is None or after < target:
            last = (error or "").strip().splitlines()[-1:] or ["no final state"]
            return _fail(tag, run_dir, record, f"{last[0]} (after {after}/{planned} rounds)", rounds=after)
        done = after
        print(f"{tag} {fed.name}: {done}/{planned} rounds done ({wall:.0f} s, peak memory "
              f"{resources.get('peak_total_mb', 0):.0f} MB, {resources.get('cpu_s', 0):.0f} CPU-s)", flush=True)
        record.update(status="running" if done < planned else "completed", rounds_done=done)
        _write_record(run_dir, record)
    print(f"{tag} {fed.name}: completed ({planned} rounds) in {run_dir}", flush=True)
    return _finish(JobResult(fed.name, "completed", run_dir))


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
    logger = logging.getLogger("amole")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    print(f"$ {_COMMAND}" + (f"  ({_TOTAL_JOBS} runs)" if _TOTAL_JOBS else ""), flush=True)
    sys.argv = [sys.argv[0], *hydra_args(args)]
    main()
    return summary(_RESULTS)


if __name__ == "__main__":
    sys.exit(cli())
