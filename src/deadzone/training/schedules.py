"""When to freeze what during a run: plan, geometry, freezeout, autofreeze, lisa, random, full.

Every schedule is a class built the same way, ``cls(ctx, arg)`` (``arg`` is what follows the
colon of ``plan:FILE`` or ``geometry:METRIC``), with one question to answer:
``frozen(step) -> set of unit names`` frozen during optimizer step ``step`` (1-based; what is
frozen at step ``t`` receives no update from step ``t`` on). A schedule may also give units a
learning rate of their own (``lr_scales(step)``, FreezeOut: a multiple of the peak learning rate
that replaces the decay of the loop's schedule, whose warmup still applies) and watch the
gradients (``observe(step, grads)``, AutoFreeze). :class:`ScheduleHook` applies one to the SFT
loop; the Hugging Face callback (``deadzone.integrations.transformers``) applies the same
objects there.

Units, ``target_fraction`` and ``freeze_by`` (the footing every schedule shares) are defined in
``deadzone.training.units``.
"""

from __future__ import annotations

import math
import random as _random
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from deadzone import plans
from deadzone.errors import DeadzoneError
from deadzone.models import sites
from deadzone.training.train import Hook, decay_factor
from deadzone.training.units import EMBED, ScheduleContext, Unit, model_units, ramp


class Schedule:
    """Base of every schedule: nothing frozen, lr unscaled, gradients unwatched. ``takes_arg``:
    whether the spec names something after a colon (``plan:FILE``, ``geometry:METRIC``);
    ``wants_grads``: whether :meth:`observe` is to be called after each backward pass."""

    takes_arg = False
    wants_grads = False

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        self.ctx = ctx
        self.units = {u.name: u for u in ctx.units}
        if ctx.embed is not None:
            self.units[EMBED] = ctx.embed

    def frozen(self, step: int) -> set[str]:
        return set()

    def lr_scales(self, step: int) -> dict[str, float]:
        """Units that follow a learning rate of their own during ``step``, as a multiple of the
        peak learning rate: it replaces the decay of the loop's schedule (warmup still applies).
        The other units follow the loop's schedule."""
        return {}

    def observe(self, step: int, grads: Mapping[str, torch.Tensor]) -> None:
        """The gradients of ``step`` (parameter name -> gradient, complete and averaged over
        processes, before clipping), for a schedule that ``wants_grads``."""

    def most_frozen(self) -> set[str]:
        """The largest set of units this schedule can freeze at once (checked, not run)."""
        return set()


class Full(Schedule):
    """The baseline: everything trains."""


class Ordered(Schedule):
    """Freeze the shortest prefix of ``order()`` reaching ``target_fraction``, one unit after
    another along the same :func:`ramp` up to ``freeze_by``; the first ``first()`` from step 1."""

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        super().__init__(ctx, arg)
        chosen = ctx.target_prefix(self.order())
        times = ramp(chosen, ctx, min(self.first(), len(chosen)))
        self.times = dict(zip([u.name for u in chosen], times, strict=True))

    def order(self) -> list[Unit]:
        raise NotImplementedError

    def first(self) -> int:
        return 0

    def frozen(self, step: int) -> set[str]:
        return {name for name, t in self.times.items() if step >= t}

    def most_frozen(self) -> set[str]:
        return set(self.times)


class Plan(Ordered):
    """``plan:FILE``: a scan's ``plan.json`` (:func:`deadzone.plans.load_plan`), made for this
    model (its fingerprint). Its sites freeze from step 1 (whatever their strategy: values are
    not rewritten here; :func:`deadzone.plans.apply_plan` does that), then, up to the target,
    the sites of its optional ``order`` list (site names by increasing single-site cost), then
    the remaining units front to back. ``ctx.plan``, when given, is the plan already loaded."""

    takes_arg = True

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        if not arg:
            raise DeadzoneError("plan needs a file: plan:FILE")
        plan = ctx.plan if ctx.plan is not None else plans.load_plan(arg)
        if ctx.model is not None:
            plans.check_model(ctx.model, plan)
        named = [e["site"] for e in plan["sites"]]
        order = plan.get("order") if isinstance(plan.get("order"), list) else []
        self._units: list[Unit] = []
        self._first = 0
        for k, name in enumerate(dict.fromkeys([*named, *map(str, order)])):
            unit = _unit_of_site(name, ctx)
            if unit is None:
                raise DeadzoneError(f"plan {arg} names {name!r}, which is no block matrix here")
            if unit not in self._units:
                self._units.append(unit)
            if k < len(named):
                self._first = len(self._units)  # units holding a site of the plan
        self._units += [u for u in ctx.units if u not in self._units]
        super().__init__(ctx, arg)

    def order(self) -> list[Unit]:
        return self._units

    def first(self) -> int:
        return self._first


