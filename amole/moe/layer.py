"""The AMoLE layer: a frozen linear map plus a shared LoRA expert and routed LoRA experts.

For an input token x (spec §1), with ``s = alpha / r`` and dropout on the adapter input:

    t = W_tok x,  e_i = A_i x,  l_i = (e_i . t) / sqrt(r)          (over the experts this client holds)
    p = renormalised top-k of softmax(l)
    y = W0 x + s B_s A_s x + sum_{i in top-k} p_i s B_i A_i x

Each expert's A is its own routing key, so any subset of the global pool plugs into any client. The router,
the shared A and every held A are kept stacked in one parameter ``A`` and applied in one matmul; the shared B
and every held B in one ``B``, which takes the shared expert's code and the gated codes of all experts in one
matmul: no Python loop over experts, and no per-step copies of the pieces. ``router``, ``shared_A``,
``experts_A``, ... are views of them.

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
from amole.moe.routing import Routing, load_balance, route, token_weights

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
        self.has_router = cfg.num_experts > 0  # no routed pool (plain LoRA, FedIT): nothing to route or send
        self.has_shared = bool(cfg.shared_expert)
        self.expert_ids: list[int] = []
        # Every down-projection (router, shared A, each held expert's A) stacked by rows in ``A``, every
        # up-projection (shared B, each held expert's B) by columns in ``B``: the layer's two matmuls take them as
        # they are, where separate tensors cost a cat of the pieces each step and a narrow and copy of each piece's
        # gradient (docs/gpu-check.md). Adam and the clipping are elementwise or global, so the update is the
        # same. Read the pieces with split_A / split_B (or router, shared_A, ... below).
        down = [init_lora_a(r, d_in) for _ in range(self.has_router + self.has_shared)]  # router first, as before
        self.A = nn.Parameter(torch.cat(down).to(device, dtype) if down else torch.zeros(0, d_in, device=device,
                                                                                           dtype=dtype))
        self.B = nn.Parameter(torch.zeros(d_out, r * self.has_shared, device=device, dtype=dtype))
        # Per-forward side channels, set by amole.moe.model helpers.
        self.token_mask: Tensor | None = None
        self.token_weight: Tensor | None = None  # token_weights(token_mask), set with it
        self.routing: Routing | None = None  # the last training forward's, for the load-balance term
        self.collect_stats = False
        self.compiled = False  # model.compile: the adapter path through torch.compile (set by inject)
        self.slots = 0  # fixed expert capacity (model.compile=model, set by inject); 0: exactly the held experts
        self.register_buffer("held", None, persistent=False)  # (slots,) bool: which slots hold an expert
        self.register_buffer("lb_scale", None, persistent=False)  # (slots,): n / k of the load-balance term
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
        if n and not self.has_router:
            raise ValueError("this layer has no router (num_experts=0), so it cannot hold routed experts")
        like, r = self.A, self.r
        self.expert_ids = list(ids)
        A, B = A.detach().to(like.device, like.dtype), B.detach().to(like.device, like.dtype)
        size = max(self.slots, n) if n else 0  # no expert held: nothing to route, no slots to mask
        # with slots, a mask even when all are full: None would be another graph
        self.held = torch.arange(size, device=like.device) < n if self.slots and n else None
        # n and k count the held experts (an empty slot has probability 0 and adds nothing); a tensor made once an
        # assignment, where a Python number would be compiled in as a constant
        self.lb_scale = torch.full((size,), n / min(self.top_k, n), device=like.device) if n else None
        if size > n:
            A = torch.cat([A, A.new_zeros(size - n, *A.shape[1:])])
            B = torch.cat([B, B.new_zeros(size - n, *B.shape[1:])])
        head = (self.has_router + self.has_shared) * r  # the router's and shared expert's rows of A, kept
        self.A = nn.Parameter(torch.cat([like[:head].detach(), A.reshape(size * r, self.in_features)]))
        self.B = nn.Parameter(torch.cat([self.B[:, : r * self.has_shared].detach(),
                                         B.permute(1, 0, 2).reshape(self.out_features, size * r)], 1))
        self.reset_stats()

    @property
    def num_experts(self) -> int:
        return len(self.expert_ids)

    # -- the pieces of A and B (views: of the parameters, or of anything laid out like them, e.g. their .grad) --
    def split_A(self, a: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """(router (r, d_in), shared A (r, d_in), every slot's A (slots, r, d_in)) of ``a``, laid out like ``A``;
        None for a piece the layer does not have."""
        return _split_down(a, self.r, self.has_router, self.has_shared)

    def split_B(self, b: Tensor) -> tuple[Tensor | None, Tensor]:
        """(shared B (d_out, r), every slot's B (slots, d_out, r)) of ``b``, laid out like ``B``."""
        blocks = b.view(b.shape[0], b.shape[1] // self.r, self.r)
        return (blocks[:, 0] if self.has_shared else None), blocks[:, int(self.has_shared):].permute(1, 0, 2)

    def grads(self) -> dict[str, Tensor | None]:
        """Each piece's gradient (views of ``A.grad`` and ``B.grad``; None for a piece without one)."""
        names = ("router", "shared_A", "experts_A", "shared_B", "experts_B")
        if self.A.grad is None or self.B.grad is None:
            return dict.fromkeys(names)
        return dict(zip(names, (*self.split_A(self.A.grad), *self.split_B(self.B.grad)), strict=True))

    @property
    def router(self) -> Tensor | None:
        return self.split_A(self.A)[0]

    @property
    def shared_A(self) -> Tensor | None:
        return self.split_A(self.A)[1]

    @property
    def shared_B(self) -> Tensor | None:
        return self.split_B(self.B)[0]

    @property
    def experts_A(self) -> Tensor:
        return self.split_A(self.A)[2]

    @property
    def experts_B(self) -> Tensor:
        return self.split_B(self.B)[1]

    # -- statistics for the embedding pass ----------------------------------------------------------------
    def reset_stats(self) -> None:
        self.stat_router = torch.zeros(self.r, dtype=torch.float64)
        self.stat_experts = torch.zeros(self.num_experts, self.r, dtype=torch.float64)
        self.stat_tokens = 0

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        y = self.base(x, *args, **kwargs)
        self.routing = None
        if not self.A.shape[0]:  # no adapter at all: the frozen layer alone
            return y
        if x.dtype != self.A.dtype:  # a no-op to() is still an op dispatched per module per step
            x = x.to(self.A.dtype)
        own = self._own_masks()
        fn = adapter_update
        if self.compiled and not own and not self.collect_stats:
            fn = compiled_adapter_update()
        out, routed, t, e = fn(
            y, x if own else self.dropout(x), self.A, self.B, self.r, self.has_router, self.has_shared,
            self.top_k, self.scaling, self.training, self.dropout if own else None, self.held)
        if routed is not None:  # training: the load-balance term is taken over all layers at once
            self.routing = (*routed, self._weight_for(x), self.lb_scale)
        if self.collect_stats and t is not None:
            self._accumulate(t, e, self._mask_for(x))
        return out

    @property
    def lb_loss(self) -> Tensor | None:
        """This layer's load-balance term from its last training forward (training takes all layers' at once)."""
        return None if self.routing is None else load_balance([self.routing])

    def _own_masks(self) -> bool:
        """Route on the clean input, each expert on its own dropout mask (``router_input: clean``, training)."""
        return (self.router_input == "clean" and self.training and self.has_router
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


def adapter_update(y: Tensor, h: Tensor, A: Tensor, B: Tensor, r: int, routed: bool, shared: bool, top_k: int,
                   scaling: float, training: bool, own_dropout: nn.Module | None = None, held: Tensor | None = None
                   ) -> tuple[Tensor, tuple[Tensor, Tensor] | None, Tensor | None, Tensor]:
    """The layer's output ``y + s * delta(h)``, its routing for the load-balance term (training: the router's
    probabilities and the top-k mask, :func:`amole.moe.routing.route`) and the router/expert codes.

    ``A`` and ``B`` are the layer's stacked down- and up-projections (router first if ``routed``, then the shared
    expert if ``shared``, then each expert slot). A pure function of tensors, so that ``model.compile`` can hand it
    to ``torch.compile`` whole (one fused graph forward and one backward instead of ~20 and ~40 ops, the cost where
    a step is bound by launching ops). ``h`` is the adapter input: dropped out, or clean with ``own_dropout``
    (``router_input: clean``) giving the shared expert and each routed slot its own mask. ``held``: which expert
    slots hold an expert (None: all). Returns the codes ``t`` (router, (..., 1, r)) and ``e`` (experts, (..., slots,
    r)) for the embedding statistics.
    """
    codes = F.linear(h, A)  # the router's, the shared expert's and every slot's code in one matmul
    n = B.shape[1] // r - shared
    # (..., 1, r), (..., 1, r), (..., n, r): views, and one cat back; t shaped to multiply e as it is
    t, shared_code, e = codes.unflatten(-1, (-1, r)).split([int(routed), int(shared), n], dim=-2)
    routing = None
    if n > 0:
        gates, routing = route(e, t, top_k, training, held)  # (..., n, 1)
    if own_dropout is not None:  # each expert's code from its own dropout mask
        _, shared_A, experts_A = _split_down(A, r, routed, shared)
        pieces = [own_dropout(h) @ shared_A.T] if shared else []
        if n > 0:
            pieces.append(_gated_own_masks(h, gates.squeeze(-1), experts_A, top_k, own_dropout))
        code = _cat(pieces, -1)
    elif n > 0:
        code = e * gates
        code = (torch.cat([shared_code, code], -2) if shared else code).flatten(-2)
    else:
        code = shared_code.flatten(-2)
    t = t if routed else None
    if not B.shape[1]:
        return y, routing, t, e
    delta = F.linear(code, B)
    out = torch.add(y, delta, alpha=scaling) if delta.dtype == y.dtype else y + (delta * scaling).to(y.dtype)
    return out, routing, t, e


def _split_down(A: Tensor, r: int, routed: bool, shared: bool) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """(router, shared A, slots' A) of a stacked ``A`` (:meth:`AMoLELinear.split_A`, for the pure functions)."""
    blocks = A.view(A.shape[0] // r, r, A.shape[1])
    return (blocks[0] if routed else None), (blocks[int(routed)] if shared else None), blocks[routed + shared:]


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
def compiled_adapter_update() -> Callable[..., tuple[Tensor, tuple[Tensor, Tensor] | None, Tensor | None, Tensor]]:
    """:func:`adapter_update` through ``torch.compile`` (one compiled function for every layer of the process;
    sequence lengths, layer widths and expert counts are dynamic, so new shapes reuse it)."""
    # The experts and the shared expert are nn.Parameters, whose shapes torch.compile guards as constants by
    # default: every new expert count (each assignment) and each layer width would compile again.
    torch._dynamo.config.force_parameter_static_shapes = False
    allow_recompiles()
    return torch.compile(adapter_update, dynamic=True)
