"""A site's own folder: what a client keeps on its disk and never uploads.

Layout: ``<site dir>/<client id>/model/<run id>/{latest,best}/`` is the site's personalized model after each
round (amole.site.personal: what it was scored with, loadable by ``amole generate`` / ``load_personalized``);
``<site dir>/<client id>/private/<run id>/round-<t>.safetensors`` holds the adapters that never leave
the client (the local-only LoRA, FDLoRA's private LoRA, FedSA-LoRA's B matrices), one file per round. A round
loads the newest file older than itself, so a client that sat rounds out continues from its last one, and a
federation resumed from the server's checkpoint of round t finds what the client held after round t even if
the client had already trained round t + 1. The run id is drawn once per federation and kept in its
checkpoint, so a new run never picks up an old run's files.

The site dir is the node-config key ``site-dir`` in deployment (each site chooses), else
``federation.site_dir``, else ``$AMOLE_CACHE/sites`` (inside a site's Docker volume). Importing this module
loads no torch, so the thin ClientApp finds the same folder (client_app.node).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from amole.util.atomic import atomic_path
from amole.util.paths import cache_root, expand

if TYPE_CHECKING:
    from torch import Tensor

_ROUND = re.compile(r"^round-(\d+)\.safetensors$")
_SAFE = re.compile(r"^[A-Za-z0-9_.-]+$")


def default_root() -> Path:
    """``$AMOLE_CACHE/sites`` if set (the Docker images point it into the site's volume), else
    ``~/.cache/amole/sites``."""
    return cache_root() / "sites"


def safe_name(text: str) -> str:
    """``text`` with every character a folder name should not hold replaced by ``_`` (for run ids)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _checked(what: str, value: str) -> str:
    if not _SAFE.match(value) or value in (".", ".."):
        raise ValueError(f"{what} {value!r} cannot name a folder (letters, digits, '.', '_', '-' only)")
    return value


def site_folder(root: str | os.PathLike[str] | None, client: str) -> Path:
    """This client's folder under the site dir ``root`` (None: the default under ``$AMOLE_CACHE``)."""
    return (default_root() if root is None else expand(root)) / _checked("client id", client)


def model_folder(site: Path, run_id: str) -> Path:
    """Where this site keeps its personalized model of run ``run_id`` (``latest/`` and ``best/``)."""
    return site / "model" / _checked("run id", run_id)


class PrivateAdapters:
    """The adapters one client keeps to itself in one run, one file per round."""

    def __init__(self, site: Path, run_id: str) -> None:
        self.folder = site / "private" / _checked("run id", run_id)

    def rounds(self) -> list[int]:
        if not self.folder.is_dir():
            return []
        return sorted(int(m.group(1)) for f in self.folder.iterdir() if (m := _ROUND.match(f.name)))

    def load_before(self, server_round: int) -> dict[str, Tensor] | None:
        """What the client held after its newest round before ``server_round``; None if it has none."""
        from safetensors.torch import load_file  # torch only where tensors are read: the ClientApp imports this module

        older = [t for t in self.rounds() if t < server_round]
        return load_file(self.folder / f"round-{older[-1]}.safetensors") if older else None

    def save(self, server_round: int, tensors: Mapping[str, Tensor]) -> Path:
        """Write this round's adapters (atomically) and drop all but the two newest rounds."""
        from safetensors.torch import save_file

        path = self.folder / f"round-{server_round}.safetensors"
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        for t in self.rounds()[:-2]:
            (self.folder / f"round-{t}.safetensors").unlink(missing_ok=True)
        return path
