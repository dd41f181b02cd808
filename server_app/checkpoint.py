"""The server's state between rounds, written after every round so ``resume=<run dir>`` can continue.

It holds everything the rest of the run depends on: the expert bank, the assignment to use next, the rounds
done, the server RNG state and the metrics so far. Clients are stateless between rounds (their randomness is
seeded by run seed, round and client id), so this file alone makes a resumed run end where an unbroken one
ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT = "checkpoint.pt"


@dataclass
class ServerState:
    settings: dict[str, Any]
    bank: dict[str, torch.Tensor]
    assignment: dict[str, np.ndarray]  # module -> bool (N, C): the assignment the next round uses
    clients: list[str]  # client ids, in assignment-column order
    rng: np.random.Generator
    round: int = 0  # rounds completed
    metrics: dict[str, Any] = field(default_factory=dict)


def save(state: ServerState, run_dir: Path) -> Path:
    """Write atomically: a crash mid-write leaves the previous round's checkpoint intact."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CHECKPOINT
    tmp = path.with_suffix(".tmp")
    torch.save({
        "settings": state.settings,
        "bank": state.bank,
        "assignment": {k: torch.from_numpy(v.astype(np.bool_)) for k, v in state.assignment.items()},
        "clients": state.clients,
        "rng": state.rng.bit_generator.state,
        "round": state.round,
        "metrics": state.metrics,
    }, tmp)
    os.replace(tmp, path)
    return path


def load(run_dir: str | Path) -> ServerState:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no {CHECKPOINT} in {run_dir} (give an earlier run's directory)")
    data = torch.load(path, weights_only=False)
    rng = np.random.default_rng()
    rng.bit_generator.state = data["rng"]
    return ServerState(
        settings=data["settings"], bank=data["bank"],
        assignment={k: v.numpy().astype(bool) for k, v in data["assignment"].items()},
        clients=list(data["clients"]), rng=rng, round=int(data["round"]), metrics=data["metrics"],
    )
