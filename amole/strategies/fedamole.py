"""FedAMoLE (the paper's method) and its ablations: routed + shared LoRA experts, and how experts are assigned.

    fedamole      RSEA every round: experts choose clients by their routing codes
    static        the random round-1 architectures are kept (no RSEA)
    random        a fresh random assignment every round
    homogeneous   RSEA with the same number of experts for every client
    no_shared     FedAMoLE without the shared expert (routed experts only)

All five use FedAMoLE's client round (amole.client.round); they differ only in what the server plans.
"""

from __future__ import annotations

from amole.strategies.base import Method, ServerRules, register


def _routed(name: str, kind: str, order: int, summary: str, mode: str, shared: bool = True) -> Method:
    return register(Method(name, kind, order, summary, ServerRules(assign_mode=mode),
                           fixed={"assign.mode": mode, "adapter.shared_expert": shared}))


FEDAMOLE = _routed("fedamole", "method", 0, "routed + shared LoRA experts, RSEA every round (the paper's method)",
                   "rsea")
_routed("static", "ablation", 1, "the random round-1 architectures are kept (no RSEA)", "static")
_routed("random", "ablation", 2, "a fresh random assignment every round", "random")
_routed("homogeneous", "ablation", 3, "RSEA with the same number of experts for every client", "homogeneous")
_routed("no_shared", "ablation", 4, "FedAMoLE without the shared expert", "rsea", shared=False)
