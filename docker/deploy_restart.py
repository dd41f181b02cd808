"""`make deploy-restart`: the server side fails mid-run. The SuperLink and the ServerApp it started are killed
(SIGKILL, every process) a few seconds into the round after `--kill-after-round`, once that round is checkpointed;
the SuperLink is started again with the same state database, certificates and registered keys; the SuperNodes keep
running and reconnect by themselves (Flower retries with backoff); `flwr run` starts a new run with
`resume=<run folder>` and the same config, and the ServerApp continues from the checkpoint. The interrupted round
is done again: the checkpoint holds the state after the last finished round, and nothing of a half-done round is
kept. The sites keep their folders (kept models, private adapters) and their resident workers: amole's run id is
in the checkpoint, so the resumed run is the same run to them.

With `--compare` the same federation first runs uninterrupted on the same processes (another run, same seed),
and the two runs' final checkpoints are compared: the expert bank must be bit-equal (every client's randomness is
seeded by run seed, round and client id, the server's RNG state is checkpointed). Imported by docker/deploy_test.py.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

from deploy_checks import compare_experts, judge, worker_starts
from flower_cli import StreamedRun

if TYPE_CHECKING:
    from deployment import Deployment, Result

REFERENCE, RESTARTED = "deploy-reference", "deploy-restart"
# A SuperNode's log after the kill: any of these needs an answer from the SuperLink (a retried call that got through;
# a message received or sent; a reply to the interrupted run refused because that run was stopped).
RECONNECTED = re.compile(r"Connection successful|Received successfully|Sent successfully|is not in `RUNNING` status")


def checkpoint_round(run_dir: Path) -> int:
    """The last round the run folder's checkpoint holds (0: none yet)."""
    import json

    from safetensors import safe_open

    path = run_dir / "checkpoint.safetensors"
    if not path.is_file():
        return 0
    with contextlib.suppress(Exception), safe_open(str(path), framework="pt") as f:  # mid-write: try again later
        return int(json.loads((f.metadata() or {})["amole_checkpoint"])["round"])
    return 0


def wait_run(dep: Deployment, run: StreamedRun, timeout: float) -> None:
    """Until `flwr run` returns (or ``timeout``), watching the processes meanwhile."""
    t0 = time.monotonic()
    while run.running():
        dep.watch()
        if time.monotonic() - t0 > timeout:
            dep.console.say(f"the run did not finish within {timeout:.0f} s; giving up")
            return
        time.sleep(0.2)
    run.finish()


def federate_with_restart(dep: Deployment, result: Result) -> Path:
    """The run with the SuperLink killed and started again; returns its folder (judged by the caller)."""
    args, say = dep.args, dep.console.say
    reference = dep.runs / REFERENCE
    if args.compare:
        t0 = time.monotonic()
        say("reference: the same federation, uninterrupted (its rounds are in the log)")
        dep.console.muted = True  # its round lines would repeat the run's below
        try:
            wait_run(dep, dep.start_run(dep.run_config(REFERENCE)), args.timeout)
        finally:
            dep.console.muted = False
        status, error = judge(reference, dep.flower_status())
        if error is not None:
            raise RuntimeError(f"the uninterrupted reference run failed: {error}")
        say(f"reference run completed in {time.monotonic() - t0:.0f} s")
    run_dir = dep.runs / RESTARTED
    starts_before = worker_starts(dep.tmp)
    kill_round = args.kill_after_round + 1
    run = dep.start_run(dep.run_config(RESTARTED), {"next": re.compile(rf"round {kill_round}/\d+")})
    t_run, t_kill = time.monotonic(), None
    while True:
        now = time.monotonic()
        dep.watch()
        if not run.running():
            run.finish()
            raise RuntimeError(f"the run ended before round {kill_round} began, so the SuperLink was never killed")
        if now - t_run > args.timeout:
            raise RuntimeError(f"round {kill_round} did not begin within {args.timeout:.0f} s")
        if t_kill is None and run.seen["next"].is_set() and checkpoint_round(run_dir) >= args.kill_after_round:
            t_kill = now + args.kill_after_seconds
        if t_kill is not None and now >= t_kill:
            break
        time.sleep(0.2)
    kill_server(dep, run, kill_round)
    at_kill = dep.tmp / "checkpoint-at-kill.safetensors"  # to show the experts still moved after the restart
    shutil.copyfile(run_dir / "checkpoint.safetensors", at_kill)
    offsets = {site: len(dep.sites[site].log_text()) for site in dep.registered}
    time.sleep(args.restart_after_seconds)
    t_up = time.monotonic()
    dep.start_superlink()
    stop_interrupted(dep)
    result.superlink_restarts += 1
    say("SuperLink started again on the same state database, certificates and registered keys")
    reconnect(dep, offsets, t_up)
    resumed = dep.start_run(dep.run_config(resume=run_dir))
    wait_run(dep, resumed, args.timeout)
    starts = {s: n - starts_before.get(s, 0) for s, n in worker_starts(dep.tmp).items()}
    dep.console.detail(f"resident workers started per site in this run: {starts}")
    if starts and all(n == 1 for n in starts.values()):
        say("every site kept its resident worker (model loaded) through the restart")
    if args.compare and (run_dir / "checkpoint.safetensors").is_file():
        result.experts_equal, result.max_diff = compare_experts(reference, run_dir)
        moved = compare_experts(at_kill, run_dir)[1]
        say(f"final experts {'equal' if result.experts_equal else 'DIFFER from'} the uninterrupted run's "
            f"(largest absolute difference {result.max_diff:.3g}; rounds {kill_round}-{args.rounds} moved them by "
            f"up to {moved:.3g})")
    return run_dir


