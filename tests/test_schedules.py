"""Schedules on a 4-block GPT-2 in real SFT runs: target reached by freeze_by, seeded random,
frozen units bit-identical and stateless, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_train import EVAL, SEQ, TRAIN, VOCAB
from transformers import GPT2Config, GPT2LMHeadModel

from deadzone import plans
from deadzone.errors import DeadzoneError
from deadzone.schedules import (
    EMBED,
    ScheduleContext,
    ScheduleHook,
    frozen_fraction,
    make_schedule,
    model_units,
    schedule_params,
)
from deadzone.train import Hook, SFTConfig, SFTLoop

STEPS, BY = 8, 6
CONFIG = SFTConfig(steps=STEPS, lr=3e-3, eval_every=STEPS, warmup_steps=1, seed=0)


def gpt2(n_layer: int = 4) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=SEQ)
    return GPT2LMHeadModel(config)


def context(model, unit="matrix", **kwargs) -> ScheduleContext:
    units, embed = model_units(model, unit)
    base = dict(units=units, embed=embed, steps=STEPS, freeze_by=BY, model=model)
    return ScheduleContext(**(base | kwargs))


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    """A scan's plan.json for gpt2(): two negligible sites, then the rest by cost (``order``)."""
    names = [u.name for u in model_units(gpt2())[0]]
    path = tmp_path_factory.mktemp("plan") / "plan.json"
    order = names[::-1]
    plan = plans.make_plan(gpt2(), dict.fromkeys(order[:2], "frozen"))
    path.write_text(json.dumps(plan | {"order": order[2:]}))
    return str(path)


class Snapshots(Hook):
    """Parameters after every step, and which ones hold optimizer state."""

    def __init__(self) -> None:
        self.params: dict[int, dict[str, torch.Tensor]] = {}
        self.with_state: dict[int, set[str]] = {}

    def on_step_end(self, loop, step, loss):
        named = dict(loop.module.named_parameters())
        self.params[step] = {n: p.detach().clone() for n, p in named.items()}
        self.with_state[step] = {n for n, p in named.items() if p in loop.optimizer.state}


def run(spec: str, unit: str = "matrix", **kwargs):
    model = gpt2()
    schedule = make_schedule(spec, context(model, unit, **kwargs))
    hook, snaps = ScheduleHook(schedule), Snapshots()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    loop = SFTLoop(model, TRAIN, EVAL, CONFIG, show_progress=False, hooks=[hook, snaps])
    result = loop.run()
    assert result.status == "ok", result.error
    return schedule, hook, snaps, start, result


def frozen_at(hook: ScheduleHook, step: int) -> set[str]:
    current: set[str] = set()
    for t, names in hook.timeline:
        if t <= step:
            current = set(names)
    return current


SPECS = ["geometry:pr", "geometry:pc1", "freezeout", "autofreeze", "lisa", "random"]


@pytest.mark.parametrize("unit", ["matrix", "block"])
@pytest.mark.parametrize("spec", [*SPECS, "plan"])
def test_each_schedule_freezes_the_target_fraction_by_freeze_by(spec, unit, plan_file):
    spec = f"plan:{plan_file}" if spec == "plan" else spec
    schedule, hook, snaps, start, result = run(spec, unit)
    units = [u for u in schedule.units.values() if u.name != EMBED]
    biggest = max(u.matrix_params for u in units) / schedule.ctx.matrix_total
    at_by = frozen_at(hook, BY)
    assert 0.5 <= frozen_fraction(schedule, at_by) < 0.5 + biggest + 1e-9, (spec, at_by)
    # The trainable count of the run record follows the schedule.
    total = sum(p.numel() for p in start.values())
    frozen_params = sum(start[p].numel() for p in schedule_params(schedule, at_by))
    assert result.curve[BY]["trainable_params"] == total - frozen_params


@pytest.mark.parametrize("spec", ["geometry:pr", "freezeout", "autofreeze", "random", "plan"])
def test_frozen_at_t_stays_bit_identical_without_state_while_the_rest_moves(spec, plan_file):
    spec = f"plan:{plan_file}" if spec == "plan" else spec
    schedule, hook, snaps, start, result = run(spec)
    last = snaps.params[STEPS]
    frozen_any = set()
    for t, names in hook.timeline:
        for name in schedule_params(schedule, set(names)) - frozen_any:
            before = snaps.params[t - 1][name] if t > 1 else start[name]
            for step in range(t, STEPS + 1):
                assert torch.equal(snaps.params[step][name], before), (name, t, step)
                assert name not in snaps.with_state[step], (name, step)
            frozen_any.add(name)
    assert frozen_any
    moving = [n for n in last if n not in frozen_any]
    assert moving and all(not torch.equal(last[n], start[n]) for n in moving)


