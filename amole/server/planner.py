"""Which experts each client trains in a round: RSEA and its ablations over the clients actually present.

The paper assumes every client takes part in every round. Real federations lose nodes, so the plan is made
at the start of each round over the clients that are there: the count constraints are adapted to that number
(and still checked), the scores use the latest statistics the server has for each of them, and an absent
client's experts simply keep their values until it is back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from amole.config import AssignConfig
from amole.server.assign import (
    AssignmentError,
    check_feasible,
    client_scores,
    homogeneous_bounds,
    random_assignment,
    solve_many,
)

MODES = ("rsea", "static", "random", "homogeneous")


@dataclass
class Assignment:
    """Per module a bool (N experts x C clients) matrix; column ``c`` belongs to ``clients[c]``."""

    clients: list[str]
    X: dict[str, np.ndarray]

    def held(self, client: str) -> dict[str, list[int]]:
        c = self.clients.index(client)
        return {m: np.flatnonzero(X[:, c]).tolist() for m, X in self.X.items()}

    def extended(self, other: Assignment) -> Assignment:
        """This assignment plus the columns of ``other``'s clients it does not cover yet (static mode)."""
        new = [c for c in other.clients if c not in self.clients]
        cols = [other.clients.index(c) for c in new]
        return Assignment([*self.clients, *new],
                          {m: np.concatenate([X, other.X[m][:, cols]], axis=1) for m, X in self.X.items()})

    def restricted(self, clients: Sequence[str]) -> Assignment:
        """The same architectures for a subset of the clients (experts of absent clients go untrained)."""
        missing = [c for c in clients if c not in self.clients]
        if missing:
            raise AssignmentError(f"clients {missing} have no architecture in this assignment")
        cols = [self.clients.index(c) for c in clients]
        return Assignment(list(clients), {m: X[:, cols].copy() for m, X in self.X.items()})


def adapted_constraints(cfg: AssignConfig, num_experts: int, num_clients: int) -> AssignConfig:
    """The mode's constraints for ``num_clients`` present clients, widened only as far as feasibility needs.

    With every configured client present this returns the configured values unchanged (they were checked at
    start). With fewer, K shrinks to at most the number present and [min, max] widens to contain N*K/C.
    Every client holds at least one routed expert per module: a configuration with N*K < C (some client
    would hold none) is refused here, naming the numbers, rather than run with expert-less clients.
    """
    if cfg.mode not in MODES:
        raise AssignmentError(f"unknown assignment mode {cfg.mode!r}; expected one of {MODES}")
    N, C = num_experts, num_clients
    if C < 1:
        raise AssignmentError("no clients to assign experts to")
    K = min(cfg.clients_per_expert, C)
    if cfg.min_experts < 1 or N * K < C:
        raise AssignmentError(
            f"every client must hold at least one routed expert per module, but num_experts N={N} x "
            f"clients_per_expert K={K} = {N * K} expert slots < C={C} clients (min_experts={cfg.min_experts}, "
            f"max_experts={cfg.max_experts}); raise num_experts or clients_per_expert, use fewer clients, "
            f"or set min_experts >= 1")
    if cfg.mode == "homogeneous":
        lo, hi = homogeneous_bounds(N, C, K)
    else:
        lo, hi = min(cfg.min_experts, N * K // C), max(cfg.max_experts, -(-N * K // C))
    check_feasible(N, C, K, lo, hi)
    return replace(cfg, clients_per_expert=K, min_experts=lo, max_experts=hi)


def most_held(cfg: AssignConfig, num_experts: int, num_clients: int) -> int:
    """The most routed experts per module the planner gives a client when ``num_clients`` take part: what a model
    compiled whole sizes its expert slots to (``model.compile=model``), so that no assignment changes its shapes.
    A round with fewer clients can widen it (that client's model then compiles once more)."""
    if num_experts == 0:
        return 0
    try:
        return min(num_experts, adapted_constraints(cfg, num_experts, num_clients).max_experts)
    except AssignmentError:  # the server refuses this configuration at its start, naming why
        return min(num_experts, cfg.max_experts)


def plan(
    cfg: AssignConfig,
    clients: Sequence[str],
    modules: Sequence[str],
    num_experts: int,
    r: int,
    previous: Assignment | None,
    expert_codes: Mapping[str, np.ndarray] | None,
    client_codes: Mapping[str, Mapping[str, np.ndarray]],
    rng: np.random.Generator,
) -> Assignment:
    """This round's assignment for the present ``clients``.

    ``expert_codes[m]`` is module m's (N, r) matrix E from the last round's statistics; ``client_codes[c][m]``
    is client c's latest router code t_c (clients never seen score neutrally: zero code). The first round,
    or a round before any statistics exist, is random under the same constraints (the paper's round 0).
    """
    clients = list(clients)
    if num_experts == 0:  # plain LoRA (FedIT-style): every client has the same, expert-free architecture
        return Assignment(clients, {m: np.zeros((0, len(clients)), dtype=bool) for m in modules})
    adapted = adapted_constraints(cfg, num_experts, len(clients))
    K, lo, hi = adapted.clients_per_expert, adapted.min_experts, adapted.max_experts
    if cfg.mode == "static" and previous is not None:
        newcomers = [c for c in clients if c not in previous.clients]
        if newcomers:  # a late joiner gets a random architecture under the same constraints, then keeps it
            drawn = Assignment(clients, random_assignment(modules, num_experts, len(clients), K, lo, hi, rng))
            previous = previous.extended(drawn.restricted(newcomers))
        return previous.restricted(clients)
    if previous is None or expert_codes is None or cfg.mode == "random":
        return Assignment(clients, random_assignment(modules, num_experts, len(clients), K, lo, hi, rng))
    scores = {}
    for m in modules:
        T = np.stack([np.asarray(client_codes.get(c, {}).get(m, np.zeros(r)), dtype=np.float64) for c in clients])
        scores[m] = client_scores(expert_codes[m], T, r)
    return Assignment(clients, solve_many(scores, K, lo, hi))
