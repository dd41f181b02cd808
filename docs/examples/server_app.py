"""A ServerApp of your own that runs FedAMoLE: compose a config, build the strategy, start it.

    flwr run . --run-config "..."   with   [tool.flwr.app.components] serverapp = "docs.examples.server_app:app"
"""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from amole.compose import compose
from server_app.strategy import FedAMoLE

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    overrides = str(context.run_config.get("overrides", "")).split() or ["model=tiny", "budget=smoke"]
    strategy = FedAMoLE(compose(overrides))  # or compose(["strategy=fedit", ...]) for a baseline
    result = strategy.start(grid=grid)
    for rnd, metrics in result.train_metrics_clientapp.items():
        print(f"round {rnd}: mean score {metrics['score_mean']:.3f} over {metrics['clients']} clients")
