"""The server's state between rounds, written after every round so ``resume=<run dir>`` can continue.

It holds everything the rest of the run depends on: the expert bank, the last assignment, the routing
statistics RSEA scores with, the rounds done, the server RNG state and the metrics so far. Clients are
stateless between rounds (their randomness is seeded by run seed, round and client id), so this file alone
makes a resumed run end where an unbroken one ends.

One file, ``checkpoint.safetensors``: every tensor and array in safetensors, everything else as JSON in its
header, so nothing in it can run code when loaded. Runs before this format wrote a pickle, ``checkpoint.pt``;
it still resumes, read by torch's weights-only unpickler with an allowlist of the types it holds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from amole.server.planner import Assignment
from amole.util.atomic import atomic_path

CHECKPOINT = "checkpoint.safetensors"
LEGACY = "checkpoint.pt"  # earlier versions: a pickle, read weights-only
HEADER = "amole_checkpoint"
FORMAT = 1
log = logging.getLogger("amole.server")


class CheckpointError(ValueError):
    """A resume path that holds no checkpoint this server will load; the message says why and what to do."""


@dataclass
class ServerState:
    settings: dict[str, Any]
    bank: dict[str, torch.Tensor]
    clients: list[str]  # every client of the run, in client order
    rng: np.random.Generator
    assignment: Assignment | None = None  # the last round's (static mode: round 1's, kept)
    expert_codes: dict[str, np.ndarray] | None = None  # module -> (N, r) E from the last round
    client_codes: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # client -> module -> t_c
    round: int = 0  # rounds completed
    metrics: dict[str, Any] = field(default_factory=dict)


def exists(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint (either format)."""
    return any((Path(run_dir) / name).is_file() for name in (CHECKPOINT, LEGACY))


def save(state: ServerState, run_dir: Path) -> Path:
    """Write atomically: a crash mid-write leaves the previous round's checkpoint intact."""
    tensors = {f"bank/{k}": v.detach().cpu().contiguous() for k, v in state.bank.items()}
    for m, E in (state.expert_codes or {}).items():
        tensors[f"expert_codes/{m}"] = torch.from_numpy(np.ascontiguousarray(E))
    for c, codes in state.client_codes.items():
        for m, t in codes.items():
            tensors[f"client_codes/{c}/{m}"] = torch.from_numpy(np.ascontiguousarray(t))
    if state.assignment is not None:
        for m, X in state.assignment.X.items():
            tensors[f"assignment/{m}"] = torch.from_numpy(np.ascontiguousarray(X, dtype=np.uint8))
    header = {"format": FORMAT, "settings": state.settings, "clients": state.clients, "round": state.round,
              "rng": state.rng.bit_generator.state, "metrics": state.metrics,
              "assignment_clients": state.assignment.clients if state.assignment is not None else None,
              "has_expert_codes": state.expert_codes is not None}
    path = run_dir / CHECKPOINT
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={HEADER: json.dumps(header)})
    return path


def load(run_dir: str | Path) -> ServerState:
    """The state ``save`` wrote in ``run_dir``; refused in one line when it is not a run folder."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume from {run_dir}: not a folder (give the run folder, runs/<name>)")
    path = run_dir / CHECKPOINT
    if not path.is_file():
        if (run_dir / LEGACY).is_file():
            return _load_legacy(run_dir / LEGACY)
        raise CheckpointError(f"cannot resume from {run_dir}: no {CHECKPOINT} in it (give a run folder that "
                              "finished at least one round)")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            header = json.loads((f.metadata() or {})[HEADER])
    except (SafetensorError, KeyError, ValueError, OSError) as err:
        raise CheckpointError(f"cannot resume from {run_dir}: {CHECKPOINT} is unreadable ({err})") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"cannot resume from {run_dir}: checkpoint format {header.get('format')} is not "
                              f"{FORMAT}")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        kind, _, name = key.partition("/")
        parts.setdefault(kind, {})[name] = value
    client_codes: dict[str, dict[str, np.ndarray]] = {}
    for name, value in parts.get("client_codes", {}).items():
        client, _, module = name.partition("/")
        client_codes.setdefault(client, {})[module] = value.numpy()
    assignment = None
    if header["assignment_clients"] is not None:
        assignment = Assignment(list(header["assignment_clients"]),
                                {m: X.numpy().astype(bool) for m, X in parts.get("assignment", {}).items()})
    expert_codes = ({m: E.numpy() for m, E in parts.get("expert_codes", {}).items()}
                    if header["has_expert_codes"] else None)
    rng = np.random.default_rng()
    rng.bit_generator.state = header["rng"]
    return ServerState(settings=header["settings"], bank=parts.get("bank", {}), clients=list(header["clients"]),
                       rng=rng, assignment=assignment, expert_codes=expert_codes, client_codes=client_codes,
                       round=int(header["round"]), metrics=header["metrics"])


def _load_legacy(path: Path) -> ServerState:
    """A checkpoint.pt of an earlier version, read with torch's weights-only unpickler: it builds tensors and the
    few allowlisted types such a file holds (the assignment, numpy arrays and dtypes) and refuses anything else,
    so a crafted file cannot run code."""
    allowed = [Assignment, np.ndarray, np.dtype, np._core.multiarray._reconstruct,
               *{type(np.dtype(t)) for t in (np.bool_, np.uint8, np.int32, np.int64, np.float32, np.float64)}]
    try:
        with torch.serialization.safe_globals(allowed):
            data = torch.load(path, weights_only=True)
        rng = np.random.default_rng()
        rng.bit_generator.state = data.pop("rng")
        state = ServerState(rng=rng, **data)
    except Exception as err:  # noqa: BLE001 - whatever the unpickler refused, the answer is one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot resume from {path.parent}: {LEGACY} holds something other than a server "
                              f"state ({first[:200]}); it is not loaded") from None
    log.warning("resuming from %s, the format of an earlier version; the next round writes %s", path, CHECKPOINT)
    return state
