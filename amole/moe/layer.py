"""The AMoLE layer: a frozen linear map plus a shared LoRA expert and routed LoRA experts.

For an input token x (spec §1), with ``s = alpha / r`` and dropout on the adapter input:

    t = W_tok x,  e_i = A_i x,  l_i = (e_i . t) / sqrt(r)          (over the experts this client holds)
    p = renormalised top-k of softmax(l)
    y = W0 x + s B_s A_s x + sum_{i in top-k} p_i s B_i A_i x

Each expert's A is its own routing key, so any subset of the global pool plugs into any client. The router,
the shared A and every held A are applied in one stacked matmul, and the gated codes of all experts go
through one stacked B matmul: no Python loop over experts in the forward pass.

``router_input``: ``dropped`` (ours) feeds the one dropped-out input to the router and every expert;
``clean`` (the official code) routes on the clean x and gives the shared expert and each of a token's top-k
experts its own dropout mask (x expanded to (tokens, k, d), one mask per slot, one matmul through all held A,
then a gather). The two differ only while training with dropout > 0 (cost measured in docs/fidelity.md).

``slots`` (``model.compile=model``): the held experts sit in a fixed number of slots, the rest zero and kept out
of the softmax, so that every assignment of up to ``slots`` experts gives the layer the same parameter shapes and
a model compiled whole does not compile again each time the server reassigns experts. Same outputs, gradients and
load-balance term as the held experts alone (the empty slots get exactly zero gradients, so Adam leaves them zero).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from amole.config import AdapterConfig

ROUTER_INPUTS = ("dropped", "clean")
ADAPTER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def adapter_dtype(cfg: AdapterConfig) -> torch.dtype:
    try:
        return ADAPTER_DTYPES[cfg.dtype]
    except KeyError:
        raise ValueError(f"unknown adapter.dtype {cfg.dtype!r}; expected one of {sorted(ADAPTER_DTYPES)}") from None


def init_lora_a(*shape: int, generator: torch.Generator | None = None) -> Tensor:
    """PEFT's A init (Kaiming-uniform with a=sqrt(5)), i.e. U(-1/sqrt(d_in), 1/sqrt(d_in)) per row."""
    bound = 1.0 / math.sqrt(shape[-1])
    return torch.empty(*shape).uniform_(-bound, bound, generator=generator)


def linear_features(base: nn.Module) -> tuple[int, int]:
    """(in, out) of a plain or bitsandbytes linear layer (both subclass nn.Linear and keep these fields)."""
    try:
        return int(base.in_features), int(base.out_features)
    except AttributeError as err:
        raise TypeError(f"cannot adapt {type(base).__name__}: it has no in_features/out_features") from err


