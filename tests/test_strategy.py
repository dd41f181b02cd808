"""FedAMoLE's server half is a Flower Strategy: its type, a ServerApp of ~20 lines in docs/ that runs it in
simulation, and a server that composes its config and checks replies without importing transformers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from flwr.serverapp.strategy import Strategy
from flwr.simulation import run_simulation

from amole.compose import compose
from client_app.app import app as client_app
from server_app.strategy import FedAMoLE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "server_app.py"


def test_fedamole_is_a_flower_strategy():
    assert issubclass(FedAMoLE, Strategy)
    strategy = FedAMoLE(compose(["model=tiny", "budget=smoke", "scenario=synthetic"]))
    assert isinstance(strategy, Strategy)
    assert list(strategy.configure_evaluate(1, None, None, None)) == []  # FedAMoLE scores right after training


def test_the_server_composes_and_checks_replies_without_transformers():
    code = ("import sys\n"
            "from amole.compose import compose\n"
            "from server_app.strategy import FedAMoLE\n"
            "from server_app.replies import check_upload\n"
            "FedAMoLE(compose(['budget=cpu_medium', 'strategy=fedit']))\n"
            "assert 'transformers' not in sys.modules, sorted(m for m in sys.modules if 'transformers' in m)[:5]\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_docs_server_app_runs_fedamole_in_simulation(tmp_path, monkeypatch, capsys):
    assert len(EXAMPLE.read_text().splitlines()) <= 25
    spec = importlib.util.spec_from_file_location("docs_server_app", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.chdir(tmp_path)  # the run folder goes to ./runs (federation.runs_dir)
    monkeypatch.setenv("AMOLE_CACHE", str(tmp_path / "cache"))  # the sites' folders
    run_simulation(server_app=example.app, client_app=client_app, num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    out = capsys.readouterr().out
    assert "round 1: mean score" in out and "round 2: mean score" in out, out[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "checkpoint.safetensors").is_file() and (run_dir / "metrics.json").is_file()
