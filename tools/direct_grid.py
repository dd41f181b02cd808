"""A Flower grid that delivers each message by calling the ClientApp in this process, one node after another.

For one accelerator and no Ray: ``make gpu-check`` runs a 10-client round this way on a GPU machine that has no
internet (Ray's wheel alone is larger than what may be carried there), and the clients share the one backbone
that ``client_app.runtime`` caches per process. The nodes get the node config Flower's simulation gives them
(``partition-id``, ``num-partitions``), so the ClientApp cannot tell the difference; a handler's exception comes
back as an error reply, as it would from a SuperNode. Not a deployment path: there is no isolation between sites.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity


class DirectGrid:
    """``get_node_ids`` and ``send_and_receive``, the two grid calls ``server_app.strategy.FedAMoLE.start`` makes."""

    def __init__(self, app: ClientApp, num_nodes: int, run_id: int = 1) -> None:
        if num_nodes < 1:
            raise ValueError(f"a grid needs at least one node, got num_nodes={num_nodes}")
        self.app = app
        # What a ServerApp process is told by Flower before ``main`` runs: messages it creates are stamped with it.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 0
        self.contexts = {
            1000 + i: Context(run_id=run_id, node_id=1000 + i, state=RecordDict(), run_config={},
                              node_config={"partition-id": i, "num-partitions": num_nodes})
            for i in range(num_nodes)
        }

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        """Each message's reply, in order; ``timeout`` is not enforced (nothing runs concurrently to cut off)."""
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # what the SuperLink would assign
            context = self.contexts.get(msg.metadata.dst_node_id)
            if context is None:
                raise ValueError(f"message for node {msg.metadata.dst_node_id}, which this grid does not have")
            try:
                replies.append(self.app(msg, context))
            except Exception:  # noqa: BLE001 - a site's failure is the server's to handle, as in deployment
                error = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, traceback.format_exc())
                replies.append(Message(error, reply_to=msg))
        return replies
