"""The processes `make deploy-test` starts, and everything they start in turn, stopped by process id.

Flower detaches its SuperExec into a session of its own and each ClientApp may start its site's worker
(client_app/worker.py) in another, so process groups do not reach them: every process remembers the ids (with
start times, so a reused id is never signalled) of all its descendants as it sees them appear, and signals
exactly those. Linux /proc only; standard library only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def proc_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, start time) for every process (Linux /proc)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()  # fields 3.. (the command name may hold spaces)
        table[int(entry)] = (int(rest[1]), rest[19])
    return table


def start_time(pid: int) -> str | None:
    entry = proc_table().get(pid)
    return entry[1] if entry else None


@dataclass
class Managed:
    name: str
    cmd: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    proc: subprocess.Popen | None = None
    known: dict[int, str] = field(default_factory=dict)  # pid -> start time of everything it started

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            out.write(f"\n$ {' '.join(self.cmd)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.known = {self.proc.pid: start_time(self.proc.pid) or ""}

    def refresh(self) -> None:
        """Remember every descendant: Flower detaches its SuperExec into a session of its own."""
        table = proc_table()
        alive = {pid for pid, start in self.known.items() if table.get(pid, (0, None))[1] == start}
        frontier = list(alive)
        while frontier:
            parent = frontier.pop()
            for pid, (ppid, start) in table.items():
                if ppid == parent and pid not in self.known:
                    self.known[pid] = start
                    frontier.append(pid)

    def alive_pids(self) -> list[int]:
        table = proc_table()
        return [pid for pid, start in self.known.items() if table.get(pid, (0, None))[1] == start]

    def signal_all(self, sig: int) -> None:
        self.refresh()
        for pid in self.alive_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        self.signal_all(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.alive_pids() and time.monotonic() < deadline:
            self.proc.poll()
            time.sleep(0.2)
        if self.alive_pids():
            self.signal_all(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        """SIGKILL the process and everything it started at once, like a crashed machine."""
        self.signal_all(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cluster:
    """Everything this script starts, stopped in reverse order at the end."""

    def __init__(self) -> None:
        self.procs: list[Managed] = []

    def start(self, m: Managed) -> Managed:
        m.start()
        self.procs.append(m)
        return m

    def refresh(self) -> None:
        for m in self.procs:
            m.refresh()

    def stop_all(self) -> None:
        for m in reversed(self.procs):
            m.stop()


def stop_workers(root: Path) -> list[int]:
    """SIGTERM the sites' resident workers (client_app/worker.py) under ``root`` that still run: each writes
    its id to ``<site>/worker/<key>.pid`` and removes it when it exits. They also exit by themselves after the
    run's last round or when idle; this is for a run that stopped early."""
    stopped = []
    for pid_file in root.glob("**/worker/*.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            with open(f"/proc/{pid}/cmdline", "rb") as f:  # that worker, not a process that reused its id
                if str(pid_file).encode() not in f.read().split(b"\0"):
                    continue
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
    return stopped
