"""Compose the Hydra tree under ``conf/`` into typed Settings: the one way any entry point gets its config."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import OmegaConf

from amole.config import Settings
from amole.strategies.registry import resolve_strategy

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "scenario", "strategy", "budget", "protocol")
# Top-level keys of conf/config.yaml that are not Settings: ``seed`` (federation.seed interpolates it) and
# ``experiment`` (options of the experiment runner, tools.experiment).
EXTRA_KEYS = ("seed", "experiment")


def compose(overrides: Sequence[str] = ()) -> Settings:
    """Settings from ``conf/config.yaml`` plus Hydra overrides such as ``budget=demo train.steps=10``."""
    if not CONF_DIR.is_dir():
        raise FileNotFoundError(f"config folder {CONF_DIR} is missing: the app must ship conf/")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hydra_compose(config_name="config", overrides=list(overrides))
    return settings_from_cfg(cfg)


def settings_from_cfg(cfg: Any) -> Settings:
    """Typed Settings from a composed Hydra config (interpolations resolved, the non-Settings keys dropped)."""
    values = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    for key in EXTRA_KEYS:
        values.pop(key, None)  # type: ignore[union-attr]
    values.pop("hydra", None)  # type: ignore[union-attr]
    return resolve_strategy(Settings.from_dict(values))  # type: ignore[arg-type]


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """Flower's flat run config (``model``, ``scenario``, ``strategy``, ``budget``, ``overrides``) for Hydra."""
    out = [f"{group}={run_config[group]}" for group in GROUPS if str(run_config.get(group, "")).strip()]
    return out + shlex.split(str(run_config.get("overrides", "")))
