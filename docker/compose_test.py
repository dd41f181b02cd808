"""`make compose-test`: the docker compose demo for real: images built from the project's Dockerfile, a SuperLink
and 3 sites (SuperNode + ClientApp SuperExec each) in containers with the TLS + SuperNode-auth overlay, a short
federation with the tiny model, one site's containers killed mid-round and started again, and the outcome read
from Flower's run status.

Steps: demo certificates (docker/certs.sh) in a temporary folder -> `docker compose build` -> the SuperLink ->
`flwr supernode register` for the 3 sites' keys -> every service up, 3 nodes online -> `flwr run . <profile>
--stream` (model=tiny, scenario=synthetic, budget=smoke) -> SIGKILL to site 2's containers S seconds into round
2, `docker compose start` of them R seconds later (Flower refuses the SuperNode until its heartbeat lapses; the
restart policy starts it again until it is let in) -> `flwr ls --format json` -> `docker compose down -v`.

    python docker/compose_test.py [--images auto|flower|project] [--torch-source auto|index|wheelhouse]
                                  [--rounds N] [--kill-after-seconds S] [--overrides "k=v ..."] [--keep] [--verbose]

`--images auto` uses Flower's flwr/superlink and flwr/supernode where they are present or can be pulled, else
the project image (docker/project-images.env). `--torch-source auto` builds from docker/wheels/ when a torch
wheel is there or `pip download` can put one there, else from the PyTorch CPU index. The compose project is
`amole-compose-test`, apart from a demo you may run as `amole`. Everything it started is torn down at the end
(volumes included), also on failure or Ctrl-C. A config the server would refuse is refused before any image is
built (exit 2, its one line). The console shows what is done, one line per round and the verdict; the build, the
containers' logs and Flower's output go to a log folder whose path is printed (`--verbose` shows it all). The
run is judged by the line the strategy logs as it records the run's outcome (the run folder is inside the
ServerApp's container) and Flower's status. The last line is
`compose: sites=3 killed=<k> status=<completed|failed> rounds=<n>`; the exit code is 0 only when completed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_console  # noqa: E402 - docker/ is not a package
import deploy_test as dt  # noqa: E402 - shares the flwr CLI helpers
from deploy_checks import judge_log, preflight  # noqa: E402
from deploy_console import Console, detail, say  # noqa: E402
from flower_cli import StreamedRun  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PROJECT = "amole-compose-test"
PROFILE = "amole-compose-test"
SITES = 3
FLOWER_IMAGES = ("flwr/superlink", "flwr/supernode")
SYNTHETIC_TASKS = ("reverse", "upper", "copy")  # conf/scenario/synthetic.yaml: generated, nothing to download



def flwr_pin() -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d.split("==")[0].split("[")[0]: d.split("==")[1] for d in deps}["flwr"]


def torch_pin() -> str:
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {d.split("==")[0]: d.split("==")[1] for d in deps}["torch"]


def run(cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True, capture: bool = False,
        timeout: float | None = None) -> subprocess.CompletedProcess:
    """A command; its output captured, or (the build) in the log file unless --verbose."""
    sink = None if capture else deploy_console.sink()
    out = subprocess.run(cmd, env=env, cwd=ROOT, text=True, capture_output=capture, timeout=timeout, check=False,
                         stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT if sink else None)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}" + (f": {out.stderr[-2000:]}" if capture else ""))
    return out


@dataclass
class Compose:
    """`docker compose -p amole-compose-test -f compose.yaml -f compose.tls.yaml ...` with this test's settings."""

    env: dict[str, str]

    def __call__(self, *args: str, check: bool = True, capture: bool = False,
                 timeout: float | None = None) -> subprocess.CompletedProcess:
        files = ["-f", str(DOCKER / "compose.yaml"), "-f", str(DOCKER / "compose.tls.yaml")]
        return run(["docker", "compose", "-p", PROJECT, *files, *args], env=self.env, check=check, capture=capture,
                   timeout=timeout)


# ------------------------------------------------------------------------------------------------- choices

def choose_images(mode: str, version: str) -> str:
    """flower | project: Flower's images if present or pullable (auto), else the project image."""
    if mode != "auto":
        return mode
    images = [f"{name}:{version}" for name in FLOWER_IMAGES]
    for image in images:
        if run(["docker", "image", "inspect", image], check=False, capture=True).returncode == 0:
            continue
        pulled = run(["docker", "pull", "-q", image], check=False, capture=True, timeout=120)
        if pulled.returncode != 0:
            say(f"{image} cannot be pulled here; SuperLink and SuperNodes run from the project image")
            detail(f"docker pull {image}: {(pulled.stderr.strip().splitlines() or ['?'])[-1]}")
            return "project"
    return "flower"


