"""A site's resident worker as its ClientApp sees it: where it listens, how to reach it, how to start it.

One worker per (run, model, adapter, data choice, node config) keeps the loaded model and the client's splits
across the rounds of a run (client_app/worker.py). The ClientApp, a fresh process per message in deployment,
connects to it, hands it the round and returns its answer. Everything lives in ``<site folder>/worker/``,
a folder only this user may enter (0700): ``<key>.sock`` (0600; in a private folder under the temp dir when
the site path is too long for a Unix socket), ``<key>.authkey`` (0600, fresh random bytes each start: every
connection answers an HMAC challenge with it), ``<key>.lock`` (one ClientApp starts it, not two),
``<key>.log`` (what the worker said) and ``<key>.pid`` (while it runs). A socket nobody answers on is a dead
worker's: it is removed and a new worker started. Workers are started as new processes (never forked:
CUDA-safe), in a session of their own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from client_app.messages import ClientResult, Request
from client_app.node import Clock, site_folder

START_TIMEOUT_S = 60.0  # from start to listening; the worker imports torch and loads the model later
_SUN_PATH_MAX = 100  # a Unix socket path must fit in 108 bytes (sun_path)
# No socket (or key), one nobody listens on, or a worker that closed it while we knocked (idle exit).
_NOT_THERE = (FileNotFoundError, ConnectionError, EOFError)


class WorkerError(RuntimeError):
    """The worker could not be started or reached, died during the round, or the round failed in it."""


@dataclass(frozen=True)
class WorkerPlace:
    """The files of one worker."""

    folder: Path
    key: str
    socket: Path

    @property
    def authkey(self) -> Path:
        return self.folder / f"{self.key}.authkey"

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.key}.lock"

    @property
    def log(self) -> Path:
        return self.folder / f"{self.key}.log"

    @property
    def pid(self) -> Path:
        return self.folder / f"{self.key}.pid"


def worker_key(request: Request, node_config: Mapping[str, Any]) -> str:
    """Names the worker by what it holds: a new run, model, adapter, data choice or node gets a new one."""
    d = request.settings.to_dict()
    parts = {"run": request.run_id, "model": d["model"], "adapter": d["adapter"], "scenario": d["scenario"],
             "seed": d["federation"]["seed"], "node": {str(k): str(v) for k, v in node_config.items()}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def private_folder(path: Path) -> Path:
    """``path`` as a folder of this user's that no one else may enter (0700); refuses a link or a stranger's."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.getuid():
        raise WorkerError(f"{path} is not a folder of this user's: refusing to put the worker's socket there")
    os.chmod(path, 0o700)
    return path


def worker_place(request: Request, node_config: Mapping[str, Any]) -> WorkerPlace:
    folder = site_folder(request.settings.federation, node_config) / "worker"
    key = worker_key(request, node_config)
    socket = folder / f"{key}.sock"
    if len(os.fsencode(socket)) > _SUN_PATH_MAX:  # too long to bind: a short private folder of this user's
        site = hashlib.sha256(os.fsencode(folder)).hexdigest()[:12]
        socket = Path(tempfile.gettempdir()) / f"amole-{os.getuid()}" / f"{site}-{key}.sock"
    return WorkerPlace(folder, key, socket)


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` readable by this user only (0600 from creation), atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _connect(place: WorkerPlace) -> Connection:
    return Client(str(place.socket), family="AF_UNIX", authkey=place.authkey.read_bytes())


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_worker(place: WorkerPlace, idle_s: float) -> subprocess.Popen:
    """A new worker process for ``place`` (a fresh interpreter, its own session, output to its log)."""
    private_folder(place.socket.parent)
    place.socket.unlink(missing_ok=True)
    write_secret(place.authkey, secrets.token_bytes(32))
    app_root = Path(__file__).resolve().parents[1]  # the app as Flower installed it: same code as this ClientApp
    log_fd = os.open(place.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "client_app.worker", "--socket", str(place.socket),
             "--authkey-file", str(place.authkey), "--pid-file", str(place.pid), "--idle-s", f"{idle_s:g}"],
            cwd=app_root, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True)
    finally:
        os.close(log_fd)


def connect(place: WorkerPlace, idle_s: float, start_timeout: float = START_TIMEOUT_S) -> Connection:
    """A connection to the worker of ``place``, starting one first if none answers."""
    private_folder(place.folder)
    with contextlib.suppress(*_NOT_THERE):
        return _connect(place)
    with _locked(place.lock):  # another ClientApp of this site may be starting it right now
        with contextlib.suppress(*_NOT_THERE):
            return _connect(place)
        proc = start_worker(place, idle_s)
        deadline = time.monotonic() + start_timeout
        while True:
            with contextlib.suppress(*_NOT_THERE):
                return _connect(place)
            if proc.poll() is not None:
                raise WorkerError(f"the site's worker exited with code {proc.returncode} on start; its log "
                                  f"{place.log} ends:\n{_tail(place.log)}")
            if time.monotonic() > deadline:
                raise WorkerError(f"the site's worker (pid {proc.pid}) did not listen on {place.socket} within "
                                  f"{start_timeout:.0f} s; see {place.log}")
            time.sleep(0.05)


def run_in_worker(kind: str, request: Request, node_config: Mapping[str, Any], clock: Clock) -> ClientResult:
    """Hand one train or evaluate round to this site's worker (started if needed) and return its result."""
    fed = request.settings.federation
    place = worker_place(request, node_config)
    conn = connect(place, max(fed.worker_idle_s, fed.reply_timeout))
    with conn:
        try:
            conn.send({"kind": kind, "request": request, "node_config": dict(node_config), "clock": clock})
            if not conn.poll(fed.reply_timeout):
                raise WorkerError(f"the site's worker gave no answer within {fed.reply_timeout:g} s; see {place.log}")
            answer = conn.recv()
        except (EOFError, OSError) as err:
            raise WorkerError(f"the site's worker ended during the round ({type(err).__name__}); the next round "
                              f"starts a new one; its log {place.log} ends:\n{_tail(place.log)}") from None
    if "error" in answer:
        raise WorkerError(f"round {request.server_round} failed in the site's worker: {answer['error']} "
                          f"(traceback in {place.log})")
    return answer["result"]
