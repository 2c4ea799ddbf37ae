"""When to freeze what during a run: plan, geometry, freezeout, autofreeze, lisa, random, full.

Every schedule is a class built the same way, ``cls(ctx, arg)`` (``arg`` is what follows the
colon of ``plan:FILE`` or ``geometry:METRIC``), with one question to answer:
``frozen(step) -> set of unit names`` frozen during optimizer step ``step`` (1-based; what is
frozen at step ``t`` receives no update from step ``t`` on). A schedule may also scale the
learning rate of units (``lr_scales(step)``, FreezeOut) and watch gradient norms
(``observe(step, norms)``, AutoFreeze). :class:`ScheduleHook` applies one to the SFT loop; the
Hugging Face callback (``deadzone.integrations.transformers``) applies the same objects there.

A **unit** is what freezes at once: with ``unit="matrix"`` one block weight matrix (a site; its
bias keeps training), with ``unit="block"`` every parameter of one transformer block (biases and
norms too). ``target_fraction`` is the share of block-matrix parameters frozen by the end and
``freeze_by`` the step (an int) or fraction of training (a float) by which it is reached: that
puts every schedule on the same footing. Units of unequal size make the share reached the
smallest one at or above the target.

The embeddings (position embedding, and the token embedding unless it is tied to the output
head) form one more unit, ``embed``, that only the front-to-back schedules (``freezeout``,
``autofreeze``) freeze, with the first unit: everything before a frozen prefix then needs no
backward pass at all. A tied token embedding keeps training, so the backward pass still reaches
the bottom of the model; only weight gradients are saved there.
"""

from __future__ import annotations

import math
import random as _random
from dataclasses import dataclass, field

import numpy as np
import torch

from deadzone import plans, sites
from deadzone.errors import DeadzoneError
from deadzone.train import Hook

UNITS = ("matrix", "block")
EMBED = "embed"


@dataclass(frozen=True)
class Unit:
    """What freezes at once: ``params`` are parameter names; ``matrix_params`` counts the
    block-matrix parameters among them (what ``target_fraction`` measures)."""

    name: str
    params: tuple[str, ...]
    numel: int
    matrix_params: int
    layer: int | None


def model_units(model: torch.nn.Module, unit: str = "matrix") -> tuple[list[Unit], Unit | None]:
    """(block units in forward order, the embeddings unit or None) of a Hugging Face model."""
    if unit not in UNITS:
        raise DeadzoneError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    named = dict(model.named_parameters())
    found = sites.find_sites(model)
    blocks = [s for s in found if s.layer is not None]
    if not blocks:
        raise DeadzoneError("this model has no transformer block matrices to freeze")
    if unit == "matrix":
        units = [Unit(s.name, (s.param_name,), s.params, s.params, s.layer) for s in blocks]
    else:
        units = []
        for layer in sorted({s.layer for s in blocks}):
            mine = [s for s in blocks if s.layer == layer]
            prefix = mine[0].param_name[
                : mine[0].param_name.index(f".{layer}.") + len(f"{layer}.") + 1
            ]
            params = tuple(n for n in named if n.startswith(prefix))
            numel = sum(named[n].numel() for n in params)
            units.append(Unit(f"L{layer}", params, numel, sum(s.params for s in mine), layer))
    head = model.get_output_embeddings()
    tied = {id(head.weight)} if head is not None else set()
    embeds = [
        s.param_name
        for s in found
        if s.role in ("embed", "pos_embed") and id(named[s.param_name]) not in tied
    ]
    embed = None
    if embeds:
        embed = Unit(EMBED, tuple(embeds), sum(named[n].numel() for n in embeds), 0, None)
    return units, embed


