"""What a frozen set saves per SFT step: matmul FLOPs, gradient and optimizer bytes, activations.

The FLOPs are those of the step's matrix products (``torch.utils.flop_counter`` counts the same:
every ``mm``/``bmm`` of the forward pass, and of the backward pass those autograd computes),
walked through each block's dataflow with autograd's rule: a product computes its input's
gradient only if that input requires one, its weight's only if the weight trains. So

- a frozen matrix saves its weight-gradient product (a third of its FLOPs) and nothing else
  while anything below it trains;
- below the lowest trainable parameter nothing requires a gradient: the frozen prefix saves its
  input-gradient products too (two thirds of its FLOPs; ``deadzone.training.prefix`` runs it
  without autograd);
- with the prefix's outputs cached (``cached=True``), its forward pass goes too.

At a frozen share ``phi`` of the matmul FLOPs the step-time ratios are at least
``1 - phi/3`` (scattered), ``1 - 2 phi/3`` (prefix), ``1 - phi`` (cached prefix):
:func:`ceilings`. Elementwise work, the loss and the optimizer are not modelled, so the ratio of
FLOPs (:attr:`Savings.flops_ratio`) is the time ratio of a step made of nothing but products.

Bytes: a frozen fp32 parameter holds no gradient (4 B) and no AdamW moments (8 B), nor the
optimizer's ``step`` (4 B per tensor); a trainable one holds 16 B with its weight, a frozen one 4.
A frozen prefix keeps no activations: :func:`activation_bytes` counts, with saved-tensor hooks
on one forward pass of one example, what each block keeps for the backward pass (it grows
linearly with the batch), and :func:`savings` scales it to the batch.

Families with a known block dataflow: GPT-2 and the Llama family (``FLOW``); attention is
counted as the eager implementation computes it (two ``bmm`` per head).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from deadzone.errors import DeadzoneError
from deadzone.training.prefix import blocks, layout_of, prefix_depth


@dataclass
class StepFlops:
    """Matmul FLOPs of one step: forward, input gradients, weight gradients."""

    forward: int = 0
    input_grad: int = 0
    weight_grad: int = 0

    @property
    def total(self) -> int:
        return self.forward + self.input_grad + self.weight_grad


@dataclass(frozen=True)
class Savings:
    """Per step, of a frozen set against every parameter training. ``frozen_share`` (phi) is the
    frozen share of the forward matmul FLOPs (the frozen matrices, and the frozen prefix's
    attention products); ``prefix_depth`` the blocks below the lowest trainable parameter."""

    tokens: int
    flops_full: StepFlops
    flops: StepFlops
    weight_grad_flops_saved: int
    input_grad_flops_saved: int
    forward_flops_saved: int
    state_bytes_saved: int
    activation_bytes_saved: int
    prefix_depth: int
    frozen_share: float

    @property
    def flops_ratio(self) -> float:
        """Predicted step-time ratio to ``full``: FLOPs with the frozen set over FLOPs without."""
        return self.flops.total / self.flops_full.total

    def to_dict(self) -> dict:
        return {
            "tokens": self.tokens,
            "flops_full": self.flops_full.total,
            "flops": self.flops.total,
            "weight_grad_flops_saved": self.weight_grad_flops_saved,
            "input_grad_flops_saved": self.input_grad_flops_saved,
            "forward_flops_saved": self.forward_flops_saved,
            "state_bytes_saved": self.state_bytes_saved,
            "activation_bytes_saved": self.activation_bytes_saved,
            "prefix_depth": self.prefix_depth,
            "frozen_share": self.frozen_share,
            "flops_ratio": self.flops_ratio,
        }


def ceilings(phi: float) -> dict[str, float]:
    """The best step-time ratios at a frozen share ``phi`` of the matmul FLOPs."""
    return {"scattered": 1 - phi / 3, "prefix": 1 - 2 * phi / 3, "cached": 1 - phi}


class _Tally:
    """Walks a model's dataflow, adding each product's FLOPs where autograd would compute them.
    ``grad`` is whether the residual stream requires a gradient."""

    def __init__(self, model: torch.nn.Module, frozen: set[int], tokens: int, seq: int) -> None:
        self.model, self.frozen, self.tokens, self.seq = model, frozen, tokens, seq
        self.flops = StepFlops()
        self.block_forward: list[int] = []
        self.block_attention: list[int] = []
        self.attention_forward = 0
        self.frozen_forward = 0
        self.grad = False

    def trains(self, module: str, *attrs: str) -> bool:
        m = self.model.get_submodule(module)
        params = [getattr(m, a, None) for a in (attrs or ("weight", "bias"))]
        return any(p is not None and id(p) not in self.frozen for p in params)

    def _add(self, flops: int, input_grad: bool, weight_grad: bool) -> None:
        self.flops.forward += flops
        self.flops.input_grad += flops if input_grad else 0
        self.flops.weight_grad += flops if weight_grad else 0

    def linear(self, name: str, x_grad: bool, n_in: int, n_out: int) -> bool:
        """y = x W (+ b); whether y requires a gradient."""
        flops = 2 * self.tokens * n_in * n_out
        weight = self.trains(name, "weight")
        self.frozen_forward += 0 if weight else flops
        self._add(flops, x_grad, weight)
        return x_grad or weight or self.trains(name, "bias")

    def norm(self, name: str, x_grad: bool) -> bool:
        return x_grad or self.trains(name)

    def attention(self, q: bool, k: bool, v: bool, heads: int, head_dim: int) -> bool:
        """softmax(q k^T) v, one ``bmm`` each, per head (eager attention)."""
        flops = 2 * self.tokens * heads * self.seq * head_dim
        self.flops.forward += 2 * flops
        self.attention_forward += 2 * flops
        self.flops.input_grad += flops * (q + k)
        scores = q or k
        self.flops.input_grad += flops * (scores + v)
        return scores or v

    def block(self, flow, i: int) -> None:
        before, attention = self.flops.forward, self.attention_forward
        flow(self, self.model.config, i)
        self.block_forward.append(self.flops.forward - before)
        self.block_attention.append(self.attention_forward - attention)


def _gpt2_block(t: _Tally, c, i: int) -> None:
    p, d = f"transformer.h.{i}.", c.n_embd
    f = c.n_inner or 4 * d
    qkv = t.linear(p + "attn.c_attn", t.norm(p + "ln_1", t.grad), d, 3 * d)
    att = t.attention(qkv, qkv, qkv, c.n_head, d // c.n_head)
    t.grad = t.linear(p + "attn.c_proj", att, d, d) or t.grad
    h = t.linear(p + "mlp.c_fc", t.norm(p + "ln_2", t.grad), d, f)
    t.grad = t.linear(p + "mlp.c_proj", h, f, d) or t.grad


def _llama_block(t: _Tally, c, i: int) -> None:
    p, d, f = f"model.layers.{i}.", c.hidden_size, c.intermediate_size
    hd = getattr(c, "head_dim", None) or d // c.num_attention_heads
    heads, kv = c.num_attention_heads, c.num_key_value_heads
    x = t.norm(p + "input_layernorm", t.grad)
    q = t.linear(p + "self_attn.q_proj", x, d, heads * hd)
    k = t.linear(p + "self_attn.k_proj", x, d, kv * hd)
    v = t.linear(p + "self_attn.v_proj", x, d, kv * hd)
    att = t.attention(q, k, v, heads, hd)
    t.grad = t.linear(p + "self_attn.o_proj", att, heads * hd, d) or t.grad
    x = t.norm(p + "post_attention_layernorm", t.grad)
    gate = t.linear(p + "mlp.gate_proj", x, d, f)
    up = t.linear(p + "mlp.up_proj", x, d, f)
    t.grad = t.linear(p + "mlp.down_proj", gate or up, f, d) or t.grad


# Per family: the block's dataflow, the final norm, the width.
FLOW = {
    "gpt2": (_gpt2_block, "transformer.ln_f", "n_embd"),
    "llama": (_llama_block, "model.norm", "hidden_size"),
    "mistral": (_llama_block, "model.norm", "hidden_size"),
    "qwen2": (_llama_block, "model.norm", "hidden_size"),
}


def step_flops(
    model: torch.nn.Module, frozen: Iterable[str], batch_size: int, seq_len: int
) -> tuple[StepFlops, _Tally]:
    """The step's matmul FLOPs with the parameters named ``frozen`` frozen."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FLOW or layout_of(model) is None:
        known = ", ".join(FLOW)
        raise DeadzoneError(f"the savings model knows {known}; this model is {model_type}")
    params = dict(model.named_parameters())
    unknown = [n for n in frozen if n not in params]
    if unknown:
        raise DeadzoneError(f"no parameter named {unknown[0]!r} in this model")
    flow, final_norm, width = FLOW[model_type]
    t = _Tally(model, {id(params[n]) for n in frozen}, batch_size * seq_len, seq_len)
    embed = [model.get_submodule(n) for n in layout_of(model).below]
    t.grad = any(id(p) not in t.frozen for m in embed for p in m.parameters())
    for i in range(len(blocks(model))):
        t.block(flow, i)
    head = model.get_output_embeddings()
    x = t.norm(final_norm, t.grad)
    name = next(n for n, m in model.named_modules() if m is head)
    t.linear(name, x, getattr(model.config, width), head.weight.shape[0])
    return t.flops, t


