"""The messages between the ServerApp and a ClientApp: every record name, config key and metric key, and how
each message kind is built and read. The server loop and the ClientApp call these and never spell a key.

    identify  (QUERY)     server -> settings                      client -> client id, task
    train     (TRAIN)     server -> settings, round, client id,   client -> trained adapters, routing
                                    run id, adapters                        statistics, metrics, task, metric
    evaluate  (EVALUATE)  server -> same as train                 client -> score, score_se, test_n,
                                                                            num_examples

Metric names are the same end to end: what the client's round reports is what metrics.json holds.

A message's tensors travel packed: each named set of arrays (adapters, statistics) is one safetensors buffer
(names, dtypes, shapes and byte offsets in its JSON header, then the raw bytes; the sender's order in its
metadata) in a single Flower Array, not one Array per tensor. Flower moves every Array and each of its chunks as
an object of its own, pushed and pulled two at a time at every hop (ServerApp -> SuperLink -> SuperNode ->
ClientApp), and a hop that asks for an object the previous one has not stored yet backs off 1 s, 2 s, 4 s ...
(flwr.supercore.constant.PULL_INITIAL_BACKOFF). With one Array per tensor a train message was 56-92 objects
and those waits were most of a deployed ClientApp's start (docker/README.md); packed, it is 6, bit-identical.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import safetensors.numpy
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from safetensors import SafetensorError

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
# CPU seconds (what it takes without contention for the CPU); train_s, eval_s, stats_s and FDLoRA's fusion_s, where
# ``seconds`` went. score_se (standard error of the score over the test examples), test_n (how many were scored)
# and gen_tokens (generation only: the mean answer length in tokens) are optional so that replies of older clients
# still count.
TRAIN_METRICS = ("score", "train_loss", "experts_mean", "num_examples", "seconds")
OPTIONAL_METRICS = ("score_se", "test_n", "gen_tokens", "fusion_w_private", "fusion_w_global", "overhead_s",
                    "startup_s", "startup_cpu_s", "train_s", "eval_s", "stats_s", "fusion_s")
# What an evaluate reply adds to the score when its client sent them.
SPREAD_METRICS = ("score_se", "test_n", "gen_tokens")
# The three kinds of round request a client runs with the model (identify is answered without it).
TRAIN, EVALUATE, PROBE = "train", "evaluate", "probe"
# A joining client is probed for its routing statistics: a named query action (message type "query.probe").
PROBE_MESSAGE = f"query.{PROBE}"
# A packed record: its one Array's name and serialization type, and the header field keeping the tensors' order.
PACKED, PACKED_STYPE, ORDER = "packed", "safetensors", "order"


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
    client: str = ""  # the client id the reply says it comes from


def pack(arrays: Mapping[str, Any]) -> ArrayRecord:
    """Named arrays (numpy, or torch tensors of any dtype, bfloat16 included) as one packed record: a single
    Array holding their safetensors buffer; nothing is an empty record (0 bytes: what the traffic figures count).
    Torch is imported only for torch values."""
    if not arrays:
        return ArrayRecord()
    order = {ORDER: json.dumps(list(arrays))}
    if all(isinstance(v, np.ndarray | np.generic) for v in arrays.values()):
        data = safetensors.numpy.save({k: np.asarray(v, order="C") for k, v in arrays.items()}, metadata=order)
    else:
        import torch
        from safetensors.torch import save

        def tensor(v: Any) -> Tensor:  # a copy of its own: safetensors refuses views of one storage
            t = torch.from_numpy(np.asarray(v, order="C")) if isinstance(v, np.ndarray | np.generic) else v.detach()
            return t.to("cpu").clone(memory_format=torch.contiguous_format)

        data = save({k: tensor(v) for k, v in arrays.items()}, metadata=order)
    return ArrayRecord({PACKED: Array(dtype="uint8", shape=(len(data),), stype=PACKED_STYPE, data=data)})


def _packed_bytes(record: Any, what: str) -> tuple[bytes, list[str]] | None:
    """The safetensors buffer of a packed record and its tensors' names in the sender's order, checked; None for
    the empty record."""
    if isinstance(record, ArrayRecord) and not record:
        return None
    if not isinstance(record, ArrayRecord) or list(record.keys()) != [PACKED]:
        keys = list(record.keys()) if isinstance(record, ArrayRecord) else type(record).__name__
        raise BadReply(f"malformed {what}: expected one packed array {PACKED!r}, got {keys}")
    array = record[PACKED]
    if array.stype != PACKED_STYPE:
        raise BadReply(f"malformed {what}: serialization {array.stype!r}, expected {PACKED_STYPE!r}")
    data = bytes(array.data)
    try:  # the JSON header only: the tensors are read once, by the loader (which checks dtypes and offsets)
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8: 8 + size])
        names = [k for k in header if k != "__metadata__"]
        order = json.loads((header.get("__metadata__") or {}).get(ORDER, "null"))
    except (ValueError, TypeError, AttributeError) as err:
        raise BadReply(f"malformed {what}: not a readable safetensors buffer ({type(err).__name__}: {err})") from None
    if not (isinstance(order, list) and all(isinstance(n, str) for n in order) and sorted(order) == sorted(names)):
        raise BadReply(f"malformed {what}: its header's tensor order does not name exactly its {len(names)} tensors")
    return data, order


def _load(loader: Any, data: bytes, what: str) -> dict[str, Any]:
    """``loader(data)`` (safetensors' numpy or torch load), its failures a BadReply naming ``what``."""
    try:
        return loader(data)
    except (SafetensorError, ValueError, TypeError) as err:
        raise BadReply(f"malformed {what}: not a readable safetensors buffer ({type(err).__name__}: {err})") from None


def unpack(record: Any, what: str = "record") -> dict[str, np.ndarray]:
    """The named numpy arrays of a packed record, bit-identical and writable, in the sender's order; a record
    that is not a valid pack is a BadReply naming ``what``. bfloat16 has no numpy dtype: see ``unpack_torch``."""
    if (packed := _packed_bytes(record, what)) is None:
        return {}
    data, order = packed
    try:
        arrays = _load(safetensors.numpy.load, data, what)  # each array over its own bytearray: writable, no copy
    except KeyError as err:  # the library's dtype table: BF16 (and FP8) have no numpy dtype
        raise BadReply(f"malformed {what}: dtype {err} cannot be held by numpy (read it with unpack_torch)") from None
    return {k: arrays[k] for k in order}


def unpack_torch(record: Any, what: str = "record") -> dict[str, Tensor]:
    """The named tensors of a packed record (any dtype), bit-identical, in the sender's order; else a BadReply."""
    from safetensors.torch import load

    if (packed := _packed_bytes(record, what)) is None:
        return {}
    data, order = packed
    tensors = _load(load, data, what)
    return {k: tensors[k] for k in order}


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
                   unpack(content[ADAPTERS], "request's adapters"))


