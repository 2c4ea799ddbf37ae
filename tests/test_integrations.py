"""FreezeCallback inside a real Hugging Face Trainer on a tiny GPT-2 (CPU, no saving)."""

from __future__ import annotations

import pytest
import torch
from test_schedules import gpt2
from test_train import TRAIN
from transformers import Trainer, TrainerCallback, TrainingArguments

from deadzone.errors import DeadzoneError
from deadzone.integrations.transformers import FreezeCallback
from deadzone.schedules import Schedule, ScheduleContext, frozen_fraction, model_units

STEPS = 6
EXAMPLES = [
    {k: v[i] for k, v in batch.items()} for batch in TRAIN for i in range(len(batch["input_ids"]))
]


class Watch(TrainerCallback):
    """Parameters after every optimizer step, and the optimizer's view of them."""

    def __init__(self) -> None:
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.in_groups: dict[int, set[int]] = {}
        self.with_state: dict[int, set[int]] = {}

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        self.params[step] = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.in_groups[step] = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.with_state[step] = {id(p) for p in optimizer.state}


def train(callback: FreezeCallback, tmp_path, model=None):
    model = model or gpt2()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4,
        learning_rate=3e-3, warmup_steps=1, lr_scheduler_type="cosine", save_strategy="no",
        report_to="none", use_cpu=True, logging_steps=1000, disable_tqdm=True, seed=0,
    )  # fmt: skip
    watch = Watch()
    trainer = Trainer(model=model, args=args, train_dataset=EXAMPLES, callbacks=[callback, watch])
    trainer.train()
    return model, trainer, watch, start


def test_scheduled_parameters_leave_the_trainers_optimizer_and_stay_put(tmp_path):
    callback = FreezeCallback("geometry:pr", target_fraction=0.5, freeze_by=4)
    model, trainer, watch, start = train(callback, tmp_path)
    schedule = callback.schedule
    frozen = callback.timeline[-1][1]
    assert callback.timeline[-1][0] <= 4 and frozen_fraction(schedule, set(frozen)) >= 0.5
    named = dict(model.named_parameters())
    first_frozen: dict[str, int] = {}
    for step, names in callback.timeline:
        for unit in names:
            for p in schedule.units[unit].params:
                first_frozen.setdefault(p, step)
    optimizer = trainer.optimizer
    for name, step in first_frozen.items():
        param = named[name]
        assert not param.requires_grad and param.grad is None
        assert all(param is not q for g in optimizer.param_groups for q in g["params"])
        assert param not in optimizer.state
        before = watch.params[step - 1][name] if step > 1 else start[name]
        assert all(torch.equal(watch.params[s][name], before) for s in range(step, STEPS + 1))
    moved = [n for n in named if n not in first_frozen]
    assert moved and all(not torch.equal(named[n], start[n]) for n in moved)
    assert len(optimizer.param_groups) == 2  # the Trainer's groups, which its scheduler steps


def test_lisa_in_trainer_unfreezes_blocks_with_fresh_state(tmp_path):
    callback = FreezeCallback("lisa", unit="block", interval=2, seed=3)
    model, trainer, watch, start = train(callback, tmp_path)
    sets = [frozenset(n) for _, n in callback.timeline]
    assert len(set(sets)) >= 2
    named = dict(model.named_parameters())
    timeline = callback.timeline
    unfrozen_at = {}  # unit -> step it last came back (frozen in one draw, active in the next)
    for (_, before), (step, after) in zip(timeline, timeline[1:], strict=False):
        for unit in set(before) - set(after):
            unfrozen_at[unit] = step
    for unit in set(timeline[-1][1]):
        unfrozen_at.pop(unit, None)
    assert unfrozen_at
    for unit, step in unfrozen_at.items():
        for name in callback.schedule.units[unit].params:
            assert int(trainer.optimizer.state[named[name]]["step"]) == STEPS - step + 1


class HoldStill(Schedule):
    """Nothing frozen; one matrix's learning rate scaled to zero from step 3."""

    def lr_scales(self, step):
        return {"L1.mlp.c_fc": 0.0} if step >= 3 else {}


def test_lr_scales_are_applied_to_the_update(tmp_path):
    model = gpt2()
    units, embed = model_units(model)
    schedule = HoldStill(ScheduleContext(units=units, embed=embed, steps=STEPS, freeze_by=STEPS))
    model, trainer, watch, start = train(FreezeCallback(schedule), tmp_path, model)
    name = "transformer.h.1.mlp.c_fc.weight"
    assert not torch.equal(watch.params[1][name], watch.params[2][name])
    assert all(torch.equal(watch.params[s][name], watch.params[2][name]) for s in range(3, 7))
    assert model.get_parameter(name) in trainer.optimizer.state  # it kept its moments


def test_unknown_schedule_is_refused_when_training_starts(tmp_path):
    with pytest.raises(DeadzoneError, match="unknown schedule"):
        train(FreezeCallback("sometimes"), tmp_path)
