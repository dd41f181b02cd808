"""`make deploy-test`: a real SuperLink and 3 SuperNodes as separate processes on loopback, TLS and SuperNode
authentication on, a short federation with the tiny model, and the outcome read from the run's own record.

Steps (docker/deployment.py): demo certificates (docker/certs.sh) -> `flower-superlink` with TLS +
`--enable-supernode-auth` -> a Flower connection profile -> `flwr supernode register` for 3 public keys -> 3
`flower-supernode` processes (`client-id=0..2` in their node config) plus a 4th with an unregistered key, which
must be refused -> `flwr run . <profile> --stream` -> the run's outcome.json and `flwr ls <profile> --format json`.
The command lines are the ones in docker/flower_commands.py, which the compose files use too.

    python docker/deploy_test.py [--rounds N] [--kill-after-seconds S] [--restart-server [--compare]]
                                 [--keep] [--verbose] [--isolation process] [--overrides "k=v ..."]

`--kill-after-seconds S` kills one SuperNode (and everything it started) with SIGKILL S seconds into round 2
and restarts it with the same key and client id `--restart-after-seconds` later, so it can rejoin.
`--restart-server` (`make deploy-restart`, docker/deploy_restart.py) kills the SuperLink with its ServerApp
instead, S seconds into the round after `--kill-after-round`, starts it again on the same state, certificates
and keys, and resumes the run from its folder (`resume=<run folder>`) while the SuperNodes keep running;
`--compare` first runs the same federation uninterrupted and compares the two runs' final experts.

The console shows what is done, one line per round and the verdict; everything else (Flower's and the processes'
logs, per-client figures) goes to a log folder whose path is printed (`--verbose` shows it all). A config the
server would refuse is refused before anything starts (exit 2, its one line). Everything started here is stopped
at the end, also on failure or Ctrl-C. The last line is
`deploy: rounds=<n> nodes=<m> killed=<k> status=<completed|failed> overhead_s=<s> round_s=<s> site_mb=<MB>`
(with `--restart-server`: `superlink_restarts=<r>` after `killed`, and `experts_equal=yes|no max_diff=<d>` with
`--compare`; overhead_s: the median, over clients and rounds after the first, of the seconds from a ClientApp's
start to its round's first step; round_s: the server's mean seconds a round; site_mb: the most memory one site
used, SuperNode, ClientApps and worker); the exit code is 0 only when the run completed (and the unregistered
node was refused, and with --compare the experts are equal). `--nodes 12` is the load check.
"""

from __future__ import annotations

import argparse
import math
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout: server_app.outcome
import deploy_console  # noqa: E402 - docker/ is not a package
import flower_commands as fc  # noqa: E402
import processes  # noqa: E402
from deploy_checks import (  # noqa: E402
    check_site_models,
    judge,
    overhead,
    preflight,
    round_seconds,
    run_id_of,
)
from deploy_console import Console  # noqa: E402
from deployment import (  # noqa: E402, F401 - the command builders are this module's API (tests, compose_test)
    Deployment,
    Result,
    free_port,
    make_certs,
    superexec_command,
    superlink_command,
    supernode_command,
)
from flower_cli import ROOT, bin_path, flwr, json_of  # noqa: E402, F401 - compose_test reads them from here
from processes import Cluster  # noqa: E402