class AMoLELinear(nn.Module):
    """Wraps a frozen linear layer; holds the shared expert, a replaceable set of routed experts and the router."""

    def __init__(self, base: nn.Module, cfg: AdapterConfig, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if cfg.router_input not in ROUTER_INPUTS:
            raise ValueError(f"unknown adapter.router_input {cfg.router_input!r}; expected one of {ROUTER_INPUTS}")
        dtype = dtype or adapter_dtype(cfg)
        self.router_input = cfg.router_input
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.in_features, self.out_features = linear_features(base)
        self.r = cfg.r
        self.scaling = cfg.scaling
        self.top_k = cfg.top_k
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        device = next(base.parameters()).device
        r, d_in, d_out = self.r, self.in_features, self.out_features
        if cfg.num_experts > 0:
            self.router = nn.Parameter(init_lora_a(r, d_in).to(device, dtype))
        else:  # no routed pool (plain LoRA, the FedIT baseline): nothing to route, nothing to send
            self.register_parameter("router", None)
        if cfg.shared_expert:
            self.shared_A = nn.Parameter(init_lora_a(r, d_in).to(device, dtype))
            self.shared_B = nn.Parameter(torch.zeros(d_out, r, device=device, dtype=dtype))
        else:
            self.register_parameter("shared_A", None)
            self.register_parameter("shared_B", None)
        self.expert_ids: list[int] = []
        self.experts_A = nn.Parameter(torch.zeros(0, r, d_in, device=device, dtype=dtype))
        self.experts_B = nn.Parameter(torch.zeros(0, d_out, r, device=device, dtype=dtype))
        # Per-forward side channels, set by amole.moe.model helpers.
        self.token_mask: Tensor | None = None
        self.token_weight: Tensor | None = None  # token_weights(token_mask), set with it
        self.lb_loss: Tensor | None = None
        self.collect_stats = False
        self.compiled = False  # model.compile: the adapter path through torch.compile (set by inject)
        self.slots = 0  # fixed expert capacity (model.compile=model, set by inject); 0: exactly the held experts
        self.register_buffer("held", None, persistent=False)  # (slots,) bool: which slots hold an expert
        self.reset_stats()

    # -- expert set ---------------------------------------------------------------------------------------
    def set_experts(self, ids: list[int], A: Tensor, B: Tensor) -> None:
        """Replace the held routed experts (between rounds); A is (n, r, d_in), B is (n, d_out, r)."""
        n = len(ids)
        if len(set(ids)) != n:
            raise ValueError(f"duplicate expert ids {ids}")
        if tuple(A.shape) != (n, self.r, self.in_features) or tuple(B.shape) != (n, self.out_features, self.r):
            raise ValueError(
                f"expert shapes A{tuple(A.shape)} B{tuple(B.shape)} do not fit {n} experts of rank {self.r} "
                f"for a {self.in_features}->{self.out_features} layer"
            )
        if n and self.router is None:
            raise ValueError("this layer has no router (num_experts=0), so it cannot hold routed experts")
        like = self.experts_A
        self.expert_ids = list(ids)
        A, B = A.detach().to(like.device, like.dtype), B.detach().to(like.device, like.dtype)
        size = max(self.slots, n) if n else 0  # no expert held: nothing to route, no slots to mask
        # with slots, a mask even when all are full: None would be another graph
        self.held = torch.arange(size, device=like.device) < n if self.slots and n else None
        if size > n:
            A = torch.cat([A, A.new_zeros(size - n, *A.shape[1:])])
            B = torch.cat([B, B.new_zeros(size - n, *B.shape[1:])])
        self.experts_A = nn.Parameter(A.clone())
        self.experts_B = nn.Parameter(B.clone())
        self.reset_stats()

    @property
    def num_experts(self) -> int:
        return len(self.expert_ids)

    # -- statistics for the embedding pass ----------------------------------------------------------------
    def reset_stats(self) -> None:
        self.stat_router = torch.zeros(self.r, dtype=torch.float64)
        self.stat_experts = torch.zeros(self.num_experts, self.r, dtype=torch.float64)
        self.stat_tokens = 0

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        y = self.base(x, *args, **kwargs)
        if self.router is None and self.shared_A is None:  # no adapter at all: the frozen layer alone
            self.lb_loss = None
            return y
        if x.dtype != self.experts_A.dtype:  # a no-op to() is still an op dispatched per module per step
            x = x.to(self.experts_A.dtype)
        own = self._own_masks()
        weight = self._weight_for(x) if self.training else None  # the load-balance term's, made while training
        fn = adapter_update
        if self.compiled and not own and not self.collect_stats:
            fn = compiled_adapter_update()
        out, self.lb_loss, t, e = fn(
            y, x if own else self.dropout(x), self.router, self.shared_A, self.shared_B, self.experts_A,
            self.experts_B, weight, self.top_k, self.scaling, self.training, self.dropout if own else None, self.held)
        if self.collect_stats and t is not None:
            self._accumulate(t, e, self._mask_for(x))
        return out

    def _own_masks(self) -> bool:
        """Route on the clean input, each expert on its own dropout mask (``router_input: clean``, training)."""
        return (self.router_input == "clean" and self.training and self.router is not None
                and isinstance(self.dropout, nn.Dropout) and self.dropout.p > 0)

    def _token_mask_of(self, x: Tensor) -> Tensor | None:
        """``token_mask`` where it is this forward's (one entry per token of ``x``), else None."""
        m = self.token_mask
        return m if m is not None and tuple(m.shape) == tuple(x.shape[:-1]) else None

    def _weight_for(self, x: Tensor) -> Tensor | None:
        """:func:`token_weights` of this forward's tokens: set once a step for every layer by
        ``amole.moe.model.token_mask``, made here where only ``token_mask`` was set."""
        m = self._token_mask_of(x)
        if m is None:
            return None
        w = self.token_weight
        return w if w is not None and w.device == x.device else token_weights(m.to(x.device))

    def _mask_for(self, x: Tensor) -> Tensor | None:
        m = self._token_mask_of(x)
        if m is None:
            return None
        return m if m.dtype == torch.bool and m.device == x.device else m.to(device=x.device, dtype=torch.bool)

    @torch.no_grad()
    def _accumulate(self, t: Tensor, e: Tensor, mask: Tensor | None) -> None:
        t = t.reshape(-1, self.r)
        e = e.reshape(t.shape[0], -1, self.r)[:, : self.num_experts]  # explicit token count: n may be 0 (a probe)
        if mask is not None:
            keep = mask.reshape(-1)
            t, e = t[keep], e[keep]
        self.stat_router += t.double().sum(0).cpu()
        self.stat_experts += e.double().sum(0).cpu()
        self.stat_tokens += t.shape[0]

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, r={self.r}, top_k={self.top_k}, "
            f"shared={self.shared_A is not None}, experts={self.expert_ids}"
        )


