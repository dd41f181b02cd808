"""A tiny kept model for the personal-model and CLI tests (imported as ``tests.personal_helpers``)."""

from __future__ import annotations

from pathlib import Path

import torch

from amole.backbones.loader import load_base_model
from amole.config import AdapterConfig, EvalConfig, ModelConfig
from amole.moe.bank import create_bank, payload
from amole.moe.model import import_adapters, inject
from amole.site.personal import KeptInfo, save_personalized

ADAPTER = AdapterConfig(r=4, alpha=8.0, dropout=0.0, num_experts=6, top_k=2)
IDS = torch.tensor([[257, 72, 105, 33, 10, 65, 58, 32], [257, 35, 35, 35, 32, 73, 110, 115]])


def trained_model(model_cfg: ModelConfig | None = None, seed: int = 0):
    """A tiny base model with AMoLE whose adapters are random (not the zero-B init) and experts held per module
    differ, so that a lost tensor or a wrong expert set changes the logits."""
    model, tokenizer = load_base_model(model_cfg or ModelConfig(name="tiny-llama"), device="cpu")
    layers = inject(model, ADAPTER)
    shapes = {n: (m.in_features, m.out_features) for n, m in layers.items()}
    gen = torch.Generator().manual_seed(seed)
    bank = {k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in create_bank(shapes, ADAPTER, seed=seed).items()}
    held = {n: ([1, 4] if "q_proj" in n else [0, 2, 5]) if i % 2 == 0 else [3] for i, n in enumerate(layers)}
    import_adapters(model, payload(bank, held))
    model.eval()
    return model, tokenizer


def info(**values) -> KeptInfo:
    base = {"model": ModelConfig(name="tiny-llama"), "adapter": ADAPTER, "run_id": "run-1", "client": "0",
            "round": 3, "score": 0.5, "metric": "accuracy", "task": "toy", "max_seq_len": 256,
            "eval": EvalConfig(max_new_tokens=6, batch_size=4)}
    return KeptInfo(**{**base, **values})


def kept_folder(path: Path, **values) -> tuple[Path, torch.nn.Module]:
    model, _ = trained_model()
    save_personalized(path, model, info(**values))
    return path, model


@torch.no_grad()
def logits(model: torch.nn.Module) -> torch.Tensor:
    model.eval()
    return model(input_ids=IDS).logits
