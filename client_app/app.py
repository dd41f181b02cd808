"""ClientApp: a thin Flower shell over amole.client_round.

QUERY tells the server who this node is (its client id and task); TRAIN runs one local round on the
experts the message carries and replies with the trained tensors, the embedding statistics and metrics.
"""

from __future__ import annotations

import json

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from amole.client_round import dual_round, initial_adapters, local_round, score_payload
from amole.config import Settings
from amole.kept import KeptAdapters
from client_app.runtime import client_identity, client_splits, client_task, injected_model

app = ClientApp()


def _settings(msg: Message) -> Settings:
    return Settings.from_dict(json.loads(str(msg.content["config"]["settings"])))


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Report this node's client id and task, so the server maps nodes to clients by id (no data is loaded)."""
    client = client_identity(context.node_config)
    task = client_task(_settings(msg), client, context.node_config)
    return Message(content=RecordDict({"info": ConfigRecord({"client-id": client, "task": task})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of the configured strategy on this node's private shard."""
    settings = _settings(msg)
    config = msg.content["config"]
    client = client_identity(context.node_config)
    if str(config["client-id"]) != client:
        raise ValueError(f"message for client {config['client-id']} reached client {client}")
    model, tokenizer = injected_model(settings)
    splits = client_splits(settings, client, context.node_config)
    server_round = int(config["round"])
    # Adapters that never leave this node (local-only, FDLoRA's private LoRA) live on its disk between rounds.
    kept = KeptAdapters(settings.federation.client_state_dir, str(config["run-id"]), client)
    own = None
    if not settings.federation.communicate or settings.fusion.private_adapter:
        own = kept.load_before(server_round)
        own = initial_adapters(model, settings) if own is None else own
    payload = msg.content["adapters"].to_torch_state_dict() if settings.federation.communicate else own
    if settings.fusion.private_adapter:
        result, private = dual_round(model, tokenizer, splits, payload, own, settings, server_round, client)
        kept.save(server_round, private)
    else:
        result = local_round(model, tokenizer, splits, payload, settings, server_round, client)
    if not settings.federation.communicate:
        kept.save(server_round, result.adapters)
        result.adapters, result.stats = {}, {}
    metrics = {k: float(v) for k, v in result.metrics.items()}
    metrics["num-examples"] = int(result.metrics["num_examples"])
    content = RecordDict({
        "adapters": ArrayRecord(result.adapters),
        "stats": ArrayRecord(result.stats),
        "metrics": MetricRecord(metrics),
        "info": ConfigRecord({"client-id": client, **result.info}),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_aggregate(msg: Message, context: Context) -> Message:
    """Score the aggregated model the message carries on this node's test split (FedIT's protocol)."""
    settings = _settings(msg)
    client = client_identity(context.node_config)
    model, tokenizer = injected_model(settings)
    splits = client_splits(settings, client, context.node_config)
    result = score_payload(model, tokenizer, splits, msg.content["adapters"].to_torch_state_dict(), settings)
    metrics = MetricRecord({"score": float(result["score"]), "num-examples": len(splits.test)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
