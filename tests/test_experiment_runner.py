"""The experiment runner (tools.experiment): a smoke run (2 strategies, 1 round, tiny model) with a rerun that
skips, chunks and resumes, time limits, termination, the archive, and which settings count in comparisons."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_results import CONFIG
from tools.results import collect


def test_runner_smoke_writes_run_dirs_and_skips_completed_runs(tmp_path: Path, capsys) -> None:
    """Two strategies x one seed, one round each, tiny model; a rerun skips both; results collects them."""
    from tools import experiment

    runs = tmp_path / "exp"
    jobs = [["model=tiny", "scenario=synthetic", "budget=smoke", f"strategy={s}", "federation.num_rounds=1",
             f"federation.runs_dir={runs}"] for s in ("fedamole", "local")]
    first = experiment.run_sweep(jobs, command="pytest sweep")
    assert [r.status for r in first] == ["completed", "completed"], [r.message for r in first]
    for name in ("synthetic-fedamole-s0", "synthetic-local-s0"):
        run_dir = runs / name
        names = {p.name for p in run_dir.iterdir()}
        assert {"metrics.json", "checkpoint.safetensors", "report.md", "experiment.json"} <= names
        record = json.loads((run_dir / "experiment.json").read_text())
        assert record["status"] == "completed" and record["budget"] == "smoke" and record["command"] == "pytest sweep"
        assert record["peak_memory"]["peak_total_mb"] > 0 and record["calls"][0]["rounds_after"] == 1
    records = {p: p.read_bytes() for p in runs.rglob("experiment.json")}
    second = experiment.run_sweep(jobs)
    assert [r.status for r in second] == ["skipped", "skipped"]
    assert {p: p.read_bytes() for p in runs.rglob("experiment.json")} == records  # skipping rewrites nothing
    assert "skipped, complete (1/1 rounds)" in capsys.readouterr().out
    assert experiment.summary(first + second) == experiment.EXIT_OK

    rows = collect(runs)
    assert {r["strategy"] for r in rows} == {"fedamole", "local"} and all(r["status"] == "completed" for r in rows)


# ------------------------------------------------------------------------------------------------ runner logic
# The chunking, skip, resume and failure paths of tools.experiment with `simulate` replaced by a fake that
# writes what the round loop writes (checkpoint + metrics.json), so they run in milliseconds.


def fake_simulator(calls: list, fail_at: int | None = None, round_seconds: float = 5.0, clock: list | None = None):
    import numpy as np
    import torch

    from server_app import checkpoint
    from server_app.checkpoint import ServerState

    def simulate(settings, runs_dir, resume, opts, log_path):
        run_dir = Path(resume) if resume else Path(runs_dir) / settings.federation.name
        if resume:
            state = checkpoint.load(run_dir)
            target = state.settings["federation"]["num_rounds"]  # run() keeps the checkpoint's settings
        else:
            state = ServerState(settings=settings.to_dict(), bank={"w": torch.zeros(2)}, clients=["0", "1"],
                                rng=np.random.default_rng(0))
            state.metrics = {"run": {"name": run_dir.name, "strategy": settings.federation.strategy,
                                     "scenario": settings.scenario.name, "num_rounds": settings.federation.num_rounds,
                                     "seed": settings.federation.seed, "config": settings.to_dict()}, "rounds": []}
            target = settings.federation.num_rounds
        calls.append((state.round, target, bool(resume)))
        wall = 2.0 + round_seconds * (target - state.round)
        if clock is not None:
            clock[0] += wall
        for n in range(state.round + 1, target + 1):
            if fail_at == n:
                return None, "Traceback ...\nRuntimeError: round failed", {"peak_total_mb": 1.0}, 1.0
            state.round = n
            state.metrics["rounds"].append({"round": n, "seconds": round_seconds, "clients": {
                "0": {"score": 0.1 * n, "bytes_up": 10, "bytes_down": 10}}})
            checkpoint.save(state, run_dir)
            (run_dir / "metrics.json").write_text(json.dumps(state.metrics))
        return state, None, {"peak_total_mb": 100.0, "peak_client_mb": 50.0}, wall

    return simulate


def _job(runs: Path, *extra: str, strategy: str = "fedamole"):
    from tools import experiment

    overrides = ["model=tiny", "scenario=synthetic", "budget=smoke", f"strategy={strategy}",
                 f"federation.runs_dir={runs}", *extra]
    cfg, choices = experiment.compose_job(overrides)
    return experiment.run_job(cfg, command="cmd", job_overrides=overrides, choices=choices)


def test_runner_chunks_resume_and_retarget_the_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from server_app import checkpoint
    from tools import experiment

    calls: list = []
    monkeypatch.setattr(experiment, "simulate", fake_simulator(calls))
    result = _job(tmp_path, "federation.num_rounds=5", "experiment.rounds_per_call=2", "seed=3")
    assert result.status == "completed" and result.name == "synthetic-fedamole-s3"
    assert calls == [(0, 2, False), (2, 4, True), (4, 5, True)]
    run_dir = tmp_path / "synthetic-fedamole-s3"
    state = checkpoint.load(run_dir)
    assert state.round == 5 and state.settings["federation"]["num_rounds"] == 5
    assert state.metrics["run"]["num_rounds"] == 5 and state.settings["federation"]["seed"] == 3
    record = json.loads((run_dir / "experiment.json").read_text())
    assert record["planned_rounds"] == 5 and [c["rounds_after"] for c in record["calls"]] == [2, 4, 5]

    # More rounds later: the same command with num_rounds=6 resumes; an equal one skips.
    calls.clear()
    assert _job(tmp_path, "federation.num_rounds=6", "seed=3").status == "completed" and calls == [(5, 6, True)]
    assert _job(tmp_path, "federation.num_rounds=6", "seed=3").status == "skipped"
    # Another config under the same name is an error, not a silent mix.
    failed = _job(tmp_path, "federation.num_rounds=7", "seed=3", "train.steps=9")
    assert failed.status == "failed" and "train.steps" in failed.message


def test_runner_time_limit_leaves_runs_incomplete_and_failures_are_reported(tmp_path: Path, monkeypatch,
                                                                          capsys) -> None:
    from tools import experiment

    calls: list = []
    clock = [1000.0]
    monkeypatch.setattr(experiment, "simulate", fake_simulator(calls, round_seconds=100.0, clock=clock))
    monkeypatch.setattr(experiment, "_ROUND_ESTIMATE", {})
    monkeypatch.setattr(experiment, "_now", lambda: clock[0])
    # 250 s left: no estimate yet -> one round (100 s + 2 s); then 148 s left fits one more, then none.
    monkeypatch.setattr(experiment, "_STARTED", 950.0)
    r = _job(tmp_path, "federation.num_rounds=4", "experiment.time_limit_s=300")
    assert r.status == "incomplete" and calls == [(0, 1, False), (1, 2, True)]
    assert experiment.summary([r]) == experiment.EXIT_INCOMPLETE
    # The local-only baseline splits like the others (its clients keep their adapters on disk). A new process has
    # no round times of its own: it takes them from the other runs in the runs folder, so with 46 s left it starts
    # nothing rather than a first round it cannot finish.
    monkeypatch.setattr(experiment, "_ROUND_ESTIMATE", {})
    r = _job(tmp_path, "federation.num_rounds=4", "experiment.time_limit_s=300", strategy="local")
    assert r.status == "incomplete" and "a round needs about 102 s" in r.message, r.message

    monkeypatch.setattr(experiment, "simulate", fake_simulator(calls, fail_at=2))
    r = _job(tmp_path / "f", "federation.num_rounds=3")
    assert r.status == "failed" and "RuntimeError: round failed" in r.message
    err = capsys.readouterr().err
    assert "FAILED: run synthetic-fedamole-s0" in err and "logs:" in err
    record = json.loads((tmp_path / "f" / "synthetic-fedamole-s0" / "experiment.json").read_text())
    assert record["status"] == "failed" and record["rounds_done"] == 1
    assert experiment.summary([r]) == experiment.EXIT_FAILED


def test_a_terminated_runner_stops_instead_of_going_on_to_the_next_run(tmp_path: Path, monkeypatch) -> None:
    """Flower turns SIGTERM into SystemExit(15) inside the simulation: that must end the sweep, not one run."""
    from amole.compose import compose
    from tools import simulation

    def terminated(**kwargs):
        raise SystemExit(15)

    monkeypatch.setattr(simulation, "run_simulation", terminated)
    settings = compose(["model=tiny", "scenario=synthetic", "budget=smoke"])
    opts = {"client_num_cpus": 1, "client_num_gpus": 0.0}
    with pytest.raises(SystemExit):
        simulation.simulate(settings, tmp_path, None, opts, tmp_path / "log.txt")
    monkeypatch.setattr(simulation, "run_simulation", lambda **kwargs: (_ for _ in ()).throw(SystemExit(1)))
    state, error, _, _ = simulation.simulate(settings, tmp_path, None, opts, tmp_path / "log2.txt")
    assert state is None and "SystemExit: 1" in error  # any other exit is this run's failure, reported


def test_archive_keeps_finished_runs_and_a_fresh_clone_skips_them(tmp_path: Path, monkeypatch) -> None:
    """experiment.archive_dir: a completed run's small files are copied there; a new runs folder (a fresh clone)
    skips what the archive holds complete, refuses another config under the same name, and results counts a run
    found in both places once."""
    from tools import experiment

    calls: list = []
    monkeypatch.setattr(experiment, "simulate", fake_simulator(calls))
    archive = tmp_path / "docs-runs"
    done = _job(tmp_path / "a", "federation.num_rounds=2", f"experiment.archive_dir={archive}")
    assert done.status == "completed" and len(calls) == 1
    kept = archive / "synthetic-fedamole-s0"
    assert {p.name for p in kept.iterdir()} == {"metrics.json", "experiment.json"}  # no checkpoint, no models
    assert json.loads((kept / "experiment.json").read_text())["status"] == "completed"

    calls.clear()
    fresh = _job(tmp_path / "b", "federation.num_rounds=2", f"experiment.archive_dir={archive}")
    assert fresh.status == "skipped" and calls == [] and fresh.run_dir == kept
    other = _job(tmp_path / "b", "federation.num_rounds=2", "train.steps=9", f"experiment.archive_dir={archive}")
    assert other.status == "failed" and "train.steps" in other.message and calls == []
    longer = _job(tmp_path / "b", "federation.num_rounds=3", f"experiment.archive_dir={archive}")
    assert longer.status == "completed" and calls == [(0, 3, False)]  # the archive holds 2 of 3 rounds: run it
    assert len(json.loads((kept / "metrics.json").read_text())["rounds"]) == 3

    rows = collect([tmp_path / "a", archive])
    assert len(rows) == 1 and rows[0]["rounds_done"] == 3


def test_a_null_setting_counts_as_absent_in_every_comparison() -> None:
    """A setting added later with a null default (as model.compute_dtype was) changes no resume check, no table
    grouping and no untrained-reference key; a real value or a changed one does, and ignored keys never do."""
    from tools.chunking import config_mismatch
    from tools.results import budget_fingerprint
    from tools.untrained import reference_key

    old = json.loads(json.dumps(CONFIG))
    new = json.loads(json.dumps(CONFIG))
    new["model"]["compute_dtype"] = None
    new["scenario"]["local_path"] = "/elsewhere/data.jsonl"  # where the data lies is a machine's, never compared
    bf16 = json.loads(json.dumps(new))
    bf16["model"]["compute_dtype"] = "bfloat16"
    assert config_mismatch(old, new) == []
    assert budget_fingerprint(old) == budget_fingerprint(new) != budget_fingerprint(bf16)
    assert reference_key(old) == reference_key(new) != reference_key(bf16)
    from amole.config import Settings
    assert "compute_dtype" not in CONFIG["model"] and Settings.from_dict(old).model.compute_dtype is None  # as it ran
    assert config_mismatch(old, bf16) == ["model.compute_dtype: None in the run, 'bfloat16' now"]
    tupled = json.loads(json.dumps(CONFIG))
    tupled["adapter"]["target_modules"], old["adapter"]["target_modules"] = ("q", "v"), ["q", "v"]
    assert config_mismatch(old, tupled) == []  # a stored config holds lists where a live one may hold tuples


def test_launcher_experiment_runner_exits_nonzero_on_a_config_the_server_refuses(tmp_path: Path) -> None:
    """The runner, given a real configuration that fails (N*K < C), exits 1 and names the error in one line."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [sys.executable, "-m", "tools.experiment", "model=tiny", "budget=smoke", "scenario=synthetic",
         "federation.num_clients=6", "adapter.num_experts=2", f"federation.runs_dir={tmp_path}"],
        cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "AssignmentError: every client must hold at least one routed expert" in proc.stdout + proc.stderr
    record = json.loads((tmp_path / "synthetic-fedamole-s0" / "experiment.json").read_text())
    assert record["status"] == "failed" and record["rounds_done"] == 0
