"""Checkpoints without pickle: the state round-trips exactly through safetensors + JSON, an old pickle
checkpoint still resumes (weights-only), a crafted pickle runs nothing, and a path that is not a run folder is
refused in one line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from amole.server.planner import Assignment
from server_app import checkpoint
from server_app.checkpoint import CheckpointError, ServerState


def _state() -> ServerState:
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(7)
    rng.random(5)  # a state other than the seed's
    return ServerState(
        settings={"federation": {"strategy": "fedamole", "seed": 7}, "adapter": {"target_modules": ["q_proj"]}},
        bank={"m.q_proj.router": torch.randn(4, 8, generator=g),
              "m.q_proj.experts.0.A": torch.randn(2, 8, dtype=torch.float64, generator=g)},
        clients=["0", "1", "10"], rng=rng,
        assignment=Assignment(["0", "1"], {"m.q_proj": np.array([[True, False], [False, True]])}),
        expert_codes={"m.q_proj": np.random.default_rng(1).random((4, 2))},
        client_codes={"0": {"m.q_proj": np.arange(2.0)}, "10": {"m.q_proj": np.ones(2)}},
        round=3, metrics={"run": {"name": "x"}, "rounds": [{"round": 1, "score": float("nan")}]})


def _assert_same(a: ServerState, b: ServerState) -> None:
    assert a.settings == b.settings and a.clients == b.clients and a.round == b.round
    assert a.bank.keys() == b.bank.keys() and all(torch.equal(a.bank[k], b.bank[k]) for k in a.bank)
    assert a.assignment.clients == b.assignment.clients
    assert all(np.array_equal(a.assignment.X[m], b.assignment.X[m]) for m in a.assignment.X)
    assert all(np.array_equal(a.expert_codes[m], b.expert_codes[m]) for m in a.expert_codes)
    assert {c: {m: v.tolist() for m, v in d.items()} for c, d in a.client_codes.items()} == \
        {c: {m: v.tolist() for m, v in d.items()} for c, d in b.client_codes.items()}
    assert a.rng.random() == b.rng.random()  # the RNG goes on exactly where it was


def test_reliability_checkpoint_round_trips_exactly_without_pickle(tmp_path: Path) -> None:
    path = checkpoint.save(_state(), tmp_path)
    assert path.name == "checkpoint.safetensors" and not (tmp_path / "checkpoint.pt").exists()
    loaded = checkpoint.load(tmp_path)
    _assert_same(_state(), loaded)
    assert loaded.metrics["rounds"][0]["round"] == 1 and np.isnan(loaded.metrics["rounds"][0]["score"])


def test_reliability_an_old_pickle_checkpoint_still_resumes(tmp_path: Path) -> None:
    data = {k: v for k, v in vars(_state()).items() if k != "rng"}
    data["rng"] = _state().rng.bit_generator.state
    torch.save(data, tmp_path / "checkpoint.pt")  # exactly what earlier versions wrote
    _assert_same(_state(), checkpoint.load(tmp_path))


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['AMOLE_TEST_MARKER']}",))


def test_reliability_a_crafted_pickle_checkpoint_runs_nothing(tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "pwned"
    monkeypatch.setenv("AMOLE_TEST_MARKER", str(marker))
    torch.save({"settings": _Exploit()}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not loaded"):
        checkpoint.load(tmp_path)
    assert not marker.exists()


def test_reliability_resume_from_a_path_that_is_not_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a folder") as err:
        checkpoint.load(tmp_path / "nope")
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="no checkpoint.safetensors"):
        checkpoint.load(tmp_path)
    (tmp_path / "checkpoint.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(tmp_path)
