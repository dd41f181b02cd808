"""Pooled sources (SNLI, Dolly) and their Dirichlet partition, cached per process.

Every client loads the same pool and computes the same global partition from (scenario, seed), then keeps its
own part: no coordination and no data leaves the machine. The pool is cached per (source, files, hub id,
split, prompt style) and the partition per (pool, procedure, num_clients, alpha, min_samples, seed), so the
clients that share a simulation worker pay for loading and partitioning once.

``scenario.dirichlet: paper`` partitions with the official procedure on the official class ids (SNLI's label
ids, Dolly's categories in sorted order, as a LabelEncoder numbers them).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from amole.config import ScenarioConfig
from amole.data.dirichlet import dirichlet_indices, dirichlet_indices_paper
from amole.data.dolly import load_dolly
from amole.data.example import Example
from amole.data.records import files_signature
from amole.data.snli import PAPER_HUB_SPLIT as SNLI_PAPER_SPLIT
from amole.data.snli import load_snli
from amole.util.seeds import stable_seed

POOL_SOURCES: dict[str, Callable[..., list[Example]]] = {"snli": load_snli, "dolly": load_dolly}


def client_index(scenario: ScenarioConfig, client: str) -> int:
    """Client id -> part index, checked against the number of parts."""
    try:
        index = int(client)
    except ValueError:
        raise ValueError(f"client id {client!r} is not an index into the {scenario.num_clients} parts of "
                         f"scenario {scenario.name!r}: start the node with client-id=<0..{scenario.num_clients - 1}>"
                         ) from None
    if not 0 <= index < scenario.num_clients:
        raise ValueError(f"client {index} has no part: scenario {scenario.name!r} splits its pool into "
                         f"scenario.num_clients={scenario.num_clients} parts")
    return index


@lru_cache(maxsize=4)
def _pool(source: str, local_path: str | None, signature: tuple, hub_id: str | None, hub_split: str,
          prompts: str = "amole") -> tuple:
    del signature  # part of the cache key only: changed files are read again
    return tuple(POOL_SOURCES[source](local_path=local_path, hub_id=hub_id, hub_split=hub_split, prompts=prompts))


def _pool_key(scenario: ScenarioConfig) -> tuple:
    # SNLI under the paper's splits pools train+validation+test when it comes from the hub.
    split = SNLI_PAPER_SPLIT if scenario.splits == "paper" and scenario.source == "snli" else scenario.hub_split
    return (scenario.source, scenario.local_path, files_signature(scenario.local_path), scenario.hub_id, split,
            scenario.prompts)


def load_pool(scenario: ScenarioConfig) -> tuple[Example, ...]:
    """All examples of the scenario's pooled source (cached per process)."""
    if scenario.source not in POOL_SOURCES:
        raise ValueError(f"source {scenario.source!r} has no pool to partition; pooled sources: {list(POOL_SOURCES)}")
    return _pool(*_pool_key(scenario))


@lru_cache(maxsize=8)
def _parts(pool_key: tuple, num_clients: int, alpha: float, min_samples: int, seed: int,
           procedure: str = "amole") -> tuple[tuple[int, ...], ...]:
    pool = _pool(*pool_key)
    if procedure == "paper":
        ids = [ex.label if ex.is_choice else ex.group for ex in pool]
        parts = dirichlet_indices_paper(ids, num_clients, alpha, seed, min_samples)
    else:
        parts = dirichlet_indices([ex.group for ex in pool], num_clients, alpha, seed, min_samples)
    return tuple(tuple(p) for p in parts)


def dirichlet_parts(scenario: ScenarioConfig, seed: int) -> tuple[tuple[int, ...], ...]:
    """Indices into :func:`load_pool` of every client's part (the same in every process for the same inputs)."""
    load_pool(scenario)  # validates the source and fills the cache
    return _parts(_pool_key(scenario), scenario.num_clients, float(scenario.alpha), scenario.min_samples,
                  stable_seed("dirichlet", seed), scenario.dirichlet)


def dirichlet_examples(scenario: ScenarioConfig, client: str, seed: int) -> list[Example]:
    """Client ``client``'s part of the scenario's pool under Dirichlet(alpha) label / category skew."""
    index = client_index(scenario, client)
    pool = load_pool(scenario)
    return [pool[i] for i in dirichlet_parts(scenario, seed)[index]]
