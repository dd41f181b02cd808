"""A run's outcome is what its strategy recorded in the run folder, not Flower's status (which calls a run whose
ServerApp raised completed): every way a run ends is recorded, and `make demo` exits non-zero on a failed run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from amole.compose import compose
from server_app.outcome import read_outcome
from server_app.strategy import FedAMoLE

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["model=tiny", "scenario=synthetic", "budget=smoke"]


class EmptyGrid:
    """A grid with no node ever connected."""

    def get_node_ids(self):
        return []


def test_reliability_a_run_without_sites_records_its_failure(tmp_path: Path) -> None:
    settings = compose([*SMOKE, "federation.name=lonely", "federation.wait_for_nodes=0.2"])
    with pytest.raises(TimeoutError):
        FedAMoLE(settings, runs_dir=tmp_path).start(EmptyGrid())
    outcome = read_outcome(tmp_path / "lonely")
    assert outcome["status"] == "failed" and outcome["rounds_done"] == 0 and outcome["rounds_planned"] == 2
    assert outcome["error"].startswith("TimeoutError:") and "\n" not in outcome["error"]


def test_reliability_a_folder_without_an_outcome_reads_as_failed(tmp_path: Path) -> None:
    assert read_outcome(tmp_path)["status"] == "failed" and "recorded no outcome" in read_outcome(tmp_path)["error"]
    (tmp_path / "outcome.json").write_text("{not json")
    assert "unreadable" in read_outcome(tmp_path)["error"]


def _demo(tmp_path: Path, run_config: str, port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tools.demo", "--port", str(port), "--runs-dir", str(tmp_path),
                           "--run-config", run_config], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_reliability_demo_exits_nonzero_when_the_run_fails(tmp_path: Path) -> None:
    """The reproduction of issue 35: N*K < C fails in the ServerApp; Flower still says completed."""
    proc = _demo(tmp_path, "model=tiny budget=smoke scenario=synthetic "
                           "overrides='federation.num_clients=6 adapter.num_experts=2'", 39293)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "demo: the federation failed: AssignmentError:" in proc.stderr
    (run_dir,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert json.loads((run_dir / "outcome.json").read_text())["status"] == "failed"


def test_errors_demo_with_a_bad_preset_is_one_line_and_exit_2(tmp_path: Path, capsys) -> None:
    from tools.demo import main

    assert main(["--runs-dir", str(tmp_path), "--run-config", "budget=nope"]) == 2  # nothing is started
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "unknown budget 'nope'; available:" in err and "Traceback" not in err
