"""Adapters a client keeps to itself between rounds (the local-only LoRA, FDLoRA's private LoRA), on its disk.

One file per round under ``<root>/<run id>/<client>/``: a round loads the newest file older than itself, so a
client that sat rounds out continues from its last one, and a federation resumed from the server's checkpoint
of round t finds what the client held after round t even if the client had already trained round t + 1. The
run id is drawn once per federation and kept in its checkpoint, so a new run never picks up an old run's files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from amole.data.records import expand
from amole.gguf import cache_root

_ROUND = re.compile(r"^round-(\d+)\.safetensors$")
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


def default_root() -> Path:
    """``$AMOLE_CACHE/client-state`` if set (the Docker images point it into the site's volume), else
    ``~/.cache/amole/client-state``."""
    return cache_root() / "client-state"


def safe_name(text: str) -> str:
    """``text`` with every character a folder name should not hold replaced by ``_`` (for run ids)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


class KeptAdapters:
    """The files of one client in one run."""

    def __init__(self, root: str | os.PathLike[str] | None, run_id: str, client: str) -> None:
        for what, value in (("run id", run_id), ("client id", client)):
            if not _SAFE.match(value) or value in (".", ".."):
                raise ValueError(f"{what} {value!r} cannot name a folder (letters, digits, '.', '_', '-' only)")
        self.folder = (default_root() if root is None else expand(root)) / run_id / client

    def rounds(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for f in self.folder.iterdir() if (m := _ROUND.match(f.name)))

    def load_before(self, server_round: int) -> dict[str, Tensor] | None:
        """What the client held after its newest round before ``server_round``; None if it has none."""
        older = [t for t in self.rounds() if t < server_round]
        return load_file(self.folder / f"round-{older[-1]}.safetensors") if older else None

    def save(self, server_round: int, tensors: Mapping[str, Tensor]) -> Path:
        """Write this round's adapters (atomically) and drop all but the two newest rounds."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"round-{server_round}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
        for t in self.rounds()[:-2]:
            (self.folder / f"round-{t}.safetensors").unlink(missing_ok=True)
        return path
