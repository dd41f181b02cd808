"""FedSA-LoRA (Guo et al., ICLR 2025): one plain LoRA per client whose A matrices learn what is shared (averaged
on the server) and whose B matrices learn what is the client's own: they stay in its site folder, zero-initialised
like LoRA's B, and are never sent."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from amole.moe.keys import parse_key
from amole.strategies.base import PLAIN_LORA, ClientProcedure, Method, ServerRules, register

if TYPE_CHECKING:
    from torch import Tensor

    from amole.client.round import ClientJob, RoundResult


def _part(tensors: Mapping[str, Tensor], part: str) -> dict[str, Tensor]:
    return {k: v for k, v in tensors.items() if parse_key(k).part == part}


class FedSALoRAClient(ClientProcedure):
    def train(self, job: ClientJob, payload: Mapping[str, Tensor]) -> RoundResult:
        from amole.client.round import initial_adapters, train_and_score

        own = job.private.load_before(job.server_round)
        if own is None:
            own = _part(initial_adapters(job.model, job.settings), "B")
        result = train_and_score(job, {**own, **payload})
        job.private.save(job.server_round, _part(result.adapters, "B"))
        result.adapters = _part(result.adapters, "A")
        return result

    def score(self, job: ClientJob, payload: Mapping[str, Tensor]) -> dict:
        own = job.private.load_before(job.server_round + 1) or {}
        return super().score(job, {**own, **payload})


register(Method("fedsa_lora", "baseline", 8, "plain LoRA whose A matrices are averaged and B matrices stay home",
                ServerRules(assign_mode=None, sends="A"), client="amole.strategies.fedsa_lora:FedSALoRAClient",
                fixed=PLAIN_LORA))
