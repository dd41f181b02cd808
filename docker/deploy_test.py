"""`make deploy-test`: a real SuperLink and 3 SuperNodes as separate processes on loopback, TLS and SuperNode
authentication on, a short federation with the tiny model, and the outcome read from Flower's own run status.

Steps: demo certificates (docker/certs.sh) -> `flower-superlink` with TLS + `--enable-supernode-auth` ->
a Flower connection profile -> `flwr supernode register` for 3 public keys -> 3 `flower-supernode` processes
(`client-id=0..2` in their node config) plus a 4th with an unregistered key, which must be refused ->
`flwr run . <profile> --stream` -> `flwr ls <profile> --format json`. The command lines are the ones in
docker/flower_commands.py, which the compose files use too.

    python docker/deploy_test.py [--rounds N] [--kill-after-seconds S] [--keep] [--isolation process]

`--kill-after-seconds S` kills one SuperNode (and everything it started) with SIGKILL S seconds into round 2
and restarts it with the same key and client id `--restart-after-seconds` later, so it can rejoin.
Everything started here is stopped at the end, also on failure or Ctrl-C. The last line is
`deploy: rounds=<n> nodes=<m> killed=<k> status=<completed|failed> overhead_s=<s> round_s=<s> site_mb=<MB>`
(overhead_s: the median, over clients and rounds after the first, of the seconds from a ClientApp's start to its
round's first step: a deployed ClientApp is a fresh process per message, and the site's resident worker keeps the
model loaded; round_s: the server's mean seconds a round; site_mb: the most memory one site used, SuperNode,
ClientApps and worker); the exit code is 0 only when the run completed (and the unregistered node was refused).
`--nodes 12` is the load check: twelve sites on one machine (the synthetic tasks repeat past six).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: server_app.outcome
import flower_commands as fc  # noqa: E402 - docker/ is not a package
import processes  # noqa: E402
from deploy_checks import check_site_models, log, overhead, round_seconds, site_memory_mb, synthetic_tasks  # noqa: E402
from flower_cli import (  # noqa: E402
    HOST,
    PROFILE,
    ROOT,
    bin_path,
    flwr,
    json_of,
    node_list,
    run_status,
    wait_online,
    wait_superlink,
    write_profile,
)
from processes import Cluster, Managed  # noqa: E402

from server_app.outcome import read_outcome  # noqa: E402

NODES = 3
ROUND_2 = re.compile(r"round 2/\d+|round 1: mean score")  # the ServerApp's log: round 2 starts (or round 1 ended)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------------- steps

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
                   stdout=subprocess.DEVNULL)


# -------------------------------------------------------------------------------------------------- main

@dataclass
class Result:
    status: str = "failed"  # from Flower's run status: completed | failed
    nodes: int = 0  # registered SuperNodes online before the run
    killed: int = 0
    refused: bool = False  # the unregistered SuperNode was kept out
    rejoined: bool | None = None  # the killed SuperNode was let in again (with --kill-after-seconds)
    overhead_s: float = math.nan  # median over clients and rounds after the first: ClientApp start -> first step
    site_models: int = 0  # sites whose folder holds a personalized model that loads and generates
    site_mb: float = math.nan  # the largest memory one site used (SuperNode, its ClientApps and its worker; RSS)
    round_s: float = math.nan  # the server's mean seconds per round (the run's metrics.json)


def main(argv: list[str] | None = None) -> int:
    global NODES  # --nodes: the functions below read it
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=None,
                   help="federation rounds (default 2; 4 with --kill-after-seconds, so that the killed node, which "
                        "Flower lets back in only after its heartbeat lapses, surely has a round to rejoin)")
    p.add_argument("--kill-after-seconds", type=float, default=None,
                   help="SIGKILL one SuperNode this many seconds into round 2, then restart it")
    p.add_argument("--restart-after-seconds", type=float, default=8.0, help="restart the killed node after this")
    p.add_argument("--retry-seconds", type=float, default=5.0,
                   help="start the killed node again this long after a refused restart (like restart: on-failure)")
    p.add_argument("--nodes", type=int, default=NODES, help="registered SuperNodes (sites); default 3")
    p.add_argument("--kill-site", type=int, default=2, help="which site to kill (1..nodes)")
    p.add_argument("--reply-timeout", type=float, default=120.0,
                   help="federation.reply_timeout in seconds (each round starts a fresh ClientApp process: "
                        "~45 s per reply on a slow 2-core host)")
    p.add_argument("--isolation", choices=fc.ISOLATIONS, default="subprocess",
                   help="subprocess: SuperLink/SuperNodes start their SuperExec; process: separate SuperExec "
                        "processes as in docker/compose.yaml")
    p.add_argument("--overrides", default="", help="extra Hydra overrides for the run")
    p.add_argument("--timeout", type=float, default=600.0, help="give up on the run after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, state, runs)")
    args = p.parse_args(argv)
    NODES = args.nodes
    if not 1 <= args.kill_site <= NODES:
        p.error(f"--kill-site must be in 1..{NODES}")
    if args.rounds is None:
        args.rounds = 2 if args.kill_after_seconds is None else 4

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    tmp = Path(tempfile.mkdtemp(prefix="amole-deploy-"))
    cluster = Cluster()
    result = Result()
    t_start = time.monotonic()
    try:
        deploy(args, tmp, cluster, result)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({str(exc) or 'Ctrl-C'}); stopping everything")
    except Exception as exc:  # report, clean up, and fail with the last line all the same
        log(f"error: {type(exc).__name__}: {exc}")
    finally:
        cluster.stop_all()
        processes.stop_workers(tmp)
        log(f"stopped everything ({len(cluster.procs)} processes started, with their children); "
            f"{time.monotonic() - t_start:.0f} s in all")
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.kill_after_seconds is not None:
        log(f"killed node rejoined: {'yes' if result.rejoined else 'no'}")
    if result.status == "completed" and not result.refused:
        log("FAIL: the SuperNode with an unregistered key was not kept out")
    print(f"deploy: rounds={args.rounds} nodes={result.nodes} killed={result.killed} status={result.status} "
          f"overhead_s={result.overhead_s:.2f} round_s={result.round_s:.1f} site_mb={result.site_mb:.0f}", flush=True)
    return 0 if result.status == "completed" and result.refused and result.site_models == NODES else 1


def deploy(args: argparse.Namespace, tmp: Path, cluster: Cluster, result: Result) -> None:
    """The whole check; `result` is filled in as it goes, so a failure still reports what happened."""
    certs = tmp / "certs"
    make_certs(certs, NODES + 1)  # the last key pair is never registered
    ca = certs / "ca.crt"
    link_port = free_port()
    venv_bin = str(Path(sys.executable).parent)  # SuperLink and SuperNodes start flower-superexec by name
    base_env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
                "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    base_env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)  # the flag must do it, as in compose
    cli_env = {**base_env, "FLWR_HOME": str(tmp / "cli")}
    write_profile(tmp / "cli", link_port, ca)

    link_dir = tmp / "superlink"
    link_cmd = superlink_command(link_port, certs, link_dir, args.isolation)
    link = cluster.start(Managed("superlink", [bin_path("flower-superlink"), *link_cmd],
                                 {**base_env, "FLWR_HOME": str(link_dir / "home")}, link_dir,
                                 tmp / "logs" / "superlink.log"))
    wait_superlink(link_port, ca, link)
    log(f"SuperLink up on https://{HOST}:{link_port} (TLS, SuperNode auth, isolation {args.isolation})")
    if args.isolation == "process":
        cluster.start(Managed("superexec-serverapp",
                              [bin_path("flower-superexec"), *superexec_command(link_port, ca)],
                              {**base_env, "FLWR_HOME": str(link_dir / "exec-home")}, link_dir,
                              tmp / "logs" / "superexec-serverapp.log"))

    registered: dict[int, int] = {}  # site -> node id
    for site in range(1, NODES + 1):
        answer = json_of(flwr(["supernode", "register", str(certs / f"supernode-{site}.pub"), PROFILE,
                               "--name", f"site-{site}", "--format", "json"], cli_env))
        registered[site] = int(answer["node-id"])
    log(f"registered SuperNode keys: {registered}")

    def site_process(site: int) -> Managed:
        site_dir = tmp / f"site-{site}"
        cmd = supernode_command(site, link_port, site_ports[site], certs, args.isolation, site_dir / "sites")
        return Managed(f"supernode-{site}", [bin_path("flower-supernode"), *cmd],
                       {**base_env, "FLWR_HOME": str(site_dir / "home")}, site_dir,
                       tmp / "logs" / f"supernode-{site}.log")

    def site_superexec(site: int) -> Managed:
        cmd = superexec_command(site_ports[site], None)
        return Managed(f"superexec-clientapp-{site}", [bin_path("flower-superexec"), *cmd],
                       {**base_env, "FLWR_HOME": str(tmp / f"site-{site}" / "exec-home")}, tmp / f"site-{site}",
                       tmp / "logs" / f"superexec-clientapp-{site}.log")

    site_ports = {site: free_port() for site in range(1, NODES + 2)}
    sites: dict[int, Managed] = {}
    execs: dict[int, Managed] = {}  # --isolation process: each site's ClientApp SuperExec
    for site in range(1, NODES + 2):
        sites[site] = cluster.start(site_process(site))
        if args.isolation == "process":
            execs[site] = cluster.start(site_superexec(site))
    intruder = sites.pop(NODES + 1)

    nodes = wait_online(cli_env, set(registered.values()), 90, cluster)
    result.nodes = sum(1 for n in nodes if n.get("status") == "online")
    online_at = {int(n["node-id"]): n.get("online-at") for n in nodes}
    log(f"SuperNodes online: {sorted(int(n['node-id']) for n in nodes if n.get('status') == 'online')}")

    # The unregistered node: it must never become a node of the federation (not listed), and the logs say why.
    deadline = time.monotonic() + 15
    while intruder.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    listed = {int(n["node-id"]) for n in node_list(cli_env)}
    refused = result.refused = listed == set(registered.values())
    said = [line.strip() for line in intruder.log_text().splitlines()
            if re.search(r"Failed to activate SuperNode|Exit Code|unauthori[sz]ed", line, re.I)]
    link_said = [line.split("exception: ")[-1].strip() for line in link.log_text().splitlines()
                 if "No SuperNode found with the given public key" in line]
    state = f"exited {intruder.proc.returncode}" if intruder.proc.poll() is not None else "still retrying"
    log(f"unregistered SuperNode refused: {'yes' if refused else 'NO'} (listed: {len(listed)} registered nodes; "
        f"its process {state}; it says {' / '.join(said) or 'nothing'}; "
        f"SuperLink says {link_said[-1] if link_said else 'nothing'})")
    intruder.stop()
    if NODES + 1 in execs:
        execs.pop(NODES + 1).stop()

    run_config = {
        "model": "tiny", "scenario": "synthetic", "budget": "smoke",
        "overrides": " ".join([f"federation.num_clients={NODES}", f"federation.num_rounds={args.rounds}",
                               *synthetic_tasks(NODES),
                               f"federation.runs_dir={tmp / 'runs'}",
                               f"federation.reply_timeout={args.reply_timeout:g}", args.overrides]).strip(),
    }
    pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
    cmd = [bin_path("flwr"), "run", str(ROOT), PROFILE, "--stream", "--run-config", pairs]
    log("$ " + " ".join(cmd))
    run_log_path = tmp / "logs" / "flwr-run.log"
    run_log = open(run_log_path, "w")  # noqa: SIM115 - closed below
    runner = subprocess.Popen(cmd, env=cli_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, text=True, bufsize=1, start_new_session=True)
    cluster.procs.append(Managed("flwr-run", cmd, cli_env, ROOT, tmp / "logs" / "flwr-run.log", proc=runner,
                                known={runner.pid: processes.start_time(runner.pid) or ""}))
    round2 = threading.Event()

    def pump() -> None:
        for line in runner.stdout:
            sys.stdout.write("  | " + line)
            sys.stdout.flush()
            run_log.write(line)
            if ROUND_2.search(line):
                round2.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    t_run = time.monotonic()
    site, node_id = args.kill_site, registered[args.kill_site]
    killed, t_kill, restarts, t_restart, t_check, rejoined_at = 0, None, 0, 0.0, 0.0, None
    peak_mb: dict[int, float] = {}
    t_mem = 0.0
    while runner.poll() is None:
        now = time.monotonic()
        if now - t_mem >= 1.0:
            t_mem = now
            for s, mb in site_memory_mb(tmp, sites).items():
                peak_mb[s] = max(mb, peak_mb.get(s, 0.0))
        if now - t_run > args.timeout:
            log(f"the run did not finish within {args.timeout:.0f} s; giving up")
            break
        if args.kill_after_seconds is not None and round2.is_set() and not killed:
            t_kill = t_kill or now + args.kill_after_seconds
            if now >= t_kill:
                for m in [sites[site], execs.get(site)]:
                    if m is not None:
                        m.kill()
                killed, t_kill = 1, now
                result.killed = killed
                log(f"killed site {site}: SIGKILL to SuperNode {node_id} and every process it started, "
                    f"{now - t_run:.1f} s into the run")
        if killed and rejoined_at is None:
            victim = sites[site]
            if restarts == 0 and now - t_kill >= args.restart_after_seconds:
                sites[site] = cluster.start(site_process(site))
                if site in execs:
                    execs[site] = cluster.start(site_superexec(site))
                restarts, t_restart = 1, now
                log(f"restarted site {site} with the same key and client-id={site - 1}")
            elif restarts and victim.proc.poll() is not None and now - t_restart >= args.retry_seconds:
                # Flower keeps a vanished node "online" until its heartbeat lapses (2 x 30 s in 1.41) and refuses
                # to activate it again before that; the SuperNode then exits (code 305) instead of retrying.
                sites[site] = cluster.start(site_process(site))
                restarts, t_restart = restarts + 1, now
                if restarts == 2:
                    log(f"SuperNode {node_id} was refused: the SuperLink still counts it online until its heartbeat "
                        f"lapses; starting it every {args.retry_seconds:g} s until it is let in")
            elif restarts and victim.proc.poll() is None and now - t_check >= 3:
                t_check = now
                # "online" alone proves nothing: the SuperLink keeps the killed node online until its heartbeat
                # lapses. A new activation time does.
                if any(int(n["node-id"]) == node_id and n.get("status") == "online"
                       and n.get("online-at") != online_at[node_id] for n in node_list(cli_env)):
                    rejoined_at = now
                    log(f"SuperNode {node_id} is online again, {now - t_kill:.0f} s after the kill "
                        f"({restarts} start{'s' if restarts > 1 else ''})")
        cluster.refresh()
        time.sleep(0.2)
    reader.join(timeout=10)
    run_log.close()
    log(f"flwr run exited {runner.poll()} after {time.monotonic() - t_run:.0f} s")

    flower_status, details = run_status(cli_env)
    deadline = time.monotonic() + 180  # `flwr run --stream` can return while the ServerApp is still finishing
    while flower_status.startswith(("running", "starting", "pending")) and time.monotonic() < deadline:
        time.sleep(2)
        flower_status, details = run_status(cli_env)
    log(f"Flower run status: {flower_status}{' (' + details + ')' if details else ''}")
    if killed:
        result.rejoined = rejoined_at is not None
        rejoin_lines = [line for line in run_log_path.read_text().splitlines() if re.search(r"rejoin|returned", line)]
        if rejoin_lines:
            log(f"the ServerApp on the returning node: {rejoin_lines[-1].strip()}")
    reports = sorted((tmp / "runs").glob("*/report.md"))
    if reports and args.keep:
        log(f"run report: {reports[-1]}")
    result.overhead_s = overhead(tmp / "runs", tmp)
    result.site_mb = max(peak_mb.values(), default=math.nan)
    if peak_mb:
        log("peak memory per site (MB, SuperNode + ClientApps + worker): "
            + ", ".join(f"{s}: {mb:.0f}" for s, mb in sorted(peak_mb.items())))
    result.round_s = round_seconds(tmp / "runs")
    result.site_models = check_site_models(tmp, NODES)
    # Flower reports a run whose ServerApp raised as completed: the run's own record decides (server_app/outcome.py)
    runs = sorted((tmp / "runs").glob("*/"))
    outcome = read_outcome(runs[-1]) if runs else {"status": "failed", "error": f"no run folder in {tmp / 'runs'}"}
    if outcome["status"] != "completed":
        log(f"the run failed: {outcome['error']}")
    result.status = "completed" if outcome["status"] == "completed" and flower_status.endswith(":completed") \
        else "failed"


if __name__ == "__main__":
    sys.exit(main())
