"""FreezeCallback inside a real Hugging Face Trainer, and TRL's SFTTrainer, on tiny GPT-2s (CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TRAIN, gpt2
from transformers import Trainer, TrainerCallback, TrainingArguments

from deadzone import plans
from deadzone.errors import DeadzoneError
from deadzone.integrations.transformers import FreezeCallback
from deadzone.training.schedules import Schedule, ScheduleContext, frozen_fraction, model_units


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """Trainer and SFTTrainer set accelerate's process-wide state (mixed precision among it);
    the tests after these set their own."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


STEPS = 6
EXAMPLES = [
    {k: v[i] for k, v in batch.items()} for batch in TRAIN for i in range(len(batch["input_ids"]))
]


class Watch(TrainerCallback):
    """Per optimizer step: the gradients it took, its learning rate, the parameters after it,
    and the optimizer's view of them."""

    def __init__(self) -> None:
        self.grads: dict[int, dict[str, torch.Tensor]] = {}
        self.lr: dict[int, float] = {}
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.in_groups: dict[int, set[int]] = {}
        self.with_state: dict[int, set[int]] = {}

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step + 1
        named = model.named_parameters()
        self.grads[step] = {n: p.grad.clone() for n, p in named if p.grad is not None}
        self.lr[step] = optimizer.param_groups[0]["lr"]

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        self.params[step] = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.in_groups[step] = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.with_state[step] = {id(p) for p in optimizer.state}


def train(callback, tmp_path, model=None, *, save_steps=None, resume=None, optimizer=None):
    """Train ``STEPS`` steps (from checkpoint ``resume``), saving every ``save_steps``."""
    model = model or gpt2()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4,
        learning_rate=3e-3, warmup_steps=1, lr_scheduler_type="cosine",
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or STEPS,
        report_to="none", use_cpu=True, logging_steps=1000, disable_tqdm=True, seed=0,
    )  # fmt: skip
    watch = Watch()
    callbacks = [callback, watch] if callback else [watch]
    trainer = Trainer(
        model=model, args=args, train_dataset=EXAMPLES, callbacks=callbacks,
        optimizers=(optimizer, None),
    )  # fmt: skip
    trainer.train(resume_from_checkpoint=resume and str(tmp_path / resume))
    return model, trainer, watch, start


def assert_frozen_as_scheduled(callback, model, optimizer, watch, start) -> None:
    """Each parameter the schedule froze is bit-identical from its freeze step to the end, has
    no grad and is out of the optimizer's groups and state; every other parameter moved."""
    schedule = callback.schedule
    named = dict(model.named_parameters())
    first_frozen: dict[str, int] = {}
    for step, names in callback.timeline:
        for unit in names:
            for p in schedule.units[unit].params:
                first_frozen.setdefault(p, step)
    assert first_frozen
    for name, step in first_frozen.items():
        param = named[name]
        assert not param.requires_grad and param.grad is None
        assert all(param is not q for g in optimizer.param_groups for q in g["params"])
        assert param not in optimizer.state
        before = watch.params[step - 1][name] if step > 1 else start[name]
        last = max(watch.params)
        assert all(torch.equal(watch.params[s][name], before) for s in range(step, last + 1))
    moved = [n for n in named if n not in first_frozen]
    assert moved and all(not torch.equal(named[n], start[n]) for n in moved)


def test_scheduled_parameters_leave_the_trainers_optimizer_and_stay_put(tmp_path):
    callback = FreezeCallback("geometry:pr", target_fraction=0.5, freeze_by=4)
    model, trainer, watch, start = train(callback, tmp_path)
    frozen = callback.timeline[-1][1]
    assert callback.timeline[-1][0] <= 4 and frozen_fraction(callback.schedule, set(frozen)) >= 0.5
    assert_frozen_as_scheduled(callback, model, trainer.optimizer, watch, start)
    assert (
        len(trainer.optimizer.param_groups) == 2
    )  # the Trainer's groups, which its scheduler steps