def test_lisa_redraws_blocks_unfreezes_and_keeps_embeddings_and_head_training():
    schedule, hook, snaps, start, result = run("lisa", interval=2)
    assert schedule.gamma == 2
    sets = [frozenset(names) for _, names in hook.timeline]
    assert len(sets) >= 2 and len(set(sets)) >= 2  # re-drawn, so some block came back
    assert {t for t, _ in hook.timeline} <= {1, 3, 5, 7}
    for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"):
        assert all(not torch.equal(snaps.params[s][name], start[name]) for s in (1, STEPS))


def test_random_is_seeded():
    def times(seed):
        return make_schedule("random", context(gpt2(), seed=seed)).times

    assert times(0) == times(0)
    assert times(0) != times(1)


def test_freezeout_anneals_each_unit_to_zero_then_freezes_front_to_back():
    schedule = make_schedule("freezeout", context(gpt2()))
    order = [u.name for u in schedule.ctx.units]
    times = schedule.times
    chosen = [n for n in order if n in times]
    assert chosen == order[: len(chosen)]  # a front prefix
    assert [times[n] for n in chosen] == sorted(times[n] for n in chosen)
    assert times[chosen[-1]] == BY and times[EMBED] == times[chosen[0]]
    first = chosen[0]
    scales = [schedule.lr_scales(s).get(first) for s in range(1, times[first] + 1)]
    assert scales[0] == pytest.approx(STEPS / times[first])  # scale_lr
    assert all(a > b for a, b in zip(scales[:-2], scales[1:-1], strict=True))
    assert scales[-1] is None and first in schedule.frozen(times[first])


def test_a_schedule_that_would_freeze_every_parameter_is_refused():
    model = gpt2(n_layer=2)
    for name in ("transformer.wte.weight", "transformer.wpe.weight"):
        model.get_parameter(name).requires_grad_(False)
    for p in model.transformer.ln_f.parameters():
        p.requires_grad_(False)
    ctx = context(model, "block", target_fraction=0.9)
    with pytest.raises(DeadzoneError, match="would freeze every parameter"):
        make_schedule("random", ctx)


@pytest.mark.parametrize(
    "spec, kwargs, match",
    [
        ("nope", {}, "unknown schedule 'nope'"),
        ("geometry:norm", {}, "geometry needs a metric"),
        ("plan:/no/such/plan.json", {}, "no plan file /no/such/plan.json"),
        ("random", {"target_fraction": 1.0}, r"target_fraction must be in \(0, 1\)"),
        ("random", {"target_fraction": 0}, r"target_fraction must be in \(0, 1\)"),
        ("random", {"freeze_by": STEPS + 1}, "beyond the 8 steps"),
        ("random", {"freeze_by": 1.5}, "freeze_by as a fraction"),
    ],
)
def test_bad_input_is_one_clear_error(spec, kwargs, match):
    with pytest.raises(DeadzoneError, match=match):
        make_schedule(spec, context(gpt2(), **kwargs))


def test_plan_for_another_model_is_refused(tmp_path, plan_file):
    plan = json.loads(Path(plan_file).read_text())
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    with pytest.raises(DeadzoneError, match="made for another model"):
        make_schedule(f"plan:{path}", context(gpt2(n_layer=4).apply(_perturb)))
    entry = plan["sites"][0] | {"param_name": "model.layers.9.self_attn.o_proj.weight"}
    path.write_text(json.dumps(plan | {"sites": [entry]}))
    with pytest.raises(DeadzoneError, match="which this model does not have"):
        make_schedule(f"plan:{path}", context(gpt2()))


def _perturb(module: torch.nn.Module) -> None:
    """Other weights, same architecture."""
    for p in module.parameters(recurse=False):
        p.data.add_(1.0)


def test_freeze_by_fraction_and_plan_negligible_from_step_one(plan_file):
    schedule = make_schedule(f"plan:{plan_file}", context(gpt2(), freeze_by=0.5))
    assert schedule.ctx.by_step == 4
    first_two = [u.name for u in schedule.order()[:2]]
    assert all(schedule.times[n] == 1 for n in first_two)
    assert max(schedule.times.values()) == 4


def test_geometry_snr_freezes_the_matrices_of_lowest_spectrum_snr_first():
    from deadzone import sites, spectral

    model = gpt2()
    schedule = make_schedule("geometry:snr", context(model))
    snr = {
        s.name: spectral.snr(sites.site_matrix(model, s).double())
        for s in sites.find_sites(model)
        if s.layer is not None
    }
    order = [u.name for u in schedule.order()]
    assert sorted(order) == sorted(snr)
    assert [snr[n] for n in order] == pytest.approx(sorted(snr.values()), rel=1e-6)
