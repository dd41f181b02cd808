"""`make demo`: a local SuperLink (simulation runtime), `flwr run . --stream`, and an honest exit code.

Flower's `flwr run` exits 0 even when the run failed (and reports a run whose ServerApp raised as completed), so
the outcome is read from the run folder, where the strategy records it (server_app/outcome.py); a run that
recorded none failed. The console gets a few lines (each round, then each site against its untrained model and
where its model is); everything Flower and the SuperLink print goes to ``demo.log`` in the run folder
(``--verbose`` shows it all). The SuperLink is started without runtime dependency installation (the app's
dependencies are already in this virtualenv) and stopped by its pid afterwards, whatever happened.

    python -m tools.demo [--port 39191] [--supernodes 4] [--run-config "budget=demo overrides='...'"] [--verbose]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from server_app.outcome import read_outcome

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "amole-demo"


def bin_path(name: str) -> str:
    """The console script next to this interpreter (the project's virtualenv), else whatever is on PATH."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def write_profile(flwr_home: Path, port: int) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{PROFILE}"\n\n[superlink.{PROFILE}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )


def start_superlink(port: int, state_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    state_dir.mkdir(parents=True, exist_ok=True)
    log = open(state_dir / "superlink.log", "ab")  # noqa: SIM115 - handed to the child process
    cmd = [bin_path("flower-superlink"), "--insecure", "--simulation", "--isolation", "subprocess",
           "--disable-runtime-dependency-installation", "--host", "127.0.0.1", "--port", str(port),
           "--database", str(state_dir / "state.db")]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with {proc.returncode}; see {state_dir / 'superlink.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.5).is_success:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(proc)
    raise TimeoutError(f"flower-superlink did not answer on port {port} within 60 s")


def stop(proc: subprocess.Popen) -> None:
    """Stop the SuperLink and everything it started (its ServerApp and simulation processes)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def run_status(env: dict[str, str]) -> str:
    out = subprocess.run([bin_path("flwr"), "ls", PROFILE, "--format", "json"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=False)
    try:
        runs = json.loads(out.stdout).get("runs", [])
    except json.JSONDecodeError:
        return f"unknown (flwr ls said: {out.stdout.strip() or out.stderr.strip()})"
    return str(runs[-1].get("status", "unknown")) if runs else "no run"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=39191)
    p.add_argument("--supernodes", type=int, default=None, help="default: federation.num_clients of the config")
    p.add_argument("--run-config", default="", help="Flower run config overrides, e.g. \"budget=demo\"")
    p.add_argument("--runs-dir", default=str(ROOT / "runs"))
    p.add_argument("--verbose", action="store_true", help="show everything Flower prints (else: demo.log)")
    args = p.parse_args(argv)

    from amole.compose import ConfigError, compose, overrides_from_run_config
    from server_app.run_state import run_name
    from server_app.strategy import check_clients_have_tasks

    run_config = dict(run_config_pairs(args.run_config))
    try:
        settings = compose(overrides_from_run_config({**default_run_config(), **run_config}))
        check_clients_have_tasks(settings)  # what the server would refuse, refused before anything starts
    except (ConfigError, ValueError) as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    name = settings.federation.name or run_name(settings)  # named here, so the demo knows the run folder
    run_dir = Path(args.runs_dir).resolve() / name
    extra = f"federation.runs_dir={Path(args.runs_dir).resolve()} federation.name={name}"
    run_config["overrides"] = f"{run_config.get('overrides', '')} {extra}".strip()
    supernodes = args.supernodes or settings.federation.num_clients

    state_dir = Path(args.runs_dir) / ".superlink"
    venv_bin = str(Path(sys.executable).parent)  # the SuperLink spawns flower-superexec and friends by name
    env = {**os.environ, "FLWR_HOME": str(state_dir / "flwr-home"), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    write_profile(Path(env["FLWR_HOME"]), args.port)
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "demo.log"
    fed = settings.federation
    print(f"amole demo: {fed.strategy} on {settings.scenario.name}, {supernodes} simulated sites x "
          f"{fed.num_rounds} rounds, {settings.model.name}; run folder {run_dir}", flush=True)
    proc = start_superlink(args.port, state_dir, env)
    try:
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        cmd = [bin_path("flwr"), "run", ".", PROFILE, "--stream", "--run-config", pairs,
               "--federation-config", f"num-supernodes={supernodes} client-resources-num-cpus=1 "
                                      f"client-resources-num-gpus=0.0"]
        with open(log_path, "w", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            code = stream(cmd, env, log, args.verbose)
        status = run_status(env)
    finally:
        stop(proc)
    outcome = read_outcome(run_dir)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"flwr run exited {code}; Flower's run status: {status}; outcome: {outcome}\n")
    if outcome["status"] != "completed":
        print(f"demo: the federation failed: {outcome['error']}", file=sys.stderr)
        print(f"demo: details in {log_path} and {state_dir / 'superlink.log'}", file=sys.stderr)
        return 1
    print_result(run_dir, settings)
    return 0


# The lines of a run's log a person follows in the terminal (the strategy's round lines); the rest goes to the log.
SHOWN = re.compile(r"round \d+(?: \(untrained\))?: mean score|failed after")


def stream(cmd: list[str], env: dict[str, str], log: Any, verbose: bool) -> int:
    """Run ``cmd``, every line into ``log``; the round lines (or, verbose, everything) also to the terminal."""
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        log.write(line)
        if verbose or SHOWN.search(line):
            text = line.rstrip()
            print(text if verbose else "  " + text[SHOWN.search(text).start():], flush=True)
    return proc.wait()


def print_result(run_dir: Path, settings: Any) -> None:
    """Each site against its untrained model, then where the run and the sites' models are and how to try one."""
    from amole.data.scenario import client_splits
    from amole.evaluation.gains import gains_text, site_gains

    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    gains = site_gains(metrics)
    if gains:
        ahead = sum(g.verdict == "ahead" for g in gains)
        print("\nEach site's model against the untrained backbone, same test examples (± one standard error; "
              "'ahead': by more than two):", flush=True)
        print("\n".join("  " + line for line in gains_text(gains)))
        print(f"  {ahead} of {len(gains)} sites ahead of their untrained model.")
    models = sorted((run_dir / "clients").glob("*/model"))
    print(f"\nRun folder: {run_dir} (report.md, metrics.json, demo.log)")
    if models:
        print(f"Each site's model: {run_dir / 'clients'}/<site>/model ({len(models)} sites)")
        site = models[0].parent.name
        example = client_splits(settings.scenario, site, settings.federation.seed).test[0]
        amole = Path(bin_path("amole"))
        print("Try one:\n  " + shlex.join([str(amole.relative_to(ROOT)) if amole.is_relative_to(ROOT) else "amole",
                                          "generate", "--model", str(models[0]), "--prompt-format", "raw",
                                          "--prompt", example.prompt]))


def default_run_config() -> dict[str, str]:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return {k: str(v) for k, v in tomllib.load(f)["tool"]["flwr"]["app"]["config"].items()}


def run_config_pairs(text: str) -> dict[str, str]:
    """``k=v k2='v 2'`` -> dict, with shell-style quoting (as `flwr run --run-config` accepts)."""
    out = {}
    for item in shlex.split(text):
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--run-config item {item!r} is not key=value")
        out[key.strip()] = value
    return out


if __name__ == "__main__":
    sys.exit(main())
