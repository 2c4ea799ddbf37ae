"""``FreezeCallback``: a deadzone schedule or plan inside Hugging Face ``Trainer`` (and TRL's
``SFTTrainer``, which inherits its loop).

    from deadzone.integrations.transformers import FreezeCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[FreezeCallback("freezeout", target_fraction=0.5)])

At the start of every optimizer step the callback sets the schedule's frozen set: a frozen
parameter stops requiring grad, loses its ``.grad``, and leaves the Trainer's optimizer (its
parameter groups and its state: Adam's moments are freed); one the schedule unfreezes (LISA)
comes back with fresh state. The Trainer's learning-rate scheduler keeps its groups, so
FreezeOut's per-unit learning-rate scales are applied to the update instead: after the
optimizer step, each scaled parameter is moved back to ``old + scale * (new - old)``, which for
AdamW and SGD is exactly the step with the learning rate times ``scale``.

The trainable set changes mid-run only in one process: under several, DDP's reducer would need
rebuilding, which the Trainer does not allow from a callback, so the callback refuses to start
there (deadzone's own loop re-wraps the model and supports it).
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback

from deadzone.errors import DeadzoneError
from deadzone.freezing import Freezer
from deadzone.schedules import (
    Schedule,
    ScheduleContext,
    make_schedule,
    model_units,
    schedule_params,
    unit_grad_norms,
)


class FreezeCallback(TrainerCallback):
    """Apply ``schedule`` (a spec such as ``"plan:plan.json"``, ``"geometry:pr"``, ``"lisa"``,
    or a built :class:`~deadzone.schedules.Schedule`) during ``Trainer.train``.

    A spec is built when training starts, from the model and the Trainer's ``max_steps``, with
    ``unit``, ``target_fraction``, ``freeze_by`` (a step, or a fraction of ``max_steps``),
    ``seed`` and ``interval`` as in :class:`~deadzone.schedules.ScheduleContext`.
    ``timeline`` records ``(step, frozen units)`` whenever the set changes.
    """

    def __init__(
        self,
        schedule: str | Schedule,
        *,
        unit: str = "matrix",
        target_fraction: float = 0.5,
        freeze_by: int | float = 0.5,
        seed: int = 0,
        interval: int | None = None,
    ) -> None:
        self.spec = schedule
        self.options = dict(
            target_fraction=target_fraction, freeze_by=freeze_by, seed=seed, interval=interval
        )
        self.unit = unit
        self.schedule: Schedule | None = schedule if isinstance(schedule, Schedule) else None
        self.freezer: Freezer | None = None
        self.current: set[str] = set()
        self.timeline: list[tuple[int, list[str]]] = []
        self._before_step: dict[str, torch.Tensor] = {}
        self._scales: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.world_size > 1:
            raise DeadzoneError(
                "FreezeCallback changes the trainable set mid-run, which DDP under Trainer "
                "does not allow; run it in one process, or use deadzone's own loop"
            )
        if self.schedule is None:
            units, embed = model_units(model, self.unit)
            ctx = ScheduleContext(
                units=units, embed=embed, steps=state.max_steps, model=model, **self.options
            )
            self.schedule = make_schedule(self.spec, ctx)

    def _bind(self, model, optimizer) -> Freezer:
        if self.freezer is None:
            if optimizer is None:
                raise DeadzoneError("FreezeCallback found no optimizer in the Trainer")
            self.freezer = Freezer(model, optimizer)
        return self.freezer

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        freezer, schedule = self._bind(model, optimizer), self.schedule
        step = state.global_step + 1
        want = schedule.frozen(step)
        if want != self.current:
            freezer.unfreeze(
                schedule_params(schedule, self.current - want) - schedule_params(schedule, want)
            )
            freezer.freeze(schedule_params(schedule, want - self.current))
            self.current = set(want)
            self.timeline.append((step, sorted(want)))
        self._scales = {
            p: s for n, s in schedule.lr_scales(step).items() for p in schedule.units[n].params
        }

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.schedule.wants_grad_norms:
            self.schedule.observe(state.global_step + 1, unit_grad_norms(self.schedule, model))
        params = self.freezer.params
        self._before_step = {
            n: params[n].detach().clone() for n, s in self._scales.items() if s != 1.0
        }

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kwargs):
        params = self.freezer.params
        for name, old in self._before_step.items():
            new = params[name]
            new.copy_(torch.lerp(old, new, self._scales[name]))  # old + scale * (new - old)
        self._before_step = {}
