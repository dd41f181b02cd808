"""The server's state between rounds, written after every round so ``resume=<run dir>`` can continue.

It holds everything the rest of the run depends on: the expert bank, the last assignment, the routing
statistics RSEA scores with, the rounds done, the server RNG state and the metrics so far. Clients are
stateless between rounds (their randomness is seeded by run seed, round and client id), so this file alone
makes a resumed run end where an unbroken one ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amole.server.planner import Assignment
from amole.util.atomic import atomic_path

CHECKPOINT = "checkpoint.pt"


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


def save(state: ServerState, run_dir: Path) -> Path:
    """Write atomically: a crash mid-write leaves the previous round's checkpoint intact."""
    path = run_dir / CHECKPOINT
    data = {k: v for k, v in vars(state).items() if k != "rng"}
    data["rng"] = state.rng.bit_generator.state
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def load(run_dir: str | Path) -> ServerState:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: no {CHECKPOINT} in {run_dir} (give an earlier run's directory)")
    data = torch.load(path, weights_only=False)
    rng = np.random.default_rng()
    rng.bit_generator.state = data.pop("rng")
    return ServerState(rng=rng, **data)
