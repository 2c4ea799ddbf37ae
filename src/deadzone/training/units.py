"""Units and footing of the freeze schedules (``deadzone.training.schedules``): what freezes at
once, and
when every schedule must have frozen how much.

A **unit** is what freezes at once: with ``unit="matrix"`` one block weight matrix (a site; its
bias keeps training), with ``unit="block"`` every parameter of one transformer block (biases and
norms too). ``target_fraction`` is the share of block-matrix parameters frozen by the end and
``freeze_by`` the step (an int) or fraction of training (a float) by which it is reached: that
puts every schedule on the same footing. Every schedule freezes at least the target; units of
unequal size make the share reached the smallest one at or above it.

The embeddings (position embedding, and the token embedding unless it is tied to the output
head) form one more unit, ``embed``, that only the front-to-back schedules (``freezeout``,
``autofreeze``) freeze, with the first unit: everything before a frozen prefix then needs no
backward pass at all. A tied token embedding keeps training, so the backward pass still reaches
the bottom of the model; only weight gradients are saved there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from deadzone.errors import DeadzoneError
from deadzone.models import sites

UNITS = ("matrix", "block")
EMBED = "embed"
TOLERANCE = 1e-9  # a share of the block matrices this far below the target is rounding


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

    def reaches(self, matrix_params: int) -> bool:
        """Whether ``matrix_params`` block-matrix parameters make ``target_fraction``."""
        return matrix_params >= (self.target_fraction - TOLERANCE) * self.matrix_total

    def target_prefix(self, order: list[Unit]) -> list[Unit]:
        """The shortest prefix of ``order`` holding ``target_fraction`` of the block matrices."""
        got, out = 0, []
        for u in order:
            if self.reaches(got):
                break
            out.append(u)
            got += u.matrix_params
        return out


def ramp(chosen: list[Unit], ctx: ScheduleContext, first: int = 0) -> list[int]:
    """Step at which each unit of ``chosen`` (a target prefix, in order) freezes: the ``first``
    ones at step 1, each other as soon as the ramp ``target_fraction * step / by_step`` reaches
    the share of the block matrices frozen with it (the last at ``by_step``). Whatever the
    order and the units' sizes, the share frozen at a step is then the ramp's, less at most one
    unit (and from ``by_step`` on, the target plus at most one unit)."""
    need, got, times = ctx.target_fraction * ctx.matrix_total, 0, []
    for k, unit in enumerate(chosen):
        got += unit.matrix_params
        share = min(1.0, got / need)
        times.append(1 if k < first else max(1, math.ceil(ctx.by_step * share - TOLERANCE)))
    return times
