"""The deployment launchers (`make deploy-test`, `make deploy-restart`, `make compose-test`) fail loudly and
judge a run by the ServerApp's own record: a config the server refuses ends them non-zero with the error's one
line, before anything starts; a run whose ServerApp failed is failed whatever Flower's status says; their
consoles show the rounds and keep the rest in a log. Runs without Docker or a federation (CI is a clean clone);
the one test that starts a real deployment runs only with AMOLE_DEPLOY_TESTS=1 (~45 s)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
BAD = "federation.num_clients=6 adapter.num_experts=2"  # 2 experts x 2 clients each < 6 clients: refused at once
REFUSAL = "AssignmentError: every client must hold at least one routed expert per module"


def _load(name: str) -> Any:
    if str(DOCKER) not in sys.path:
        sys.path.insert(0, str(DOCKER))  # the launchers import each other as top-level modules
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, DOCKER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _launch(script: str, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(DOCKER / script), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - t0


@pytest.mark.parametrize("script", ["deploy_test.py", "compose_test.py"])
def test_launcher_a_config_the_server_refuses_fails_at_once_with_its_line(script: str, tmp_path: Path) -> None:
    """Both launchers run the server's own checks before starting a process or building an image: exit 2 and
    the error's one line, in seconds (no Docker engine needed for compose-test to say so)."""
    proc, seconds = _launch(script, "--overrides", BAD, "--log-dir", str(tmp_path))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    refusal = [line for line in proc.stdout.splitlines() if REFUSAL in line]
    assert len(refusal) == 1 and "the server refuses this config" in refusal[0], proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    assert seconds < 60
    assert REFUSAL in (tmp_path / ("deploy.log" if script == "deploy_test.py" else "compose.log")).read_text()


def _outcome(run_dir: Path, status: str, error: BaseException | None = None) -> Path:
    from server_app.outcome import write_outcome

    write_outcome(run_dir, status, 0 if error else 4, 4, error)
    return run_dir


def test_launcher_judges_a_run_by_its_outcome_not_by_flowers_status(tmp_path: Path) -> None:
    """Flower says `finished:completed` for a run whose ServerApp raised: deploy-test reads outcome.json."""
    checks = _load("deploy_checks")
    failed = _outcome(tmp_path / "failed", "failed", ValueError("federation.num_clients=6 but ...\nmore"))
    assert checks.judge(failed, "finished:completed") == ("failed", "ValueError: federation.num_clients=6 but ...")
    status, error = checks.judge(tmp_path / "killed", "finished:completed")  # no outcome.json: never completed
    assert status == "failed" and "recorded no outcome" in error
    assert checks.judge(None, "finished:completed")[0] == "failed"
    done = _outcome(tmp_path / "done", "completed")
    assert checks.judge(done, "finished:completed") == ("completed", None)
    assert checks.judge(done, "finished:failed") == ("failed", "Flower's run status is finished:failed")


def test_launcher_compose_judges_the_line_the_strategy_logs_with_its_outcome() -> None:
    """compose-test cannot read the ServerApp container's run folder: the strategy's last line decides."""
    checks = _load("deploy_checks")
    failed = ["Successfully started run 42", "\x1b[91mERROR \x1b[0m:     ServerApp raised an exception",
              "00:01:02 run fedamole-synthetic-x failed after 0 of 3 rounds: AssignmentError: every client must hold"]
    assert checks.judge_log(failed, "finished:completed") == ("failed", "AssignmentError: every client must hold")
    assert checks.judge_log(["Successfully started run 42"], "finished:completed")[0] == "failed"
    refused = ["Traceback (most recent call last):", '  File "strategy.py", line 105, in __init__',
               "amole.server.assign.AssignmentError: every client must hold",
               "\x1b[91mERROR \x1b[0m:     Exit Code: 201"]
    assert checks.judge_log(refused, "finished:failed ServerApp failed with exception: every client must hold") == \
        ("failed", "AssignmentError: every client must hold")  # refused before its run began: no last line
    assert checks.judge_log([], "finished:failed ServerApp failed with exception: boom") == \
        ("failed", "ServerApp failed with exception: boom")
    done = ["00:03:04 round 3: mean score 0.1 over 3 clients", "00:03:04 run r completed after 3 of 3 rounds"]
    assert checks.judge_log(done, "finished:completed (N/A)") == ("completed", None)
    assert checks.judge_log(done, "finished:failed boom")[0] == "failed"


def test_launcher_console_shows_rounds_and_logs_the_rest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    console_module = _load("deploy_console")
    lines = ["\x1b[92mINFO \x1b[0m:      Start `flwr-serverapp` process", "00:00:01 round 1/4: training clients",
             "00:00:09 round 1: mean score 0.5000 over 3 clients, 0.29 MB moved, 8.0 s",
             "00:00:09 round 2: no reply from clients ['1'] within 120 s",
             "00:00:20 run deploy-test completed after 4 of 4 rounds"]
    for verbose in (False, True):
        console = console_module.Console("deploy-test", tmp_path / f"{verbose}.log", verbose)
        console.say("what it does")
        console.detail("a detail")
        for line in lines:
            console.stream(line)
        console.close()
        shown = [line for line in capsys.readouterr().out.splitlines() if line]
        assert len(shown) == (7 if verbose else 4) == console.shown
        assert all(line in (tmp_path / f"{verbose}.log").read_text() for line in lines)
    quiet = console_module.Console("deploy-test", tmp_path / "muted.log")
    quiet.muted = True
    quiet.stream(lines[2])
    assert quiet.shown == 0


def test_launcher_compares_two_runs_final_experts(tmp_path: Path) -> None:
    """`make deploy-restart --compare`: bit-equal expert banks, and the largest difference otherwise."""
    from server_app import checkpoint

    checks, restart = _load("deploy_checks"), _load("deploy_restart")
    bank = {"L0.q_proj.A": torch.randn(4, 8), "L0.q_proj.B": torch.zeros(8, 4)}
    for name, tensors in (("a", bank), ("b", dict(bank)), ("c", {**bank, "L0.q_proj.B": bank["L0.q_proj.B"] + 0.25})):
        (tmp_path / name).mkdir()
        state = checkpoint.ServerState(settings={}, bank=tensors, clients=["0"], rng=np.random.default_rng(0), round=4)
        checkpoint.save(state, tmp_path / name)
    assert checks.compare_experts(tmp_path / "a", tmp_path / "b") == (True, 0.0)
    assert checks.compare_experts(tmp_path / "a", tmp_path / "c") == (False, 0.25)
    assert restart.checkpoint_round(tmp_path / "a") == 4 and restart.checkpoint_round(tmp_path) == 0


@pytest.mark.skipif(os.environ.get("AMOLE_DEPLOY_TESTS") != "1", reason="starts a real deployment (~45 s); "
                    "AMOLE_DEPLOY_TESTS=1 runs it")
def test_launcher_deploy_test_a_run_that_fails_in_deployment_exits_nonzero(tmp_path: Path) -> None:
    """Without the check before starting, the deployed ServerApp refuses the config; Flower says the run ended,
    the launcher says it failed, with the error's line, and exits 1."""
    proc, _ = _launch("deploy_test.py", "--no-preflight", "--nodes", "2", "--rounds", "1", "--overrides", BAD,
                      "--log-dir", str(tmp_path), timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert any("the run failed: " + REFUSAL in line for line in proc.stdout.splitlines()), proc.stdout
    assert proc.stdout.splitlines()[-1].startswith("deploy: rounds=1 nodes=2 killed=0 status=failed")