def _unit_of_site(site: str, ctx: ScheduleContext) -> Unit | None:
    """The unit holding site ``site``: itself (matrix units) or its block (block units)."""
    for u in ctx.units:
        if u.name == site or (u.name == f"L{_layer_of(site)}" and "." in site):
            return u
    return None


def _layer_of(site_name: str) -> int | None:
    head = site_name.split(".")[0]
    return int(head[1:]) if head.startswith("L") and head[1:].isdigit() else None


# Which end of each metric freezes first, and why.
GEOMETRY_DIRECTIONS: dict[str, tuple[int, str]] = {
    "pr": (+1, "low first: variance in few directions, as in the study's redundant c_proj"),
    "pr_uncentered": (+1, "low first: energy in few directions"),
    "pc1": (-1, "high first: one direction dominates the centred rows"),
    "pc1_uncentered": (-1, "high first: one direction dominates the matrix"),
    "stable_rank": (+1, "low first: close to low-rank"),
    "effective_rank": (+1, "low first: close to low-rank"),
    "amplitude_pr": (+1, "low first: stereotyped rows"),
    "snr": (+1, "low first: Spectrum trains the high-SNR matrices and freezes the rest"),
}


class Geometry(Ordered):
    """``geometry:METRIC``: freeze in order of an ``analyze`` metric (``snr`` is Spectrum's), or
    of the per-site scores the context brings."""

    takes_arg = True

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        if arg not in GEOMETRY_DIRECTIONS:
            raise DeadzoneError(
                f"geometry needs a metric: geometry:METRIC with METRIC one of "
                f"{', '.join(GEOMETRY_DIRECTIONS)}; got {arg!r}"
            )
        self.metric = arg
        self.scores = self._scores(ctx, arg)
        super().__init__(ctx, arg)

    @staticmethod
    def _scores(ctx: ScheduleContext, metric: str) -> dict[str, float]:
        """Score of each unit: of its matrix, or the mean over its matrices weighted by their
        parameter counts (equal weights for scores the context brings without the model)."""
        if ctx.model is None and not ctx.scores:
            raise DeadzoneError("geometry needs the model to measure")
        found = []
        if ctx.model is not None:
            found = [s for s in sites.find_sites(ctx.model) if s.layer is not None]
        if ctx.scores:
            per_site = ctx.scores
        else:
            from deadzone.geometry.analysis import analyze

            pairs = ((s, sites.site_matrix(ctx.model, s)) for s in found)
            records = analyze(pairs, total=len(found), device="cpu", progress=False)
            per_site = {r["site"]: r[metric] for r in records}
        size = {s.name: s.params for s in found}
        sums: dict[str, list[float]] = {}  # unit -> [weighted sum, total weight]
        for site, value in per_site.items():
            unit = _unit_of_site(site, ctx)
            if unit is not None and value is not None and math.isfinite(value):
                weight = size.get(site, 1)
                acc = sums.setdefault(unit.name, [0.0, 0])
                acc[0] += weight * value
                acc[1] += weight
        missing = [u.name for u in ctx.units if u.name not in sums]
        if missing:
            raise DeadzoneError(f"no finite {metric} for {', '.join(missing[:5])}")
        return {name: total / weight for name, (total, weight) in sums.items()}

    def order(self) -> list[Unit]:
        sign = GEOMETRY_DIRECTIONS[self.metric][0]
        return sorted(self.ctx.units, key=lambda u: (sign * self.scores[u.name], u.name))


class Random(Ordered):
    """``random``: the control of the ordered schedules (``geometry``, ``plan``): the same units,
    the same :func:`ramp` to the same target by the same ``freeze_by``, in a seeded random order
    (the shortest prefix of that order reaching the target). At every step it has frozen the
    share of the block matrices that ``geometry`` has, up to one unit. ``plan`` freezes the
    units of its sites at step 1: it is ahead of the control until the ramp reaches their
    share, and level with it, up to one unit, from there on. The control is not matched to
    ``freezeout``, ``autofreeze`` or ``lisa``, whose timing is their own."""

    def order(self) -> list[Unit]:
        units = list(self.ctx.units)
        _random.Random(self.ctx.seed).shuffle(units)
        return units


