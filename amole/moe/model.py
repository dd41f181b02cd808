"""Attach AMoLE to a Hugging Face causal LM and move its adapter tensors in and out by stable names.

The backbone stays frozen; only the AMoLE tensors train. What a message carries is exactly
``export_adapters`` of a client, and ``import_adapters`` rebuilds the client's architecture (which routed
experts it holds in every module) from the names it receives.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from amole.config import AdapterConfig
from amole.moe import keys
from amole.moe.layer import AMoLELinear
from amole.moe.routing import load_balance, token_weights


def target_linears(model: nn.Module, target_modules: tuple[str, ...] | list[str]) -> dict[str, nn.Linear]:
    """The linear layers that get an AMoLE module: every nn.Linear whose last name component is a target.

    bitsandbytes Linear4bit / Linear8bitLt subclass nn.Linear, so quantized layers are included. The one rule
    for "which layers are adapted", used by injection and by the server's bank shapes (meta device).
    """
    targets = set(target_modules)
    found = {name: m for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in targets}
    if not found:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no linear layer named {list(target_modules)} in the model; available: {linear}")
    return found


COMPILE_MODES = ("off", "adapters", "model")  # what amole.backbones.loader.compile_mode decides


def inject(model: nn.Module, cfg: AdapterConfig, dtype: torch.dtype | None = None, compile: str = "off",
           slots: int = 0) -> dict[str, AMoLELinear]:
    """Freeze ``model`` and wrap every target linear layer in an AMoLELinear (in place); return them by name.

    The adapters' dtype is ``dtype`` if given, else ``cfg.dtype`` (float32 unless the protocol says otherwise).
    ``compile`` (``model.compile``, see :func:`amole.backbones.loader.compile_mode`): ``adapters`` runs their adapter
    path through ``torch.compile``; ``model`` has training compile the model whole (:func:`compiled_whole`), each
    module's experts in ``slots`` fixed slots (:func:`amole.server.planner.most_held`) so that new assignments
    reuse the graph."""
    if not cfg.shared_expert and cfg.num_experts == 0:
        raise ValueError("an adapter with neither a shared expert nor routed experts trains nothing")
    if compile not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {compile!r}; expected one of {COMPILE_MODES}")
    for p in model.parameters():
        p.requires_grad_(False)
    for name in target_linears(model, cfg.target_modules):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = AMoLELinear(getattr(parent, child), cfg, dtype)
        layer.compiled = compile == "adapters"
        layer.slots = slots if compile == "model" else 0
        setattr(parent, child, layer)
    model.amole_compile_whole = compile == "model"
    return amole_layers(model)


def compiled_whole(model: nn.Module) -> bool:
    """Whether training runs this model through ``torch.compile`` whole (``model.compile=model``)."""
    return bool(getattr(model, "amole_compile_whole", False))


def amole_layers(model: nn.Module) -> dict[str, AMoLELinear]:
    """The adapted modules, keyed by their stable (qualified) names."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AMoLELinear)}


def export_adapters(model: nn.Module) -> dict[str, Tensor]:
    """Every adapter tensor this model holds, as a flat name -> CPU float32 tensor mapping (a message's payload).

    float32 whatever the adapters' dtype: exact for bf16 / fp16 values, and Flower's arrays have no bfloat16."""
    out: dict[str, Tensor] = {}

    def cpu(t: Tensor) -> Tensor:  # contiguous: a piece of the layer's stacked B is a strided view
        return t.detach().to("cpu", torch.float32).clone(memory_format=torch.contiguous_format)

    for name, layer in amole_layers(model).items():
        if layer.router is not None:
            out[keys.router_key(name)] = cpu(layer.router)
        if layer.shared_A is not None:
            out[keys.shared_key(name, "A")] = cpu(layer.shared_A)
            out[keys.shared_key(name, "B")] = cpu(layer.shared_B)
        for j, eid in enumerate(layer.expert_ids):
            out[keys.expert_key(name, eid, "A")] = cpu(layer.experts_A[j])
            out[keys.expert_key(name, eid, "B")] = cpu(layer.experts_B[j])
    return out