def test_freezing_keeps_the_learning_rate_of_the_trainers_scheduler(tmp_path):
    frozen = train(FreezeCallback("geometry:pr", freeze_by=4), tmp_path)[2]
    full = train(FreezeCallback("full"), tmp_path)[2]
    assert frozen.lr == full.lr and len(set(full.lr.values())) == STEPS


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


class PeakRate(Schedule):
    """Nothing frozen; one matrix at the peak learning rate throughout (warmup still applies)."""

    def lr_scales(self, step):
        return {"L1.mlp.c_fc": 1.0}


def schedule_of(cls, model) -> Schedule:
    units, embed = model_units(model)
    return cls(ScheduleContext(units=units, embed=embed, steps=STEPS, freeze_by=STEPS))


def test_lr_scales_are_applied_to_the_update(tmp_path):
    model = gpt2()
    model, trainer, watch, start = train(
        FreezeCallback(schedule_of(HoldStill, model)), tmp_path, model
    )
    name = "transformer.h.1.mlp.c_fc.weight"
    assert not torch.equal(watch.params[1][name], watch.params[2][name])
    assert all(torch.equal(watch.params[s][name], watch.params[2][name]) for s in range(3, 7))
    assert model.get_parameter(name) in trainer.optimizer.state  # it kept its moments


def test_an_own_learning_rate_replaces_the_trainers_decay(tmp_path):
    """With SGD a step moves a parameter by ``-lr * grad``: the scaled matrix by the peak
    learning rate after the warmup step, the others by the Trainer's decayed one. (A large
    peak, for moves well above the float32 rounding of the parameters.)"""
    model, peak = gpt2(), 0.5
    sgd = torch.optim.SGD(model.parameters(), lr=peak)
    watch = train(FreezeCallback(schedule_of(PeakRate, model)), tmp_path, model, optimizer=sgd)[2]
    own, other = "transformer.h.1.mlp.c_fc.weight", "transformer.h.1.mlp.c_proj.weight"
    assert torch.equal(watch.params[1][own], dict(gpt2().named_parameters())[own])  # warmup: 0
    for step in range(2, STEPS + 1):
        for name, lr in ((own, peak), (other, watch.lr[step])):
            moved = watch.params[step][name] - watch.params[step - 1][name]
            expected = -lr * watch.grads[step][name]
            assert (moved - expected).norm() < 1e-3 * expected.norm()  # float32 rounding
    assert watch.lr[STEPS] < peak / 2  # the decay that the scaled matrix did not follow


def test_unknown_schedule_is_refused_when_training_starts(tmp_path):
    with pytest.raises(DeadzoneError, match="unknown schedule"):
        train(FreezeCallback("sometimes"), tmp_path)


# Resuming from checkpoints. The Trainer alone resumes bit-exactly on CPU (data order, RNG,
# optimizer and scheduler state all restored): a resumed run must end exactly as an
# uninterrupted one, with the callback too.

RESUMED = {
    "trainer alone": None,
    "full": dict(schedule="full"),
    "plan": dict(schedule="plan:plan.json", freeze_by=4),  # made for the starting weights
    "geometry": dict(schedule="geometry:pr", freeze_by=4),  # measured on the starting weights
    "freezeout": dict(schedule="freezeout", freeze_by=6),  # own learning rates past the resume
    "lisa": dict(schedule="lisa", unit="block", interval=2, seed=3),  # draws at 1, 3, 5
    "autofreeze": dict(schedule="autofreeze", interval=2, freeze_by=6),  # decides at 4 for 5
}


