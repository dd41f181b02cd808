"""What a run must say about its protocol (conf/protocol): the preset's name, every key the run changed after
the preset, and what the data could not follow (e.g. SNLI without its train split). For the run report's
header and the results tables, so a number is never read against the paper's without knowing how it was made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from amole.config import Settings
from amole.data.procedures import protocol_notes

PROTOCOL_DIR = Path(__file__).resolve().parents[2] / "conf" / "protocol"


def preset_values(name: str) -> dict[str, Any]:
    """``{"section.key": value}`` that conf/protocol/<name>.yaml sets."""
    path = PROTOCOL_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in PROTOCOL_DIR.glob("*.yaml"))
        raise ValueError(f"unknown protocol {name!r}: no {path}; known: {known}")
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {f"{section}.{key}": value for section, keys in values.items() for key, value in keys.items()}


def protocol_report(settings: Settings, with_data: bool = True) -> dict[str, Any]:
    """``{"name", "overridden": ["eval.rouge=rouge_score (preset: rouge_paper)", ...], "notes": [...]}``.

    ``with_data`` also asks the scenario's data what it cannot follow (loads a pooled source, cached)."""
    name = settings.protocol.name
    current = settings.to_dict()
    overridden = []
    for dotted, want in preset_values(name).items():
        section, key = dotted.split(".")
        have = current[section][key]
        if have != want:
            overridden.append(f"{dotted}={have} (preset: {want})")
    notes = protocol_notes(settings.scenario) if with_data else []
    return {"name": name, "overridden": overridden, "notes": notes}