ROUND_2 = re.compile(r"round 2/\d+|round 1: mean score")  # the ServerApp's log: round 2 starts


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=None,
                   help="federation rounds (default 2; 4 with --kill-after-seconds or --restart-server, so that the "
                        "killed node, which Flower lets back in only after its heartbeat lapses, surely has a round "
                        "to rejoin, and a resumed run has rounds left)")
    p.add_argument("--kill-after-seconds", type=float, default=None,
                   help="SIGKILL one SuperNode this many seconds into round 2, then restart it (with --restart-server: "
                        "the SuperLink, this many seconds into the round after --kill-after-round; default 2)")
    p.add_argument("--restart-after-seconds", type=float, default=8.0, help="restart the killed process after this")
    p.add_argument("--retry-seconds", type=float, default=5.0,
                   help="start the killed node again this long after a refused restart (like restart: on-failure)")
    p.add_argument("--restart-server", action="store_true",
                   help="kill the SuperLink with its ServerApp mid-round instead of a SuperNode, start it again and "
                        "resume the run from its folder")
    p.add_argument("--kill-after-round", type=int, default=2,
                   help="--restart-server: kill once this round is checkpointed, in the next round")
    p.add_argument("--compare", action="store_true",
                   help="--restart-server: first run the same federation uninterrupted; the final experts must equal")
    p.add_argument("--nodes", type=int, default=3, help="registered SuperNodes (sites); default 3")
    p.add_argument("--kill-site", type=int, default=2, help="which site to kill (1..nodes)")
    p.add_argument("--reply-timeout", type=float, default=120.0,
                   help="federation.reply_timeout in seconds (each round starts a fresh ClientApp process: "
                        "~45 s per reply on a slow 2-core host)")
    p.add_argument("--isolation", choices=fc.ISOLATIONS, default="subprocess",
                   help="subprocess: SuperLink/SuperNodes start their SuperExec; process: separate SuperExec "
                        "processes as in docker/compose.yaml")
    p.add_argument("--overrides", default="", help="extra Hydra overrides for the run")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the config check before starting (to see the deployment itself refuse a bad config)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up on the run after this many seconds")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="where the log folder goes (default runs/deploy-test/<time>/ in the checkout)")
    p.add_argument("--verbose", action="store_true", help="show everything on the terminal, not just the rounds")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (state, runs, site folders)")
    args = p.parse_args(argv)
    if not 1 <= args.kill_site <= args.nodes:
        p.error(f"--kill-site must be in 1..{args.nodes}")
    if args.compare and not args.restart_server:
        p.error("--compare goes with --restart-server")
    if args.restart_server and args.kill_after_seconds is None:
        args.kill_after_seconds = 2.0
    if args.rounds is None:
        args.rounds = 2 if args.kill_after_seconds is None else 4
    if args.restart_server and not 1 <= args.kill_after_round < args.rounds:
        p.error(f"--kill-after-round must be in 1..{args.rounds - 1}")
    return args


