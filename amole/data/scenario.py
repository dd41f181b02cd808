"""One client's data under a configured scenario: which task it gets, from where, and how it is split.

Two kinds of scenario (``scenario.partition``): ``task`` gives client i the task ``scenario.tasks[i]``
(BIG-bench, Natural Instructions, synthetic); ``dirichlet`` pools one source (SNLI, Dolly) and gives client i
its part of a Dirichlet(alpha) label / category skewed partition (:mod:`amole.data.pools`).
"""

from __future__ import annotations

import random
from pathlib import Path

from amole.config import ScenarioConfig
from amole.data.bigbench import load_task
from amole.data.example import ClientSplits, Example
from amole.data.natinst import load_natinst_task
from amole.data.own import load_own_examples
from amole.data.pools import POOL_SOURCES, client_index, dirichlet_examples
from amole.data.procedures import check_scenario_protocol, split_fractions
from amole.data.splits import paper_ratios, split_client, split_client_paper
from amole.data.synthetic import synthetic_source
from amole.util.seeds import stable_seed

SOURCES = ("bigbench", "synthetic", "natural_instructions", *POOL_SOURCES)
PARTITIONS = ("task", "dirichlet")


def client_task(scenario: ScenarioConfig, client: str) -> str:
    """The scenario's task for ``client`` (one task per client, in client-id order)."""
    try:
        index = int(client)
    except ValueError:
        raise ValueError(f"client id {client!r} is not an index into scenario.tasks: give the node a "
                         f"'task' or 'data-path' in its node config") from None
    if not 0 <= index < len(scenario.tasks):
        raise ValueError(f"client {index} has no task: scenario {scenario.name!r} lists {len(scenario.tasks)} "
                         f"tasks ({list(scenario.tasks)}); add tasks or run fewer clients")
    return scenario.tasks[index]


def task_name(scenario: ScenarioConfig, client: str, task: str | None = None, data_path: str | None = None) -> str:
    """The client's task, without loading any data: node config ``data-path`` / ``task``, else the scenario's."""
    if data_path is not None:
        return Path(data_path).stem
    if scenario.partition == "dirichlet":
        if task is not None:
            raise ValueError(f"scenario {scenario.name!r} gives each client a part of one {scenario.source} pool by "
                             f"client id; a node 'task' ({task!r}) does not apply (a 'data-path' task file does)")
        return f"{scenario.source}/client{client_index(scenario, client)}"
    if scenario.partition != "task":
        raise ValueError(f"unknown scenario partition {scenario.partition!r}; expected one of {PARTITIONS}")
    return task or client_task(scenario, client)


def check_first_examples(scenario: ScenarioConfig) -> None:
    """``first_examples`` cuts the scenario's task files (so a run on a copy that keeps only each file's head and a
    run on the whole files draw the same splits); a pooled scenario has no task files to cut."""
    n = scenario.first_examples
    if n is None:
        return
    if scenario.partition != "task":
        raise ValueError(f"scenario {scenario.name!r}: first_examples cuts task files, but a {scenario.partition!r} "
                         f"scenario splits one pool; cap each client's part with examples_per_task instead")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"scenario {scenario.name!r}: first_examples must be a positive integer or null, got {n!r}")


def load_examples(scenario: ScenarioConfig, task: str, seed: int) -> list[Example]:
    if scenario.source == "synthetic":
        return synthetic_source(n=scenario.examples_per_task or 200, seed=seed)(task)
    if scenario.source == "bigbench":
        return load_task(task, scenario.local_dir, scenario.cache_dir)
    if scenario.source == "natural_instructions":
        return load_natinst_task(task, scenario.local_dir, scenario.hub_id, scenario.hub_split,
                                 prompts=scenario.prompts)
    if scenario.source in POOL_SOURCES:
        raise ValueError(f"source {scenario.source!r} is one pool split over the clients: use partition: dirichlet")
    raise ValueError(f"unknown scenario source {scenario.source!r}; expected one of {SOURCES}")


def client_splits(
    scenario: ScenarioConfig, client: str, seed: int, task: str | None = None, data_path: str | None = None
) -> ClientSplits:
    """Train / embed / eval / test for ``client``; ``data_path`` (the site's own files or a BIG-bench task.json,
    :mod:`amole.data.own`) or ``task`` override the scenario."""
    check_scenario_protocol(scenario)
    check_first_examples(scenario)
    task = task_name(scenario, client, task, data_path)
    if data_path is not None:
        examples = load_own_examples(data_path)
    elif scenario.partition == "dirichlet":
        examples = dirichlet_examples(scenario, client, seed)
    else:
        examples = load_examples(scenario, task, seed)[: scenario.first_examples]
    if scenario.examples_per_task is not None and len(examples) > scenario.examples_per_task:
        examples = random.Random(f"{seed}/{task}").sample(examples, scenario.examples_per_task)
    caps = {"eval_cap": scenario.eval_cap, "test_cap": scenario.test_cap, "embed_cap": scenario.embed_cap,
            "max_train": scenario.max_train, "task": task}
    if scenario.splits == "paper":
        ratios = paper_ratios(*split_fractions(scenario), scenario.embed_frac)
        return split_client_paper(examples, seed=stable_seed("split", seed, client), ratios=ratios, **caps)
    return split_client(
        examples, seed=stable_seed("split", seed, client), eval_frac=scenario.eval_frac, test_frac=scenario.test_frac,
        embed_frac=scenario.embed_frac, **caps,
    )