class FreezeOut(Schedule):
    """Brock et al. 2017: front to back, each unit of the target prefix follows a learning rate
    of its own, a cosine from its peak to zero over its time ``t_i``, then freezes; the units
    past the target follow the loop's schedule. Cubic schedule: ``t_i = by * (t0 + (1 - t0) *
    i / (k - 1))^3`` for the ``k`` units that reach the target (``t0 = 0.8`` pre-cubed as in
    the reference, so the first freezes at 0.51 of ``freeze_by``, the last at it). During step
    ``s < t_i`` unit ``i`` trains at ``lr * scale_i * (1 + cos(pi * (s - 1) / t_i)) / 2``, in
    place of the loop's decay (its warmup still applies), with ``scale_i = steps / t_i`` under
    ``scale_lr`` (the reference's default) so that it travels about as far as a unit trained
    to the end, else 1. ``scale_i`` is 1 over the unit's share of *all* the steps: a
    ``freeze_by`` before the end compresses the ``t_i`` and raises the scales with them. The
    embeddings unit goes with the first."""

    t0 = 0.8
    scale_lr = True

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        super().__init__(ctx, arg)
        chosen = ctx.target_prefix(list(ctx.units))
        k = len(chosen)
        self.times: dict[str, int] = {}
        for i, u in enumerate(chosen):
            t = (self.t0 + (1 - self.t0) * (i / (k - 1) if k > 1 else 1.0)) ** 3
            self.times[u.name] = max(1, math.ceil(ctx.by_step * t))
        if ctx.embed is not None and chosen:
            self.times[EMBED] = self.times[chosen[0].name]

    def frozen(self, step: int) -> set[str]:
        return {n for n, t in self.times.items() if step >= t}

    def most_frozen(self) -> set[str]:
        return set(self.times)

    def lr_scales(self, step: int) -> dict[str, float]:
        out = {}
        for name, t in self.times.items():
            if step < t:
                cosine = 0.5 * (1 + math.cos(math.pi * (step - 1) / t))
                out[name] = cosine * (self.ctx.steps / t if self.scale_lr else 1.0)
        return out


