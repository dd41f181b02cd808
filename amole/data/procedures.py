"""The data side of ``conf/protocol``: which split fractions and hub split a scenario uses under the paper's
protocol, and the notes a run report must carry when the local data cannot follow it.

Under ``scenario.splits: paper`` SNLI is the official pool of train+validation+test cut at the official
ratios (eval and test = each split's share of all rows, ~0.0175; aux = ``embed_frac`` of the rest); every
other source keeps its own ``eval_frac`` / ``test_frac``, which already are the official 0.1 / 0.1.
"""

from __future__ import annotations

from amole.config import ScenarioConfig
from amole.data.pools import load_pool
from amole.data.prompt import check_style
from amole.data.snli import HUB_SPLIT_ROWS, TRAIN_PAIRS

PROCEDURES = ("amole", "paper")


def check_scenario_protocol(scenario: ScenarioConfig) -> None:
    """Reject unknown ``prompts`` / ``dirichlet`` / ``splits`` values with a message naming the key."""
    check_style(scenario.prompts)
    for key in ("dirichlet", "splits"):
        if getattr(scenario, key) not in PROCEDURES:
            raise ValueError(f"unknown scenario.{key} {getattr(scenario, key)!r}; expected one of {PROCEDURES}")


def split_fractions(scenario: ScenarioConfig) -> tuple[float, float]:
    """(eval, test) shares of each client's part."""
    if scenario.splits == "paper" and scenario.source == "snli":
        total = sum(HUB_SPLIT_ROWS.values())
        return HUB_SPLIT_ROWS["validation"] / total, HUB_SPLIT_ROWS["test"] / total
    return scenario.eval_frac, scenario.test_frac


def protocol_notes(scenario: ScenarioConfig) -> list[str]:
    """Where this scenario's data cannot follow the protocol it is configured for (empty: nothing to say).

    Meant for the run report's header; loads the pool (cached) for pooled sources under the paper's splits.
    """
    notes: list[str] = []
    if scenario.splits == "paper" and scenario.source == "snli":
        size = len(load_pool(scenario))
        if size < TRAIN_PAIRS:
            notes.append(
                f"SNLI train split absent: the pool ({scenario.local_path or scenario.hub_id}) holds {size:,} labelled "
                f"pairs, fewer than the train split alone ({TRAIN_PAIRS:,}); the paper pools train+validation+test "
                f"(569,033). Split ratios, partition procedure and caps are the paper's, on this smaller pool.")
    if scenario.prompts == "paper" and scenario.source in ("bigbench", "synthetic"):
        notes.append(f"{scenario.source} is not in the official code: its prompts stay ours under the paper's "
                     "protocol.")
    return notes
