"""Shared fixtures: tiny randomly initialised Llama models (no download, a few ms to build)."""

from __future__ import annotations

import pytest
import torch

from amole.backbones.loader import load_base_model
from amole.config import AdapterConfig, ModelConfig

TINY = ModelConfig(name="tiny-llama")


@pytest.fixture
def adapter_cfg() -> AdapterConfig:
    return AdapterConfig(r=4, alpha=8.0, dropout=0.0, num_experts=6, top_k=2)


@pytest.fixture
def tiny():
    """A fresh tiny model and its byte tokenizer for each test (tests mutate it by injecting adapters)."""
    torch.manual_seed(0)
    return load_base_model(TINY, device="cpu")
