"""Local only: each client fine-tunes its own plain LoRA on its own data and keeps it in its site folder; nothing
is sent or averaged. The yardstick a federation has to beat."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from amole.strategies.base import PLAIN_LORA, ClientProcedure, Method, ServerRules, register

if TYPE_CHECKING:
    from torch import Tensor

    from amole.client.round import ClientJob, RoundResult


class LocalClient(ClientProcedure):
    def train(self, job: ClientJob, payload: Mapping[str, Tensor]) -> RoundResult:
        from amole.client.round import initial_adapters, train_and_score

        own = job.private.load_before(job.server_round)
        result = train_and_score(job, initial_adapters(job.model, job.settings) if own is None else own)
        job.private.save(job.server_round, result.adapters)
        result.adapters, result.stats = {}, {}
        return result


register(Method("local", "baseline", 9, "one plain LoRA per client; nothing leaves it",
                ServerRules(assign_mode=None, sends="none"), client="amole.strategies.local:LocalClient",
                fixed=PLAIN_LORA))