def import_adapters(model: nn.Module, tensors: Mapping[str, Tensor]) -> dict[str, list[int]]:
    """Load a payload into the model; the routed experts named in it become each module's held set.

    Every module must receive its router (and shared expert, if it has one); missing or unknown names and
    wrong shapes raise before anything is changed, so a bad message leaves the model as it was.
    """
    layers = amole_layers(model)
    by_module: dict[str, dict[str, Tensor]] = {}
    experts: dict[str, dict[int, dict[str, Tensor]]] = {name: {} for name in layers}
    for key, value in tensors.items():
        k = keys.parse_key(key)
        if k.module not in layers:
            raise KeyError(f"payload names module {k.module!r}, which the model does not adapt")
        if k.kind == keys.EXPERTS:
            experts[k.module].setdefault(k.expert, {})[k.part] = value  # type: ignore[index]
        else:
            by_module.setdefault(k.module, {})[key] = value
    staged: list[tuple[str, AMoLELinear, dict[str, Tensor], list[int], Tensor, Tensor]] = []
    for name, layer in layers.items():
        own = by_module.get(name, {})
        needed = [keys.router_key(name)] if layer.router is not None else []
        if layer.shared_A is not None:
            needed += [keys.shared_key(name, "A"), keys.shared_key(name, "B")]
        missing = [k for k in needed if k not in own]
        if missing:
            raise KeyError(f"payload lacks {missing}")
        ids = sorted(experts[name])
        for eid in ids:
            if set(experts[name][eid]) != {"A", "B"}:
                raise KeyError(f"expert {eid} of {name} needs both A and B in the payload")
        r, d_in, d_out = layer.r, layer.in_features, layer.out_features
        A = torch.stack([experts[name][i]["A"] for i in ids]) if ids else torch.zeros(0, r, d_in)
        B = torch.stack([experts[name][i]["B"] for i in ids]) if ids else torch.zeros(0, d_out, r)
        if layer.router is not None:
            _check_shape(keys.router_key(name), own[keys.router_key(name)], (r, d_in))
        if layer.shared_A is not None:
            _check_shape(keys.shared_key(name, "A"), own[keys.shared_key(name, "A")], (r, d_in))
            _check_shape(keys.shared_key(name, "B"), own[keys.shared_key(name, "B")], (d_out, r))
        _check_shape(f"{name} experts A", A, (len(ids), r, d_in))
        _check_shape(f"{name} experts B", B, (len(ids), d_out, r))
        staged.append((name, layer, own, ids, A, B))
    with torch.no_grad():
        for name, layer, own, ids, A, B in staged:
            if layer.router is not None:
                layer.router.copy_(own[keys.router_key(name)])
            if layer.shared_A is not None:
                layer.shared_A.copy_(own[keys.shared_key(name, "A")])
                layer.shared_B.copy_(own[keys.shared_key(name, "B")])
            layer.set_experts(ids, A, B)
    return {name: layer.expert_ids for name, layer in layers.items()}


def _check_shape(what: str, t: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {shape}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or Inf")


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for layer in amole_layers(model).values() for p in layer.parameters() if p.requires_grad]


@contextmanager
def token_mask(model: nn.Module, mask: Tensor | None) -> Iterator[None]:
    """Let every AMoLE layer ignore padding when it averages routing statistics or the load-balance term."""
    layers = list(amole_layers(model).values())
    weight = None if mask is None else token_weights(mask)  # the load-balance term's, once for all layers
    for layer in layers:
        layer.token_mask, layer.token_weight = mask, weight
    try:
        yield
    finally:
        for layer in layers:
            layer.token_mask = layer.token_weight = None


def load_balance_loss(model: nn.Module) -> Tensor:
    """Sum over modules of the Switch-style term of the last training forward, taken for all modules at once."""
    routings = [layer.routing for layer in amole_layers(model).values() if layer.routing is not None]
    return load_balance(routings) if routings else torch.zeros(())