class AutoFreeze(Schedule):
    """Liu et al. 2021, as the reference (``freeze_intermediate_e2e_lr.py``) computes it: every
    ``interval`` steps, each training unit's gradient summed over the interval's steps and the
    L1 norm of that sum (:meth:`observe`), then the rule (:meth:`decide`): the relative change
    of each norm since the previous interval, and every unit before the front-most one whose
    change is at or above the ``percentile`` of the training units' changes freezes. Only a
    front prefix freezes, kept within the target set; whatever of that set is still training
    at ``freeze_by`` freezes then. Interval default: a twentieth of the run (the reference
    evaluates 20 times). ``intervals`` records ``(step, L1 norm of each training unit)`` at
    the end of every interval: what the decisions came from, enough to replay them.

    Memory: the sums are one float32 buffer per parameter of every unit still training (they
    all enter the percentile), as large as those parameters; a unit's go when it freezes, and
    all of them once the target set is frozen."""

    wants_grads = True
    percentile = 50.0

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        super().__init__(ctx, arg)
        self.chosen = [u.name for u in ctx.target_prefix(list(ctx.units))]
        self.order = [u.name for u in ctx.units]
        self.interval = ctx.interval or max(1, ctx.steps // 20)
        self.sums: dict[str, torch.Tensor] = {}  # parameter name -> gradient summed
        self.previous: dict[str, float] | None = None
        self.intervals: list[tuple[int, dict[str, float]]] = []
        self.start = 0  # units before this index are frozen
        self.freeze_step: dict[str, int] = {}

    def observe(self, step: int, grads: Mapping[str, torch.Tensor]) -> None:
        if self.start >= len(self.chosen):  # the target set is frozen: nothing left to decide
            self.sums = {}
            return
        training = self.order[self.start :]
        for name in (p for n in training for p in self.units[n].params):
            if grads.get(name) is None:
                continue
            grad = grads[name].detach()
            if name in self.sums:
                self.sums[name].add_(grad)
            else:
                self.sums[name] = grad.to(torch.float32, copy=True)
        if step % self.interval == 0:
            norms = {n: self._l1(n) for n in training}
            self.sums = {}
            self.decide(step, norms)

    def _l1(self, unit: str) -> float:
        """L1 norm of the unit's gradient summed over the interval."""
        return sum(
            float(self.sums[p].abs().sum()) for p in self.units[unit].params if p in self.sums
        )

    def decide(self, step: int, norms: Mapping[str, float]) -> None:
        """The rule at the end of the interval closing at ``step``, from the L1 norm of each
        training unit's gradient summed over it: the units before the front-most whose change
        is at or above the percentile freeze from step ``step + 1``."""
        self.intervals.append((step, dict(norms)))
        training = self.order[self.start :]
        if self.previous is not None:
            change = {n: _relative_change(self.previous[n], norms[n]) for n in training}
            threshold = float(np.percentile(list(change.values()), self.percentile))
            first = next(i for i, n in enumerate(training) if change[n] >= threshold)
            self._freeze_through(min(self.start + first, len(self.chosen)), step + 1)
        self.previous = dict(norms)

    def _freeze_through(self, count: int, step: int) -> None:
        for name in self.chosen[self.start : count]:
            self.freeze_step[name] = step
            for p in self.units[name].params:
                self.sums.pop(p, None)
        self.start = max(self.start, count)

    def frozen(self, step: int) -> set[str]:
        if step >= self.ctx.by_step:
            self._freeze_through(len(self.chosen), step)
        out = {n for n, t in self.freeze_step.items() if step >= t}
        if out and self.ctx.embed is not None:
            out.add(EMBED)
        return out

    def most_frozen(self) -> set[str]:
        return set(self.chosen) | ({EMBED} if self.ctx.embed is not None else set())


def _relative_change(previous: float, current: float) -> float:
    """``|previous - current| / previous``; 0 for a zero ``current`` (as the reference), and
    infinite for a gradient that was zero and is not."""
    if current <= 0:
        return 0.0
    return abs(previous - current) / previous if previous > 0 else math.inf


class Lisa(Schedule):
    """Pan et al. 2024 as LMFlow's DynamicLayerActivationCallback does it: the embeddings and
    head always train; ``gamma`` blocks drawn at random train, the others are frozen, re-drawn
    every ``interval`` steps (LMFlow's default: 20) from step 1. The frozen blocks are the
    fewest that hold ``target_fraction`` of the block matrices whichever are drawn (with blocks
    of one size, ``ceil(target_fraction * blocks)``); a model of one block, or a target that
    would leave no block training, is refused. LISA draws blocks: with ``unit="block"`` an
    inactive block freezes whole (as in LMFlow), with ``unit="matrix"`` only its matrices do
    (its biases and norms keep training)."""

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        super().__init__(ctx, arg)
        layers = sorted({u.layer for u in ctx.units})
        self.blocks = {layer: {u.name for u in ctx.units if u.layer == layer} for layer in layers}
        sizes = [sum(self.units[n].matrix_params for n in names) for names in self.blocks.values()]
        self.gamma = len(layers) - _blocks_to_freeze(sizes, ctx)
        self.interval = ctx.interval or 20
        self.rng = _random.Random(ctx.seed)
        self.active: list[int] = []
        self._drawn_for = 0

    def frozen(self, step: int) -> set[str]:
        period = (step - 1) // self.interval
        if not self.active or period != self._drawn_for:
            self.active = sorted(self.rng.sample(sorted(self.blocks), self.gamma))
            self._drawn_for = period
        return {
            n for layer, names in self.blocks.items() if layer not in self.active for n in names
        }

    def most_frozen(self) -> set[str]:
        layers = sorted(self.blocks)[self.gamma :]
        return {n for layer in layers for n in self.blocks[layer]}


def _blocks_to_freeze(sizes: list[int], ctx: ScheduleContext) -> int:
    """The fewest blocks (of ``sizes`` block-matrix parameters each) that reach the target
    whichever are drawn: the smallest first. One block must stay to train."""
    if len(sizes) < 2:
        raise DeadzoneError(
            f"lisa needs at least 2 blocks to draw from; this model has {len(sizes)}"
        )
    got = 0
    for count, size in enumerate(sorted(sizes)[:-1], start=1):
        got += size
        if ctx.reaches(got):
            return count
    most = (ctx.matrix_total - max(sizes)) / ctx.matrix_total
    raise DeadzoneError(
        f"lisa keeps a block training, so with {len(sizes)} blocks it freezes at most "
        f"{most:.0%} of the block matrices; target fraction {ctx.target_fraction:g}"
    )


SCHEDULES: dict[str, type[Schedule]] = {
    "full": Full,
    "plan": Plan,
    "geometry": Geometry,
    "freezeout": FreezeOut,
    "autofreeze": AutoFreeze,
    "lisa": Lisa,
    "random": Random,
}


def check_spec(spec: str) -> tuple[type[Schedule], str | None]:
    """The schedule class and argument of ``spec``; a one-line error for an unknown schedule,
    or an argument given to one that takes none."""
    name, colon, arg = spec.partition(":")
    if name not in SCHEDULES:
        raise DeadzoneError(f"unknown schedule {spec!r}; choose from {', '.join(SCHEDULES)}")
    cls = SCHEDULES[name]
    if colon and not cls.takes_arg:
        raise DeadzoneError(f"schedule {name} takes no argument; got {spec!r}")
    return cls, arg or None


def make_schedule(spec: str, ctx: ScheduleContext) -> Schedule:
    """``full``, ``plan:FILE``, ``geometry:METRIC``, ``freezeout``, ``autofreeze``, ``lisa``,
    ``random``; refuses one that would leave nothing to train."""
    cls, arg = check_spec(spec)
    schedule = cls(ctx, arg)
    _check_leaves_something(schedule, ctx)
    return schedule


def _check_leaves_something(schedule: Schedule, ctx: ScheduleContext) -> None:
    if ctx.model is None:
        return
    everything = {n for n, p in ctx.model.named_parameters() if p.requires_grad}
    frozen = schedule_params(schedule, schedule.most_frozen())
    if everything and everything <= frozen:
        raise DeadzoneError(
            f"schedule {type(schedule).__name__.lower()} would freeze every parameter"
        )


def schedule_params(schedule: Schedule, unit_names: set[str]) -> set[str]:
    return {p for n in unit_names for p in schedule.units[n].params}


def frozen_fraction(schedule: Schedule, unit_names: set[str]) -> float:
    """Share of the block-matrix parameters that ``unit_names`` hold."""
    got = sum(schedule.units[n].matrix_params for n in unit_names)
    return got / schedule.ctx.matrix_total


def unit_grads(schedule: Schedule, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The gradients of the parameters of the schedule's units, by parameter name (those that
    have one: frozen parameters have none)."""
    named = dict(model.named_parameters())
    params = (p for unit in schedule.units.values() for p in unit.params)
    return {p: named[p].grad for p in params if named[p].grad is not None}


class ScheduleHook(Hook):
    """Applies a schedule in the SFT loop: at each step's start, freezes and unfreezes to its
    frozen set and gives the units of ``lr_scales`` their own learning rate (as a scale of the
    loop's: theirs over the loop's decay); feeds it the gradients if it asks.
    ``timeline`` records ``(step, sorted frozen units)`` whenever the set changes."""

    def __init__(self, schedule: Schedule) -> None:
        self.schedule = schedule
        self.current: set[str] = set()
        self.timeline: list[tuple[int, list[str]]] = []

    def on_step_start(self, loop, step: int) -> None:
        want = self.schedule.frozen(step)
        if want != self.current:
            params = schedule_params
            loop.unfreeze(params(self.schedule, self.current - want) - params(self.schedule, want))
            loop.freeze(params(self.schedule, want - self.current))
            self.current = set(want)
            self.timeline.append((step, sorted(want)))
        decay = decay_factor(step - 1, loop.config)  # the loop's, which theirs replaces
        own = self.schedule.lr_scales(step)
        units = self.schedule.units
        loop.set_lr_scales({p: s / decay for n, s in own.items() for p in units[n].params})

    def on_after_backward(self, loop, step: int) -> None:
        if self.schedule.wants_grads:
            self.schedule.observe(step, unit_grads(self.schedule, loop.module))


@dataclass(frozen=True)
class ScheduleSpec:
    """A schedule as a run carries it to wherever it trains (picklable): the spec string and
    the :class:`ScheduleContext` fields every run of an experiment shares; the run adds its
    model, steps and seed (:meth:`build`). ``plan`` is ``plan:FILE``'s plan, loaded once."""

    spec: str
    unit: str = "matrix"
    target_fraction: float = 0.5
    freeze_by: int | float = 0.5
    interval: int | None = None
    plan: dict | None = None

    def build(self, model: torch.nn.Module, steps: int, seed: int = 0) -> Schedule:
        units, embed = model_units(model, self.unit)
        ctx = ScheduleContext(
            units, steps, embed, self.target_fraction, self.freeze_by, seed, model,
            interval=self.interval, plan=self.plan,
        )  # fmt: skip
        return make_schedule(self.spec, ctx)