# -- client -> server ---------------------------------------------------------------------------------------
def identify_reply(client: str, task: str) -> RecordDict:
    return RecordDict({INFO: ConfigRecord({CLIENT_ID: client, TASK: task})})


def read_identify_reply(content: RecordDict) -> str:
    return str(content[INFO][CLIENT_ID])


def train_reply(client: str, result: ClientResult) -> RecordDict:
    metrics: dict[str, Any] = {k: float(v) for k, v in result.metrics.items()}
    metrics["num_examples"] = int(result.metrics["num_examples"])
    return RecordDict({
        ADAPTERS: pack(result.adapters),
        STATS: pack(result.stats),
        METRICS: MetricRecord(metrics),
        INFO: ConfigRecord({CLIENT_ID: client, TASK: result.info["task"], METRIC: result.info["metric"]}),
    })


def read_train_reply(content: RecordDict) -> TrainReply:
    """The reply's tensors and the metrics the server keeps; a reply missing any of them is a BadReply."""
    try:
        adapters = unpack_torch(content[ADAPTERS], "train reply's adapters")
        stats = unpack_torch(content[STATS], "train reply's statistics")
        m, info = content[METRICS], content[INFO]
        metrics: dict[str, float | int | str] = {k: float(m[k]) for k in TRAIN_METRICS}
        metrics["num_examples"] = int(m["num_examples"])
        metrics.update({k: float(m[k]) for k in OPTIONAL_METRICS if k in m})
        if "test_n" in metrics:
            metrics["test_n"] = int(metrics["test_n"])
        metrics.update(task=str(info[TASK]), metric=str(info[METRIC]),
                       bytes_up=int(content[ADAPTERS].count_bytes() + content[STATS].count_bytes()))
    except BadReply:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise BadReply(f"malformed train reply: {type(err).__name__}: {err}") from None
    return TrainReply(adapters, stats, metrics, str(info[CLIENT_ID]) if CLIENT_ID in info else "")


def probe_reply(result: ClientResult) -> RecordDict:
    return RecordDict({STATS: pack(result.stats)})


def read_probe_reply(content: RecordDict) -> dict[str, Tensor]:
    try:
        return unpack_torch(content[STATS], "probe reply's statistics")
    except BadReply:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise BadReply(f"malformed probe reply: {type(err).__name__}: {err}") from None


def evaluate_reply(result: ClientResult) -> RecordDict:
    metrics: dict[str, Any] = {k: float(v) for k, v in result.metrics.items()}
    metrics["num_examples"] = int(result.metrics["num_examples"])
    info = {k: str(v) for k, v in result.info.items() if k in (TASK, METRIC)}
    return RecordDict({METRICS: MetricRecord(metrics), **({INFO: ConfigRecord(info)} if info else {})})


def read_evaluate_reply(content: RecordDict) -> dict[str, Any]:
    """The score of the aggregate (or of the untrained model in round 0), with its SPREAD_METRICS, task and
    metric when the client sent them."""
    try:
        m = content[METRICS]
        out: dict[str, Any] = {"score": float(m["score"])}
        out.update({k: float(m[k]) for k in SPREAD_METRICS if k in m})
        if INFO in content:
            out.update({k: str(content[INFO][k]) for k in (TASK, METRIC) if k in content[INFO]})
    except (KeyError, TypeError, ValueError) as err:
        raise BadReply(f"malformed evaluate reply: {type(err).__name__}: {err}") from None
    if not math.isfinite(out["score"]):
        raise BadReply(f"score {out['score']} is not finite")
    if "test_n" in out:
        out["test_n"] = int(out["test_n"])
    return out


def sent_bytes(adapters: Mapping[str, Tensor]) -> tuple[ArrayRecord, int]:
    """The packed record of ``adapters`` and its size as Flower counts it (what the traffic figures report)."""
    record = pack(adapters)
    return record, record.count_bytes()
