"""A site's resident worker (client_app/worker.py): the same round as in the ClientApp itself, bit for bit;
restarted after it was killed; gone after the run's last round and after its idle timeout; reachable by its
owner only; one per run."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from amole.backbones.loader import adapter_target_shapes
from amole.compose import compose
from amole.moe.bank import create_bank, payload
from amole.site.folder import site_folder as core_site_folder
from client_app import messages
from client_app.node import Clock, site_folder, uses_worker
from client_app.runtime import run_request
from client_app.worker_link import WorkerError, connect, run_in_worker, worker_place

CLIENT = "1"


def now() -> Clock:
    return Clock(time.time(), time.time())


def request_for(site: Path, run_id: str = "run-a", idle_s: float = 120.0) -> tuple[messages.Request, dict]:
    """A round-1 train request for client 1 as the server sends it, read back as a ClientApp reads it."""
    settings = compose(["model=tiny", "scenario=synthetic", "budget=smoke", f"federation.worker_idle_s={idle_s}",
                        "federation.reply_timeout=1"])
    shapes = adapter_target_shapes(settings.model, settings.adapter.target_modules)
    sent = payload(create_bank(shapes, settings.adapter, seed=0), {n: [0, 3] for n in shapes})
    content = messages.round_request(messages.settings_json(settings), 1, CLIENT, run_id, messages.pack(sent))
    return messages.read_request(content), {"client-id": CLIENT, "site-dir": str(site)}


def same_result(a: messages.ClientResult, b: messages.ClientResult) -> None:
    assert a.adapters.keys() == b.adapters.keys() and a.stats.keys() == b.stats.keys() and a.info == b.info
    for k in a.adapters:
        assert a.adapters[k].dtype == b.adapters[k].dtype and np.array_equal(a.adapters[k], b.adapters[k]), k
    for k in a.stats:
        assert np.array_equal(a.stats[k], b.stats[k]), k
    for k in ("score", "train_loss", "num_examples", "experts_mean"):
        assert a.metrics[k] == b.metrics[k], k


def stop(place) -> None:
    if place.pid.is_file():
        os.kill(int(place.pid.read_text()), signal.SIGTERM)


def gone(place, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not place.socket.exists() and not place.pid.exists():
            return True
        time.sleep(0.1)
    return False


def test_worker_rounds_equal_in_process_rounds_and_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    request, node = request_for(tmp_path)
    request.settings.federation.reply_timeout = 300.0
    place = worker_place(request, node)
    try:
        warm = run_in_worker(messages.TRAIN, request, node, now())
        here = run_request(messages.TRAIN, request, node, now())
        same_result(warm, here)  # the worker's upload is the in-process upload, bit for bit
        assert warm.metrics["overhead_s"] >= 0
        first = int(place.pid.read_text())
        again = run_in_worker(messages.TRAIN, request, node, now())  # same worker, state of round 1 gone
        same_result(again, here)
        assert int(place.pid.read_text()) == first
        with pytest.raises(WorkerError, match="message for client 2 reached client 1"):  # fails the round only
            run_in_worker(messages.TRAIN, replace(request, client="2"), node, now())
        assert int(place.pid.read_text()) == first

        os.kill(first, signal.SIGKILL)  # a crash: the socket file stays behind, nobody answers on it
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.waitpid(first, os.WNOHANG) == (0, 0):
            time.sleep(0.05)
        assert place.socket.exists()
        request.settings.federation.num_rounds = 1  # this request is also the run's last: the worker then exits
        after = run_in_worker(messages.TRAIN, request, node, now())
        same_result(after, here)
        assert gone(place)
        log = place.log.read_text()
        assert log.count("listening on") == 2 and "the run's last round is done" in log
    finally:
        stop(place)


def test_the_worker_is_private_and_one_per_run(tmp_path: Path) -> None:
    request, node = request_for(tmp_path / "site")
    other, _ = request_for(tmp_path / "site", run_id="run-b")
    places = [worker_place(request, node), worker_place(other, node)]
    assert places[0].socket != places[1].socket and places[0].key != places[1].key
    try:
        for place in places:
            connect(place, idle_s=60).close()
        for place in places:
            assert stat.S_IMODE(os.stat(place.folder).st_mode) == 0o700
            for path in (place.socket, place.authkey, place.lock, place.log):
                assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
            assert stat.S_ISSOCK(os.stat(place.socket).st_mode)
        assert places[0].pid.read_text() != places[1].pid.read_text()
    finally:
        for place in places:
            stop(place)
    assert all(gone(place) for place in places)


def test_an_idle_worker_exits(tmp_path: Path) -> None:
    request, node = request_for(tmp_path)
    place = worker_place(request, node)
    connect(place, idle_s=1.0).close()  # started, then nobody asks anything
    assert gone(place)
    assert "idle for 1 s" in place.log.read_text()


def test_a_long_site_path_gets_a_short_private_socket(tmp_path: Path) -> None:
    request, node = request_for(tmp_path / ("x" * 120))
    place = worker_place(request, node)
    assert len(os.fsencode(place.socket)) <= 100 and place.folder.parent.name == CLIENT


def test_site_folder_mode_and_clock_without_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    request, node = request_for(tmp_path)
    fed = request.settings.federation
    assert site_folder(fed, node) == core_site_folder(node["site-dir"], CLIENT)
    monkeypatch.setenv("AMOLE_CACHE", str(tmp_path / "cache"))
    assert site_folder(fed, {"client-id": "7"}) == core_site_folder(None, "7")
    assert uses_worker(fed, {"client-id": "7"}) and not uses_worker(fed, {"partition-id": 0})
    fed.client_worker = "off"
    assert not uses_worker(fed, {"client-id": "7"})
    deployed, simulation = Clock.at_handler({"client-id": "7"}), Clock.at_handler({"partition-id": 0})
    assert deployed.started < deployed.received and deployed.startup_cpu_s > 0  # since this process started
    assert simulation.started == simulation.received  # an actor serves many messages: since this one came
    fed.client_worker = "sometimes"
    with pytest.raises(ValueError, match="client_worker"):
        uses_worker(fed, {"client-id": "7"})



def test_the_clientapp_imports_no_torch() -> None:
    """What a deployed ClientApp (a fresh process per message) imports before handing the round over."""
    code = ("import sys, client_app.app, client_app.worker_link; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'amole.client.round') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
