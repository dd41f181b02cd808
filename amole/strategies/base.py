"""What a federated fine-tuning method is made of, so each one is declared once (``register``):

* its **name**, **kind** (method / ablation / baseline) and **order** in results tables;
* the config keys it **fixes** (e.g. plain-LoRA baselines have no routed pool): Hydra's ``strategy=<name>``
  preset is built from them, and a user who sets one of them differently gets an error, never a silent change;
* its **server rules** (what the server sends, whether RSEA plans experts, whether clients score the aggregate),
  which the Flower strategy (``server_app/strategy.py``) follows;
* its **client procedure**, named by import path so the server never imports the client's model code.

This module is light (torch only): the ServerApp reads it to compose and check a run's config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

    from amole.client.round import ClientJob, RoundResult

KINDS = ("method", "ablation", "baseline")
SENDS = ("all", "A", "none")  # every tensor the client holds | only LoRA A matrices | nothing (local only)


@dataclass(frozen=True)
class ServerRules:
    """The server's half of a method: what goes down to a client, how uploads are merged, what is planned."""

    assign_mode: str | None = "rsea"  # rsea | static | random | homogeneous; None: no routed experts to plan
    sends: str = "all"
    scores_aggregate: bool = False  # FedIT: after aggregation, clients score the aggregated model

    @property
    def routed(self) -> bool:
        return self.assign_mode is not None

    def payload(self, bank: Mapping[str, Tensor], held: Mapping[str, list[int]]) -> dict[str, Tensor]:
        """What the server sends a client: the shared tensors and the experts it holds (or a part of them)."""
        from amole.moe import bank as banks
        from amole.moe.keys import parse_key

        if self.sends == "none":
            return {}
        sent = banks.payload(bank, held)
        return sent if self.sends == "all" else {k: v for k, v in sent.items() if parse_key(k).part == self.sends}

    def aggregate(self, bank: Mapping[str, Tensor], uploads: Sequence[Mapping[str, Tensor]],
                  weights: Sequence[float] | None) -> dict[str, Tensor]:
        """The new bank: each uploaded tensor averaged over the clients that uploaded it."""
        from amole.server.aggregate import aggregate

        return aggregate(bank, uploads, weights)


class ClientProcedure:
    """A client's half of a method: FedAMoLE's round (train, score, statistics) unless a method overrides it.

    Imports of the model code sit inside the methods: this class is defined where the server reads it too.
    """

    def train(self, job: ClientJob, payload: Mapping[str, Tensor]) -> RoundResult:
        from amole.client.round import train_and_score

        return train_and_score(job, payload)

    def score(self, job: ClientJob, payload: Mapping[str, Tensor]) -> dict:
        """Score received adapters as they are (FedIT's protocol)."""
        from amole.client.round import score

        return score(job, payload)

    def probe(self, job: ClientJob, payload: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A joining client's routing statistics under the shared expert and router (RSEA's cold start)."""
        from amole.client.round import probe

        return probe(job, payload)


@dataclass(frozen=True)
class Method:
    name: str
    kind: str
    order: int  # position in results tables (smaller first)
    summary: str  # one line, for `amole config` and the docs
    server: ServerRules = field(default_factory=ServerRules)
    client: str = "amole.strategies.base:ClientProcedure"  # module:class of its client procedure
    fixed: Mapping[str, Any] = field(default_factory=dict)  # dotted config key -> the value this method needs

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.server.sends not in SENDS:
            raise ValueError(f"method {self.name}: sends {self.server.sends!r} is not one of {SENDS}")


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make ``method`` known to the config (``strategy=<name>``), the apps and the results tables."""
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"two methods are named {method.name!r}")
    METHODS[method.name] = method
    return method


# The keys every plain-LoRA baseline fixes: one LoRA per target module, no routed pool, no router.
PLAIN_LORA: dict[str, Any] = {"adapter.num_experts": 0, "adapter.shared_expert": True}
