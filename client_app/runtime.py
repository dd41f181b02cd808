"""The torch side of a client: the base model is loaded and injected once per process and reused every
round, each request becomes a ClientJob (model, this client's splits, its site folder), and ``run_request``
runs the strategy's part of the round and returns plain values (client_app.messages.ClientResult).

It runs in the process that holds the model: a Ray actor in simulation, the site's resident worker in
deployment (client_app/worker.py), or the ClientApp itself with ``federation.client_worker=off``. One process
may serve many clients in turn (simulation); that is safe because every round's import replaces every adapter
tensor and the round reseeds and rebuilds its optimizer, so nothing of one round survives into another's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch

from amole.backbones.loader import compile_mode, load_base_model, model_device
from amole.client.round import ClientJob, score_metrics, score_untrained
from amole.config import Settings
from amole.data import ClientSplits
from amole.data.scenario import client_splits as build_splits
from amole.moe.model import inject
from amole.server.planner import most_held
from amole.strategies.registry import client_procedure
from amole.util.memory import release_freed_memory
from client_app.messages import EVALUATE, PROBE, TRAIN, ClientResult, Request
from client_app.node import Clock, client_identity, data_choice, site_folder

log = logging.getLogger("amole.client")


@lru_cache(maxsize=1)
def _model_for(model_json: str, adapter_json: str, slots: int) -> tuple[Any, Any]:
    settings = Settings.from_dict({"model": json.loads(model_json), "adapter": json.loads(adapter_json)})
    model, tokenizer = load_base_model(settings.model)
    inject(model, settings.adapter, compile=compile_mode(settings.model, model_device(model)), slots=slots)
    return model, tokenizer


def injected_model(settings: Settings) -> tuple[Any, Any]:
    """The frozen (optionally quantized) base model with AMoLE layers, cached per model/adapter config."""
    d = settings.to_dict()
    return _model_for(json.dumps(d["model"], sort_keys=True), json.dumps(d["adapter"], sort_keys=True),
                      most_held(settings.assign, settings.adapter.num_experts, settings.federation.num_clients))


@lru_cache(maxsize=64)
def _splits(scenario_json: str, seed: int, client: str, task: str | None, data_path: str | None) -> ClientSplits:
    settings = Settings.from_dict({"scenario": json.loads(scenario_json)})
    return build_splits(settings.scenario, client, seed, task=task, data_path=data_path)


def client_splits(settings: Settings, client: str, node_config: Mapping[str, Any]) -> ClientSplits:
    """This client's private splits (cached per process): its task from node config or the scenario's list."""
    scenario = json.dumps(settings.to_dict()["scenario"], sort_keys=True)
    return _splits(scenario, settings.federation.seed, client, *data_choice(node_config))


def client_job(request: Request, node_config: Mapping[str, Any]) -> ClientJob:
    """Everything this node needs for the request's round; refuses a message meant for another client."""
    client = client_identity(node_config)
    if request.client != client:
        raise ValueError(f"message for client {request.client} reached client {client}")
    settings = request.settings
    model, tokenizer = injected_model(settings)
    site = site_folder(settings.federation, node_config)
    return ClientJob(model, tokenizer, client_splits(settings, client, node_config), settings,
                     request.server_round, client, site, request.run_id)


def run_request(kind: str, request: Request, node_config: Mapping[str, Any], clock: Clock) -> ClientResult:
    """The strategy's part of a train or evaluate round, as plain values, with the overhead figures of
    ``clock``: from the ClientApp's start (its process start in deployment) to the round's own work, i.e.
    everything a warm worker saves (imports, model load, splits)."""
    job = client_job(request, node_config)
    procedure = client_procedure(request.settings.federation.strategy)
    payload = {k: torch.from_numpy(v) for k, v in request.adapters.items()}  # as protocol.unpack_torch
    timing = clock.timing()
    log.info("round %d (%s): first step %.2f s after the ClientApp started (%.2f s of it, %.2f CPU s, before its "
             "handler ran)", request.server_round, kind, timing["overhead_s"], timing["startup_s"],
             timing["startup_cpu_s"])
    try:
        return _dispatch(kind, job, procedure, payload, timing)
    finally:
        release_freed_memory()  # between messages the process holds its model, not the round's freed buffers


def _dispatch(kind: str, job: ClientJob, procedure: Any, payload: dict[str, torch.Tensor],
              timing: dict[str, float]) -> ClientResult:
    if kind == EVALUATE:
        scored = score_untrained(job) if job.server_round == 0 else procedure.score(job, payload)
        return ClientResult({**score_metrics(scored), "num_examples": len(job.splits.test), **timing},
                            info={"task": job.splits.task, "metric": scored["metric"]})
    if kind == PROBE:
        return ClientResult({**timing}, stats=_numpy(procedure.probe(job, payload)))
    if kind != TRAIN:
        raise ValueError(f"unknown request kind {kind!r}; known: {TRAIN}, {EVALUATE}, {PROBE}")
    result = procedure.train(job, payload)
    return ClientResult({**result.metrics, **timing}, _numpy(result.adapters), _numpy(result.stats),
                        dict(result.info))


def _numpy(tensors: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The tensors as numpy arrays (what protocol.pack sends), so both ways of replying send the same bytes."""
    return {k: v.detach().cpu().numpy() for k, v in tensors.items()}
