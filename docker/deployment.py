"""One amole deployment on loopback, as `make deploy-test` and `make deploy-restart` run it: demo certificates, a
SuperLink with TLS and SuperNode authentication, registered SuperNode keys, one SuperNode per site (and one with
an unregistered key, which must be refused), and `flwr run` against them. Each process can be started again with
the same command, key and state, which is what the fault checks (a site killed, the SuperLink killed) need.

The command lines are docker/flower_commands.py's, which the compose files use too. docker/ is not a package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import flower_commands as fc
from deploy_checks import site_memory_mb
from deploy_console import Console
from flower_cli import (
    HOST,
    PROFILE,
    ROOT,
    StreamedRun,
    bin_path,
    flwr,
    json_of,
    node_list,
    run_status,
    wait_online,
    wait_superlink,
    write_profile,
)
from processes import Cluster, Managed, start_time


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def superlink_command(port: int, certs: Path, state_dir: Path, isolation: str) -> list[str]:
    """The SuperLink as docker/compose.tls.yaml runs it, on loopback and with this test's files."""
    tls = fc.ServerTls(ca_certfile=str(certs / "ca.crt"), certfile=str(certs / "server.pem"),
                       keyfile=str(certs / "server.key"))
    return fc.superlink(host=HOST, port=port, database=str(state_dir / "state.db"), isolation=isolation, tls=tls)


def supernode_command(site: int, link_port: int, runtime_port: int, certs: Path, isolation: str,
                      site_dir: Path | None = None) -> list[str]:
    """Site `site` (1-based; its client id is site - 1), authenticated with its own key; its site folder (kept
    adapters, its resident worker's socket and log) in this test's directory."""
    return fc.supernode(superlink=f"{HOST}:{link_port}", host=HOST, port=runtime_port, isolation=isolation,
                        node_config=fc.node_config(site - 1, site_dir=None if site_dir is None else str(site_dir)),
                        root_certificates=str(certs / "ca.crt"),
                        auth_private_key=str(certs / f"supernode-{site}"))


def superexec_command(runtime_port: int, ca: Path | None) -> list[str]:
    """A SuperExec for `--isolation process`: TLS to the SuperLink's Runtime API, plain to a SuperNode's."""
    return fc.superexec(runtime_api_address=f"{HOST}:{runtime_port}", root_certificates=None if ca is None else str(ca))


