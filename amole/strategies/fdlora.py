"""FDLoRA (Qi et al., 2024): a private plain LoRA next to the federated one; only the federated one is uploaded
(plain FedAvg on the server: the paper's outer optimizer is not reproduced), and each client is scored with
their fusion, merged by weights it tunes itself on its eval split (``fusion:`` in the config).

The merge is in parameter space, tensor by tensor (``w_p * private + w_g * global`` for every A and B, as
LoraHub composes LoRA modules), so the fused adapter has the same shape as either input and loads into the
same model. The two weights minimise the client's validation loss plus an L1 penalty; the search is
gradient-free (Nelder-Mead, kept inside [0, max_weight]^2) and starts from the simplex {(1, 1), (1, 0), (0, 1)}:
both modules at full weight, the private one alone, the global one alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize

from amole.config import FusionConfig
from amole.strategies.base import PLAIN_LORA, ClientProcedure, Method, ServerRules, register

if TYPE_CHECKING:
    from torch import Tensor

    from amole.client.round import ClientJob, RoundResult

OUTSIDE_SLOPE = 10.0


@dataclass
class Fusion:
    w_private: float
    w_global: float
    objective: float  # validation loss + L1 penalty at these weights
    evaluations: int


def merge(private: Mapping[str, Tensor], global_: Mapping[str, Tensor], w_private: float,
          w_global: float) -> dict[str, Tensor]:
    """``w_private * private + w_global * global`` for every tensor; both must name the same tensors."""
    if set(private) != set(global_):
        diff = sorted(set(private) ^ set(global_))
        raise KeyError(f"private and global adapters differ in {len(diff)} tensors, e.g. {diff[:3]}")
    return {k: w_private * private[k] + w_global * global_[k] for k in private}


def tune_weights(loss_of: Callable[[Mapping[str, Tensor]], float], private: Mapping[str, Tensor],
                 global_: Mapping[str, Tensor], cfg: FusionConfig) -> Fusion:
    """The (w_private, w_global) in [0, max_weight]^2 with the lowest ``loss_of(merge) + l1 * (w_p + w_g)``.

    ``loss_of`` loads an adapter into the client's model and returns its validation loss; it is called at
    most ``cfg.max_evals`` times (repeated points are answered from a cache).
    """
    if cfg.max_evals < 1:
        raise ValueError(f"fusion.max_evals must be at least 1, got {cfg.max_evals}")
    hi = float(cfg.max_weight)
    if hi <= 0:
        raise ValueError(f"fusion.max_weight must be positive, got {cfg.max_weight}")
    seen: dict[tuple[float, float], float] = {}

    def objective(w: np.ndarray) -> float:
        # Outside the box: the value at the nearest box point plus a slope back in. Projecting the simplex
        # onto the box instead (scipy's bounded Nelder-Mead) lets it collapse onto an edge and stall there.
        inside = np.clip(w, 0.0, hi)
        key = (round(float(inside[0]), 6), round(float(inside[1]), 6))
        if key not in seen:
            if len(seen) >= cfg.max_evals:  # Nelder-Mead may overrun maxfev while finishing an iteration
                raise _Exhausted
            seen[key] = loss_of(merge(private, global_, *key)) + cfg.l1 * sum(key)
        return seen[key] + OUTSIDE_SLOPE * float(np.abs(w - inside).sum())

    simplex = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]) * min(1.0, hi)
    with contextlib.suppress(_Exhausted):
        minimize(objective, simplex[0], method="Nelder-Mead",
                 options={"initial_simplex": simplex, "maxfev": 10 * cfg.max_evals, "xatol": 0.01, "fatol": 1e-4})
    (wp, wg), best = min(seen.items(), key=lambda kv: kv[1])
    return Fusion(wp, wg, best, len(seen))


class _Exhausted(Exception):
    """The search spent its evaluation budget."""


def train_dual_and_score(job: ClientJob, global_payload: Mapping[str, Tensor],
                         private: Mapping[str, Tensor]) -> tuple[RoundResult, dict[str, Tensor]]:
    """FDLoRA's round: train the private and the global LoRA in turn, tune their fusion, score the fused one.

    Returns what is uploaded (the trained global LoRA only) and the client's new private LoRA, which never
    leaves it. The model holds one plain LoRA per module (no routed experts); it is loaded three ways in turn.
    """
    from amole.client.round import RoundResult, score_metrics, train_local
    from amole.evaluation.evaluate import answer_loss, evaluate
    from amole.moe.model import export_adapters, import_adapters
    from amole.util.seeds import stable_seed

    model, tokenizer, splits, settings = job.model, job.tokenizer, job.splits, job.settings
    if not splits.eval:
        raise ValueError(f"client {job.client}: FDLoRA tunes its fusion weights on the eval split, which is empty "
                         "(raise scenario.eval_cap / eval_frac)")
    start = time.perf_counter()
    cfg = settings.train
    phases = {}
    for phase, payload in (("private", private), ("global", global_payload)):
        seed = stable_seed("round", settings.federation.seed, job.server_round, job.client, phase)
        phases[phase] = (train_local(job, payload, seed)[1], export_adapters(model))
    (private_metrics, new_private), (metrics, new_global) = phases["private"], phases["global"]

    def loss_of(adapters: Mapping[str, Tensor]) -> float:
        import_adapters(model, adapters)
        return answer_loss(model, tokenizer, splits.eval, cfg.max_seq_len, settings.eval.batch_size)

    trained = time.perf_counter()
    fusion = tune_weights(loss_of, new_private, new_global, settings.fusion)
    import_adapters(model, merge(new_private, new_global, fusion.w_private, fusion.w_global))
    fused = time.perf_counter()
    result = evaluate(model, tokenizer, splits.test, cfg.max_seq_len, settings.eval)
    end = time.perf_counter()
    job.keep_model(result["score"], result["metric"])  # the fused adapter it was scored with
    metrics.update({f"private_{k}": v for k, v in private_metrics.items() if k.startswith("train_")})
    metrics.update(
        **score_metrics(result),
        num_examples=float(len(splits.train)),
        experts_mean=0.0,
        fusion_w_private=fusion.w_private,
        fusion_w_global=fusion.w_global,
        fusion_objective=fusion.objective,
        fusion_evals=float(fusion.evaluations),
        seconds=end - start,
        train_s=trained - start, fusion_s=fused - trained, eval_s=end - fused,
    )
    info = {"task": splits.task, "metric": result["metric"]}
    return RoundResult(new_global, {}, metrics, info), new_private


class FDLoRAClient(ClientProcedure):
    def train(self, job: ClientJob, payload: Mapping[str, Tensor]) -> RoundResult:
        from amole.client.round import initial_adapters

        own = job.private.load_before(job.server_round)
        own = initial_adapters(job.model, job.settings) if own is None else own
        result, private = train_dual_and_score(job, payload, own)
        job.private.save(job.server_round, private)
        return result


register(Method("fdlora", "baseline", 7, "a private and a federated plain LoRA per client, scored fused",
                ServerRules(assign_mode=None), client="amole.strategies.fdlora:FDLoRAClient", fixed=PLAIN_LORA))