@pytest.mark.parametrize("options", RESUMED.values(), ids=RESUMED.keys())
def test_a_resumed_run_ends_exactly_as_an_uninterrupted_one(options, tmp_path):
    if options and options["schedule"] == "plan:plan.json":  # two sites, then four by cost
        names = [u.name for u in model_units(gpt2())[0]]
        plan = plans.make_plan(gpt2(), dict.fromkeys(names[-2:], "frozen"))
        (tmp_path / "plan.json").write_text(json.dumps(plan | {"order": names[:4]}))
        options = options | dict(schedule=f"plan:{tmp_path / 'plan.json'}")
    callback = FreezeCallback(**options) if options else None
    model, trainer, watch, _ = train(callback, tmp_path, save_steps=2)
    again = FreezeCallback(**options) if options else None
    resumed_model, resumed_trainer, resumed_watch, _ = train(again, tmp_path, resume="checkpoint-4")
    assert sorted(resumed_watch.params) == [5, 6]
    for step in (5, 6):
        params, resumed = watch.params[step], resumed_watch.params[step]
        assert all(torch.equal(params[n], resumed[n]) for n in params)
    state, resumed_state = trainer.optimizer.state_dict(), resumed_trainer.optimizer.state_dict()
    assert state["param_groups"] == resumed_state["param_groups"]
    assert state["state"].keys() == resumed_state["state"].keys()
    for key, entry in state["state"].items():
        assert all(torch.equal(v, resumed_state["state"][key][k]) for k, v in entry.items())
    if options:
        assert again.timeline == callback.timeline
        assert again.current == callback.current
        named = dict(resumed_model.named_parameters())
        for name, param in model.named_parameters():
            assert param.requires_grad == named[name].requires_grad


def test_resume_is_refused_where_it_could_not_continue_the_run(tmp_path):
    options = dict(schedule="autofreeze", interval=2, freeze_by=6)
    train(FreezeCallback(**options), tmp_path / "a", save_steps=3)
    with pytest.raises(DeadzoneError, match="since step 2 are not in the checkpoint"):
        train(FreezeCallback(**options), tmp_path / "a", resume="checkpoint-3")
    with pytest.raises(DeadzoneError, match=r"saved with .*interval=2.*this run has .*interval=3"):
        changed = options | dict(interval=3)
        train(FreezeCallback(**changed), tmp_path / "a", resume="checkpoint-6")
    train(None, tmp_path / "b", save_steps=3)
    with pytest.raises(DeadzoneError, match="holds no FreezeCallback state"):
        train(FreezeCallback(**options), tmp_path / "b", resume="checkpoint-3")
    args = TrainingArguments(output_dir=str(tmp_path), restore_callback_states_from_checkpoint=True)
    built = FreezeCallback(schedule_of(HoldStill, gpt2()))
    with pytest.raises(DeadzoneError, match="needs a schedule spec"):
        Trainer(model=gpt2(), args=args, train_dataset=EXAMPLES, callbacks=[built])


def test_sft_trainer_freezes_as_scheduled(tmp_path):
    """TRL's SFTTrainer on prompt-completion pairs, with a tokenizer and model built here."""
    import trl  # a dev dependency: the test must run, not skip
    from datasets import Dataset

    from deadzone.models.presets import get_preset
    from deadzone.models.pretraining import build_model, train_tokenizer

    pairs = [(f"def f{i}(x):\n", f"    return x * {i} + {i * i}\n") for i in range(32)]
    tokenizer = train_tokenizer([p + c for p, c in pairs], 300)
    torch.manual_seed(0)
    model = build_model(get_preset("micro"), tokenizer)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = Dataset.from_list([{"prompt": p, "completion": c} for p, c in pairs])
    args = trl.SFTConfig(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=4,
        learning_rate=3e-3, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
        logging_steps=1000, disable_tqdm=True, max_length=32,
    )  # fmt: skip
    callback, watch = FreezeCallback("freezeout", freeze_by=4), Watch()
    trainer = trl.SFTTrainer(
        model=model, args=args, train_dataset=data, processing_class=tokenizer,
        callbacks=[callback, watch],
    )  # fmt: skip
    trainer.train()
    assert callback.timeline[-1][0] <= 4
    assert_frozen_as_scheduled(callback, model, trainer.optimizer, watch, start)