def make_certs(out: Path, count: int) -> None:
    subprocess.run(["bash", str(ROOT / "docker" / "certs.sh"), "-o", str(out), "-n", str(count)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Result:
    status: str = "failed"  # the run's own outcome.json and Flower's status: completed | failed
    error: str | None = None  # why it failed, one line
    nodes: int = 0  # registered SuperNodes online before the run
    killed: int = 0  # SuperNodes killed mid-round
    superlink_restarts: int = 0  # SuperLink (with its ServerApp) killed mid-round and started again
    refused: bool = False  # the unregistered SuperNode was kept out
    rejoined: bool | None = None  # the killed SuperNode was let in again (with --kill-after-seconds)
    overhead_s: float = math.nan  # median over clients and rounds after the first: ClientApp start -> first step
    site_models: int = 0  # sites whose folder holds a personalized model that loads and generates
    site_mb: float = math.nan  # the largest memory one site used (SuperNode, its ClientApps and its worker; RSS)
    round_s: float = math.nan  # the server's mean seconds per round (the run's metrics.json)
    experts_equal: bool | None = None  # --compare: the final experts equal an uninterrupted run's
    max_diff: float = math.nan  # --compare: the largest absolute difference of any expert tensor


class Deployment:
    """The processes of one deployment: everything is started through ``cluster`` (stopped at the end), logs
    go to ``logs``, state and site folders to ``tmp``."""

    def __init__(self, args: argparse.Namespace, tmp: Path, logs: Path, cluster: Cluster, console: Console) -> None:
        self.args, self.tmp, self.logs, self.cluster, self.console = args, tmp, logs, cluster, console
        self.nodes: int = args.nodes
        self.certs = tmp / "certs"
        self.ca = self.certs / "ca.crt"
        self.link_port = free_port()
        venv_bin = str(Path(sys.executable).parent)  # SuperLink and SuperNodes start flower-superexec by name
        self.base_env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
                         "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
        self.base_env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)  # the flag must do it, as in compose
        self.cli_env = {**self.base_env, "FLWR_HOME": str(tmp / "cli")}
        self.link_dir = tmp / "superlink"
        self.link: Managed | None = None
        self.link_exec: Managed | None = None  # --isolation process: the ServerApp's SuperExec
        self.registered: dict[int, int] = {}  # site -> node id
        self.site_ports = {site: free_port() for site in range(1, self.nodes + 2)}
        self.sites: dict[int, Managed] = {}
        self.execs: dict[int, Managed] = {}  # --isolation process: each site's ClientApp SuperExec
        self.online_at: dict[int, str | None] = {}  # node id -> when the SuperLink last activated it
        self.peak_mb: dict[int, float] = {}
        self.last_run: StreamedRun | None = None
        self._t_mem = 0.0

    @property
    def runs(self) -> Path:
        return self.tmp / "runs"

    # -- processes ------------------------------------------------------------------------------------------------
    def start_superlink(self) -> Managed:
        """The SuperLink (and, with process isolation, its ServerApp SuperExec) on this deployment's port, state
        database and certificates: started again after a kill, it finds the same registered keys and nodes."""
        cmd = superlink_command(self.link_port, self.certs, self.link_dir, self.args.isolation)
        self.link = self.cluster.start(Managed("superlink", [bin_path("flower-superlink"), *cmd],
                                               {**self.base_env, "FLWR_HOME": str(self.link_dir / "home")},
                                               self.link_dir, self.logs / "superlink.log"))
        wait_superlink(self.link_port, self.ca, self.link)
        if self.args.isolation == "process":
            self.link_exec = self.cluster.start(Managed(
                "superexec-serverapp", [bin_path("flower-superexec"), *superexec_command(self.link_port, self.ca)],
                {**self.base_env, "FLWR_HOME": str(self.link_dir / "exec-home")}, self.link_dir,
                self.logs / "superexec-serverapp.log"))
        return self.link

    def site_process(self, site: int) -> Managed:
        site_dir = self.tmp / f"site-{site}"
        cmd = supernode_command(site, self.link_port, self.site_ports[site], self.certs, self.args.isolation,
                                site_dir / "sites")
        return Managed(f"supernode-{site}", [bin_path("flower-supernode"), *cmd],
                       {**self.base_env, "FLWR_HOME": str(site_dir / "home")}, site_dir,
                       self.logs / f"supernode-{site}.log")

    def site_superexec(self, site: int) -> Managed:
        return Managed(f"superexec-clientapp-{site}",
                       [bin_path("flower-superexec"), *superexec_command(self.site_ports[site], None)],
                       {**self.base_env, "FLWR_HOME": str(self.tmp / f"site-{site}" / "exec-home")},
                       self.tmp / f"site-{site}", self.logs / f"superexec-clientapp-{site}.log")

    def start_site(self, site: int) -> Managed:
        self.sites[site] = self.cluster.start(self.site_process(site))
        if self.args.isolation == "process":
            self.execs[site] = self.cluster.start(self.site_superexec(site))
        return self.sites[site]

    # -- bring-up -------------------------------------------------------------------------------------------------
    def up(self, result: Result) -> None:
        """Certificates, the SuperLink, the registered keys and every site online; the unregistered node refused."""
        say, detail = self.console.say, self.console.detail
        make_certs(self.certs, self.nodes + 1)  # the last key pair is never registered
        write_profile(self.tmp / "cli", self.link_port, self.ca)
        self.start_superlink()
        say(f"SuperLink up on https://{HOST}:{self.link_port} (TLS, SuperNode auth, isolation {self.args.isolation})")
        for site in range(1, self.nodes + 1):
            answer = json_of(flwr(["supernode", "register", str(self.certs / f"supernode-{site}.pub"), PROFILE,
                                   "--name", f"site-{site}", "--format", "json"], self.cli_env))
            self.registered[site] = int(answer["node-id"])
        detail(f"registered SuperNode keys: {self.registered}")
        for site in range(1, self.nodes + 2):
            self.start_site(site)
        intruder = self.sites.pop(self.nodes + 1)
        listed = wait_online(self.cli_env, set(self.registered.values()), 90, self.cluster)
        result.nodes = sum(1 for n in listed if n.get("status") == "online")
        self.online_at = {int(n["node-id"]): n.get("online-at") for n in listed}
        say(f"{result.nodes} registered SuperNodes online")
        detail(f"SuperNodes online: {sorted(int(n['node-id']) for n in listed if n.get('status') == 'online')}")
        self._refuse(intruder, result)

    def _refuse(self, intruder: Managed, result: Result) -> None:
        """The unregistered node must never become a node of the federation (not listed); the logs say why."""
        deadline = time.monotonic() + 15
        while intruder.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        listed = {int(n["node-id"]) for n in node_list(self.cli_env)}
        result.refused = listed == set(self.registered.values())
        said = [line.strip() for line in intruder.log_text().splitlines()
                if re.search(r"Failed to activate SuperNode|Exit Code|unauthori[sz]ed", line, re.I)]
        link_said = [line.split("exception: ")[-1].strip() for line in self.link.log_text().splitlines()
                     if "No SuperNode found with the given public key" in line]
        state = f"exited {intruder.proc.returncode}" if intruder.proc.poll() is not None else "still retrying"
        self.console.say(f"unregistered SuperNode refused: {'yes' if result.refused else 'NO'}")
        link_says = link_said[-1] if link_said else "nothing"
        self.console.detail(f"(listed: {len(listed)} registered nodes; its process {state}; it says "
                            f"{' / '.join(said) or 'nothing'}; SuperLink says {link_says})")
        intruder.stop()
        if self.nodes + 1 in self.execs:
            self.execs.pop(self.nodes + 1).stop()

    # -- runs -----------------------------------------------------------------------------------------------------
    @staticmethod
    def config_of(args: argparse.Namespace, nodes: int, runs: Path, rounds: int, name: str | None = None,
                  resume: Path | None = None) -> dict[str, str]:
        """A run's Flower config: the tiny model on the synthetic tasks, one client per site, then --overrides."""
        from deploy_checks import synthetic_tasks

        overrides = [f"federation.num_clients={nodes}", f"federation.num_rounds={rounds}",
                     *synthetic_tasks(nodes), f"federation.runs_dir={runs}",
                     f"federation.reply_timeout={args.reply_timeout:g}", *([f"federation.name={name}"] if name else []),
                     args.overrides]
        config = {"model": "tiny", "scenario": "synthetic", "budget": "smoke", "overrides": " ".join(overrides).strip()}
        return {**config, "resume": str(resume)} if resume is not None else config

    def run_config(self, name: str | None = None, resume: Path | None = None) -> dict[str, str]:
        return self.config_of(self.args, self.nodes, self.runs, self.args.rounds, name, resume)

    def start_run(self, config: dict[str, str], marks: dict[str, re.Pattern[str]] | None = None) -> StreamedRun:
        """`flwr run . <profile> --stream` with ``config``; its lines go to the console (which shows round ends)."""
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())
        cmd = [bin_path("flwr"), "run", str(ROOT), PROFILE, "--stream", "--run-config", pairs]
        self.console.detail("$ " + " ".join(cmd))
        run = self.last_run = StreamedRun(cmd, self.cli_env, self.console.stream, marks)
        self.cluster.procs.append(Managed("flwr-run", cmd, self.cli_env, ROOT, self.logs / "flwr-run.log",
                                          proc=run.proc, known={run.proc.pid: start_time(run.proc.pid) or ""}))
        return run

    def flower_status(self) -> str:
        """Flower's status of the run started last, once it is no longer running (`flwr run --stream` can return
        while the ServerApp is still finishing)."""
        run = self.last_run
        if run is None:
            return "no run"
        status, details = run_status(self.cli_env, run.run_id)
        deadline = time.monotonic() + 180
        while status.startswith(("running", "starting", "pending")) and time.monotonic() < deadline:
            time.sleep(2)
            status, details = run_status(self.cli_env, run.run_id)
        self.console.detail(f"Flower run status: {status}{' (' + details + ')' if details else ''}")
        return status

    def watch(self) -> None:
        """Called often while a run goes: remember new child processes, sample each site's memory each second."""
        now = time.monotonic()
        if now - self._t_mem >= 1.0:
            self._t_mem = now
            for s, mb in site_memory_mb(self.tmp, self.sites).items():
                self.peak_mb[s] = max(mb, self.peak_mb.get(s, 0.0))
        self.cluster.refresh()

    def node_back(self, node_id: int) -> bool:
        """Whether the SuperLink activated ``node_id`` again since it was last seen: "online" alone proves nothing,
        the SuperLink keeps a vanished node online until its heartbeat lapses; a new activation time does."""
        return any(int(n["node-id"]) == node_id and n.get("status") == "online"
                   and n.get("online-at") != self.online_at.get(node_id) for n in node_list(self.cli_env))
