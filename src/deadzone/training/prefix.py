"""The frozen prefix: blocks at the bottom of a model that train nothing, run without autograd.

When every parameter below block ``k`` is frozen (the embeddings and blocks ``0 .. k-1``, biases
and norms too), nothing below block ``k`` needs a gradient: :class:`FrozenPrefix` runs that
prefix under ``torch.no_grad`` (no graph, no stored activations) and hands block ``k`` its
detached output. PyTorch builds no graph there anyway once no input requires a gradient; the
fast path makes it a guarantee (a hook that forces the embeddings' output to require a gradient
cannot undo it) and is where the prefix's outputs can be cached.

Caching (``cache=True``): the prefix's output for each example is kept, keyed by the prefix's
weights (:func:`deadzone.models.fingerprints.parameters_fingerprint`) and the example's
tokens, so that a later epoch over the same examples skips the prefix's forward pass too: its
blocks pass their input through and the last one returns the kept rows. Only a deterministic
prefix may be cached (no dropout in it), and only data whose examples are the same every epoch;
anything else is refused with one line.

A tied head is the input embedding: a prefix that freezes the embedding freezes the head with
it. :func:`untie_head` gives the head its own trainable copy instead (``tie_word_embeddings``
becomes false in the config, so a saved model keeps both).

Hugging Face families by their module layout (:data:`LAYOUTS`): GPT-2 and the Llama family
(Llama, Mistral, Qwen2). Other models train as before, without the fast path.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from deadzone.errors import DeadzoneError


@dataclass(frozen=True)
class Layout:
    """Where a family keeps its blocks (a ``ModuleList``) and what runs before the first one."""

    blocks: str
    below: tuple[str, ...]


_LLAMA = Layout("model.layers", ("model.embed_tokens",))
LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout("transformer.h", ("transformer.wte", "transformer.wpe", "transformer.drop")),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
}


def layout_of(model: torch.nn.Module) -> Layout | None:
    return LAYOUTS.get(getattr(getattr(model, "config", None), "model_type", None))


def _require_layout(model: torch.nn.Module, what: str) -> Layout:
    layout = layout_of(model)
    if layout is None:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise DeadzoneError(
            f"{what} supports {', '.join(sorted(LAYOUTS))} models; this one is {kind}"
        )
    return layout


def blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    return model.get_submodule(_require_layout(model, "the frozen prefix").blocks)


def prefix_modules(model: torch.nn.Module, depth: int) -> list[torch.nn.Module]:
    """The modules that run below block ``depth``: the embeddings, then blocks ``0 .. depth-1``."""
    layout = _require_layout(model, "the frozen prefix")
    below = [model.get_submodule(name) for name in layout.below]
    return below + list(blocks(model)[:depth])


def prefix_parameters(model: torch.nn.Module, depth: int) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, parameter) of everything below block ``depth``, names as ``named_parameters``."""
    ids = {id(p) for m in prefix_modules(model, depth) for p in m.parameters()}
    return [(n, p) for n, p in model.named_parameters() if id(p) in ids]


def prefix_depth(model: torch.nn.Module, frozen: set[str] | None = None) -> int:
    """The number of bottom blocks below which every parameter is frozen (0: none, or the
    embeddings train); 0 for a family without a known layout. ``frozen``: the names of the
    frozen parameters (default: those with ``requires_grad`` off)."""
    if layout_of(model) is None:
        return 0
    if frozen is None:
        still = {id(p) for p in model.parameters() if not p.requires_grad}
    else:
        still = {id(p) for n, p in model.named_parameters() if n in frozen}

    def all_frozen(module: torch.nn.Module) -> bool:
        return all(id(p) in still for p in module.parameters())

    if not all(all_frozen(m) for m in prefix_modules(model, 0)):
        return 0
    depth = 0
    for block in blocks(model):
        if not all_frozen(block):
            break
        depth += 1
    return depth


