"""`make demo`: a local SuperLink (simulation runtime), `flwr run . --stream`, and an honest exit code.

Flower's `flwr run` exits 0 even when the run failed, so the run's status is read back from the SuperLink
(`flwr ls --format json`). The SuperLink is started without runtime dependency installation (the app's
dependencies are already in this virtualenv) and stopped by its pid afterwards, whatever happened.

    python -m tools.demo [--port 39191] [--supernodes 4] [--run-config "budget=demo overrides='...'"]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

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
    args = p.parse_args(argv)

    from amole.compose import compose, overrides_from_run_config

    run_config = dict(run_config_pairs(args.run_config))
    extra = f"federation.runs_dir={args.runs_dir}"
    run_config["overrides"] = f"{run_config.get('overrides', '')} {extra}".strip()
    settings = compose(overrides_from_run_config({**default_run_config(), **run_config}))
    supernodes = args.supernodes or settings.federation.num_clients

    state_dir = Path(args.runs_dir) / ".superlink"
    venv_bin = str(Path(sys.executable).parent)  # the SuperLink spawns flower-superexec and friends by name
    env = {**os.environ, "FLWR_HOME": str(state_dir / "flwr-home"), "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1"}
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    write_profile(Path(env["FLWR_HOME"]), args.port)
    proc = start_superlink(args.port, state_dir, env)
    print(f"SuperLink pid {proc.pid} on 127.0.0.1:{args.port}; {supernodes} simulated SuperNodes", flush=True)
    try:
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in run_config.items())
        cmd = [bin_path("flwr"), "run", ".", PROFILE, "--stream", "--run-config", pairs,
               "--federation-config", f"num-supernodes={supernodes} client-resources-num-cpus=1 "
                                      f"client-resources-num-gpus=0.0"]
        print("$", shlex.join(cmd), flush=True)
        code = subprocess.run(cmd, env=env, cwd=ROOT, check=False).returncode
        status = run_status(env)
    finally:
        stop(proc)
    print(f"flwr run exited {code}; run status: {status}", flush=True)
    if code != 0 or not status.endswith("completed"):
        print(f"the federation did not complete: see the log above and {state_dir / 'superlink.log'}",
              file=sys.stderr)
        return 1
    return 0


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
