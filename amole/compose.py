"""Compose the configuration: the schema (amole.config's dataclasses, registered with Hydra's ConfigStore) is the
one source of defaults; the presets under ``conf/`` and the user's overrides only change it; each method's
``strategy=<name>`` preset comes from the method registry. Every entry point gets its config here.

A mistake (an unknown preset, group or key, a value of the wrong type, a key the strategy fixes set otherwise)
is a :class:`ConfigError` whose message is one line naming it and what exists.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from amole.config import AmoleConfig, Settings, check_choices
from amole.strategies.registry import METHODS, check_fixed, preset

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUPS = ("model", "scenario", "strategy", "budget", "protocol")
SCHEMA = "amole_schema"
# Top-level keys of the schema that are not Settings: ``seed`` (federation.seed follows it) and ``experiment``
# (options of the experiment runner, tools.experiment).
EXTRA_KEYS = ("seed", "experiment")


class ConfigError(ValueError):
    """A configuration the user gave cannot be composed; the message is one line saying what and what exists."""


def register_schema() -> None:
    """Put the schema and the strategy presets into Hydra's ConfigStore (idempotent)."""
    store = ConfigStore.instance()
    store.store(name=SCHEMA, node=AmoleConfig)
    for method in METHODS.values():
        store.store(group="strategy", name=method.name, node=preset(method), package="_global_")


register_schema()


def compose_cfg(overrides: Sequence[str] = ()) -> Any:
    """The composed Hydra config (an OmegaConf node) from ``conf/config.yaml`` plus ``overrides``."""
    if not CONF_DIR.is_dir():
        raise FileNotFoundError(f"config folder {CONF_DIR} is missing: the app must ship conf/")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(one_line(err)) from err


def compose(overrides: Sequence[str] = ()) -> Settings:
    """Settings from ``conf/config.yaml`` plus Hydra overrides such as ``budget=demo train.steps=10``."""
    return settings_from_cfg(compose_cfg(overrides))


def config_yaml(overrides: Sequence[str] = ()) -> str:
    """The composed config as YAML, interpolations resolved, after the same checks a run makes."""
    cfg = compose_cfg(overrides)
    settings_from_cfg(cfg)
    return OmegaConf.to_yaml(cfg, resolve=True)


def settings_from_cfg(cfg: Any) -> Settings:
    """Typed Settings from a composed Hydra config (interpolations resolved, the non-Settings keys dropped);
    refused when a value contradicts what the chosen strategy fixes."""
    try:
        values = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(one_line(err)) from err
    for key in (*EXTRA_KEYS, "hydra"):
        values.pop(key, None)  # type: ignore[union-attr]
    try:
        settings = Settings.from_dict(values)  # type: ignore[arg-type]
        check_choices(settings)
        check_fixed(settings)
    except ValueError as err:  # unknown sections (a `+key=`), or a key the strategy fixes set otherwise
        raise ConfigError(str(err)) from None
    return settings


def overrides_from_run_config(run_config: Mapping[str, Any]) -> list[str]:
    """Flower's flat run config (``model``, ``scenario``, ``strategy``, ``budget``, ``overrides``) for Hydra."""
    out = [f"{group}={run_config[group]}" for group in GROUPS if str(run_config.get(group, "")).strip()]
    return out + shlex.split(str(run_config.get("overrides", "")))


def one_line(err: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line errors as one line that names the problem and what exists."""
    text = str(err)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing:
        group, name = missing.groups()
        options = re.findall(r"^\t(\S+)$", text, re.M)
        return f"unknown {group} {name!r}; available: {', '.join(options) or '(none)'}"
    unknown = re.match(r"Could not (?:override|append to) '([^']+)'", text)
    if unknown:
        return unknown_key(unknown.group(1))
    cause = err.__cause__ or err.__context__
    if "Error merging override" in text and cause is not None:
        override = text.split("Error merging override", 1)[1].strip()
        return f"{override}: {str(cause).splitlines()[0]}"
    if "Error parsing override" in text:
        return f"{text.splitlines()[0]}: write key=value (e.g. train.steps=10) or group=preset (e.g. budget=demo)"
    return " ".join(text.split())[:300]


def unknown_key(key: str) -> str:
    """The message for a key the schema does not have: what the section (or the top level) holds instead."""
    *section, leaf = key.split(".")
    node: Any = AmoleConfig
    for part in section:
        hints = {f.name: f for f in fields(node)} if is_dataclass(node) else {}
        if part not in hints:
            node = None
            break
        node = hints[part].default_factory() if hints[part].default_factory is not MISSING else None  # type: ignore
    if not section or node is None or not is_dataclass(node):
        top = [f.name for f in fields(AmoleConfig)]
        return f"unknown key or group {key!r}; groups: {', '.join(GROUPS)}; sections: {', '.join(top)}"
    known = sorted(f.name for f in fields(node))
    return f"unknown key {key!r}; {'.'.join(section)} has: {', '.join(known)}"