def plan(args: argparse.Namespace) -> str:
    """What this invocation does, in one line."""
    what = f"a SuperLink and {args.nodes} SuperNodes on loopback (TLS, node auth), tiny model, {args.rounds} rounds"
    if args.restart_server:
        what += (f"; the SuperLink and its ServerApp killed {args.kill_after_seconds:g} s into round "
                 f"{args.kill_after_round + 1}, started again, the run resumed from its checkpoint")
        if args.compare:
            what += "; its final experts compared with an uninterrupted run's"
    elif args.kill_after_seconds is not None:
        what += f"; site {args.kill_site} killed {args.kill_after_seconds:g} s into round 2 and restarted"
    return what


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logs = (args.log_dir or ROOT / "runs" / "deploy-test" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    console = deploy_console.use(Console("deploy-test", logs / "deploy.log", args.verbose))
    console.say(plan(args))
    console.say(f"details: {logs}/ (deploy.log, each process's log)")
    if not args.no_preflight:
        tmp_runs = Path(tempfile.gettempdir()) / "amole-deploy-preflight"
        config = Deployment.config_of(args, args.nodes, tmp_runs, args.rounds)
        error = preflight([f"{k}={v}" for k, v in config.items() if k != "overrides"]
                          + shlex.split(config["overrides"]))
        if error is not None:
            console.print(f"deploy-test: the server refuses this config: {error}")
            return 2

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored (`cmd &`)
    tmp = Path(tempfile.mkdtemp(prefix="amole-deploy-"))
    cluster = Cluster()
    result = Result()
    t_start = time.monotonic()
    try:
        dep = Deployment(args, tmp, logs, cluster, console)
        dep.up(result)
        if args.restart_server:
            from deploy_restart import federate_with_restart

            run_dir = federate_with_restart(dep, result)
        else:
            run_dir = federate(dep, result)
        finish(dep, result, run_dir)
    except KeyboardInterrupt as exc:
        console.say(f"interrupted ({str(exc) or 'Ctrl-C'}); stopping everything")
    except Exception as exc:  # report, clean up, and fail with the last line all the same
        console.say(f"error: {type(exc).__name__}: {exc}")
    finally:
        cluster.stop_all()
        processes.stop_workers(tmp)
        console.detail(f"stopped everything ({len(cluster.procs)} processes started, with their children)")
        if args.keep:
            console.say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    ok = result.status == "completed" and result.refused and result.site_models == args.nodes
    if result.status == "completed" and not result.refused:
        console.say("FAIL: the SuperNode with an unregistered key was not kept out")
    if args.compare and result.experts_equal is not True:
        ok = False
    console.say(f"{'done' if ok else 'FAILED'} in {time.monotonic() - t_start:.0f} s; details in {logs}/deploy.log")
    console.print(summary(args, result))
    console.close()
    return 0 if ok else 1


def summary(args: argparse.Namespace, result: Result) -> str:
    """The last line."""
    restarts = f" superlink_restarts={result.superlink_restarts}" if args.restart_server else ""
    compared = ""
    if args.compare:
        equal = {True: "yes", False: "no", None: "n/a"}[result.experts_equal]
        compared = f" experts_equal={equal} max_diff={result.max_diff:.3g}"
    return (f"deploy: rounds={args.rounds} nodes={result.nodes} killed={result.killed}{restarts} "
            f"status={result.status}{compared} overhead_s={result.overhead_s:.2f} round_s={result.round_s:.1f} "
            f"site_mb={result.site_mb:.0f}")


def federate(dep: Deployment, result: Result) -> Path | None:
    """One run; with --kill-after-seconds one site is killed mid-round 2 and started again until it is let in."""
    args, say = dep.args, dep.console.say
    name = "deploy-test"
    run = dep.start_run(dep.run_config(name), {"round2": ROUND_2})
    t_run = time.monotonic()
    site = args.kill_site
    node_id = dep.registered[site]
    killed, t_kill, restarts, t_restart, t_check, rejoined_at = 0, None, 0, 0.0, 0.0, None
    while run.running():
        now = time.monotonic()
        dep.watch()
        if now - t_run > args.timeout:
            say(f"the run did not finish within {args.timeout:.0f} s; giving up")
            break
        if args.kill_after_seconds is not None and run.seen["round2"].is_set() and not killed:
            t_kill = t_kill or now + args.kill_after_seconds
            if now >= t_kill:
                for m in [dep.sites[site], dep.execs.get(site)]:
                    if m is not None:
                        m.kill()
                killed, t_kill = 1, now
                result.killed = killed
                say(f"killed site {site}: SIGKILL to its SuperNode and every process it started, "
                    f"{now - t_run:.1f} s into the run")
        if killed and rejoined_at is None:
            victim = dep.sites[site]
            if restarts == 0 and now - t_kill >= args.restart_after_seconds:
                dep.start_site(site)
                restarts, t_restart = 1, now
                say(f"restarted site {site} with the same key and client-id={site - 1}")
            elif restarts and victim.proc.poll() is not None and now - t_restart >= args.retry_seconds:
                # Flower keeps a vanished node "online" until its heartbeat lapses (2 x 30 s in 1.41) and refuses
                # to activate it again before that; the SuperNode then exits (code 305) instead of retrying.
                dep.sites[site] = dep.cluster.start(dep.site_process(site))
                restarts, t_restart = restarts + 1, now
                if restarts == 2:
                    dep.console.detail(f"SuperNode {node_id} was refused: the SuperLink still counts it online until "
                                       f"its heartbeat lapses; starting it every {args.retry_seconds:g} s")
            elif restarts and victim.proc.poll() is None and now - t_check >= 3:
                t_check = now
                if dep.node_back(node_id):
                    rejoined_at = now
                    say(f"site {site} is online again, {now - t_kill:.0f} s after the kill "
                        f"({restarts} start{'s' if restarts > 1 else ''}; Flower lets it in once its heartbeat lapses)")
        time.sleep(0.2)
    code = run.finish()
    dep.console.detail(f"flwr run exited {code} after {time.monotonic() - t_run:.0f} s")
    if killed:
        result.rejoined = rejoined_at is not None
        if not result.rejoined:
            say("FAIL: the killed site was not let in again")
    return dep.runs / name


def finish(dep: Deployment, result: Result, run_dir: Path | None) -> None:
    """Judge the run by its own record and Flower's status, then the measurements and each site's kept model."""
    status, error = judge(run_dir if run_dir is not None and run_dir.is_dir() else None, dep.flower_status())
    result.status, result.error = status, error
    if error is not None:
        dep.console.say(f"the run failed: {error}")
        return
    dep.console.detail(f"run report: {run_dir / 'report.md'}")
    result.overhead_s = overhead(run_dir, dep.tmp)
    result.site_mb = max(dep.peak_mb.values(), default=math.nan)
    if dep.peak_mb:
        dep.console.detail("peak memory per site (MB, SuperNode + ClientApps + worker): "
                           + ", ".join(f"{s}: {mb:.0f}" for s, mb in sorted(dep.peak_mb.items())))
    result.round_s = round_seconds(run_dir)
    with dep.console.quiet():
        result.site_models = check_site_models(dep.tmp, dep.nodes, run_id_of(run_dir))


if __name__ == "__main__":
    sys.exit(main())
