"""Every error a user can cause is one line that names the problem and what would fix it, exit code 2, and no
traceback (``--verbose`` or AMOLE_DEBUG=1 shows it): the `amole` command as a user runs it, the loader and a
node's config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from amole.backbones.loader import UnknownModelError, model_config
from amole.compose import compose
from amole.site.cli import main as cli_main
from client_app.node import client_identity

ROOT = Path(__file__).resolve().parents[1]


def _amole(*args: str) -> subprocess.CompletedProcess:
    """The `amole` command as a user runs it (a fresh process: the exit code and stderr they see)."""
    return subprocess.run([sys.executable, "-m", "amole.site.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def _in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """The same, in this process (no second torch import): what `main` returns and prints."""
    code = cli_main(list(args))
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def _one_line(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert all(w in proc.stderr for w in words), proc.stderr


def test_errors_unknown_preset() -> None:
    _one_line(_amole("config", "scenario=bigbench_nope"), "unknown scenario 'bigbench_nope'", "bigbench_demo")


def test_errors_typo_in_an_override(capsys) -> None:
    _one_line(_in_process(capsys, "config", "train.stpes=3"), "unknown key 'train.stpes'", "steps")
    _one_line(_in_process(capsys, "config", "train.steps=ten"), "train.steps=ten")


def test_errors_missing_or_unreadable_data_file(tmp_path: Path, capsys) -> None:
    _one_line(_amole("check-data", "--data", str(tmp_path / "nope.jsonl")), "does not exist")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    _one_line(_in_process(capsys, "check-data", "--data", str(empty)), "empty.jsonl")
    binary = tmp_path / "tickets.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\x00\n\x81")
    _one_line(_in_process(capsys, "check-data", "--data", str(binary)), "tickets.jsonl")


def test_errors_model_folder_that_does_not_exist(tmp_path: Path, capsys) -> None:
    _one_line(_in_process(capsys, "evaluate", "--model", str(tmp_path / "gone"), "--split", "test"), "does not exist")
    _one_line(_in_process(capsys, "generate", "--model", str(tmp_path / "gone"), "--prompt", "hi"), "does not exist")


def test_errors_unknown_model(monkeypatch) -> None:
    from amole.backbones import loader

    with pytest.raises(ValueError, match="unknown model name '/no/such/model-folder'") as err:
        model_config(compose(["model=hub", "model.name=/no/such/model-folder"]).model)
    assert "\n" not in str(err.value)

    def offline(*args, **kwargs):  # what transformers raises for a hub id it cannot fetch (no network in tests)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(loader.AutoConfig, "from_pretrained", offline)
    with pytest.raises(UnknownModelError, match="model 'nope/no-such-model' is not a folder") as err:
        model_config(compose(["model=hub", "model.name=nope/no-such-model"]).model)
    assert "\n" not in str(err.value) and "couldn't connect" in str(err.value)


def test_errors_bad_node_config() -> None:
    with pytest.raises(KeyError, match="client-id"):
        client_identity({})


def test_errors_verbose_shows_the_traceback(tmp_path: Path) -> None:
    proc = _amole("--verbose", "evaluate", "--model", str(tmp_path / "gone"), "--split", "test")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_errors_more_clients_than_tasks_fails_before_any_node_is_asked(tmp_path: Path) -> None:
    from server_app.strategy import FedAMoLE

    with pytest.raises(ValueError, match="federation.num_clients=20 but scenario 'synthetic' lists 6 tasks"):
        FedAMoLE(compose(["model=tiny", "budget=smoke", "scenario=synthetic", "federation.num_clients=20"]),
                 runs_dir=tmp_path)


def test_errors_a_node_that_fails_twice_alike_is_not_asked_again(monkeypatch) -> None:
    from types import SimpleNamespace

    from flwr.supercore.task_identity import TaskIdentity

    from server_app.client_ids import ClientRegistry

    for key, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 0)):  # messages are made inside a run
        monkeypatch.setattr(TaskIdentity, key, value)

    class FailingGrid:
        asked: list[int] = []

        def get_node_ids(self):
            return [7]

        def send_and_receive(self, msgs, timeout=None):
            msgs = list(msgs)
            self.asked += [m.metadata.dst_node_id for m in msgs]
            reason = "Traceback (most recent call last):\n  ...\nValueError: no task for client 7"
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m.metadata.message_id),
                                    has_error=lambda: True, error=SimpleNamespace(reason=reason)) for m in msgs]

    grid = FailingGrid()
    registry = ClientRegistry(grid, "{}", 1.0)
    for _ in range(5):
        assert registry.refresh() == {}
    assert grid.asked == [7, 7] and registry.refused == {7: "ValueError: no task for client 7"}
