"""FedIT (Zhang et al., 2024): FedAvg of one plain LoRA per target module (same targets and rank; the routed-pool
settings do not apply). Two ways to score it:

    fedit      each client scores the aggregated model after the round (the paper's protocol for FedIT)
    fedit_ft   each client is scored right after its local training (FedAMoLE's protocol)
"""

from __future__ import annotations

from amole.strategies.base import PLAIN_LORA, Method, ServerRules, register

register(Method("fedit", "baseline", 5, "FedAvg of one plain LoRA; clients score the aggregated model",
                ServerRules(assign_mode=None, scores_aggregate=True), fixed=PLAIN_LORA))
register(Method("fedit_ft", "baseline", 6, "FedAvg of one plain LoRA; clients scored right after local training",
                ServerRules(assign_mode=None), fixed=PLAIN_LORA))
