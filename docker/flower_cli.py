"""The `flwr` command line as `make deploy-test` uses it: the connection profile, the SuperLink's health,
the SuperNodes it lists, and the status Flower gives the run (`flwr run` itself exits 0 even when a run failed).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from processes import Cluster, Managed

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "amole-deploy-test"
HOST = "127.0.0.1"  # loopback only


def bin_path(name: str) -> str:
    """The console script next to this interpreter (the project's virtualenv), else whatever is on PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def write_profile(flwr_home: Path, port: int, ca: Path) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{PROFILE}"\n\n'
        f'[superlink.{PROFILE}]\naddress = "{HOST}:{port}"\nroot-certificates = "{ca}"\n'
    )


def flwr(args: list[str], env: dict[str, str], check: bool = True, timeout: float = 120) -> str:
    out = subprocess.run([bin_path("flwr"), *args], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"flwr {' '.join(args)} exited {out.returncode}: {out.stdout}{out.stderr}")
    return out.stdout


def json_of(text: str) -> dict:
    """The JSON object a `flwr ... --format json` command printed (it may print other lines before it)."""
    start = text.find("{")
    if start < 0:
        raise ValueError(f"no JSON in: {text!r}")
    answer = json.loads(text[start:])
    if answer.get("success") is False:
        raise RuntimeError(f"flwr answered: {answer.get('error-message', answer)}")
    return answer


def wait_superlink(port: int, ca: Path, proc: Managed, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.proc.returncode}; see {proc.log_path}")
        try:
            if httpx.get(f"https://{HOST}:{port}/health", verify=str(ca), timeout=1.0).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"flower-superlink did not answer on https://{HOST}:{port} within {timeout:.0f} s")


def node_list(env: dict[str, str]) -> list[dict]:
    return json_of(flwr(["supernode", "list", PROFILE, "--format", "json"], env)).get("nodes", [])


def wait_online(env: dict[str, str], node_ids: set[int], timeout: float, cluster: Cluster) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = node_list(env)
        online = {int(n["node-id"]) for n in nodes if n.get("status") == "online"}
        if node_ids <= online:
            return nodes
        if time.monotonic() > deadline:
            raise TimeoutError(f"SuperNodes {sorted(node_ids - online)} not online after {timeout:.0f} s: {nodes}")
        cluster.refresh()
        time.sleep(1.0)


def run_status(env: dict[str, str], run_id: int | None = None) -> tuple[str, str]:
    """Flower's status of run ``run_id`` (run ids are random, not increasing: without one, the only run)."""
    runs = json_of(flwr(["ls", PROFILE, "--format", "json"], env)).get("runs", [])
    runs = [r for r in runs if run_id is None or int(r["run-id"]) == run_id]
    if not runs:
        return "no run", ""
    last = max(runs, key=lambda r: str(r.get("pending-at", "")))
    return str(last.get("status", "unknown")), str(last.get("status-details", ""))


class StreamedRun:
    """`flwr run ... --stream` in the background: every line it prints goes to ``on_line`` (the console decides
    what a person sees), and each pattern of ``marks`` sets its event once a line matches it."""

    def __init__(self, cmd: list[str], env: dict[str, str], on_line: Callable[[str], None],
                 marks: dict[str, re.Pattern[str]] | None = None) -> None:
        self.cmd, self.lines = cmd, []
        self.marks = marks or {}
        self.seen = {name: threading.Event() for name in self.marks}
        self.proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
        self._on_line = on_line
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._on_line(line)
            for name, pattern in self.marks.items():
                if pattern.search(line):
                    self.seen[name].set()

    @property
    def run_id(self) -> int | None:
        """The id Flower gave the run (`Successfully started run <id>`), once it said so."""
        found = [m for line in self.lines if (m := re.search(r"started run (\d+)", line))]
        return int(found[0].group(1)) if found else None

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 10) -> int | None:
        """Wait for the last lines; the exit code (None if it still runs)."""
        self._reader.join(timeout=timeout)
        return self.proc.poll()
