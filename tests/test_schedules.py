"""Schedules on tiny GPT-2s: the target reached by freeze_by (over targets and block counts),
the random control on the ordered schedules' ramp, seeded random, frozen units bit-identical and
stateless in real SFT runs, AutoFreeze's rule on synthetic gradients, FreezeOut's own learning
rates, refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import EVAL, TRAIN, gpt2

from deadzone import plans
from deadzone.errors import DeadzoneError
from deadzone.training.schedules import (
    EMBED,
    ScheduleContext,
    ScheduleHook,
    Unit,
    frozen_fraction,
    make_schedule,
    model_units,
    schedule_params,
)
from deadzone.training.train import Hook, SFTConfig, SFTLoop, lr_factor

STEPS, BY = 8, 6
CONFIG = SFTConfig(steps=STEPS, lr=3e-3, eval_every=STEPS, warmup_steps=1, seed=0)


def context(model, unit="matrix", **kwargs) -> ScheduleContext:
    units, embed = model_units(model, unit)
    base = dict(units=units, embed=embed, steps=STEPS, freeze_by=BY, model=model)
    return ScheduleContext(**(base | kwargs))


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory):
    """A scan's plan.json for gpt2(): two negligible sites, then the rest by cost (``order``)."""
    return plan_for(gpt2(), tmp_path_factory.mktemp("plan") / "plan.json")


def plan_for(model, path: Path) -> str:
    """A plan.json for ``model``: its last two sites negligible, the rest by cost (``order``)."""
    names = [u.name for u in model_units(model)[0]][::-1]
    plan = plans.make_plan(model, dict.fromkeys(names[:2], "frozen"))
    path.write_text(json.dumps(plan | {"order": names[2:]}))
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
        ("random:x", {}, "schedule random takes no argument; got 'random:x'"),
        ("full:x", {}, "schedule full takes no argument"),
        ("freezeout:", {}, "schedule freezeout takes no argument"),
        ("lisa:4", {}, "schedule lisa takes no argument"),
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
    from deadzone.geometry import spectral
    from deadzone.models import sites

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


# --- the target, over targets and block counts ------------------------------------------------

TARGETS = (0.1, 0.3, 0.55, 0.75)


def lisa_refuses(blocks: int, target: float) -> str | None:
    """What LISA says of ``target`` on ``blocks`` blocks of one size, if it refuses."""
    if blocks < 2:
        return "lisa needs at least 2 blocks"
    if math.ceil(target * blocks - 1e-9) >= blocks:
        return "lisa keeps a block training"
    return None


@pytest.mark.parametrize("unit", ["matrix", "block"])
@pytest.mark.parametrize("blocks", [1, 3, 8])
@pytest.mark.parametrize("spec", [*SPECS, "plan"])
def test_every_schedule_freezes_at_least_the_target_and_no_unit_more(spec, blocks, unit, tmp_path):
    """By ``freeze_by`` the share frozen is at least the target, and less than the target plus
    one unit (the ordered schedules' shortest prefix); LISA's is the fewest blocks reaching it,
    and a setting it cannot honour is refused."""
    model = gpt2(blocks)
    spec = f"plan:{plan_for(model, tmp_path / 'plan.json')}" if spec == "plan" else spec
    for target in TARGETS:
        ctx = context(model, unit, target_fraction=target)
        refusal = lisa_refuses(blocks, target) if spec == "lisa" else None
        if refusal:
            with pytest.raises(DeadzoneError, match=refusal):
                make_schedule(spec, ctx)
            continue
        schedule = make_schedule(spec, ctx)
        frozen = [schedule.frozen(step) for step in range(1, BY + 1)][-1]
        share = frozen_fraction(schedule, frozen)
        biggest = max(u.matrix_params for u in ctx.units) / ctx.matrix_total
        if spec == "lisa":  # draws whole blocks: the fewest reaching the target
            assert share == pytest.approx(math.ceil(target * blocks - 1e-9) / blocks)
            biggest = 1 / blocks
        assert target - 1e-9 <= share < target + biggest, (target, sorted(frozen))


