"""``FreezeCallback``: a deadzone schedule or plan inside Hugging Face ``Trainer`` (and TRL's
``SFTTrainer``, which inherits its loop).

    from deadzone.integrations.transformers import FreezeCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[FreezeCallback("freezeout", target_fraction=0.5)])

At the start of every optimizer step the callback sets the schedule's frozen set: a frozen
parameter stops requiring grad, loses its ``.grad``, and leaves the Trainer's optimizer (its
parameter groups and its state: Adam's moments are freed); one the schedule unfreezes (LISA)
comes back with fresh state. The Trainer's learning-rate scheduler keeps its groups, so
FreezeOut's learning rates of their own are applied to the update instead: after the optimizer
step, each such parameter is moved back to ``old + m * (new - old)``, ``m`` its learning rate
over the Trainer's, which for AdamW and SGD is exactly the step taken with its learning rate.

Checkpoints resume. The optimizer's ``state_dict`` lists every parameter its groups were built
with, the frozen ones holding no state, so the fresh optimizer of a resumed Trainer loads it.
``trainer_state.json`` keeps the callback's record (``ExportableState``): its arguments, the
frozen sets so far, the geometry a ``geometry:`` schedule measured on the starting weights
(the checkpoint's have moved since) and AutoFreeze's interval norms. Resuming rebuilds the
schedule from that, replays it up to the checkpoint's step (LISA's draws, AutoFreeze's
decisions) and freezes the checkpoint's set before the first step. AutoFreeze resumes from a
checkpoint at the end of one of its intervals, or from ``freeze_by`` on: elsewhere the
gradients it has summed since its last decision are not in the checkpoint, and it refuses.

The trainable set changes mid-run only in one process: under several, DDP's reducer would need
rebuilding, which the Trainer does not allow from a callback, so the callback refuses to start
there (deadzone's own loop re-wraps the model and supports it).
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from deadzone.errors import DeadzoneError
from deadzone.training.freezing import HOME, Freezer
from deadzone.training.schedules import (
    AutoFreeze,
    Geometry,
    Schedule,
    ScheduleContext,
    make_schedule,
    model_units,
    schedule_params,
    unit_grads,
)


class FreezeCallback(TrainerCallback, ExportableState):
    """Apply ``schedule`` (a spec such as ``"plan:plan.json"``, ``"geometry:pr"``, ``"lisa"``,
    or a built :class:`~deadzone.training.schedules.Schedule`) during ``Trainer.train``.

    A spec is built when training starts, from the model and the Trainer's ``max_steps``, with
    ``unit``, ``target_fraction``, ``freeze_by`` (a step, or a fraction of ``max_steps``),
    ``seed`` and ``interval`` as in :class:`~deadzone.training.schedules.ScheduleContext`; a built
    schedule is used as given (to resume, pass a new one built the same way).
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
        self.config: dict | None = None  # what a resumed run must match
        self._before_step: dict[str, torch.Tensor] = {}
        self._scales: dict[str, float] = {}
        self._built_groups: list[list[torch.nn.Parameter]] = []
        self._live_groups: list[dict] = []
        self._hooks: list = []

    def on_init_end(self, args, state, control, **kwargs):
        if args.restore_callback_states_from_checkpoint and not isinstance(self.spec, str):
            raise DeadzoneError(
                "restore_callback_states_from_checkpoint rebuilds FreezeCallback from its "
                "arguments, which needs a schedule spec such as 'lisa', not a built Schedule"
            )

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if args.world_size > 1:
            raise DeadzoneError(
                "FreezeCallback changes the trainable set mid-run, which DDP under Trainer "
                "does not allow; run it in one process, or use deadzone's own loop"
            )
        spec = self.spec if isinstance(self.spec, str) else type(self.spec).__name__
        self.config = dict(schedule=spec, unit=self.unit, steps=state.max_steps, **self.options)
        saved = self._saved(state)
        if isinstance(self.spec, str):
            self.schedule = self._build(model, state.max_steps, saved)
        self.current, self.timeline = set(), []
        self._bind(model, optimizer)
        if saved is not None:
            self._resume(saved, state.global_step)

    def _build(self, model, steps: int, saved: dict | None) -> Schedule:
        units, embed = model_units(model, self.unit)
        context = dict(units=units, embed=embed, steps=steps, **self.options)
        if saved is None:
            return make_schedule(self.spec, ScheduleContext(model=model, **context))
        # The checkpoint's weights are not those the run started from: what the schedule
        # measured on those comes from the checkpoint (a plan's fingerprint was checked then).
        return make_schedule(self.spec, ScheduleContext(scores=saved["scores"], **context))

    def _bind(self, model, optimizer) -> None:
        """Own the trainable set under ``optimizer`` and make its ``state_dict`` resumable."""
        for hook in self._hooks:
            hook.remove()
        if optimizer is None:
            raise DeadzoneError("FreezeCallback found no optimizer in the Trainer")
        self.freezer = Freezer(model, optimizer)
        self._built_groups = [list(g["params"]) for g in optimizer.param_groups]
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        self._hooks = [
            inner.register_state_dict_pre_hook(self._list_frozen),
            inner.register_state_dict_post_hook(self._unlist_frozen),
        ]

    def _list_frozen(self, optimizer) -> None:
        """Before ``optimizer.state_dict()``: give each group back every parameter it was built
        with, the frozen ones (which hold no state) included, as a fresh optimizer has them."""
        self._live_groups = optimizer.param_groups[:]
        optimizer.param_groups[:] = [
            {**group, "params": self._built_groups[group[HOME]]} for group in self._live_groups
        ]

    def _unlist_frozen(self, optimizer, state_dict) -> None:
        optimizer.param_groups[:] = self._live_groups

    def _apply(self, want: set[str]) -> None:
        """Freeze the units of ``want``, unfreeze the other frozen ones."""
        schedule, freezer = self.schedule, self.freezer
        freezer.unfreeze(
            schedule_params(schedule, self.current - want) - schedule_params(schedule, want)
        )
        freezer.freeze(schedule_params(schedule, want - self.current))
        self.current = set(want)

    def on_step_begin(self, args, state, control, **kwargs):
        schedule = self.schedule
        step = state.global_step + 1
        want = schedule.frozen(step)
        if want != self.current:
            self._apply(want)
            self.timeline.append((step, sorted(want)))
        own = schedule.lr_scales(step)  # multiples of the peak lr, replacing the decay
        decay = self._decay(args, state) if own else 1.0
        self._scales = {p: s / decay for n, s in own.items() for p in schedule.units[n].params}

    def _decay(self, args, state) -> float:
        """The decay part of the Trainer's learning rate this step: 1 during warmup, then the
        learning rate over its peak."""
        if state.global_step < args.get_warmup_steps(state.max_steps):
            return 1.0
        group = self.freezer.optimizer.param_groups[0]
        decay = group["lr"] / group.get("initial_lr", args.learning_rate)
        return decay if decay > 0 else 1.0  # at a zero learning rate no update is there to scale

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.schedule.wants_grads:
            self.schedule.observe(state.global_step + 1, unit_grads(self.schedule, model))
        params = self.freezer.params
        self._before_step = {
            n: params[n].detach().clone() for n, s in self._scales.items() if s != 1.0
        }

    @torch.no_grad()
    def on_optimizer_step(self, args, state, control, **kwargs):
        params = self.freezer.params
        for name, old in self._before_step.items():
            new = params[name]
            new.copy_(torch.lerp(old, new, self._scales[name]))  # old + m * (new - old)
        self._before_step = {}

    # Checkpoints: what trainer_state.json keeps of this callback, and resuming from it.

    def state(self) -> dict:
        args = {"unit": self.unit, **self.options}
        if isinstance(self.spec, str):
            args["schedule"] = self.spec
        record = None
        if self.config is not None:
            schedule = self.schedule
            record = dict(
                config=self.config,
                timeline=self.timeline,
                scores=schedule.scores if isinstance(schedule, Geometry) else None,
                intervals=schedule.intervals if isinstance(schedule, AutoFreeze) else [],
            )
        return {"args": args, "attributes": {"checkpoint": record}}

    def _saved(self, state) -> dict | None:
        """This callback's record in the checkpoint being resumed; None when starting afresh."""
        if not state.global_step:
            return None
        record = state.stateful_callbacks.get(type(self).__name__)
        saved = record["attributes"].get("checkpoint") if isinstance(record, dict) else None
        if saved is None:
            raise DeadzoneError(
                f"the checkpoint at step {state.global_step} holds no FreezeCallback state (it "
                "was saved by a run without this callback), so what was frozen is unknown"
            )
        if saved["config"] != self.config:
            raise DeadzoneError(
                f"the checkpoint was saved with FreezeCallback {_options(saved['config'])}; "
                f"this run has {_options(self.config)}"
            )
        return saved

    def _resume(self, saved: dict, step: int) -> None:
        """Replay the schedule up to ``step`` and freeze what the checkpoint had frozen."""
        schedule = self.schedule
        if schedule.wants_grads:
            _check_resumable(schedule, step)
        decisions = {s: norms for s, norms in saved["intervals"]}
        for s in range(1, step + 1):
            frozen = schedule.frozen(s)
            if s in decisions:
                schedule.decide(s, decisions[s])
        self.timeline = [(s, list(names)) for s, names in saved["timeline"]]
        expected = set(self.timeline[-1][1]) if self.timeline else set()
        if frozen != expected:
            raise DeadzoneError(
                f"the schedule does not reproduce the checkpoint: at step {step} it freezes "
                f"{sorted(frozen)}, the checkpoint {sorted(expected)}"
            )
        self._apply(frozen)


def _check_resumable(schedule: Schedule, step: int) -> None:
    """A schedule that watches gradients resumes where nothing it summed is lost: AutoFreeze at
    the end of one of its intervals, or once its set is final (``freeze_by``)."""
    by = schedule.ctx.by_step
    if not isinstance(schedule, AutoFreeze):
        raise DeadzoneError(
            f"{type(schedule).__name__} watches gradients, which a checkpoint does not hold: "
            "it cannot resume"
        )
    if step % schedule.interval and step < by:
        raise DeadzoneError(
            f"autofreeze resumes from the end of one of its {schedule.interval}-step intervals "
            f"or from freeze_by (step {by}) on; at step {step} the gradients it summed since "
            f"step {step - step % schedule.interval} are not in the checkpoint"
        )


def _options(config: dict) -> str:
    return "(" + ", ".join(f"{k}={v!r}" for k, v in sorted(config.items())) + ")"
