"""ServerApp: compose the config once from Flower's run config, then run the FedAMoLE round loop."""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from amole.compose import compose, overrides_from_run_config
from server_app.federation import run

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    logger = logging.getLogger("amole")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    settings = compose(overrides_from_run_config(context.run_config))
    resume = str(context.run_config.get("resume", "")).strip() or None
    run(grid, settings, resume=resume)
