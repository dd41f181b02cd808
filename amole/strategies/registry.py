"""The federated fine-tuning methods, one object each: what a client does in a round and what the server does
with the replies.

The server loop and the ClientApp ask the strategy named by ``federation.strategy`` instead of branching on
flags: which adapter architecture it trains (so, e.g., FedIT with routed experts cannot be configured), what
the server sends and averages, whether RSEA plans experts, whether clients score the aggregate (FedIT), and
what a client keeps in its site folder.

    fedamole      routed + shared LoRA experts, RSEA every round (the paper's method)
    static        ablation: the random round-1 architectures are kept (no RSEA)
    random        ablation: a fresh random assignment every round
    homogeneous   ablation: RSEA with the same number of experts for every client
    no_shared     ablation: FedAMoLE without the shared expert
    fedit         FedAvg of one plain LoRA; clients score the aggregated model
    fedit_ft      FedAvg of one plain LoRA; clients are scored right after local training
    local         one plain LoRA per client, nothing leaves it
    fdlora        a private and a federated plain LoRA per client, scored fused by weights each tunes
    fedsa_lora    one plain LoRA per client whose A matrices are averaged and whose B matrices stay home
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from torch import Tensor

from amole.client.round import (
    ClientJob,
    RoundResult,
    initial_adapters,
    probe,
    score,
    train_and_score,
    train_dual_and_score,
)
from amole.config import AdapterConfig, Settings
from amole.moe import bank as banks
from amole.moe.keys import parse_key
from amole.server.aggregate import aggregate


@dataclass(frozen=True)
class Strategy:
    """FedAMoLE and its ablations; the plain-LoRA baselines below override what differs."""

    name: str
    assign_mode: str | None = "rsea"  # rsea | static | random | homogeneous; None: no routed experts to plan
    shared_expert: bool = True
    communicates: bool = True  # False: nothing is sent or uploaded (local-only)
    scores_aggregate: bool = False  # FedIT: after aggregation, clients score the aggregated model

    @property
    def routed(self) -> bool:
        return self.assign_mode is not None

    def adapter(self, cfg: AdapterConfig) -> AdapterConfig:
        """The architecture this strategy trains, from the configured adapter section."""
        return replace(cfg, shared_expert=self.shared_expert)

    # -- server side -----------------------------------------------------------------------------------------
    def payload(self, bank: Mapping[str, Tensor], held: Mapping[str, list[int]]) -> dict[str, Tensor]:
        """What the server sends a client: the shared tensors and the experts it holds."""
        return banks.payload(bank, held) if self.communicates else {}

    def aggregate(self, bank: Mapping[str, Tensor], uploads: Sequence[Mapping[str, Tensor]],
                  weights: Sequence[float] | None) -> dict[str, Tensor]:
        """The new bank: each uploaded tensor averaged over the clients that uploaded it."""
        return aggregate(bank, uploads, weights)

    # -- client side -----------------------------------------------------------------------------------------
    def client_round(self, job: ClientJob, payload: Mapping[str, Tensor]) -> RoundResult:
        return train_and_score(job, payload)

    def score(self, job: ClientJob, payload: Mapping[str, Tensor]) -> dict:
        """Score received adapters as they are (FedIT's protocol)."""
        return score(job, payload)

    def probe(self, job: ClientJob, payload: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A joining client's routing statistics under the shared expert and router (RSEA's cold start)."""
        return probe(job, payload)


def plain_lora(cfg: AdapterConfig) -> AdapterConfig:
    """One LoRA of the configured rank and targets per module: no routed pool, no router."""
    return replace(cfg, num_experts=0, shared_expert=True)


@dataclass(frozen=True)
class FedIT(Strategy):
    """FedAvg of one plain LoRA (Zhang et al., 2024)."""

    assign_mode: str | None = None

    def adapter(self, cfg: AdapterConfig) -> AdapterConfig:
        return plain_lora(cfg)


@dataclass(frozen=True)
class LocalOnly(FedIT):
    """Each client fine-tunes its own plain LoRA and keeps it; nothing is sent or averaged."""

    communicates: bool = False

    def client_round(self, job: ClientJob, payload: Mapping[str, Tensor]) -> RoundResult:
        own = job.private.load_before(job.server_round)
        result = train_and_score(job, initial_adapters(job.model, job.settings) if own is None else own)
        job.private.save(job.server_round, result.adapters)
        result.adapters, result.stats = {}, {}
        return result


@dataclass(frozen=True)
class FDLoRA(FedIT):
    """A private LoRA next to the federated one (Qi et al., 2024); only the federated one is uploaded."""

    def client_round(self, job: ClientJob, payload: Mapping[str, Tensor]) -> RoundResult:
        own = job.private.load_before(job.server_round)
        own = initial_adapters(job.model, job.settings) if own is None else own
        result, private = train_dual_and_score(job, payload, own)
        job.private.save(job.server_round, private)
        return result


@dataclass(frozen=True)
class FedSALoRA(FedIT):
    """FedSA-LoRA (Guo et al., ICLR 2025): A learns what is shared and is averaged on the server; B learns
    what is the client's own and never leaves it (kept in the site folder, zero-initialised like LoRA's B)."""

    def payload(self, bank: Mapping[str, Tensor], held: Mapping[str, list[int]]) -> dict[str, Tensor]:
        return {k: v for k, v in banks.payload(bank, held).items() if parse_key(k).part == "A"}

    def client_round(self, job: ClientJob, payload: Mapping[str, Tensor]) -> RoundResult:
        own = job.private.load_before(job.server_round)
        if own is None:
            own = {k: v for k, v in initial_adapters(job.model, job.settings).items() if parse_key(k).part == "B"}
        result = train_and_score(job, {**own, **payload})
        job.private.save(job.server_round, {k: v for k, v in result.adapters.items() if parse_key(k).part == "B"})
        result.adapters = {k: v for k, v in result.adapters.items() if parse_key(k).part == "A"}
        return result

    def score(self, job: ClientJob, payload: Mapping[str, Tensor]) -> dict:
        own = job.private.load_before(job.server_round + 1) or {}
        return score(job, {**own, **payload})


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("fedamole"),
    Strategy("static", assign_mode="static"),
    Strategy("random", assign_mode="random"),
    Strategy("homogeneous", assign_mode="homogeneous"),
    Strategy("no_shared", shared_expert=False),
    FedIT("fedit", scores_aggregate=True),
    FedIT("fedit_ft"),
    LocalOnly("local"),
    FDLoRA("fdlora"),
    FedSALoRA("fedsa_lora"),
)}


def strategy_named(name: str) -> Strategy:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(f"unknown strategy {name!r}; known: {sorted(STRATEGIES)}") from None


def resolve_strategy(settings: Settings) -> Settings:
    """``settings`` with the architecture and assignment mode of its strategy: what the run really trains."""
    strategy = strategy_named(settings.federation.strategy)
    return replace(settings, adapter=strategy.adapter(settings.adapter),
                   assign=replace(settings.assign, mode=strategy.assign_mode or "rsea"))