def _cat(tensors: list[Tensor], dim: int) -> Tensor:
    """torch.cat that skips the copy when there is one piece."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def adapter_update(y: Tensor, h: Tensor, router: Tensor | None, shared_A: Tensor | None, shared_B: Tensor | None,
                   experts_A: Tensor, experts_B: Tensor, weight: Tensor | None, top_k: int, scaling: float,
                   training: bool, own_dropout: nn.Module | None = None, held: Tensor | None = None
                   ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
    """The layer's output ``y + s * delta(h)``, its load-balance term (training) and the router/expert codes.

    A pure function of tensors, so that ``model.compile`` can hand it to ``torch.compile`` whole (one fused graph
    forward and one backward instead of ~30 and ~60 ops, the cost where a step is bound by launching ops). ``h``
    is the adapter input: dropped out, or clean with ``own_dropout`` (``router_input: clean``) giving the shared
    expert and each routed slot its own mask. ``weight``: :func:`token_weights` for the load-balance term (None:
    every token alike). ``held``: which of the ``n`` expert slots hold an expert (None: all).
    The codes ``t`` (router) and ``e`` (experts, (..., n, r)) feed the embedding statistics.
    """
    n, r, d_in = experts_A.shape
    keys = [k for k in (router, shared_A) if k is not None]
    if n > 0:
        keys.append(experts_A.reshape(n * r, d_in))
    n_router = r if router is not None else 0
    n_shared = r if shared_A is not None else 0
    # Router, shared and every held expert's code in one matmul, split once: split's backward is one cat,
    # where slicing the pieces out one by one costs a zero-filled copy per piece (op counts: docs/gpu-check.md).
    t, shared, flat = F.linear(h, _cat(keys, 0)).split([n_router, n_shared, n * r], dim=-1)
    e = flat.unflatten(-1, (n, r))
    if own_dropout is not None and n_shared:  # the shared expert's code from its own dropout mask
        shared = own_dropout(h) @ shared_A.T
    codes = [shared] if n_shared else []
    Bs = [shared_B] if n_shared else []
    lb = None
    if n > 0:
        gates, lb = route(e, t, weight, top_k, training, held)
        if own_dropout is not None:
            codes.append(_gated_own_masks(h, gates, experts_A, top_k, own_dropout))
        else:
            codes.append((e * gates.unsqueeze(-1)).flatten(-2))
        Bs.append(experts_B.permute(1, 0, 2).reshape(experts_B.shape[1], n * r))
    if not Bs:
        return y, lb, t if n_router else None, e
    delta = F.linear(_cat(codes, -1), _cat(Bs, 1))
    out = torch.add(y, delta, alpha=scaling) if delta.dtype == y.dtype else y + (delta * scaling).to(y.dtype)
    return out, lb, t if n_router else None, e


def route(e: Tensor, t: Tensor, weight: Tensor | None, top_k: int, training: bool,
          held: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Dense gate weights (..., n): renormalised top-k of the softmax over held experts, zero elsewhere; and the
    load-balance term while training. ``held``: which slots hold an expert (empty ones get probability 0).

    The top-k are picked as a 0/1 slot mask that the load-balance term reuses: fewer ops than scattering
    the top-k values, which matters where a step is bound by launching ops (a GPU, docs/gpu-check.md).
    """
    n, r = e.shape[-2], e.shape[-1]
    logits = (e * t.unsqueeze(-2)).sum(-1) / math.sqrt(r)
    if held is not None:  # exp(-inf) = 0: the softmax over the held experts alone, and no gradient to the rest
        logits = logits.masked_fill(~held, -math.inf)
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)  # float32 for bf16 adapters too, without a to()
    top_i = probs.topk(min(top_k, n), dim=-1).indices
    slots = torch.zeros_like(probs).scatter_(-1, top_i, 1.0)
    # The renormalised top-k of the softmax is the softmax of the top-k logits: one op back, where dividing by
    # the kept sum is eight (docs/gpu-check.md).
    gates = torch.softmax(logits.masked_fill(slots == 0, -math.inf), dim=-1, dtype=torch.float32)
    lb = load_balance(probs, slots, weight, top_k, held) if training else None
    return gates if gates.dtype == e.dtype else gates.to(e.dtype), lb