def choose_torch_source(mode: str, version: str) -> str:
    """wheelhouse | index: a torch wheel in docker/wheels/ (fetched with this machine's pip if missing) or the index."""
    if mode != "auto":
        return mode
    wheels = DOCKER / "wheels"
    if not list(wheels.glob(f"torch-{version}[+-]*.whl")):
        got = run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"torch=={version}", "-d", str(wheels)],
                  check=False, capture=True, timeout=600)
        if got.returncode != 0 or not list(wheels.glob(f"torch-{version}[+-]*.whl")):
            say("no torch wheel for docker/wheels/; the image takes torch from the PyTorch CPU index")
            return "index"
    return "wheelhouse"


# ---------------------------------------------------------------------------------------------- flwr CLI

def write_profile(flwr_home: Path, port: int, ca: Path) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{PROFILE}"\n\n'
        f'[superlink.{PROFILE}]\naddress = "127.0.0.1:{port}"\nroot-certificates = "{ca}"\n'
    )


def nodes(env: dict[str, str]) -> list[dict]:
    return dt.json_of(dt.flwr(["supernode", "list", PROFILE, "--format", "json"], env)).get("nodes", [])


def wait_health(port: int, ca: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"https://127.0.0.1:{port}/health", verify=str(ca), timeout=2.0).is_success:
                return
        time.sleep(1.0)
    raise TimeoutError(f"the SuperLink container did not answer on https://127.0.0.1:{port} in {timeout:.0f} s")


def wait_online(env: dict[str, str], want: set[int], timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        listed = nodes(env)
        online = {int(n["node-id"]) for n in listed if n.get("status") == "online"}
        if want <= online:
            return listed
        if time.monotonic() > deadline:
            raise TimeoutError(f"SuperNodes {sorted(want - online)} not online after {timeout:.0f} s: {listed}")
        time.sleep(2.0)


def run_status(env: dict[str, str]) -> str:
    runs = dt.json_of(dt.flwr(["ls", PROFILE, "--format", "json"], env)).get("runs", [])
    if not runs:
        return "no run"
    last = max(runs, key=lambda r: int(r["run-id"]))
    return f"{last.get('status', 'unknown')} {last.get('status-details', '')}".strip()


def image_size(image: str) -> str:
    out = run(["docker", "image", "inspect", image, "--format", "{{.Size}}"], check=False, capture=True)
    return f"{int(out.stdout.strip()) / 1e9:.2f} GB" if out.returncode == 0 else "absent"


# ------------------------------------------------------------------------------------------------------ main

@dataclass
class Result:
    status: str = "failed"
    killed: int = 0
    rejoined: bool | None = None


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", choices=("auto", "flower", "project"), default="auto",
                   help="where the SuperLink and SuperNodes come from (auto: Flower's if they can be had)")
    p.add_argument("--torch-source", choices=("auto", "index", "wheelhouse"), default="auto")
    p.add_argument("--rounds", type=int, default=3,
                   help="federation rounds (the kill happens in round 2; the site is back for round 3)")
    p.add_argument("--kill-after-seconds", type=float, default=2.0,
                   help="SIGKILL one site's containers this many seconds into round 2; negative: no kill")
    p.add_argument("--restart-after-seconds", type=float, default=8.0, help="start them again after this")
    p.add_argument("--kill-site", type=int, default=2, choices=range(1, SITES + 1))
    p.add_argument("--reply-timeout", type=float, default=240.0,
                   help="federation.reply_timeout and query_timeout in seconds: every message starts a fresh ClientApp "
                        "process (~60 s to answer in a container on a busy 2-core host)")
    p.add_argument("--overrides", default="", help="extra Hydra overrides for the run")
    p.add_argument("--no-preflight", action="store_true",
                   help="skip the config check before building (to see the deployment itself refuse a bad config)")
    p.add_argument("--timeout", type=float, default=900.0, help="give up on the run after this many seconds")
    p.add_argument("--log-dir", type=Path, default=None,
                   help="where the log folder goes (default runs/compose-test/<time>/ in the checkout)")
    p.add_argument("--verbose", action="store_true", help="show everything on the terminal, not just the rounds")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (certificates)")
    return p.parse_args(argv)


