"""amole: the framework-free core of FedAMoLE; it imports no Flower.

    moe/         the method: AMoLE layer, injection into a causal LM, the expert bank
    server/      algorithms that need no model: RSEA assignment, planner, aggregation, routing codes, DP
    client/      one client's round: training, losses, routing statistics
    evaluation/  LM scoring, generation, Rouge-L, the evaluation protocol a run records
    strategies/  FedAMoLE, its ablations and the baselines, and the registry that names them
    backbones/   frozen backbones: loading, quantized cache, dense CPU path, tiny test model
    site/        a site's folder, its personalized model, model card and the ``amole`` CLI
    data/        sources, partitions, prompts, splits, a site's own files
    util/        atomic writes, cache paths, stable seeds
    config.py    the configuration schema; compose.py builds it from conf/

``amole.load_personalized(path)`` loads a site's kept or exported model; it is imported on first use so that
``import amole`` stays light.
"""

from typing import Any

__all__ = ["load_personalized"]


def __getattr__(name: str) -> Any:
    if name == "load_personalized":
        from amole.site.personal import load_personalized

        return load_personalized
    raise AttributeError(f"module 'amole' has no attribute {name!r}")
