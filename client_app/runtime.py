"""Per-process state of a ClientApp: the base model is loaded and injected once and reused every round, and
each request becomes a ClientJob (model, this client's splits, its site folder).

In simulation one worker process serves many clients in turn; that is safe because every round's import
replaces every adapter tensor, so nothing of one client's round survives into another's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from amole.client_round import ClientJob
from amole.config import Settings
from amole.data import ClientSplits
from amole.data.scenario import client_splits as build_splits
from amole.data.scenario import task_name
from amole.loader import load_base_model
from amole.model import inject
from amole.site import site_folder
from client_app.protocol import Request


@lru_cache(maxsize=1)
def _model_for(model_json: str, adapter_json: str) -> tuple[Any, Any]:
    settings = Settings.from_dict({"model": json.loads(model_json), "adapter": json.loads(adapter_json)})
    model, tokenizer = load_base_model(settings.model)
    inject(model, settings.adapter)
    return model, tokenizer


def injected_model(settings: Settings) -> tuple[Any, Any]:
    """The frozen (optionally quantized) base model with AMoLE layers, cached per model/adapter config."""
    d = settings.to_dict()
    return _model_for(json.dumps(d["model"], sort_keys=True), json.dumps(d["adapter"], sort_keys=True))


def client_identity(node_config: Mapping[str, Any]) -> str:
    """The client id: ``client-id`` from the node config in deployment, ``partition-id`` in simulation."""
    for key in ("client-id", "partition-id"):
        if key in node_config:
            return str(node_config[key])
    raise KeyError("node config has neither 'client-id' nor 'partition-id': start the SuperNode with "
                   "--node-config \"client-id=<n>\" (and task=<name> or data-path=<file>)")


@lru_cache(maxsize=64)
def _splits(scenario_json: str, seed: int, client: str, task: str | None, data_path: str | None) -> ClientSplits:
    settings = Settings.from_dict({"scenario": json.loads(scenario_json)})
    return build_splits(settings.scenario, client, seed, task=task, data_path=data_path)


def _data_choice(node_config: Mapping[str, Any]) -> tuple[str | None, str | None]:
    task, path = node_config.get("task"), node_config.get("data-path")
    return (None if task is None else str(task)), (None if path is None else str(path))


def client_task(settings: Settings, client: str, node_config: Mapping[str, Any]) -> str:
    """The task this node trains on, named without loading its data (answering 'who are you' stays fast)."""
    return task_name(settings.scenario, client, *_data_choice(node_config))


def client_splits(settings: Settings, client: str, node_config: Mapping[str, Any]) -> ClientSplits:
    """This client's private splits (cached per process): its task from node config or the scenario's list."""
    scenario = json.dumps(settings.to_dict()["scenario"], sort_keys=True)
    return _splits(scenario, settings.federation.seed, client, *_data_choice(node_config))


def client_job(request: Request, node_config: Mapping[str, Any]) -> ClientJob:
    """Everything this node needs for the request's round; refuses a message meant for another client."""
    client = client_identity(node_config)
    if request.client != client:
        raise ValueError(f"message for client {request.client} reached client {client}")
    settings = request.settings
    model, tokenizer = injected_model(settings)
    site = site_folder(node_config.get("site-dir") or settings.federation.site_dir, client)
    return ClientJob(model, tokenizer, client_splits(settings, client, node_config), settings,
                     request.server_round, client, site, request.run_id)