def token_weights(mask: Tensor) -> Tensor:
    """Each token's weight in the load-balance term's averages, flat: 1/tokens on real tokens, 0 on padding.
    The same for every layer of a forward, so ``amole.moe.model.token_mask`` makes it once a step."""
    w = mask.reshape(-1).to(torch.float32)  # float32 like the router's probabilities
    return w / w.sum().clamp_min(1)


def load_balance(probs: Tensor, slots: Tensor, weight: Tensor | None, top_k: int,
                 held: Tensor | None = None) -> Tensor:
    """Switch-style term n * sum_i P_i f_i over the (unpadded) tokens of this forward (``slots``: 0/1 top-k;
    ``weight``: :func:`token_weights`, None for every token alike).

    Padding is weighted out rather than indexed out: boolean indexing would make a GPU wait for the host.
    With ``held``, n and k count the held experts only, as tensors (a Python number would be compiled in as a
    constant); an empty slot picked when fewer than k are held has P_i = 0 and adds nothing.
    """
    n: int | Tensor = probs.shape[-1]
    probs, slots = probs.reshape(-1, n), slots.reshape(-1, n)
    if held is not None:
        n = held.sum().to(probs.dtype)
        k = n.clamp_max(top_k)
    else:
        k = min(top_k, n)
    if weight is None:
        return torch.dot(probs.mean(0), slots.mean(0)) * (n / k)
    return torch.dot(weight @ probs, weight @ slots) * (n / k)


def _gated_own_masks(x: Tensor, gates: Tensor, experts_A: Tensor, top_k: int, dropout: nn.Module) -> Tensor:
    """Gated expert codes (..., n * r) where each of a token's top-k experts sees its own dropout mask.

    One mask per routed slot (x expanded to (..., k, d)), every slot through all held A in one matmul, then
    each slot keeps its own expert's code: k / (n + 1) of the memory of one mask per held expert, same law.
    """
    n, r, d_in = experts_A.shape
    top_p, top_i = gates.topk(min(top_k, n), dim=-1)  # (..., k): the routed experts and their gates
    k = top_i.shape[-1]
    h = dropout(x.unsqueeze(-2).expand(*x.shape[:-1], k, d_in))  # a mask per slot
    z = (h @ experts_A.reshape(n * r, d_in).T).unflatten(-1, (n, r))  # (..., k, n, r)
    code = z.gather(-2, top_i[..., None, None].expand(*top_i.shape, 1, r)).squeeze(-2)  # (..., k, r)
    dense = torch.zeros(*x.shape[:-1], n, r, device=x.device, dtype=x.dtype)
    return dense.scatter(-2, top_i.unsqueeze(-1).expand(*top_i.shape, r), code * top_p.unsqueeze(-1)).flatten(-2)


# What one process's layers and phases ask of the compiled adapter path, each a variant torch.compile keeps apart:
# grad mode (training, evaluation), which inputs need gradients (the first adapted layer's do not), sizes of 1
# (a decode step's one token, a module holding one expert). ~10 in a round; past torch's default limit of 8 the
# remaining calls would quietly run eager.
RECOMPILE_LIMIT = 64


def allow_recompiles() -> None:
    """Raise torch's recompile limit to :data:`RECOMPILE_LIMIT` (never lower it): past the limit a compiled
    function quietly runs eager for the shapes it has not seen."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)


@functools.cache
def compiled_adapter_update() -> Callable[..., tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]]:
    """:func:`adapter_update` through ``torch.compile`` (one compiled function for every layer of the process;
    sequence lengths, layer widths and expert counts are dynamic, so new shapes reuse it)."""
    # The experts and the shared expert are nn.Parameters, whose shapes torch.compile guards as constants by
    # default: every new expert count (each assignment) and each layer width would compile again.
    torch._dynamo.config.force_parameter_static_shapes = False
    allow_recompiles()
    return torch.compile(adapter_update, dynamic=True)
