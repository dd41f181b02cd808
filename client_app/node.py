"""What this node is, from its node config, in the standard library only: its client id, its data choice,
its site folder, whether it runs rounds in its site's resident worker, and when this process started.

A deployed ClientApp is a fresh process per message (Flower's SuperExec starts one per task), so this module
is what such a process needs before it hands the round to the worker: nothing here imports torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amole.config import FederationConfig

WORKER_MODES = ("auto", "on", "off")
_IMPORTED = time.time()  # the fallback for the process start: when this module was first imported


def client_identity(node_config: Mapping[str, Any]) -> str:
    """The client id: ``client-id`` from the node config in deployment, ``partition-id`` in simulation."""
    for key in ("client-id", "partition-id"):
        if key in node_config:
            return str(node_config[key])
    raise KeyError("node config has neither 'client-id' nor 'partition-id': start the SuperNode with "
                   "--node-config \"client-id=<n>\" (and task=<name> or data-path=<file>)")


def data_choice(node_config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The node's own task name and task file (``task``, ``data-path``), if it chose them."""
    task, path = node_config.get("task"), node_config.get("data-path")
    return (None if task is None else str(task)), (None if path is None else str(path))


def client_task(settings: Any, client: str, node_config: Mapping[str, Any]) -> str:
    """The task this node trains on, named without loading its data. Only the data code is imported (torch,
    ~1 s), not the model code (transformers, peft, ~10 s), so a fresh process answers 'who are you' fast."""
    from amole.data.scenario import task_name

    return task_name(settings.scenario, client, *data_choice(node_config))


def simulated(node_config: Mapping[str, Any]) -> bool:
    """Flower's simulation gives every node a ``partition-id``; deployed SuperNodes name a ``client-id``."""
    return "partition-id" in node_config and "client-id" not in node_config


def uses_worker(fed: FederationConfig, node_config: Mapping[str, Any]) -> bool:
    """``federation.client_worker``: on, off, or auto (on in deployment; off in simulation, whose actors stay
    warm across messages anyway)."""
    if fed.client_worker not in WORKER_MODES:
        raise ValueError(f"federation.client_worker must be one of {WORKER_MODES}, got {fed.client_worker!r}")
    return fed.client_worker == "on" or (fed.client_worker == "auto" and not simulated(node_config))


def site_folder(fed: FederationConfig, node_config: Mapping[str, Any]) -> Path:
    """This client's site folder: the node's ``site-dir``, else ``federation.site_dir``, else the default."""
    from amole.site import folder as site

    return site.site_folder(node_config.get("site-dir") or fed.site_dir, client_identity(node_config))


def process_started() -> float:
    """Wall-clock time this process started (from /proc, to 10 ms), else when this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED
    return time.time() - age if 0 <= age < 86400 * 365 else _IMPORTED


@dataclass(frozen=True)
class Clock:
    """When a ClientApp started and got its message: what a reply's overhead figures are measured from."""

    started: float  # wall clock: this process's start in deployment, the message's arrival in simulation
    received: float  # wall clock: the handler got the message
    startup_cpu_s: float = 0.0  # CPU seconds this process had used by then (its start without contention)

    @classmethod
    def at_handler(cls, node_config: Mapping[str, Any]) -> Clock:
        now, cpu = time.time(), time.process_time()
        if simulated(node_config):  # one long-lived actor serves many messages: count from this one
            return cls(now, now)
        return cls(process_started(), now, cpu)

    def timing(self) -> dict[str, float]:
        """At the round's first step: ``overhead_s`` since the start, ``startup_s`` of it before the handler ran
        (Flower's own process start), and that part's CPU seconds."""
        return {"overhead_s": time.time() - self.started, "startup_s": self.received - self.started,
                "startup_cpu_s": self.startup_cpu_s}