@dataclass
class ScheduleContext:
    """What a schedule may know. ``freeze_by``: a step (int >= 1) or a fraction of ``steps``
    (float in (0, 1]); ``model`` is read by ``geometry``; ``scores`` maps unit or site names to a
    score for ``geometry:snr`` (computed by whoever has the data)."""

    units: list[Unit]
    steps: int
    embed: Unit | None = None
    target_fraction: float = 0.5
    freeze_by: int | float = 0.5
    seed: int = 0
    model: torch.nn.Module | None = None
    scores: dict[str, float] | None = None
    interval: int | None = None  # AutoFreeze's and LISA's K (default: their papers' choices)
    plan: dict | None = None  # plan:FILE's plan, already loaded
    by_step: int = field(init=False)

    def __post_init__(self) -> None:
        tf = self.target_fraction
        if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0 < tf < 1:
            raise DeadzoneError(f"target_fraction must be in (0, 1), got {tf!r}")
        fb = self.freeze_by
        if isinstance(fb, bool) or not isinstance(fb, (int, float)):
            raise DeadzoneError(f"freeze_by must be a step or a fraction, got {fb!r}")
        if isinstance(fb, float):
            if not 0 < fb <= 1:
                raise DeadzoneError(f"freeze_by as a fraction must be in (0, 1], got {fb!r}")
            self.by_step = max(1, round(fb * self.steps))
        else:
            if fb < 1 or fb > self.steps:
                raise DeadzoneError(f"freeze_by step {fb} is beyond the {self.steps} steps")
            self.by_step = fb
        if self.interval is not None and self.interval < 1:
            raise DeadzoneError(f"interval must be >= 1, got {self.interval!r}")

    @property
    def matrix_total(self) -> int:
        return sum(u.matrix_params for u in self.units)

    def target_prefix(self, order: list[Unit]) -> list[Unit]:
        """The shortest prefix of ``order`` holding ``target_fraction`` of the block matrices."""
        need, got, out = self.target_fraction * self.matrix_total, 0, []
        for u in order:
            if got >= need:
                break
            out.append(u)
            got += u.matrix_params
        return out


def staggered(count: int, by_step: int, first: int = 0) -> list[int]:
    """Steps at which the k-th of ``count`` units freezes: evenly up to ``by_step``; the
    ``first`` ones from step 1."""
    rest = count - first
    return [1] * first + [max(1, math.ceil(by_step * (k + 1) / rest)) for k in range(rest)]


class Schedule:
    """Base of every schedule: nothing frozen, lr unscaled, gradient norms unwatched."""

    wants_grad_norms = False

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        self.ctx = ctx
        self.units = {u.name: u for u in ctx.units}
        if ctx.embed is not None:
            self.units[EMBED] = ctx.embed

    def frozen(self, step: int) -> set[str]:
        return set()

    def lr_scales(self, step: int) -> dict[str, float]:
        return {}

    def observe(self, step: int, grad_norms: dict[str, float]) -> None:
        pass

    def most_frozen(self) -> set[str]:
        """The largest set of units this schedule can freeze at once (checked, not run)."""
        return set()


class Full(Schedule):
    """The baseline: everything trains."""


class Ordered(Schedule):
    """Freeze units one after another in ``order()``, evenly in time up to ``freeze_by``, until
    ``target_fraction`` is reached; the first ``first()`` from step 1."""

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        super().__init__(ctx, arg)
        chosen = ctx.target_prefix(self.order())
        self.times = dict(
            zip(
                [u.name for u in chosen],
                staggered(len(chosen), ctx.by_step, min(self.first(), len(chosen))),
                strict=True,
            )
        )

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
        """Score of each unit: of its matrix, or the parameter-weighted mean over its matrices."""
        if ctx.scores:
            per_site = ctx.scores
        else:
            if ctx.model is None:
                raise DeadzoneError("geometry needs the model to measure")
            from deadzone.analysis import analyze

            found = [s for s in sites.find_sites(ctx.model) if s.layer is not None]
            pairs = ((s, sites.site_matrix(ctx.model, s)) for s in found)
            records = analyze(pairs, total=len(found), device="cpu", progress=False)
            per_site = {r["site"]: r[metric] for r in records}
        by_unit: dict[str, list[float]] = {}
        for site, value in per_site.items():
            unit = _unit_of_site(site, ctx)
            if unit is not None and value is not None and math.isfinite(value):
                by_unit.setdefault(unit.name, []).append(value)
        missing = [u.name for u in ctx.units if u.name not in by_unit]
        if missing:
            raise DeadzoneError(f"no finite {metric} for {', '.join(missing[:5])}")
        return {name: sum(v) / len(v) for name, v in by_unit.items()}  # a block: its mean

    def order(self) -> list[Unit]:
        sign = GEOMETRY_DIRECTIONS[self.metric][0]
        return sorted(self.ctx.units, key=lambda u: (sign * self.scores[u.name], u.name))


class Random(Ordered):
    """``random``: a seeded random order, frozen as the ordered schedules freeze (the control)."""

    def order(self) -> list[Unit]:
        units = list(self.ctx.units)
        _random.Random(self.ctx.seed).shuffle(units)
        return units


