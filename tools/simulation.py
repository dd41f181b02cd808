"""One in-process Flower simulation of the round loop, with its log captured and its resources sampled."""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation

from amole.config import Settings
from client_app.app import app as client_app
from server_app.strategy import run
from tools.resources import MemorySampler


def simulate(settings: Settings, runs_dir: Path, resume: Path | None, opts: dict[str, Any],
             log_path: Path) -> tuple[Any, str | None, dict[str, float], float]:
    """One run_simulation of ``run``: (final state or None, the error's traceback, resources, wall seconds)."""
    box: dict[str, Any] = {}
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            box["state"] = run(grid, settings, runs_dir=runs_dir, resume=resume)
        except BaseException:
            box["error"] = traceback.format_exc()
            raise

    # Ray does not cap a client actor's torch threads (torch starts one per core in every actor), so match them to
    # the CPUs Ray reserves per client; the actors inherit this environment when the simulation starts Ray.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, int(opts["client_num_cpus"]))))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    loggers = [logging.getLogger("amole"), logging.getLogger("flwr")]
    for lg in loggers:
        lg.addHandler(handler)
    start = time.perf_counter()
    try:
        with MemorySampler() as sampler:
            try:
                run_simulation(server_app=server, client_app=client_app,
                               num_supernodes=settings.federation.num_clients,
                               backend_config={"client_resources": {"num_cpus": opts["client_num_cpus"],
                                                                    "num_gpus": opts["client_num_gpus"]}})
            except SystemExit as err:
                if err.code in (signal.SIGTERM, signal.SIGINT):  # Flower turns these signals into SystemExit
                    raise  # the runner was told to stop: end the sweep, not just this run
                box.setdefault("error", traceback.format_exc())
            except Exception:
                box.setdefault("error", traceback.format_exc())
        if "state" not in box and "error" not in box:
            box["error"] = "the ServerApp ended without a final state (no exception reached the runner)"
        if "error" in box:
            logging.getLogger("amole").error("run failed:\n%s", box["error"])
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
        handler.close()
    return box.get("state"), box.get("error"), sampler.result(), time.perf_counter() - start
