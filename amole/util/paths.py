"""Where amole keeps things on a machine: its cache root, and paths as users write them (``~``, ``$VARS``).

Nothing heavy is imported here, so the thin ClientApp (which must not load torch) names the same folders as
the core does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def expand(path: str | os.PathLike[str]) -> Path:
    """``~`` and environment variables expanded."""
    return Path(os.path.expandvars(os.path.expanduser(str(path))))


def cache_root(cfg: Any = None) -> Path:
    """Root of AMoLE's own cache: ``cfg.cache_dir`` (a ModelConfig) > ``$AMOLE_CACHE`` > ``~/.cache/amole``."""
    if cfg is not None and cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    env = os.environ.get("AMOLE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "amole"