def test_lisa_freezes_the_fewest_blocks_reaching_the_target():
    for blocks, target, frozen in [(8, 0.3, 3), (8, 0.55, 5), (4, 0.5, 2), (2, 0.1, 1)]:
        schedule = make_schedule("lisa", context(gpt2(blocks), target_fraction=target))
        assert blocks - schedule.gamma == frozen, (blocks, target)
    with pytest.raises(DeadzoneError, match="lisa needs at least 2 blocks to draw from"):
        make_schedule("lisa", context(gpt2(1)))
    with pytest.raises(DeadzoneError, match="with 4 blocks it freezes at most 75%"):
        make_schedule("lisa", context(gpt2(4), target_fraction=0.8))


# --- the random control -----------------------------------------------------------------------


def shares(schedule, steps: int) -> list[float]:
    return [frozen_fraction(schedule, schedule.frozen(s)) for s in range(1, steps + 1)]


@pytest.mark.parametrize("unit", ["matrix", "block"])
@pytest.mark.parametrize("target", [0.3, 0.5, 0.75])
def test_random_freezes_the_share_geometry_and_plan_do_at_every_step(unit, target, tmp_path):
    """Within one unit of ``geometry`` at every step; ``plan`` is ahead of it while the ramp
    is below the share of the plan's sites (frozen at step 1), within one unit after."""
    steps, by = 20, 16
    model = gpt2(4)
    plan_file = plan_for(model, tmp_path / "plan.json")

    def build(spec: str, seed: int = 0):
        ctx = context(model, unit, target_fraction=target, steps=steps, freeze_by=by, seed=seed)
        return make_schedule(spec, ctx)

    control = build("random")
    units = control.ctx.units
    one = max(u.matrix_params for u in units) / control.ctx.matrix_total + 1e-9
    random = shares(control, steps)
    for spec in ("geometry:pr", "geometry:pc1", "geometry:stable_rank"):
        for seed in (0, 1, 2):
            theirs, mine = shares(build(spec), steps), shares(build("random", seed), steps)
            assert all(abs(a - b) < one for a, b in zip(theirs, mine, strict=True)), spec
    plan = build(f"plan:{plan_file}")
    at_step_one = frozen_fraction(plan, {n for n, t in plan.times.items() if t == 1})
    for step, (theirs, mine) in enumerate(zip(shares(plan, steps), random, strict=True), 1):
        if target * step / by >= at_step_one:
            assert abs(theirs - mine) < one, step
        else:
            assert theirs >= mine, step


# --- AutoFreeze: the reference's rule on synthetic gradients -----------------------------------


def synthetic(count: int = 4, interval: int = 2, by: int = 100, target: float = 0.75):
    """AutoFreeze over ``count`` units of one 3-value parameter each (no model)."""
    units = [Unit(f"u{i}", (f"p{i}",), 3, 3, i) for i in range(count)]
    ctx = ScheduleContext(
        units=units, steps=by, target_fraction=target, freeze_by=by, interval=interval
    )
    return make_schedule("autofreeze", ctx)


def feed(schedule, first_step: int, per_step: list[list[float]]) -> None:
    """Step ``first_step + k`` sees gradient ``per_step[k][i] * [1, 1, 1]`` for unit ``i``."""
    for k, values in enumerate(per_step):
        step = first_step + k
        schedule.frozen(step)
        schedule.observe(step, {f"p{i}": torch.full((3,), v) for i, v in enumerate(values)})


def test_autofreeze_compares_the_norm_of_the_gradient_summed_over_the_interval():
    schedule = synthetic()
    feed(schedule, 1, [[1, 1, 1, 1], [1, 1, 1, 1]])  # every unit's sum: 2, L1 norm 6
    assert schedule.intervals == [(2, {"u0": 6.0, "u1": 6.0, "u2": 6.0, "u3": 6.0})]
    # The second interval: u0 and u2 barely change; u1's steps cancel in part (its sum is 1:
    # a change of 0.5, where the per-step norms, 2 as before, would show none); u3 doubles.
    feed(schedule, 3, [[1, 1.5, 1, 3], [1.02, -0.5, 1.04, 1]])
    assert schedule.intervals[-1][1] == pytest.approx({"u0": 6.06, "u1": 3, "u2": 6.12, "u3": 12})
    # Changes 0.01, 0.5, 0.02, 1: the median is 0.26; u1 is the front-most unit at or above it,
    # so u0 freezes (from the next step) and u2, below it but behind u1, does not.
    assert schedule.frozen(4) == set() and schedule.frozen(5) == {"u0"}
    assert not {"p0"} & set(schedule.sums)


