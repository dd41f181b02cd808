"""Stable names of the tensors a message carries.

Every adapted module is named by its qualified name in the backbone (``model.layers.3.self_attn.q_proj``);
its tensors are ``<module>.router``, ``<module>.shared.A|B`` and ``<module>.experts.<id>.A|B`` where ``id``
is the expert's global index in that module's pool. The server's bank, the client's export/import and the
aggregation all speak this one flat naming, so a client's architecture is simply the set of keys it gets.
"""

from __future__ import annotations

from dataclasses import dataclass

ROUTER = "router"
SHARED = "shared"
EXPERTS = "experts"


def router_key(module: str) -> str:
    return f"{module}.{ROUTER}"


def shared_key(module: str, part: str) -> str:
    return f"{module}.{SHARED}.{part}"


def expert_key(module: str, expert: int, part: str) -> str:
    return f"{module}.{EXPERTS}.{expert}.{part}"


def router_stat_key(module: str) -> str:
    """A client's mean router code over its embedding set (routing statistics, spec §2)."""
    return f"{module}.t"


def expert_stat_key(module: str, expert: int) -> str:
    """A held expert's mean code over the client's embedding set."""
    return f"{module}.e.{expert}"


@dataclass(frozen=True)
class Key:
    """A parsed tensor name: ``kind`` is router / shared / experts; ``part`` is A or B (None for router)."""

    module: str
    kind: str
    expert: int | None = None
    part: str | None = None


def parse_key(key: str) -> Key:
    """Split a tensor name into its module and role; raise ValueError for names outside the scheme."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[-1] == ROUTER:
        return Key(".".join(parts[:-1]), ROUTER)
    if len(parts) >= 3 and parts[-2] == SHARED and parts[-1] in ("A", "B"):
        return Key(".".join(parts[:-2]), SHARED, None, parts[-1])
    if len(parts) >= 4 and parts[-3] == EXPERTS and parts[-2].isdigit() and parts[-1] in ("A", "B"):
        return Key(".".join(parts[:-3]), EXPERTS, int(parts[-2]), parts[-1])
    raise ValueError(f"tensor name {key!r} is not an AMoLE adapter name (<module>.router|shared.A|experts.<id>.B)")


def held_experts(keys: list[str] | set[str]) -> dict[str, list[int]]:
    """Each module's held expert ids, read off a set of tensor names."""
    held: dict[str, set[int]] = {}
    for key in keys:
        k = parse_key(key)
        held.setdefault(k.module, set())
        if k.kind == EXPERTS:
            held[k.module].add(k.expert)  # type: ignore[arg-type]
    return {m: sorted(ids) for m, ids in held.items()}