class FreezeOut(Schedule):
    """Brock et al. 2017: front to back, each unit's learning rate annealed to zero along a
    cosine over its own time ``t_i``, then frozen. Cubic schedule: ``t_i = by * (t0 + (1 - t0)
    * i / (k - 1))^3`` for the ``k`` units that reach the target (``t0 = 0.8`` pre-cubed as in
    the reference, so the first freezes at 0.51 of ``freeze_by``, the last at it); with
    ``scale_lr`` (the reference's default) unit ``i`` starts at ``lr / (t_i / steps)``, so it
    travels as far as a unit trained to the end. The embeddings unit goes with the first."""

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
    """Liu et al. 2021: every ``interval`` steps, compare each unit's gradient L1 norm summed
    over the interval with the previous interval's; freeze, front to back, the units before the
    first whose relative change is at or above the ``percentile`` of the active units' changes.
    As in the reference, only a front prefix freezes. Kept within the target set, and whatever
    of it is still trainable at ``freeze_by`` freezes then. Interval default: a twentieth of
    the run (the reference evaluates 20 times)."""

    wants_grad_norms = True
    percentile = 50.0

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        super().__init__(ctx, arg)
        self.chosen = [u.name for u in ctx.target_prefix(list(ctx.units))]
        self.order = [u.name for u in ctx.units]
        self.interval = ctx.interval or max(1, ctx.steps // 20)
        self.sums: dict[str, float] = dict.fromkeys(self.order, 0.0)
        self.previous: dict[str, float] | None = None
        self.start = 0  # units before this index are frozen
        self.freeze_step: dict[str, int] = {}

    def observe(self, step: int, grad_norms: dict[str, float]) -> None:
        for name in self.order:
            self.sums[name] += grad_norms.get(name, 0.0)
        if step % self.interval:
            return
        current, self.sums = self.sums, dict.fromkeys(self.order, 0.0)
        if self.previous is not None:
            change = {
                n: abs(self.previous[n] - current[n]) / self.previous[n] if current[n] > 0 else 0.0
                for n in self.order
            }
            active = [change[n] for n in self.order[self.start :]]
            threshold = float(np.percentile(active, self.percentile))
            first = next(i for i, n in enumerate(self.order) if change[n] >= threshold)
            self._freeze_through(min(first, len(self.chosen)), step + 1)
        self.previous = current

    def _freeze_through(self, count: int, step: int) -> None:
        for name in self.chosen[self.start : count]:
            self.freeze_step[name] = step
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


class Lisa(Schedule):
    """Pan et al. 2024 as LMFlow's DynamicLayerActivationCallback does it: the embeddings and
    head always train; ``gamma`` blocks drawn at random train, the others are frozen, re-drawn
    every ``interval`` steps (LMFlow's default: 20) from step 1. ``gamma`` keeps
    ``target_fraction`` of the blocks frozen at every step. LISA draws blocks: with
    ``unit="block"`` an inactive block freezes whole (as in LMFlow), with ``unit="matrix"`` only
    its matrices do (its biases and norms keep training)."""

    def __init__(self, ctx: ScheduleContext, arg: str | None = None) -> None:
        super().__init__(ctx, arg)
        layers = sorted({u.layer for u in ctx.units})
        self.blocks = {layer: {u.name for u in ctx.units if u.layer == layer} for layer in layers}
        self.gamma = max(1, min(len(layers) - 1, round((1 - ctx.target_fraction) * len(layers))))
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


SCHEDULES: dict[str, type[Schedule]] = {
    "full": Full,
    "plan": Plan,
    "geometry": Geometry,
    "freezeout": FreezeOut,
    "autofreeze": AutoFreeze,
    "lisa": Lisa,
    "random": Random,
}


def make_schedule(spec: str, ctx: ScheduleContext) -> Schedule:
    """``full``, ``plan:FILE``, ``geometry:METRIC``, ``freezeout``, ``autofreeze``, ``lisa``,
    ``random``; refuses one that would leave nothing to train."""
    name, _, arg = spec.partition(":")
    if name not in SCHEDULES:
        raise DeadzoneError(f"unknown schedule {spec!r}; choose from {', '.join(SCHEDULES)}")
    schedule = SCHEDULES[name](ctx, arg or None)
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


def unit_grad_norms(schedule: Schedule, model: torch.nn.Module) -> dict[str, float]:
    """L1 norm of each unit's gradient (0 where none was computed)."""
    named = dict(model.named_parameters())
    out = {}
    for name, unit in schedule.units.items():
        grads = [named[p].grad for p in unit.params if named[p].grad is not None]
        out[name] = float(sum(g.abs().sum() for g in grads)) if grads else 0.0
    return out


class ScheduleHook(Hook):
    """Applies a schedule in the SFT loop: at each step's start, freezes and unfreezes to its
    frozen set and sets its learning-rate scales; feeds it gradient norms if it asks.
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
        scales = self.schedule.lr_scales(step)
        loop.set_lr_scales({p: s for n, s in scales.items() for p in self.schedule.units[n].params})

    def on_after_backward(self, loop, step: int) -> None:
        if self.schedule.wants_grad_norms:
            self.schedule.observe(step, unit_grad_norms(self.schedule, loop.module))


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