def test_autofreeze_freezes_nothing_by_its_rule_while_every_change_is_alike():
    schedule = synthetic()
    for k in range(4):  # every unit's summed gradient doubles from interval to interval
        feed(schedule, 2 * k + 1, [[2**k] * 4, [2**k] * 4])
    assert len(schedule.intervals) == 4 and schedule.frozen(9) == set()
    assert schedule.frozen(100) == {"u0", "u1", "u2"}  # freeze_by: the target set
    schedule.observe(100, {"p3": torch.ones(3)})
    assert schedule.sums == {}  # nothing left to decide: the buffers are gone


def test_autofreeze_decides_from_recorded_norms_as_from_gradients():
    live, replay = synthetic(), synthetic()
    feed(live, 1, [[1, 1, 1, 1], [1, 1, 1, 1]])
    feed(live, 3, [[1, 1.5, 1, 3], [1.02, -0.5, 1.04, 1]])
    for step, norms in live.intervals:
        replay.decide(step, norms)
    assert replay.freeze_step == live.freeze_step == {"u0": 5}


# --- FreezeOut's learning rates ---------------------------------------------------------------


def test_freezeout_units_follow_their_own_cosine_in_place_of_the_loops_decay():
    config = SFTConfig(steps=12, lr=3e-3, eval_every=12, warmup_steps=2, seed=0)
    model = gpt2()
    schedule = make_schedule("freezeout", context(model, steps=12, freeze_by=10))
    first, last = "L0.attn.c_attn", "L3.mlp.c_proj"  # the first frozen, and one never frozen
    assert first in schedule.times and last not in schedule.times
    named = dict(model.named_parameters())
    seen: dict[str, list[float]] = {first: [], last: []}

    class LearningRates(Hook):
        def on_after_backward(self, loop, step):
            for unit in seen:
                param = named[schedule.units[unit].params[0]]
                groups = loop.optimizer.param_groups
                lrs = [g["lr"] for g in groups if any(p is param for p in g["params"])]
                seen[unit].append(lrs[0] if lrs else None)

    hooks = [ScheduleHook(schedule), LearningRates()]
    assert (
        SFTLoop(model, TRAIN, EVAL, config, show_progress=False, hooks=hooks).run().status == "ok"
    )
    t = schedule.times[first]
    for step in range(1, 13):
        warmup = min(1.0, step / 3)  # (step) / (warmup + 1) during the 2 warmup steps
        if step < t:
            own = 0.5 * (1 + math.cos(math.pi * (step - 1) / t)) * 12 / t
            assert seen[first][step - 1] == pytest.approx(config.lr * warmup * own, rel=1e-9)
        else:
            assert seen[first][step - 1] is None  # frozen: in no group
        assert seen[last][step - 1] == pytest.approx(config.lr * lr_factor(step - 1, config))


# --- geometry scores, and schedules that take no argument ---------------------------------------


def test_a_blocks_geometry_score_is_the_parameter_weighted_mean_of_its_matrices():
    from deadzone.models import sites

    def stable_rank(site) -> float:
        sigma = torch.linalg.svdvals(sites.site_matrix(model, site).double())
        return float((sigma**2).sum() / sigma[0] ** 2)

    model = gpt2()
    schedule = make_schedule("geometry:stable_rank", context(model, "block"))
    found = [s for s in sites.find_sites(model) if s.layer is not None]
    for layer in range(4):
        mine = [s for s in found if s.layer == layer]
        ranks = [stable_rank(s) for s in mine]
        expected = sum(s.params * r for s, r in zip(mine, ranks, strict=True)) / sum(
            s.params for s in mine
        )
        assert schedule.scores[f"L{layer}"] == pytest.approx(expected, rel=1e-5)