def run_config(args: argparse.Namespace) -> dict[str, str]:
    """The run's Flower config: the tiny model on the synthetic tasks (each site's task from its node config)."""
    overrides = (f"federation.num_clients={SITES} federation.num_rounds={args.rounds} "
                 f"federation.reply_timeout={args.reply_timeout:g} federation.query_timeout={args.reply_timeout:g} "
                 f"{args.overrides}").strip()
    return {"model": "tiny", "scenario": "synthetic", "budget": "smoke", "overrides": overrides}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logs = (args.log_dir or dt.ROOT / "runs" / "compose-test" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    console = deploy_console.use(Console("compose-test", logs / "compose.log", args.verbose))
    kill = f", site {args.kill_site}'s containers killed mid-round 2 and started again" \
        if args.kill_after_seconds >= 0 else ""
    say(f"images built, a SuperLink and {SITES} sites in containers (TLS, node auth), tiny model, {args.rounds} "
        f"rounds{kill}, torn down after")
    say(f"details: {logs}/ (compose.log: the build, Flower's output; containers.log: every container's log)")
    if not args.no_preflight:
        config = run_config(args)
        error = preflight([f"{k}={v}" for k, v in config.items() if k != "overrides"]
                          + shlex.split(config["overrides"]))
        if error is not None:
            console.print(f"compose-test: the server refuses this config: {error}")
            return 2

    def on_term(signum, frame):  # noqa: ARG001 - signal handler signature
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="amole-compose-"))
    result = Result()
    compose: Compose | None = None
    images = ["amole:cpu"]
    try:
        if run(["docker", "info"], check=False, capture=True).returncode != 0:
            raise RuntimeError("no Docker engine answers `docker info` (on these machines: "
                               "../shared/tools/container-engine.sh)")
        compose, images = setup(args, tmp)
        federate(args, tmp, compose, result)
    except KeyboardInterrupt as exc:
        say(f"interrupted ({str(exc) or 'Ctrl-C'}); tearing down")
    except Exception as exc:  # report, tear down, and fail with the last line all the same
        say(f"error: {type(exc).__name__}: {exc}")
    finally:
        if compose is not None:
            teardown(compose, logs)
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    detail("image sizes: " + ", ".join(f"{image} {image_size(image)}" for image in images))
    if result.killed:
        detail(f"killed site rejoined: {'yes' if result.rejoined else 'no'}")
    ok = result.status == "completed"
    say(f"{'done' if ok else 'FAILED'} in {time.monotonic() - t0:.0f} s; details in {logs}/")
    console.print(f"compose: sites={SITES} killed={result.killed} status={result.status} rounds={args.rounds}")
    console.close()
    return 0 if ok else 1