def untie_head(model: torch.nn.Module) -> torch.nn.Parameter:
    """Give a head tied to the input embedding its own trainable copy; returns it. The config's
    ``tie_word_embeddings`` becomes false, so the saved model keeps the two apart."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or embed is None or head.weight is not embed.weight:
        raise DeadzoneError(
            "untie_head: this model's head is not tied to its input embedding (nothing to untie)"
        )
    head.weight = torch.nn.Parameter(embed.weight.detach().clone(), requires_grad=True)
    model.config.tie_word_embeddings = False
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else None
    if text is not None:
        text.tie_word_embeddings = False
    return head.weight


def check_deterministic(model: torch.nn.Module, depth: int) -> None:
    """A one-line DeadzoneError if the first ``depth`` blocks (or the embeddings) may draw
    dropout: their outputs would then differ from one pass to the next."""
    names = {id(m): n for n, m in model.named_modules()}
    for sub in (s for m in prefix_modules(model, depth) for s in m.modules()):
        p = sub.p if isinstance(sub, torch.nn.Dropout) else getattr(sub, "attention_dropout", 0)
        if isinstance(p, (int, float)) and p > 0:
            raise DeadzoneError(
                f"cache_prefix needs a deterministic prefix: {names[id(sub)]} has dropout {p} "
                "(set the model's dropout to 0)"
            )


def example_keys(batch: dict[str, torch.Tensor]) -> list[bytes]:
    """One digest per example of a batch of model inputs: its token ids, mask, positions."""
    tensors = [batch[k] for k in sorted(batch) if k != "labels" and torch.is_tensor(batch[k])]
    keys = []
    for i in range(tensors[0].shape[0]):
        h = hashlib.blake2b(digest_size=16)
        for t in tensors:
            row = t[i].detach().cpu().contiguous()
            h.update(f"{tuple(row.shape)}{row.dtype}".encode())
            h.update(row.numpy().tobytes())
        keys.append(h.digest())
    return keys


def data_fingerprint(data: Iterable[dict[str, torch.Tensor]]) -> str:
    """sha256 of the examples of one pass over ``data``, as a multiset (order ignored)."""
    counts = Counter(k for batch in data for k in example_keys(batch))
    h = hashlib.sha256()
    for key, count in sorted(counts.items()):
        h.update(key + count.to_bytes(8, "little"))
    return h.hexdigest()


def check_same_every_epoch(data: Iterable | Callable[[int], Iterable]) -> str:
    """The data's content hash, if its first two epochs hold the same examples (in any order);
    else a one-line DeadzoneError: cached prefix outputs would not be met again."""
    first = data_fingerprint(data(0) if callable(data) else data)
    second = data_fingerprint(data(1) if callable(data) else data)
    if first != second:
        raise DeadzoneError(
            "cache_prefix needs the same examples every epoch; this training data changes "
            "between epochs"
        )
    return first


def _passthrough(hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return hidden_states


class FrozenPrefix:
    """The fast path of ``model``'s frozen prefix, as hooks; :meth:`refresh` after the trainable
    set changes, :meth:`remove` to take the hooks off.

    A forward pre-hook on the model turns autograd off; a forward hook on the prefix's last
    block turns it back on and returns its output detached (or, with ``cache``, the kept
    outputs of the batch's examples, when every one of them is kept). A forward hook that runs
    even when the forward pass fails restores autograd and the blocks. A forward pass meeting a
    prefix parameter that requires a gradient again (set outside the loop's freezer) runs as
    usual. ``hits`` and ``misses`` count the forward passes that found every example kept, and
    those that ran the prefix. Kept outputs stay on the device they were computed on.
    """

    def __init__(self, model: torch.nn.Module, *, cache: bool = False) -> None:
        self.model, self.cache = model, cache
        if cache:
            _require_layout(model, "cache_prefix")
            if prefix_depth(model) == 0:
                raise DeadzoneError(
                    "cache_prefix needs a frozen prefix: the embeddings and block 0 (at least) "
                    "wholly frozen"
                )
        self.depth, self.kept = 0, {}
        self.hits = self.misses = 0
        self._handles: list = []
        self._grad: bool | None = None
        self._keys: list[bytes] | None = None
        self._replay: torch.Tensor | None = None
        self.refresh()

    def refresh(self) -> int:
        """Hooks for the prefix as deep as the trainable set now allows; returns its depth."""
        depth = prefix_depth(self.model)
        if depth == self.depth:
            return depth
        self.remove()
        self.depth = depth
        if depth == 0:
            return 0
        if self.cache:
            check_deterministic(self.model, depth)
            from deadzone.models.fingerprints import parameters_fingerprint

            weights = parameters_fingerprint(prefix_parameters(self.model, depth))
            self._salt = f"{depth}:{weights}".encode()
        self._params = [p for _, p in prefix_parameters(self.model, depth)]
        last = blocks(self.model)[depth - 1]
        self._handles = [
            self.model.register_forward_pre_hook(self._enter, with_kwargs=True),
            last.register_forward_hook(self._leave),
            self.model.register_forward_hook(self._exit, always_call=True),
        ]
        return depth

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self.depth, self.kept = [], 0, {}

    def _enter(self, module, args, kwargs) -> None:
        self._keys = self._replay = self._grad = None
        if any(p.requires_grad for p in self._params):
            return  # a prefix parameter trains again, behind the loop's back: no fast path
        self._grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)
        inputs = {k: v for k, v in kwargs.items() if torch.is_tensor(v)}
        if not self.cache or "input_ids" not in inputs:
            return
        keys = [
            hashlib.blake2b(self._salt + k, digest_size=16).digest() for k in example_keys(inputs)
        ]
        if all(k in self.kept for k in keys):
            self._replay = torch.stack([self.kept[k] for k in keys])
            for block in blocks(self.model)[: self.depth]:
                block.forward = _passthrough  # an instance attribute: the class's is kept
        else:
            self._keys = keys

    def _leave(self, module, args, output: torch.Tensor) -> torch.Tensor | None:
        if self._grad is None:
            return None
        torch.set_grad_enabled(self._grad)
        if self._replay is not None:
            self.hits += 1
            return self._replay
        if self._keys is not None:
            self.misses += 1
            self.kept.update(zip(self._keys, output.detach().clone(), strict=True))
        return output.detach()

    def _exit(self, module, args, output) -> None:
        if self._replay is not None:
            for block in blocks(self.model)[: self.depth]:
                del block.forward
        if self._grad is not None:
            torch.set_grad_enabled(self._grad)
        self._grad = self._keys = self._replay = None
