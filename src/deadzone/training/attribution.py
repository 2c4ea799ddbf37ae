"""Records a run's Loss Change Allocation and its cheap per-parameter gradient statistics.

:class:`AttributionHook` is a :class:`~deadzone.training.train.Hook`: pass it to the SFT loop
(``hooks=[...]``) of a ``full`` run and read :attr:`AttributionHook.record` afterwards (an
:class:`~deadzone.geometry.attribution.AttributionRecord`, JSON-ready; the math is in
:mod:`deadzone.geometry.attribution`).

- Attribution: at step 0 and then after every ``every``-th optimizer step (and after the last),
  the eval loss and its gradient with respect to every parameter are taken at the current
  weights, on the ``eval_batches`` given (a fixed subset: they cost a forward and a backward
  each), and once more at the midpoint of the segment just walked. Three gradients per segment,
  two of them new: the end's gradient is the next segment's start. The model is in eval mode
  (dropout off) and in float32 without autocast, so the losses at the ends are the function
  the quadrature integrates.
- From the training gradients of every step (after the backward pass, before clipping), per
  parameter the sum of squared entries (the trace of the diagonal empirical Fisher of the
  step's gradient) and ``|grad . weight|`` (the first-order change of the training loss if the
  parameter were set to zero).

What the run computes is unchanged: the weights moved to the midpoint are copied back bit for
bit, gradients are taken with ``torch.autograd.grad`` (no ``.grad`` is touched), the
``requires_grad`` flags and the train/eval mode are restored, and no random number is drawn.
Memory: two float32 copies of the parameters (the segment's start and end) and one float64
gradient besides the run's. Under several processes every process computes the same record on
the batches it was given (no communication).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from deadzone.errors import DeadzoneError
from deadzone.geometry.attribution import (
    DEFAULT_RULE,
    AttributionRecord,
    Segment,
    check_rule,
    dots,
)
from deadzone.training.train import Batch, Hook, loss_sum


@contextmanager
def _evaluating(model: torch.nn.Module, params: dict[str, torch.nn.Parameter]):
    """Eval mode and ``requires_grad`` on every parameter, both restored after."""
    was_training = model.training
    flags = {n: p.requires_grad for n, p in params.items()}
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        yield
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        model.train(was_training)


def eval_loss_and_grad(
    model: torch.nn.Module, batches: Sequence[Batch]
) -> tuple[float, dict[str, torch.Tensor]]:
    """Token-weighted mean eval loss over ``batches`` and its float64 gradient per parameter."""
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device
    grads = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    total, tokens = 0.0, 0
    with _evaluating(model, params), torch.enable_grad():
        for batch in batches:
            s, count = loss_sum(model, {k: v.to(device) for k, v in batch.items()})
            found = torch.autograd.grad(s, list(params.values()), allow_unused=True)
            for g, d in zip(grads.values(), found, strict=True):
                if d is not None:
                    g += d.double()
            total, tokens = total + float(s.detach().double()), tokens + int(count)
    if tokens == 0:
        raise DeadzoneError("the attribution's eval batches hold no labelled token")
    return total / tokens, {n: g / tokens for n, g in grads.items()}


class AttributionHook(Hook):
    """Records the attribution of one run on ``eval_batches`` every ``every`` steps with
    ``rule`` (the rule read by default; every rule can be read from the record)."""

    def __init__(
        self, eval_batches: Sequence[Batch], every: int = 1, rule: str = DEFAULT_RULE
    ) -> None:
        if not eval_batches:
            raise DeadzoneError("attribution needs evaluation batches; this run has none")
        if not isinstance(every, int) or isinstance(every, bool) or every < 1:
            raise DeadzoneError(f"attribution's every must be an integer >= 1, got {every!r}")
        self.batches = list(eval_batches)
        self.record = AttributionRecord(check_rule(rule), every, len(self.batches))
        self._start: tuple[int, float, dict, dict] | None = None  # step, loss, weights, grads

    def _weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def _timed(self, fn, *args) -> None:
        t0 = time.perf_counter()
        fn(*args)
        self.record.seconds += time.perf_counter() - t0

    def on_evaluate(self, loop, step: int, eval_loss: float) -> None:
        if step == 0 and self._start is None:
            self._timed(self._begin, loop.module)

    def _begin(self, model: torch.nn.Module) -> None:
        loss, grads = eval_loss_and_grad(model, self.batches)
        self._start = (0, loss, self._weights(model), grads)

    def on_after_backward(self, loop, step: int) -> None:
        self._timed(self._gradient_stats, loop.module)

    @torch.no_grad()
    def _gradient_stats(self, model: torch.nn.Module) -> None:
        rec = self.record
        for name, p in model.named_parameters():
            if p.grad is None:
                continue
            g = p.grad.double()
            rec.grad_sq[name] = rec.grad_sq.get(name, 0.0) + float(g.square().sum())
            gw = abs(float(torch.vdot(g.flatten(), p.double().flatten())))
            rec.grad_weight[name] = rec.grad_weight.get(name, 0.0) + gw
            rec.grad_steps[name] = rec.grad_steps.get(name, 0) + 1

    def on_step_end(self, loop, step: int, loss: float) -> None:
        if step % self.record.every == 0 or step == loop.config.steps:
            self._timed(self._segment, loop.module, step)

    def _segment(self, model: torch.nn.Module, step: int) -> None:
        if self._start is None:
            raise DeadzoneError("the attribution hook missed the run's step-0 evaluation")
        start, loss_a, theta_a, g_a = self._start
        theta_b = self._weights(model)
        params = dict(model.named_parameters())
        delta = {n: theta_b[n] - theta_a[n] for n in params}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(theta_a[n] + 0.5 * delta[n])  # the midpoint
        try:
            _, g_mid = eval_loss_and_grad(model, self.batches)
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(theta_b[n])  # bit for bit where the run left it
        loss_b, g_b = eval_loss_and_grad(model, self.batches)
        d0, dm, d1 = dots(g_a, delta), dots(g_mid, delta), dots(g_b, delta)
        per_param = {n: (d0[n], dm[n], d1[n]) for n in params}
        total = [sum(d.values()) for d in (d0, dm, d1)]
        self.record.add_segment(Segment(start, step, loss_a, loss_b, total), per_param)
        self._start = (step, loss_b, theta_b, g_b)
