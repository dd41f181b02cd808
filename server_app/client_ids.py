"""Which node is which client: nodes are asked who they are, and asked again whenever new nodes appear.

Clients are matched to assignment columns by the id they report, never by node order, so a site whose
SuperNode crashed and came back under a new node id simply takes its place again.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from client_app import messages

log = logging.getLogger("amole.server")


class ClientRegistry:
    """Maps client ids to the node ids currently serving them."""

    def __init__(self, grid: Grid, settings_json: str, query_timeout: float) -> None:
        self.grid = grid
        self.settings_json = settings_json
        self.query_timeout = query_timeout
        self.nodes: dict[str, int] = {}  # client id -> node id; nodes that did not answer are asked again
        self.refused: dict[int, str] = {}  # node id -> why it failed to identify twice alike: not asked again
        self._failed: dict[int, str] = {}  # node id -> why its last identification failed
        self.duplicates: dict[int, str] = {}  # node id -> the client id it claims, which another node serves

    def refresh(self) -> dict[str, int]:
        """Forget nodes that left, identify new ones; return client id -> node id of the connected clients."""
        connected = set(self.grid.get_node_ids())
        self.nodes = {c: n for c, n in self.nodes.items() if n in connected}
        self.refused = {n: why for n, why in self.refused.items() if n in connected}  # a node that left may return
        # a second node claiming a served client id waits until the node serving it leaves, then is asked again
        self.duplicates = {n: c for n, c in self.duplicates.items() if n in connected and c in self.nodes}
        new = sorted(connected - set(self.nodes.values()) - set(self.refused) - set(self.duplicates))
        if new:
            self._identify(new)
        return dict(self.nodes)

    def _identify(self, node_ids: list[int]) -> None:
        msgs = [Message(messages.identify_request(self.settings_json), dst_node_id=n, message_type=MessageType.QUERY)
                for n in node_ids]
        answered = set()
        replies = list(self.grid.send_and_receive(msgs, timeout=self.query_timeout))
        by_message = {m.metadata.message_id: n for m, n in zip(msgs, node_ids, strict=True)}
        for reply in replies:
            node = by_message.get(reply.metadata.reply_to_message_id)  # the SuperLink answers for lost nodes
            if node is None:
                continue
            answered.add(node)
            if reply.has_error():
                self._failure(node, reply.error.reason)
                continue
            try:
                client = messages.read_identify_reply(reply.content)
            except (KeyError, TypeError) as err:
                log.warning("node %s answered who it is without a client id: %s", node, err)
                continue
            old = self.nodes.get(client)
            if old is not None and old != node:  # both connected: the first keeps the id, no flip-flopping
                log.warning("node %s says it is client %s, which node %s serves: not admitted while that node "
                            "stays connected", node, client, old)
                self.duplicates[node] = client
                continue
            self.nodes[client] = node
            self._failed.pop(node, None)
        for node in set(node_ids) - answered:
            log.warning("node %s did not answer who it is within %.0f s", node, self.query_timeout)

    def _failure(self, node: int, reason: str) -> None:
        """Log a failed identification once (its last line: the error, not the client's whole traceback); a node
        that fails twice the same way is not asked again every second."""
        lines = [ln.strip() for ln in str(reason).strip().splitlines() if ln.strip()]
        why = lines[-1] if lines else "no reason given"
        if self._failed.get(node) == why:
            self.refused[node] = why
            log.warning("node %s failed to identify itself twice (%s): not asked again while it stays", node, why)
        else:
            log.warning("node %s failed to identify itself: %s", node, why)
        self._failed[node] = why

    def wait_for(self, count: int, timeout: float) -> dict[str, int]:
        """Block until ``count`` clients are identified (the run starts with every configured client)."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.refresh()
            if len(nodes) >= count:
                return nodes
            if time.monotonic() > deadline:
                refused = (f"; {len(self.refused)} node(s) could not say who they are: "
                           f"{sorted(set(self.refused.values()))[0]}" if self.refused else "")
                raise TimeoutError(f"only {len(nodes)} of {count} clients connected and identified within "
                                   f"{timeout:.0f} s: {sorted(nodes)}{refused}")
            time.sleep(1.0)


def natural_key(text: str) -> list[Any]:
    """Sort ``layers.10`` after ``layers.2`` (module names and client ids)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text)]


def client_order(ids: Any) -> list[str]:
    """The order clients appear in an assignment: numeric when every id is an integer, else natural."""
    ids = list(ids)
    if all(re.fullmatch(r"-?\d+", i) for i in ids):
        return sorted(ids, key=int)
    return sorted(ids, key=natural_key)
