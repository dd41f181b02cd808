"""One client's local round (spec §1): response-only causal-LM loss plus the load-balancing term.

Adam is rebuilt every round (the experts a client holds change between rounds) and the learning rate decays
per round, not per step: ``lr * lr_decay ** (round - 1)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor, nn
from tqdm import tqdm

from amole.client.losses import lm_loss
from amole.config import TrainConfig
from amole.moe.layer import allow_recompiles
from amole.moe.model import compiled_whole, load_balance_loss, token_mask, trainable_parameters

FUSED_DEVICES = ("cpu", "cuda")  # where torch has a fused Adam kernel and foreach norms


@contextmanager
def compiled_decoder(model: nn.Module) -> Iterator[None]:
    """Run the model's decoder (every layer up to the LM head) through ``torch.compile`` while training
    (``model.compile=model``): its forward and backward as one graph each. The LM head stays outside: it runs
    at the answer positions only, a gather whose size depends on the data, which would split the graph.
    Evaluation and generation, outside this block, stay eager."""
    decoder = model.get_decoder()
    if not hasattr(decoder, "amole_compiled_forward"):  # once per model: lengths are dynamic, parameter shapes fixed
        # Compiled code is kept per code object, so every model of a class in the process (a benchmark's AMoLE and
        # LoRA, several shapes) shares torch's recompile limit (8), past which it would quietly run eager.
        allow_recompiles()
        decoder.amole_compiled_forward = torch.compile(decoder.forward, dynamic=True)
    decoder.forward = decoder.amole_compiled_forward
    try:
        yield
    except torch._dynamo.exc.TorchDynamoException as err:  # compiling failed (an op or a backend it cannot take)
        raise RuntimeError(f"torch.compile could not compile this model for training (model.compile=model, CUDA's "
                           f"default): {type(err).__name__}: {err}; set model.compile=on or off") from err
    finally:
        del decoder.forward  # back to the class's eager forward


def round_lr(cfg: TrainConfig, server_round: int) -> float:
    return cfg.lr * cfg.lr_decay ** (server_round - 1)


def train_steps(
    model: nn.Module,
    batches: Iterator[Mapping[str, Tensor]],
    cfg: TrainConfig,
    server_round: int,
    progress: bool = False,
) -> dict[str, float]:
    """Run ``cfg.steps`` optimizer steps on the adapter tensors; return mean losses and token counts.

    ``train_loss`` is the response-only LM loss (what the report shows), ``train_total_loss`` adds the
    load-balancing term that is optimised, ``train_lb_loss`` is that term alone.
    """
    params = trainable_parameters(model)
    if not params:
        raise ValueError("the model has no trainable AMoLE parameters: inject adapters first")
    device = params[0].device
    # Adam and the clipping as one kernel over all tensors: a client holds ~300 small adapter tensors, and the
    # per-tensor loop cost ~30 ms a step on a CPU core (about 6 % of a demo step); same update to ~1e-8.
    fused = all(p.device.type in FUSED_DEVICES and p.is_floating_point() for p in params)
    optimizer = torch.optim.Adam(params, lr=round_lr(cfg, server_round), eps=cfg.adam_eps, fused=fused or None)
    model.train()
    sums = {"total_loss": 0.0, "loss": 0.0, "lb_loss": 0.0}
    tokens = 0
    with compiled_decoder(model) if compiled_whole(model) else nullcontext():
        for _ in tqdm(range(cfg.steps), desc=f"round {server_round} train", disable=not progress, leave=False):
            batch = {k: v.to(device) for k, v in next(batches).items()}
            with token_mask(model, batch["attention_mask"]):
                lm = lm_loss(model, batch)  # the LM head runs at answer positions only
            lb = load_balance_loss(model).to(lm.device)
            loss = lm + cfg.lb_coef * lb
            if not torch.isfinite(loss):
                raise FloatingPointError(f"local loss became {loss.item()} in round {server_round}: lower the lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm, foreach=fused or None)
            optimizer.step()
            sums["total_loss"] += loss.item()
            sums["loss"] += lm.item()
            sums["lb_loss"] += lb.item()
            tokens += int((batch["labels"] != -100).sum())
    steps = max(cfg.steps, 1)
    metrics = {f"train_{k}": v / steps for k, v in sums.items()}
    metrics["train_tokens"] = float(tokens)
    metrics["lr"] = round_lr(cfg, server_round)
    return metrics
