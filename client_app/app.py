"""ClientApp: a thin Flower shell. Each handler reads the request (client_app.protocol), asks the run's strategy
(amole.strategies) to do the client's part of the round on this node's private data, and returns the reply.

identify (QUERY) tells the server who this node is (its client id and task) without loading data; train runs
one round on the adapters the message carries; evaluate scores them as they are (FedIT's protocol); probe
measures a joining site's routing statistics so RSEA can give it experts.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from amole.strategies import strategy_named
from client_app import protocol
from client_app.runtime import client_identity, client_job, client_task

app = ClientApp()


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Report this node's client id and task, so the server maps nodes to clients by id (no data is loaded)."""
    request = protocol.read_request(msg.content)
    client = client_identity(context.node_config)
    task = client_task(request.settings, client, context.node_config)
    return Message(content=protocol.identify_reply(client, task), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of the run's strategy on this node's private data."""
    request = protocol.read_request(msg.content)
    job = client_job(request, context.node_config)
    result = strategy_named(request.settings.federation.strategy).client_round(job, request.adapters)
    return Message(content=protocol.train_reply(job.client, result), reply_to=msg)


@app.query(protocol.PROBE_ACTION)
def probe(msg: Message, context: Context) -> Message:
    """A joining site's routing statistics under the shared expert and router the message carries."""
    request = protocol.read_request(msg.content)
    job = client_job(request, context.node_config)
    stats = strategy_named(request.settings.federation.strategy).probe(job, request.adapters)
    return Message(content=protocol.probe_reply(stats), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the aggregated adapters the message carries on this node's test split (FedIT's protocol)."""
    request = protocol.read_request(msg.content)
    job = client_job(request, context.node_config)
    result = strategy_named(request.settings.federation.strategy).score(job, request.adapters)
    return Message(content=protocol.evaluate_reply(result["score"], len(job.splits.test)), reply_to=msg)
