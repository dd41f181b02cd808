"""The messages between the ServerApp and a ClientApp: every record name, config key and metric key, and how
each message kind is built and read. The server loop and the ClientApp call these and never spell a key.

    identify  (QUERY)     server -> settings                      client -> client id, task
    train     (TRAIN)     server -> settings, round, client id,   client -> trained adapters, routing
                                    run id, adapters                        statistics, metrics, task, metric
    evaluate  (EVALUATE)  server -> same as train                 client -> score, score_se, test_n,
                                                                            num_examples

Metric names are the same end to end: what the client's round reports is what metrics.json holds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from amole.config import Settings

if TYPE_CHECKING:  # torch stays out of a ClientApp that only hands requests to its site's worker
    from torch import Tensor

# Records of a message's content.
CONFIG, ADAPTERS, STATS, METRICS, INFO = "config", "adapters", "stats", "metrics", "info"
# Keys of the config record (server -> client) and of the info record (client -> server).
SETTINGS, ROUND, CLIENT_ID, RUN_ID, TASK, METRIC = "settings", "round", "client-id", "run-id", "task", "metric"
# Metrics every train reply carries, and the optional ones: FDLoRA's tuned fusion weights; overhead_s, the
# seconds from the ClientApp's start to the round's first step (imports, model load: what a warm worker saves),
# startup_s, the part of it before the ClientApp's handler ran (Flower's own process start), and that part's
# CPU seconds (what it takes without contention for the CPU). score_se (standard error of the score over the test
# examples) and test_n (how many were scored) are optional so that replies of older clients still count.
TRAIN_METRICS = ("score", "train_loss", "experts_mean", "num_examples", "seconds")
OPTIONAL_METRICS = ("score_se", "test_n", "fusion_w_private", "fusion_w_global", "overhead_s", "startup_s",
                    "startup_cpu_s")
# What an evaluate reply adds to the score when its client sent them.
SPREAD_METRICS = ("score_se", "test_n")
# The two kinds of round request a client runs (identify is answered without the model).
TRAIN, EVALUATE, PROBE = "train", "evaluate", "probe"
# A joining client is probed for its routing statistics: a named query action (message type "query.probe").
PROBE_MESSAGE = f"query.{PROBE}"


class BadReply(ValueError):
    """A client's reply that must not be used."""


@dataclass
class Request:
    """What the server asks of a client (identify requests carry only the settings). The adapters are numpy
    arrays exactly as the message carried them; the client's torch side makes tensors of them."""

    settings: Settings
    server_round: int = 0
    client: str = ""
    run_id: str = ""
    adapters: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class ClientResult:
    """A client's answer to a round request, in plain values: what the reply message is built from, and what
    a site's worker process hands back to its ClientApp."""

    metrics: dict[str, float]  # train: TRAIN_METRICS (+ optional); evaluate: score, SPREAD_METRICS, num_examples
    #                            (+ overhead_s)
    adapters: dict[str, np.ndarray] = field(default_factory=dict)  # uploaded (empty: nothing leaves the client)
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # routing statistics for RSEA
    info: dict[str, str] = field(default_factory=dict)  # task name and metric kind (train)


@dataclass
class TrainReply:
    adapters: dict[str, Tensor]
    stats: dict[str, Tensor]
    metrics: dict[str, float | int | str]  # TRAIN_METRICS (+ optional ones), task, metric, bytes_up


def numpy_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """The record of named numpy arrays (what ``ArrayRecord(torch_state_dict)`` makes of the same tensors)."""
    return ArrayRecord({k: Array.from_numpy_ndarray(v) for k, v in arrays.items()})


# -- server -> client ---------------------------------------------------------------------------------------
def settings_json(settings: Settings) -> str:
    return json.dumps(settings.to_dict(), sort_keys=True)


def identify_request(settings_text: str) -> RecordDict:
    return RecordDict({CONFIG: ConfigRecord({SETTINGS: settings_text})})


def round_request(settings_text: str, server_round: int, client: str, run_id: str,
                  adapters: ArrayRecord) -> RecordDict:
    """A train or evaluate request: the adapters the client is to train or score, and who it is for."""
    config = ConfigRecord({SETTINGS: settings_text, ROUND: server_round, CLIENT_ID: client, RUN_ID: run_id})
    return RecordDict({ADAPTERS: adapters, CONFIG: config})