def _state_bytes(p: torch.nn.Parameter) -> int:
    """Gradient and AdamW state (two moments, a float32 ``step``) of a trainable parameter."""
    return 3 * p.numel() * p.element_size() + 4


@dataclass(frozen=True)
class Activations:
    """Bytes kept for the backward pass per example: by the embeddings, by each block."""

    below: int
    blocks: list[int]

    def prefix(self, depth: int) -> int:
        return self.below + sum(self.blocks[:depth]) if depth else 0


def activation_bytes(model: torch.nn.Module, seq_len: int) -> Activations:
    """What the embeddings and each block keep for the backward pass, for one example of
    ``seq_len`` tokens with every parameter training: the storages that autograd's saved-tensor
    hooks see on one forward pass (parameters excepted, each storage once, counted against the
    last block that keeps it)."""
    owner: list = ["below"]
    kept: dict[int, tuple[object, int]] = {}
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = (owner[0], storage.nbytes())
        return t

    def enter(i: int):
        return lambda module, args: owner.__setitem__(0, i)

    handles = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(blocks(model))]
    handles.append(blocks(model)[-1].register_forward_hook(lambda *a: owner.__setitem__(0, "top")))
    was = [(p, p.requires_grad) for p in model.parameters()]
    ids = torch.zeros((1, seq_len), dtype=torch.long, device=next(model.parameters()).device)
    try:
        for p, _ in was:
            p.requires_grad_(True)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=ids, use_cache=False)
        del out
    finally:
        for p, grad in was:
            p.requires_grad_(grad)
        for h in handles:
            h.remove()
    count = len(blocks(model))
    per_block = [sum(n for o, n in kept.values() if o == i) for i in range(count)]
    return Activations(sum(n for o, n in kept.values() if o == "below"), per_block)


