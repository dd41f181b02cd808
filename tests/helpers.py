"""Small shared pieces of the loader tests (imported as ``tests.helpers``)."""

from __future__ import annotations

import torch

from amole.config import ModelConfig

TINY = ModelConfig(name="tiny-llama")
TEXT = "Héllo, wörld ✓ 日本語\n\tend"


def tiny_cfg(**kwargs: object) -> ModelConfig:
    return ModelConfig(name="tiny-llama", **kwargs)  # type: ignore[arg-type]


def text_ids(n: int = 24) -> torch.Tensor:
    """The first ``n`` bytes of TEXT as token ids of the byte tokenizer (id == byte value)."""
    return torch.tensor([list(TEXT.encode())[:n]])
