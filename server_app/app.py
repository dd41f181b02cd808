"""ServerApp: compose the config from Flower's run config, build the run's strategy, start it."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from amole.compose import compose, overrides_from_run_config
from server_app.logs import setup_logging
from server_app.strategy import FedAMoLE

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    setup_logging()
    settings = compose(overrides_from_run_config(context.run_config))
    resume = str(context.run_config.get("resume", "")).strip() or None
    FedAMoLE(settings, resume=resume).start(grid=grid)