def savings(
    model: torch.nn.Module,
    batch_size: int,
    seq_len: int,
    *,
    frozen: Iterable[str] | None = None,
    cached: bool = False,
    activations: Activations | None = None,
) -> Savings:
    """What freezing the parameters named ``frozen`` (default: those with ``requires_grad``
    off) saves per step of ``batch_size`` examples of ``seq_len`` tokens; ``cached``: the
    frozen prefix's outputs are kept (an epoch after the first). ``activations``: the
    :func:`activation_bytes` of the model, if measured already."""
    params = dict(model.named_parameters())
    frozen = set(
        [n for n, p in params.items() if not p.requires_grad] if frozen is None else frozen
    )
    full, _ = step_flops(model, [], batch_size, seq_len)
    now, tally = step_flops(model, frozen, batch_size, seq_len)
    depth = prefix_depth(model, frozen)
    if cached and depth == 0:
        raise DeadzoneError("cached prefix outputs need a frozen prefix (embeddings and block 0)")
    forward_saved = sum(tally.block_forward[:depth]) if cached else 0
    if depth and activations is None:
        activations = activation_bytes(model, seq_len)
    return Savings(
        tokens=batch_size * seq_len,
        flops_full=full,
        flops=StepFlops(now.forward - forward_saved, now.input_grad, now.weight_grad),
        weight_grad_flops_saved=full.weight_grad - now.weight_grad,
        input_grad_flops_saved=full.input_grad - now.input_grad,
        forward_flops_saved=forward_saved,
        state_bytes_saved=sum(_state_bytes(params[n]) for n in frozen),
        activation_bytes_saved=batch_size * activations.prefix(depth) if depth else 0,
        prefix_depth=depth,
        frozen_share=(tally.frozen_forward + sum(tally.block_attention[:depth])) / full.forward,
    )