def kill_server(dep: Deployment, run: StreamedRun, kill_round: int) -> None:
    """SIGKILL to the SuperLink and everything it started (its SuperExec, the ServerApp), and to `flwr run`."""
    dep.cluster.refresh()
    pids = dep.link.alive_pids() + (dep.link_exec.alive_pids() if dep.link_exec else [])
    serverapps = [pid for pid in pids if b"flwr-serverapp" in _cmdline(pid)]
    done = checkpoint_round(dep.runs / RESTARTED)
    for m in [dep.link, dep.link_exec, *(m for m in dep.cluster.procs if m.proc is run.proc)]:
        if m is not None:
            m.kill()
    deadline = time.monotonic() + 10
    while (left := [pid for pid in serverapps if _cmdline(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)  # SIGKILL is sent; the kernel takes a moment to reap
    if left:
        raise RuntimeError(f"the ServerApp (pid {left}) outlived the SuperLink's kill")
    dep.console.say(f"killed the SuperLink and its ServerApp (SIGKILL to {len(pids)} processes, ServerApp pid "
                    f"{', '.join(map(str, serverapps)) or 'not found'}) {dep.args.kill_after_seconds:g} s into round "
                    f"{kill_round}; the run folder holds round {done}'s checkpoint")


def stop_interrupted(dep: Deployment) -> None:
    """The SuperLink comes back with the interrupted Flower run still "running" in its state and hands its undelivered
    messages to the SuperNodes as they reconnect (replies go to a ServerApp that is gone): `flwr stop` it."""
    from flower_cli import PROFILE, flwr, json_of

    runs = json_of(flwr(["ls", PROFILE, "--format", "json"], dep.cli_env)).get("runs", [])
    for run in runs:
        if str(run.get("status", "")).startswith(("running", "starting", "pending")):
            flwr(["stop", str(run["run-id"]), PROFILE], dep.cli_env, check=False)
            dep.console.detail(f"stopped the interrupted Flower run {run['run-id']} ({run.get('status')})")


def reconnect(dep: Deployment, offsets: dict[int, int], t_up: float, timeout: float = 180) -> None:
    """Until every site's SuperNode reaches the new SuperLink: its own log shows an exchange with it after the
    kill (it keeps its node id, so the SuperLink shows no new activation); a SuperNode that gave up is started
    again (as `restart: on-failure` would) and counts once the SuperLink activates it anew."""
    waiting = dict(dep.registered)
    restarted: list[int] = []
    while waiting:
        if time.monotonic() - t_up > timeout:
            raise TimeoutError(f"sites {sorted(waiting)} did not reconnect within {timeout:.0f} s of the restart")
        for site in list(waiting):
            if dep.sites[site].proc.poll() is not None:
                dep.console.detail(f"site {site}'s SuperNode exited ({dep.sites[site].proc.returncode}); "
                                   "starting it again")
                dep.start_site(site)
                restarted.append(site)
            elif site in restarted:
                if dep.node_back(waiting[site]):
                    del waiting[site]
            elif RECONNECTED.search(dep.sites[site].log_text()[offsets[site]:]):
                del waiting[site]
        dep.cluster.refresh()
        time.sleep(1.0)
    how = f"site {', '.join(map(str, restarted))} started again" if restarted else "the same processes, none restarted"
    dep.console.say(f"all {len(dep.registered)} SuperNodes reconnected {time.monotonic() - t_up:.0f} s after the "
                    f"restart ({how})")


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""