def read_request(content: RecordDict) -> Request:
    config = content[CONFIG]
    settings = Settings.from_dict(json.loads(str(config[SETTINGS])))
    if ROUND not in config:
        return Request(settings)
    return Request(settings, int(config[ROUND]), str(config[CLIENT_ID]), str(config[RUN_ID]),
                   {k: v.numpy() for k, v in content[ADAPTERS].items()})


# -- client -> server ---------------------------------------------------------------------------------------
def identify_reply(client: str, task: str) -> RecordDict:
    return RecordDict({INFO: ConfigRecord({CLIENT_ID: client, TASK: task})})


def read_identify_reply(content: RecordDict) -> str:
    return str(content[INFO][CLIENT_ID])


def train_reply(client: str, result: ClientResult) -> RecordDict:
    metrics: dict[str, Any] = {k: float(v) for k, v in result.metrics.items()}
    metrics["num_examples"] = int(result.metrics["num_examples"])
    return RecordDict({
        ADAPTERS: numpy_record(result.adapters),
        STATS: numpy_record(result.stats),
        METRICS: MetricRecord(metrics),
        INFO: ConfigRecord({CLIENT_ID: client, TASK: result.info["task"], METRIC: result.info["metric"]}),
    })


def read_train_reply(content: RecordDict) -> TrainReply:
    """The reply's tensors and the metrics the server keeps; a reply missing any of them is a BadReply."""
    try:
        adapters, stats = content[ADAPTERS].to_torch_state_dict(), content[STATS].to_torch_state_dict()
        m, info = content[METRICS], content[INFO]
        metrics: dict[str, float | int | str] = {k: float(m[k]) for k in TRAIN_METRICS}
        metrics["num_examples"] = int(m["num_examples"])
        metrics.update({k: float(m[k]) for k in OPTIONAL_METRICS if k in m})
        if "test_n" in metrics:
            metrics["test_n"] = int(metrics["test_n"])
        metrics.update(task=str(info[TASK]), metric=str(info[METRIC]),
                       bytes_up=int(content[ADAPTERS].count_bytes() + content[STATS].count_bytes()))
    except (KeyError, TypeError, ValueError) as err:
        raise BadReply(f"malformed train reply: {type(err).__name__}: {err}") from None
    return TrainReply(adapters, stats, metrics)


def probe_reply(result: ClientResult) -> RecordDict:
    return RecordDict({STATS: numpy_record(result.stats)})


def read_probe_reply(content: RecordDict) -> dict[str, Tensor]:
    try:
        return content[STATS].to_torch_state_dict()
    except (KeyError, TypeError, ValueError) as err:
        raise BadReply(f"malformed probe reply: {type(err).__name__}: {err}") from None


def evaluate_reply(result: ClientResult) -> RecordDict:
    metrics: dict[str, Any] = {k: float(v) for k, v in result.metrics.items()}
    metrics["num_examples"] = int(result.metrics["num_examples"])
    return RecordDict({METRICS: MetricRecord(metrics)})


def read_evaluate_reply(content: RecordDict) -> dict[str, float | int]:
    """The score of the aggregate, with its SPREAD_METRICS when the client sent them."""
    try:
        m = content[METRICS]
        out: dict[str, float | int] = {"score": float(m["score"])}
        out.update({k: float(m[k]) for k in SPREAD_METRICS if k in m})
    except (KeyError, TypeError, ValueError) as err:
        raise BadReply(f"malformed evaluate reply: {type(err).__name__}: {err}") from None
    if not math.isfinite(out["score"]):
        raise BadReply(f"score {out['score']} is not finite")
    if "test_n" in out:
        out["test_n"] = int(out["test_n"])
    return out


def sent_bytes(adapters: Mapping[str, Tensor]) -> tuple[ArrayRecord, int]:
    """The record of ``adapters`` and its size as Flower counts it (what the traffic figures report)."""
    record = ArrayRecord(dict(adapters))
    return record, record.count_bytes()
