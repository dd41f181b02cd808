"""The pieces of `make gpu-check` that run without a GPU: the in-process grid, the model carried in parts, and
the script itself (its CPU smoke run), which had gone stale once when nothing ran it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from flwr.app import Message, RecordDict
from flwr.clientapp import ClientApp
from safetensors.torch import load_file, save_file

from amole.compose import compose
from client_app.app import app as client_app
from server_app.strategy import run
from tools.direct_grid import DirectGrid

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))
import gpu_bundle  # noqa: E402


def test_direct_grid_runs_a_federation_in_process(tmp_path: Path) -> None:
    settings = compose(["model=tiny", "scenario=synthetic", "budget=smoke", "federation.num_clients=3",
                        "federation.num_rounds=2", f"federation.site_dir={tmp_path / 'kept'}"])
    state = run(DirectGrid(client_app, 3), settings, runs_dir=tmp_path)
    assert state.round == 2
    last = state.metrics["rounds"][-1]["clients"]
    assert sorted(last) == ["0", "1", "2"]
    assert all(0.0 <= m["score"] <= 1.0 and m["train_s"] > 0 for m in last.values())


def test_direct_grid_turns_a_handler_exception_into_an_error_reply() -> None:
    app = ClientApp()

    @app.query()
    def fail(msg: Message, context) -> Message:
        raise ValueError(f"site {context.node_config['partition-id']} is broken")

    grid = DirectGrid(app, 2)
    node = grid.get_node_ids()[1]
    (reply,) = grid.send_and_receive([Message(RecordDict(), dst_node_id=node, message_type="query")])
    assert reply.has_error() and "site 1 is broken" in reply.error.reason
    assert reply.metadata.src_node_id == node
    with pytest.raises(ValueError, match="does not have"):
        grid.send_and_receive([Message(RecordDict(), dst_node_id=7, message_type="query")])


def _model_folder(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    weights = {"embed.weight": torch.randn(1000, 16), "layer.weight": torch.randn(24, 16) * 0.02,
               "norm.weight": torch.rand(16)}
    folder = tmp_path / "model"
    folder.mkdir()
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return folder, weights


def test_bundle_round_trips_within_int8_rounding(tmp_path: Path) -> None:
    folder, weights = _model_folder(tmp_path)
    parts = gpu_bundle.pack(folder, tmp_path / "bundle", [0.004, 0.01])  # ~4 KiB, then ~10 KiB parts
    assert len(parts) >= 3 and all(p.stat().st_size <= 0.01 * 2**20 + 1 for p in parts)
    out = gpu_bundle.unpack(tmp_path / "bundle", tmp_path / "unpacked", dtype=torch.float32)
    back = load_file(str(out / "model.safetensors"))
    assert (out / "config.json").read_text() == (folder / "config.json").read_text()
    assert torch.equal(back["norm.weight"], weights["norm.weight"])  # vectors travel as they are
    for name in ("embed.weight", "layer.weight"):
        w = weights[name]
        bound = w.abs().amax(dim=1, keepdim=True) / 254 + 1e-7  # half a step of the row's int8 grid
        assert torch.all((back[name] - w).abs() <= bound)


def test_bundle_refuses_missing_or_corrupt_parts(tmp_path: Path) -> None:
    folder, _ = _model_folder(tmp_path)
    parts = gpu_bundle.pack(folder, tmp_path / "bundle", [0.01])
    data = parts[1].read_bytes()
    parts[1].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ValueError, match="corrupt"):
        gpu_bundle.unpack(tmp_path / "bundle", tmp_path / "out")
    parts[1].unlink()
    with pytest.raises(FileNotFoundError, match=f"missing {parts[1].name}"):
        gpu_bundle.unpack(tmp_path / "bundle", tmp_path / "out")


@pytest.mark.timeout(600)
def test_gpu_check_cpu_smoke_runs(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "tests/benchmarks/gpu_check.py", "--cpu-smoke", "--skip-bench",
                           f"federation.site_dir={tmp_path / 'kept'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "round (in-process, one client at a time): 10 clients" in proc.stdout
    assert "paper's schedule (10 clients x 30 rounds x 200 steps at 1x1024" in proc.stdout  # the 1B-shape part
    assert "gpu-check: done" in proc.stdout


def test_op_count_runs_and_amole_issues_more_ops_than_lora() -> None:
    # --no-whole: the decoders compiled whole cost minutes of compiling here; tests/test_compile.py covers that path
    proc = subprocess.run([sys.executable, "tests/benchmarks/op_count.py", "--no-whole"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("ops per forward + backward"))
    amole, lora = [int(w.rstrip(",;")) for w in line.split() if w.rstrip(",;").isdigit()][:2]
    assert amole > lora > 0