def setup(args: argparse.Namespace, tmp: Path) -> tuple[Compose, list[str]]:
    """Certificates, settings, images built; returns the compose command and the images in use."""
    version = flwr_pin()
    certs = tmp / "certs"
    dt.make_certs(certs, SITES)
    # The containers run as uid 49999 and must read the keys; these are throwaway keys in a private folder.
    for key in ["server.key", *(f"supernode-{i}" for i in range(1, SITES + 1))]:
        (certs / key).chmod(0o644)
    images = choose_images(args.images, version)
    torch_source = choose_torch_source(args.torch_source, torch_pin())
    port = dt.free_port()
    env = {**os.environ, "AMOLE_CERTS_DIR": str(certs), "AMOLE_SUPERLINK_PORT": str(port),
           "AMOLE_TORCH_SOURCE": torch_source,
           **{f"AMOLE_SITE_{i}_TASK": SYNTHETIC_TASKS[i - 1] for i in range(1, SITES + 1)}}
    if images == "project":
        env.update(line.split("=", 1) for line in (DOCKER / "project-images.env").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    if run(["docker", "buildx", "version"], check=False, capture=True).returncode != 0:
        env["DOCKER_BUILDKIT"] = "0"  # no buildx plugin: compose builds with the engine's classic builder
    compose = Compose(env)
    torch_from = "docker/wheels" if torch_source == "wheelhouse" else "the PyTorch CPU index"
    detail(f"SuperLink/SuperNodes from {'Flower' if images == 'flower' else 'the project'}'s images; torch from "
        f"{torch_from}; SuperLink on 127.0.0.1:{port}")
    compose("down", "-v", "--remove-orphans", "--timeout", "5", check=False, capture=True)  # leftovers of a crash
    t = time.monotonic()
    compose("build", "--quiet")
    say(f"images built in {time.monotonic() - t:.0f} s")
    used = ["amole:cpu"] + ([f"{name}:{version}" for name in FLOWER_IMAGES] if images == "flower" else [])
    return compose, used


def federate(args: argparse.Namespace, tmp: Path, compose: Compose, result: Result) -> None:
    port, ca = int(compose.env["AMOLE_SUPERLINK_PORT"]), tmp / "certs" / "ca.crt"
    cli_env = {**os.environ, "FLWR_HOME": str(tmp / "cli"), "FLWR_DISABLE_UPDATE_CHECK": "1"}
    write_profile(tmp / "cli", port, ca)
    compose("up", "-d", "superlink", capture=True)
    wait_health(port, ca, 120)
    say(f"SuperLink container up on https://127.0.0.1:{port} (TLS, SuperNode auth)")
    registered = {}
    for site in range(1, SITES + 1):
        answer = dt.json_of(dt.flwr(["supernode", "register", str(tmp / "certs" / f"supernode-{site}.pub"), PROFILE,
                                     "--name", f"site-{site}", "--format", "json"], cli_env))
        registered[site] = int(answer["node-id"])
    detail(f"registered SuperNode keys: {registered}")
    compose("up", "-d", capture=True)
    listed = wait_online(cli_env, set(registered.values()), 180)
    online_at = {int(n["node-id"]): n.get("online-at") for n in listed}
    say(f"{SITES} sites online")
    cmd = [dt.bin_path("flwr"), "run", str(ROOT), PROFILE, "--stream", "--run-config",
           " ".join(f"{k}={json.dumps(v)}" for k, v in run_config(args).items())]
    detail("$ " + " ".join(cmd))
    runner = StreamedRun(cmd, cli_env, deploy_console.stream, {"round2": dt.ROUND_2})
    site, node_id = args.kill_site, registered[args.kill_site]
    victims = (f"supernode-{site}", f"superexec-clientapp-{site}")
    t_run, t_kill, restarted, t_check = time.monotonic(), None, False, 0.0
    rejoined_at = None
    try:
        while runner.running():
            now = time.monotonic()
            if now - t_run > args.timeout:
                say(f"the run did not finish within {args.timeout:.0f} s; giving up")
                break
            if args.kill_after_seconds >= 0 and runner.seen["round2"].is_set() and not result.killed:
                t_kill = t_kill or now + args.kill_after_seconds
                if now >= t_kill:
                    compose("kill", "-s", "SIGKILL", *victims, capture=True)
                    result.killed, t_kill = 1, now
                    say(f"killed site {site}: SIGKILL to containers {', '.join(victims)} "
                        f"{now - t_run:.1f} s into the run")
            if result.killed and not restarted and now - t_kill >= args.restart_after_seconds:
                compose("start", *victims, capture=True)
                restarted = True
                say(f"started site {site}'s containers again (same key, client-id={site - 1})")
            if restarted and rejoined_at is None and now - t_check >= 3:
                t_check = now
                if any(int(n["node-id"]) == node_id and n.get("status") == "online"
                       and n.get("online-at") != online_at[node_id] for n in nodes(cli_env)):
                    rejoined_at = now
                    say(f"site {site} is online again, {now - t_kill:.0f} s after the kill")
            time.sleep(0.5)
    finally:
        if runner.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(runner.proc.pid, signal.SIGTERM)
            runner.proc.wait(timeout=10)
    runner.finish()
    detail(f"flwr run exited {runner.proc.returncode} after {time.monotonic() - t_run:.0f} s")
    status = run_status(cli_env)
    detail(f"Flower run status: {status}")
    if result.killed:
        result.rejoined = rejoined_at is not None
    # Flower reports a run whose ServerApp raised as completed: the strategy's own record decides. The run folder
    # is inside the ServerApp's container, so its outcome is read from the line the strategy logs with it.
    result.status, error = judge_log(runner.lines, status)
    if error is not None:
        say(f"the run failed: {error}")


def teardown(compose: Compose, logs: Path) -> None:
    """Every container's log into the log folder, then down with volumes; checks nothing is left."""
    out = compose("logs", "--no-color", "--timestamps", check=False, capture=True, timeout=120)
    (logs / "containers.log").write_text(out.stdout + out.stderr)
    compose("down", "-v", "--remove-orphans", "--timeout", "10", check=False, capture=True, timeout=300)
    label = f"label=com.docker.compose.project={PROJECT}"
    left = {kind: run(["docker", *cmd, "-q", "--filter", label], check=False, capture=True).stdout.split()
            for kind, cmd in (("containers", ["ps", "-a"]), ("volumes", ["volume", "ls"]),
                              ("networks", ["network", "ls"]))}
    left = {kind: ids for kind, ids in left.items() if ids}
    if left:
        say(f"teardown left {left} behind")
    else:
        detail("torn down: containers, networks and volumes removed")


if __name__ == "__main__":
    sys.exit(main())
