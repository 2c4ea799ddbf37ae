"""Change which parameters train while training runs: requires_grad, gradients, optimizer.

A :class:`Freezer` owns the trainable set of a model under an optimizer it did not build (the
SFT loop's, or a Hugging Face ``Trainer``'s). Freezing a parameter sets ``requires_grad=False``
(autograd no longer computes its gradient), drops its ``.grad``, takes it out of the optimizer's
parameter groups and frees its optimizer state (Adam's two moments). Unfreezing puts it back in
the group it came from with no state, so Adam starts it afresh. Learning-rate scales per
parameter (FreezeOut anneals each layer on its own clock) split a group into groups of equal
scale; each group carries ``lr_scale``, which the loop multiplies into its learning rate.

Only what the optimizer held at the start can be unfrozen: a parameter frozen before training
(a strategy's ``frozen`` site) has no group to return to.

Nothing may force a gradient upstream of a frozen prefix: Hugging Face's gradient checkpointing
registers a hook that makes the input embeddings' output require grad (reentrant checkpointing
needs it), which would run the backward pass through every frozen block. Once the input
embeddings are frozen and the checkpointing is non-reentrant (the transformers 5 default), the
freezer removes that hook.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from deadzone.errors import DeadzoneError

HOME = "home"  # key of a param group: index of the group its parameters came from
LR_SCALE = "lr_scale"  # key of a param group: multiplier of the scheduled learning rate


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes held by the optimizer's per-parameter state tensors (Adam: step, exp_avg, ...)."""
    return sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )


class Freezer:
    """Freeze, unfreeze and scale the learning rate of named parameters of ``model``.

    ``model`` is the unwrapped module (names as ``model.named_parameters()`` gives them, tied
    weights once); ``optimizer`` may be wrapped (accelerate's ``AcceleratedOptimizer``).
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.params: dict[str, torch.nn.Parameter] = dict(model.named_parameters())
        self.optimizer = optimizer
        groups = optimizer.param_groups
        self.home: dict[int, int] = {}
        for i, group in enumerate(groups):
            group.setdefault(HOME, i)
            group.setdefault(LR_SCALE, 1.0)
            for p in group["params"]:
                self.home[id(p)] = group[HOME]
        self.scale: dict[int, float] = {}
        self.version = 0  # bumped whenever the trainable set changes

    def _lookup(self, names: Iterable[str]) -> list[tuple[str, torch.nn.Parameter]]:
        out = []
        for name in names:
            if name not in self.params:
                raise DeadzoneError(f"no parameter named {name!r} in this model")
            out.append((name, self.params[name]))
        return out

    def trainable(self) -> set[str]:
        return {n for n, p in self.params.items() if p.requires_grad}

    def freeze(self, names: Iterable[str]) -> list[str]:
        """Freeze ``names``; returns those that were trainable. Refuses to freeze everything."""
        todo = [(n, p) for n, p in self._lookup(names) if p.requires_grad]
        if not todo:
            return []
        left = self.trainable() - {n for n, _ in todo}
        if not left:
            raise DeadzoneError("nothing to train: this would freeze every parameter")
        for _, p in todo:
            p.requires_grad_(False)
            p.grad = None
            self.optimizer.state.pop(p, None)
        self._regroup()
        release_input_grads(self.model)
        return [n for n, _ in todo]

    def unfreeze(self, names: Iterable[str]) -> list[str]:
        """Unfreeze ``names`` (fresh optimizer state); returns those that were frozen."""
        todo = [(n, p) for n, p in self._lookup(names) if not p.requires_grad]
        for n, p in todo:
            if id(p) not in self.home:
                raise DeadzoneError(f"{n} was frozen before training and cannot be unfrozen")
        for _, p in todo:
            p.requires_grad_(True)
            self.optimizer.state.pop(p, None)
        if todo:
            self._regroup()
        return [n for n, _ in todo]

    def set_lr_scales(self, scales: dict[str, float]) -> None:
        """Multiply the learning rate of each named parameter by its scale (1.0 by default)."""
        new = {id(p): float(s) for n, p in self._lookup(scales) for s in (scales[n],)}
        new = {k: v for k, v in new.items() if v != 1.0}
        if new != self.scale:
            self.scale = new
            self._regroup(bump=False)

    def _regroup(self, bump: bool = True) -> None:
        """Rebuild the param groups from the trainable set: one per (home group, lr scale).

        Parameters keep their order inside a group; the optimizer state is keyed by parameter,
        so moving a parameter between groups keeps its moments. A home group is rebuilt with the
        hyperparameters it holds now (the learning rate a scheduler has set since), not those it
        was bound with.
        """
        templates = {  # each home group's hyperparameters as they are now; home groups stay
            g[HOME]: {k: v for k, v in g.items() if k != "params"}
            for g in self.optimizer.param_groups
            if g[LR_SCALE] == 1.0
        }
        buckets: dict[tuple[int, float], list[torch.nn.Parameter]] = {}
        for home in templates:
            buckets[(home, 1.0)] = []  # home groups stay, even empty
        for p in self.params.values():
            if p.requires_grad and id(p) in self.home:
                key = (self.home[id(p)], self.scale.get(id(p), 1.0))
                buckets.setdefault(key, []).append(p)
        groups = []  # the home groups first, in their order, then the scaled ones
        for (home, scale), params in sorted(
            buckets.items(), key=lambda kv: (kv[0][1] != 1.0, kv[0])
        ):
            group = dict(templates[home])
            group.update(params=params, **{LR_SCALE: scale})
            groups.append(group)
        self.optimizer.param_groups[:] = groups
        if bump:
            self.version += 1


def release_input_grads(model: torch.nn.Module) -> bool:
    """Remove Hugging Face's "inputs require grads" hook when it only costs: the input
    embeddings are frozen and no module checkpoints reentrantly. True if removed."""
    hooks = getattr(model, "_require_grads_hooks", None)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not hooks or embeddings is None or any(p.requires_grad for p in embeddings.parameters()):
        return False
    for module in model.modules():
        func = getattr(module, "_gradient_checkpointing_func", None)
        if func is not None and getattr(func, "keywords", {}).get("use_reentrant", True):
            return False
    model.disable_input_require_grads()
    return True
