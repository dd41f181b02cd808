"""ClientApp: a thin Flower shell. Each handler reads the request (client_app.messages), has the run's strategy
(amole.strategies.registry) do the client's part of the round on this node's private data, and returns the reply.

identify (QUERY) tells the server who this node is (its client id and task) without loading data; train runs
one round on the adapters the message carries; evaluate scores them as they are (FedIT's protocol); probe
measures a joining site's routing statistics so RSEA can give it experts.

Where the round runs: deployed, Flower starts a fresh ClientApp process per message, so the round is handed to
the site's resident worker, which keeps the model loaded across rounds (client_app/worker_link.py); this
module then imports neither torch nor the model code. In simulation (actors stay warm) or with
``federation.client_worker=off`` it runs here (client_app/runtime.py).
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from client_app import messages
from client_app.messages import ClientResult, Request
from client_app.node import Clock, client_identity, client_task, uses_worker

app = ClientApp()


@app.query()
def identify(msg: Message, context: Context) -> Message:
    """Report this node's client id and task, so the server maps nodes to clients by id (no data is loaded)."""
    request = messages.read_request(msg.content)
    client = client_identity(context.node_config)
    task = client_task(request.settings, client, context.node_config)
    return Message(content=messages.identify_reply(client, task), reply_to=msg)


def run_round(kind: str, request: Request, context: Context, clock: Clock) -> ClientResult:
    """The round's result from the site's worker, or computed in this process."""
    if uses_worker(request.settings.federation, context.node_config):
        from client_app.worker_link import run_in_worker

        return run_in_worker(kind, request, context.node_config, clock)
    from client_app.runtime import run_request

    return run_request(kind, request, context.node_config, clock)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One round of the run's strategy on this node's private data."""
    clock = Clock.at_handler(context.node_config)
    request = messages.read_request(msg.content)
    result = run_round(messages.TRAIN, request, context, clock)
    return Message(content=messages.train_reply(request.client, result), reply_to=msg)


@app.query(messages.PROBE)
def probe(msg: Message, context: Context) -> Message:
    """A joining site's routing statistics under the shared expert and router the message carries."""
    clock = Clock.at_handler(context.node_config)
    request = messages.read_request(msg.content)
    return Message(content=messages.probe_reply(run_round(messages.PROBE, request, context, clock)), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Score the aggregated adapters the message carries on this node's test split (FedIT's protocol)."""
    clock = Clock.at_handler(context.node_config)
    request = messages.read_request(msg.content)
    result = run_round(messages.EVALUATE, request, context, clock)
    return Message(content=messages.evaluate_reply(result), reply_to=msg)
