"""The client's steps of a round, without Flower: import, train, evaluate, statistics, export.

The order is the paper's protocol: local training, then evaluation on the client's own test split right
after it, then the no-grad statistics pass over the embedding set that feeds the server's RSEA. Which of
these a strategy runs, and with which adapters, is amole.strategies.registry' business; this module only does them.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from amole.client.routing_stats import collect_statistics
from amole.client.train import train_steps
from amole.config import Settings
from amole.data import ClientSplits, batches, collate, encode, pad_id_of
from amole.evaluation.evaluate import evaluate
from amole.moe import bank
from amole.moe.model import amole_layers, export_adapters, import_adapters
from amole.server.privacy import privatize
from amole.site.folder import PrivateAdapters, model_folder
from amole.site.personal import KeptInfo, keep_round
from amole.util.memory import release_freed_memory
from amole.util.seeds import stable_seed


@dataclass
class ClientJob:
    """One client in one round: its injected model, its private splits, the settings and where it keeps files."""

    model: nn.Module
    tokenizer: Any
    splits: ClientSplits
    settings: Settings
    server_round: int
    client: str
    site: Path  # this client's site folder (amole.site.folder)
    run_id: str

    @property
    def private(self) -> PrivateAdapters:
        """Adapters this client never uploads, in its site folder, for this run."""
        return PrivateAdapters(self.site, self.run_id)

    def keep_model(self, score: float, metric: str) -> None:
        """Keep the model as it was just scored in the site folder (latest, and best when it is the best)."""
        info = KeptInfo.from_settings(self.settings, run_id=self.run_id, client=self.client, round=self.server_round,
                                      score=float(score), metric=metric, task=self.splits.task)
        keep_round(model_folder(self.site, self.run_id), self.model, info)


@dataclass
class RoundResult:
    adapters: dict[str, Tensor]  # what is uploaded (empty: nothing leaves the client)
    stats: dict[str, Tensor]  # routing statistics for RSEA (empty without routed experts)
    metrics: dict[str, float]  # score, score_se, test_n, train_loss, experts_mean, num_examples, seconds, ...
    info: dict[str, str]  # task name and metric kind


def score_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of an evaluation a reply carries: the score, its standard error over the test examples and
    how many examples were scored (so a results table can say whether a difference exceeds the noise), and for
    generation the mean answer length in tokens."""
    return {"score": float(result["score"]), "score_se": float(result["score_se"]), "test_n": float(result["n"]),
            **({"gen_tokens": float(result["gen_tokens"])} if "gen_tokens" in result else {})}


def embedding_batches(tokenizer, splits: ClientSplits, settings: Settings) -> list[dict[str, Tensor]]:
    pad = pad_id_of(tokenizer)
    feats = [encode(tokenizer, ex, settings.train.max_seq_len) for ex in splits.embed]
    size = settings.eval.batch_size
    return [collate(feats[i : i + size], pad) for i in range(0, len(feats), size)]


def train_local(job: ClientJob, payload: Mapping[str, Tensor],
                seed: int) -> tuple[dict[str, list[int]], dict[str, float]]:
    """Load ``payload`` and run the local steps on the client's training split: (experts held, train metrics)."""
    torch.manual_seed(seed)
    held = import_adapters(job.model, payload)
    cfg = job.settings.train
    stream = batches(job.tokenizer, job.splits.train, cfg.batch_size, cfg.max_seq_len, random.Random(seed))
    return held, train_steps(job.model, stream, cfg, job.server_round)


def train_and_score(job: ClientJob, payload: Mapping[str, Tensor]) -> RoundResult:
    """Train ``payload`` on the client's data, score it on its test split, measure its routing statistics."""
    start = time.perf_counter()
    model, tokenizer, splits, settings = job.model, job.tokenizer, job.splits, job.settings
    seed = stable_seed("round", settings.federation.seed, job.server_round, job.client)
    held, metrics = train_local(job, payload, seed)
    release_freed_memory()  # the training step's buffers: back to the OS before evaluation allocates its own
    trained = time.perf_counter()
    result = evaluate(model, tokenizer, splits.test, settings.train.max_seq_len, settings.eval)
    scored = time.perf_counter()
    # No routed pool (plain LoRA baselines): nothing for RSEA to score, so skip encoding the embedding set.
    stats = routing_statistics(job) if settings.adapter.num_experts else {}
    end = time.perf_counter()
    metrics.update(
        **score_metrics(result),
        num_examples=float(len(splits.train)),
        experts_mean=float(np.mean([len(ids) for ids in held.values()])),
        seconds=end - start,
        # where the round's time went: what a budget is sized by
        train_s=trained - start, eval_s=scored - trained, stats_s=end - scored,
    )
    job.keep_model(result["score"], result["metric"])
    return RoundResult(export_adapters(model), stats, metrics, {"task": splits.task, "metric": result["metric"]})


def probe(job: ClientJob, payload: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A joining client's routing statistics under the shared expert and router it was sent (no experts yet),
    so RSEA can assign it experts from its own data (a cold start, not a random pick)."""
    import_adapters(job.model, payload)
    return routing_statistics(job)


def routing_statistics(job: ClientJob) -> dict[str, Tensor]:
    """What the client uploads for RSEA: its routing statistics over the embedding set under the adapters the
    model holds, with metric-DP noise when ``assign.dp_eta`` is set (from the OS entropy: the server cannot
    regenerate it)."""
    stats = collect_statistics(job.model, embedding_batches(job.tokenizer, job.splits, job.settings))
    if job.settings.assign.dp_eta is not None:
        stats = privatize(stats, job.settings.assign.dp_eta, job.settings.assign.dp_clip)
    return stats


def score(job: ClientJob, payload: Mapping[str, Tensor]) -> dict:
    """FedIT's protocol: the aggregated model, as received, scored on the client's own test split."""
    import_adapters(job.model, payload)
    result = evaluate(job.model, job.tokenizer, job.splits.test, job.settings.train.max_seq_len, job.settings.eval)
    job.keep_model(result["score"], result["metric"])
    return result


def score_untrained(job: ClientJob) -> dict:
    """Round 0: the client's model before any training (the seeded init; every B is zero, so it answers as the
    backbone does) scored on its test split. Nothing is kept: a site's kept model is always a trained one."""
    import_adapters(job.model, initial_adapters(job.model, job.settings))
    return evaluate(job.model, job.tokenizer, job.splits.test, job.settings.train.max_seq_len, job.settings.eval)


def initial_adapters(model: nn.Module, settings: Settings) -> dict[str, Tensor]:
    """A local-only client's starting point: the seeded init every client of a federation would receive."""
    shapes = {n: (m.in_features, m.out_features) for n, m in amole_layers(model).items()}
    return bank.payload(bank.create_bank(shapes, settings.adapter, seed=settings.federation.seed), {})
