"""The ``plan`` experiment: the frozen set that saves most per step at a cost shown negligible.

1. ``full`` on every seed: the baselines, and the fine-tuning gain the costs are shares of.
2. The deepest negligible frozen prefix, by bisection over depth
   (:func:`deadzone.experiments.search.deepest`): each depth ``d`` is the plan "embeddings and
   blocks ``0 .. d-1`` frozen whole", judged against ``full`` on sequential seeds (2 first, more
   while undetermined, up to ``--seeds``: :func:`deadzone.experiments.search.sequential`). A
   deeper prefix is taken to cost at least as much (the bisection's assumption; the depths
   judged are recorded).
3. The prefix grown by sites above it, cheapest cheap score first (``grad_norm`` at step 0,
   :mod:`deadzone.geometry.scores`: a prior that orders, never a verdict), for at most
   ``--grow`` joint checks: half of the remaining sites at once, halved on a rejection.
4. The set accepted last is the certified plan: ``plan.json`` (with its savings model, its
   joint interval and the horizon it was judged at) and the files other trainers read
   (:func:`deadzone.plans.write_plan`), which ``freeze --schedule plan:FILE``,
   :func:`deadzone.plans.apply_plan` and the ``FreezeCallback`` apply from step 1. ``report.md``
   and ``report.html`` are then made from ``results.json`` (:mod:`deadzone.report.plan`).
5. The long horizon: ``full`` and the plan again at ``--horizon`` times the steps, on the seeds
   the plan was judged on; its cost there is recorded beside the cost it was found with, and a
   plan that is no longer negligible there says so (in ``results.json`` and the plan file).

Every run applies its candidate plan whole (:attr:`RunSpec.freeze_plan`), so the judged set is
exactly the set certified, the prefix runs without autograd, and the runs' tokens/s measure the
saving. Runs are keyed by what they freeze and their seed: a rerun into the same directory asks
the same questions and finds their answers recorded. Each look at a judgement is at the 95%
level; the looks of one search are not adjusted for each other.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import logging
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from deadzone import plans
from deadzone.experiments import stats
from deadzone.experiments.configs import BASELINE, PlanConfig
from deadzone.experiments.execute import Executor, execute
from deadzone.experiments.runs import RunSpec
from deadzone.experiments.search import ACCEPTED, Asker, Judgement, deepest, sequential
from deadzone.experiments.skeleton import Design, Prepared, Session, run_experiment
from deadzone.training.tracking import Tracking

__all__ = ["PlanConfig", "find_plan"]

log = logging.getLogger(__name__)

EXPERIMENT = "plan"
START_SEEDS = 2
PRIOR = "grad_norm"  # orders the growth: lower first
PREFIX = "prefix:"  # the token of a candidate naming its prefix depth


# --- candidates: a frozen prefix and sites above it, as one frozenset ---------------------------


def candidate(depth: int, sites=()) -> frozenset[str]:
    return frozenset([f"{PREFIX}{depth}", *sites]) if depth else frozenset(sites)


def split(cand: frozenset[str]) -> tuple[int, list[str]]:
    depth = [int(t[len(PREFIX) :]) for t in cand if t.startswith(PREFIX)]
    return (depth[0] if depth else 0), sorted(t for t in cand if not t.startswith(PREFIX))


def run_key(cand: frozenset[str] | None, seed: int, horizon: int = 1) -> str:
    """``full/seedN``, ``prefix3/seedN``, ``prefix3+5xDIGEST/seedN``; ``hH/`` first at a
    longer horizon."""
    head = f"h{horizon}/" if horizon > 1 else ""
    if cand is None:
        return f"{head}{BASELINE}/seed{seed}"
    depth, sites = split(cand)
    name = f"prefix{depth}"
    if sites:
        digest = hashlib.sha256("\0".join(sites).encode()).hexdigest()[:12]
        name += f"+{len(sites)}x{digest}"
    return f"{head}{name}/seed{seed}"


def candidate_plan(model, cand: frozenset[str], config: PlanConfig, **extra) -> dict:
    depth, sites = split(cand)
    return plans.make_plan(
        model,
        dict.fromkeys(sites, "frozen"),
        prefix_depth=depth,
        untie_head=config.untie_head and depth > 0,
        source=config.model,
        **extra,
    )


# --- the experiment ------------------------------------------------------------------------------


def find_plan(
    config: PlanConfig,
    out: str | Path | None = None,
    *,
    executor: Executor | None = None,
    tracking: Tracking | None = None,
    show_progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> dict:
    """Run (or resume) the search into ``out`` (default ``config.out``); return the
    ``results.json`` document, whose ``summary`` is the search and its certified plan."""
    # every experiment's entry has this shape: its own design and check, one skeleton
    return run_experiment(
        config,
        out,
        partial(design, config),
        check=partial(check, config),
        executor=executor,
        tracking=tracking,
        show_progress=show_progress,
        on_record=on_record,
    )


def check(config: PlanConfig, model, sites) -> int:
    """The model's block count, once it is known to take a frozen prefix (and an untied head,
    if asked): a one-line error before any data is built."""
    plans.make_plan(model, {}, prefix_depth=1, untie_head=config.untie_head)
    return len(plans.prefix.blocks(model))


@dataclass
class State:
    """What the driver found, read by the summary: filled as the search goes."""

    summary: dict = field(default_factory=dict)


def design(config: PlanConfig, prepared: Prepared) -> Design:
    state = State()
    return Design(
        identity=prepared.identity(EXPERIMENT, untie_head=config.untie_head),
        runset={"seeds": list(range(config.seeds))},
        summarize=lambda runs: state.summary or None,
        header={"horizon": config.horizon, "grow": config.grow},
        drive=partial(_drive, config, state),
    )


@dataclass
class Search:
    """The runs of a search and the judgements made of them."""

    config: PlanConfig
    session: Session
    scale: dict = field(default_factory=dict)

    @property
    def model(self):
        return self.session.prepared.model

    def run(self, specs: list[RunSpec], horizon: int = 1) -> dict[str, dict]:
        prepared, steps = self.session.prepared, self.config.sft.steps * horizon
        tasks = [
            replace(prepared.task(sp), sft=replace(self.config.sft, steps=steps)) for sp in specs
        ]
        s = self.session
        execute(tasks, s.results, s.executor, on_record=s.on_record, show_progress=s.show_progress)
        return s.results.runs

    def specs(self, cand: frozenset[str] | None, seeds, horizon: int = 1) -> list[RunSpec]:
        plan = None if cand is None else candidate_plan(self.model, cand, self.config)
        return [
            RunSpec(
                run_key(cand, s, horizon),
                {},
                s,
                labels={"arm": run_key(cand, 0)[:-6], "seed": s, "horizon": horizon},
                freeze_plan=plan,
            )  # fmt: skip
            for s in seeds
        ]

    def costs(self, cand: frozenset[str], seeds: list[int], horizon: int = 1) -> tuple:
        """Per-seed costs of ``cand`` against ``full`` in the unit of the horizon's scale (None
        if a run failed), and that scale."""
        arms = self.specs(None, seeds, horizon) + self.specs(cand, seeds, horizon)
        runs = self.run(arms, horizon)
        scale = self.scale if horizon == 1 else _scale(runs, seeds, self.config, horizon)
        out = []
        for s in seeds:
            r, f = runs[run_key(cand, s, horizon)], runs[run_key(None, s, horizon)]
            if r.get("status") != "ok":
                return None, scale
            nats = r["final_eval_loss"] - f["final_eval_loss"]
            out.append(nats / scale["gains"][str(s)] if scale["unit"] != "nats" else nats)
        return out, scale

    def judge(self, cand: frozenset[str], seeds: int, horizon: int = 1) -> Judgement:
        if not cand:
            return Judgement("negligible", 0.0, (0.0, 0.0))  # nothing frozen costs nothing
        costs, scale = self.costs(cand, list(range(seeds)), horizon)
        if costs is None:
            return Judgement("costly")
        margin = scale["margin_used"]
        mean, sd = stats.mean_sd(costs)
        interval = stats.t_interval(costs)
        word = stats.verdict(interval, margin)
        needed = stats.seeds_needed(mean, sd, margin) if word == "undetermined" else None
        return Judgement(word, mean, interval, needed)


def _scale(runs: dict[str, dict], seeds, config: PlanConfig, horizon: int = 1) -> dict:
    """The unit the costs are judged in: a share of each seed's fine-tuning gain if the gain is
    clearly positive, else nats; refused if a baseline failed."""
    full = {s: runs[run_key(None, s, horizon)] for s in seeds}
    return stats.gain_scale(full, config.margin, config.margin_nats)


# --- the driver ---------------------------------------------------------------------------------


def _drive(config: PlanConfig, state: State, session: Session) -> None:
    search = Search(config, session)
    seeds = list(range(config.seeds))
    say = log.info if session.main else (lambda *a: None)
    say("plan: %d baselines of %d steps", len(seeds), config.sft.steps)
    runs = search.run(search.specs(None, seeds))
    search.scale = _scale(runs, seeds, config)
    ask, steps = Asker(search.judge), []

    def look(cand: frozenset[str], phase: str) -> tuple[Judgement, int]:
        j, n = sequential(ask, cand, START_SEEDS, config.seeds, steps, phase)
        depth, sites = split(cand)
        steps.append({"phase": phase, "depth": depth, "sites": sites, "seeds": n, **j.as_dict(),
                      "action": "accepted" if j.verdict in ACCEPTED else "rejected"})  # fmt: skip
        say("plan: %s %s: %s", phase, run_key(cand, n)[:-6], j.verdict)
        return j, n

    depth, _ = deepest(lambda d: look(candidate(d), "prefix")[0].verdict in ACCEPTED,
                       session.prepared.chosen - 1)  # fmt: skip
    best = candidate(depth)
    best = _grow(config, search, best, look)
    found = _found(search, ask, best)
    long = _long_horizon(config, search, best, found) if config.horizon > 1 and best else None
    state.summary = _summary(config, search, best, found, long, steps)
    session.results.save()
    if session.main:
        _write(config, search, best, state.summary)


def _grow(config: PlanConfig, search: Search, best: frozenset[str], look) -> frozenset[str]:
    """Sites above the prefix, lowest prior first, added half the rest at a time (halved on a
    rejection), for at most ``config.grow`` looks."""
    depth, _ = split(best)
    pool = [
        n for n in _by_prior(search) if _layer(search, n) is not None and _layer(search, n) >= depth
    ]
    chunk = max(1, len(pool) // 2)
    for _ in range(config.grow):
        if not pool or chunk == 0:
            break
        trial = best | frozenset(pool[:chunk])
        if look(trial, "grow")[0].verdict in ACCEPTED:
            best, pool = trial, pool[chunk:]
            chunk = min(chunk, len(pool))
        else:
            chunk //= 2
    return best


def _layer(search: Search, name: str) -> int | None:
    return search.session.prepared.inputs.sites[name].layer


def _by_prior(search: Search) -> list[str]:
    """The block sites, lowest cheap score first (then by name)."""
    from deadzone.geometry.scores import GRAD_BATCHES, SCORES, ScoreData

    prepared = search.session.prepared
    sites = [s for s in prepared.sites if s.layer is not None]
    data = ScoreData(
        train=list(itertools.islice(prepared.inputs.train_data(0), GRAD_BATCHES)),
        eval=prepared.inputs.eval,
    )
    scores = SCORES[PRIOR](prepared.model, sites, data)
    return sorted((s.name for s in sites), key=lambda n: (scores.get(n) or 0.0, n))


def _found(search: Search, ask: Asker, best: frozenset[str]) -> dict:
    """The judgement that certified ``best`` (on the most seeds it was judged on)."""
    seeds = max((n for c, n in ask.answers if c == best), default=0)
    j = ask.answers.get((best, seeds)) or search.judge(best, 0)
    return {"seeds": seeds, **j.as_dict(), "unit": search.scale["unit"],
            "margin": search.scale["margin_used"], "steps": search.config.sft.steps}  # fmt: skip


def _long_horizon(config: PlanConfig, search: Search, best, found: dict) -> dict:
    """``full`` and the plan at ``config.horizon`` times the steps, on the seeds it was judged
    on: its cost there beside the cost it was found with."""
    seeds = max(found["seeds"], START_SEEDS)
    j = search.judge(best, seeds, config.horizon)
    costs, scale = search.costs(best, list(range(seeds)), config.horizon)
    return {"horizon": config.horizon, "steps": config.sft.steps * config.horizon, "seeds": seeds,
            **j.as_dict(), "unit": scale["unit"], "margin": scale["margin_used"],
            "costs": costs, "holds": j.verdict in ACCEPTED,
            "step_time": step_time(search, best, seeds, config.horizon)}  # fmt: skip


def step_time(search: Search, best, seeds: int, horizon: int = 1) -> dict | None:
    """The plan's time per token over ``full``'s (the runs' tokens/s, paired per seed), its
    geometric mean and 95% interval on the log scale."""
    runs = search.session.results.runs
    logs = []
    for s in range(seeds):
        r, f = runs.get(run_key(best, s, horizon)), runs.get(run_key(None, s, horizon))
        if r and f and r.get("tokens_per_second") and f.get("tokens_per_second"):
            logs.append(math.log(f["tokens_per_second"] / r["tokens_per_second"]))
    if not logs:
        return None
    interval = stats.t_interval(logs)
    return {"ratio": math.exp(statistics.fmean(logs)), "n": len(logs),
            "interval": [math.exp(v) for v in interval] if interval else None}  # fmt: skip


def modelled(search: Search, best) -> dict:
    """The savings model of the plan per step (``deadzone.training.savings``), at the batch
    size and the mean training length; with cached prefix outputs too where it has a prefix."""
    from deadzone.training.savings import ceilings, savings

    model = copy.deepcopy(search.model)
    plan = candidate_plan(model, best, search.config)
    plans.apply_plan(model, plan)
    train = search.session.prepared.inputs.data.train
    seq = max(1, round(statistics.fmean(len(e.input_ids) for e in train)))
    batch = search.config.sft.batch_size
    found = savings(model, batch, seq)
    out = {**found.to_dict(), "batch_size": batch, "seq_len": seq,
           "ceilings": ceilings(found.frozen_share)}  # fmt: skip
    if found.prefix_depth:
        out["cached_flops_ratio"] = savings(model, batch, seq, cached=True).flops_ratio
    return out


def _summary(config, search: Search, best, found: dict, long: dict | None, steps: list) -> dict:
    depth, sites = split(best)
    runs = search.session.results.runs
    short = [r for k, r in runs.items() if not k.startswith("h")]
    return {
        "scale": {k: v for k, v in search.scale.items()},
        "steps": steps,
        "prefix_depths": [
            {k: s[k] for k in ("depth", "seeds", "verdict", "cost", "interval")}
            for s in steps
            if s["phase"] == "prefix" and s["action"] != "more_seeds"
        ],
        "plan": {"prefix_depth": depth, "sites": sites, "empty": not best, **found},
        "savings": modelled(search, best),
        "step_time": step_time(search, best, found["seeds"]) if best else None,
        "long_horizon": long,
        "runs": len(short),
        "runs_long": len(runs) - len(short),
    }


def _write(config: PlanConfig, search: Search, best, summary: dict) -> None:
    """The certified plan and its exports into the output directory, then report.md and
    report.html, made from the results file just saved (:mod:`deadzone.report.plan`)."""
    from deadzone.report.build import write_reports

    out = search.session.results.out
    certified = {k: summary[k] for k in ("plan", "step_time", "long_horizon")}
    plan = candidate_plan(search.model, best, config, savings=summary["savings"])
    plan["certified"] = certified
    plans.write_plan(out, search.model, plan)
    write_reports(out)
