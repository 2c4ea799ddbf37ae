"""The ``crystallize`` experiment: one or more target sites trained, frozen, crystallized to rank k,
randomized or zeroed during SFT, over several seeds, with the noise measured.

Every strategy is applied to all targets at once; every other site trains. Each strategy runs
once per seed (``crystal`` once per seed and rank of ``ranks``); for a seed, all runs see the
same batches (the paired design), so the per-seed differences against ``full`` are paired.
:func:`summarize` turns them into costs (in nats, in % of ``full``'s eval loss and as a share
of the fine-tuning gain) and verdicts (:mod:`deadzone.experiments.stats`): ``negligible``,
``costly``, ``better`` or ``undetermined``, and ``baseline`` for ``full``.

The experiment stands on the skeleton (``deadzone.experiments.skeleton``): it plans its runs
(:func:`design`) and summarizes them; loading, the lock, the executor (in this process, a
process pool or Ray) and ``results.json`` are the skeleton's.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

from deadzone.config import DEFAULT_MARGIN, DEFAULT_MARGIN_NATS, DEFAULT_MARGIN_RATE
from deadzone.experiments import stats
from deadzone.experiments.configs import BASELINE, CrystallizeConfig
from deadzone.experiments.execute import Executor
from deadzone.experiments.runs import RunSpec
from deadzone.experiments.skeleton import (
    Design,
    Prepared,
    plan_experiment,
    run_experiment,
    select_sites,
)
from deadzone.training.strategies import check_rank
from deadzone.training.tracking import NO_TRACKING, Tracking

__all__ = ["BASELINE", "CrystallizeConfig", "crystallize", "plan_runs", "summarize"]

EXPERIMENT = "crystallize"


def arm(strategy: str, rank: int | None) -> str:
    """The name of one arm of the comparison: the strategy, and ``@rank`` for ``crystal``."""
    return f"{strategy}@{rank}" if strategy == "crystal" and rank is not None else strategy


def plan_runs(
    strategies: tuple[str, ...], targets: list[str], seeds: int, ranks: tuple[int, ...] = (1,)
) -> list[RunSpec]:
    """Seed-major order, so that an interrupted experiment already holds complete pairs.

    ``crystal`` runs once per rank (key ``crystal@K/seedN``), the others once (``NAME/seedN``,
    rank None in their labels).
    """
    arms = [
        (strategy, rank)
        for strategy in strategies
        for rank in (ranks if strategy == "crystal" else (None,))
    ]
    return [
        RunSpec(
            key=f"{arm(strategy, rank)}/seed{seed}",
            plan={t: strategy for t in targets},
            seed=seed,
            rank=rank or 1,
            labels={"strategy": strategy, "rank": rank, "seed": seed},
        )
        for seed in range(seeds)
        for strategy, rank in arms
    ]


def crystallize(
    config: CrystallizeConfig,
    out: str | Path | None = None,
    *,
    executor: Executor | None = None,
    show_progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    tracking: Tracking | None = None,
) -> dict:
    """Run (or resume, or extend) the experiment into ``out`` (default ``config.out``); return
    the ``results.json`` document. ``executor`` runs the runs and ``tracking`` is where each
    reports its curves (defaults: what ``config.execution`` and ``config.tracking`` say)."""
    # every experiment's entry has this shape: its own design and check, one skeleton
    return run_experiment(
        config,
        out,
        partial(design, config),
        check=partial(targets, config),
        executor=executor,
        tracking=tracking,
        show_progress=show_progress,
        on_record=on_record,
    )


def plan(
    config: CrystallizeConfig, threads: int = 1, tracking: Tracking = NO_TRACKING
) -> tuple[Prepared, Design]:
    """The experiment's inputs and runs, loaded and planned; nothing run."""
    # the shape of every experiment's plan(): its design and check, nothing run
    return plan_experiment(
        config, partial(design, config), partial(targets, config), threads, tracking
    )


def targets(config: CrystallizeConfig, model, sites: list) -> list:
    """The target sites of the loaded model, each checked to take every rank asked for."""
    chosen = select_sites(sites, config.targets)
    if "crystal" in config.strategies:
        for site in chosen:
            for rank in config.ranks:
                check_rank(site, rank)
    return chosen


def design(config: CrystallizeConfig, prepared: Prepared) -> Design:
    """Every strategy (and rank) on every seed; the strategies, ranks and seeds may grow."""
    chosen = prepared.chosen
    names = [s.name for s in chosen]
    shapes = {s.name: list(s.shape) for s in chosen}
    return Design(
        identity=prepared.identity(
            EXPERIMENT, targets=names, target_params=sum(s.params for s in chosen)
        ),
        runset={
            "strategies": list(config.strategies),
            "ranks": list(config.ranks),
            "seeds": list(range(config.seeds)),
        },
        summarize=partial(
            summarize,
            margin=config.margin,
            margin_nats=config.margin_nats,
            shapes=shapes,
            endpoint=config.endpoint,
            margin_rate=config.margin_rate,
        ),
        specs=plan_runs(config.strategies, names, config.seeds, config.ranks),
    )


# --- summary: costs in three units, verdicts, crystallization rank -----------------------------

# Of each arm's cost, paired per seed against full: eval loss in three units, and exact match
# (full's rate minus the arm's) where the runs scored it.
UNITS = ("nats", "pct", "share_of_gain", "rate")


def summarize(
    runs: list[dict],
    *,
    margin: float = DEFAULT_MARGIN,
    margin_nats: float = DEFAULT_MARGIN_NATS,
    shapes: dict[str, list[int]] | None = None,
    endpoint: str = "eval_loss",
    margin_rate: float = DEFAULT_MARGIN_RATE,
) -> dict:
    """Costs and verdicts of every arm against ``full``, from the run records alone.

    Per seed where both finished, an arm's cost is its final eval loss minus ``full``'s: in
    nats, in % of ``full``'s, and as a share of that seed's fine-tuning gain (``full``'s step-0
    eval loss minus its final one). Verdicts are judged on the share of the gain against
    ``margin`` — or, when the gain's own interval does not lie above zero, in nats against
    ``margin_nats`` — with Holm over the arms (:func:`stats.judge`). With ``endpoint``
    ``exact_match`` they are judged instead on the exact-match cost (``full``'s rate minus the
    arm's, paired by seed) against ``margin_rate``; both endpoints are summarized either way.
    ``shapes`` (target name -> ``[out, in]``) sizes the factors of the crystallization rank.
    """
    ok = [r for r in runs if r.get("status") == "ok"]
    full = {r["seed"]: r for r in ok if r["strategy"] == BASELINE}
    gain = _gain(full)
    unit, used = ("share_of_gain", margin) if gain["clear"] else ("nats", margin_nats)
    if endpoint == "exact_match":
        unit, used = "rate", margin_rate
    arms = _arms(runs)
    costs = {a: _costs([r for r in ok if _arm_of(r) == a], full) for a in arms}
    compared = [a for a in arms if a[0] != BASELINE]
    judged = stats.judge({arm(*a): costs[a][unit] for a in compared}, used)
    records = [_record(a, runs, ok, costs[a], judged.get(arm(*a))) for a in arms]
    return {
        "alpha": stats.ALPHA,
        "endpoint": endpoint,
        "unit": unit,
        "margin": margin,
        "margin_nats": margin_nats,
        "margin_rate": margin_rate,
        "margin_used": used,
        "gain": gain,
        "arms": records,
        "crystallization_rank": _crystallization_rank(records, shapes),
    }


def _arms(runs: list[dict]) -> list[tuple[str, int | None]]:
    """``(strategy, rank)`` of every arm: ``full`` first, then strategies in the order they
    first appear, a strategy's ranks in increasing order."""
    strategies = sorted(dict.fromkeys(r["strategy"] for r in runs), key=lambda s: s != BASELINE)
    found = {_arm_of(r) for r in runs}
    return [a for s in strategies for a in sorted(a for a in found if a[0] == s)]


def _arm_of(run: dict) -> tuple[str, int | None]:
    return run["strategy"], run.get("rank")


def _gain(full: dict[int, dict]) -> dict:
    """Per seed, ``full``'s step-0 eval loss minus its final one; clear if its interval lies
    above zero and every seed gained (else a share of it is no unit to judge in)."""
    seeds = sorted(s for s, r in full.items() if r.get("step0_eval_loss") is not None)
    values = [full[s]["step0_eval_loss"] - full[s]["final_eval_loss"] for s in seeds]
    mean, sd = stats.mean_sd(values)
    interval = stats.t_interval(values)
    return {
        "seeds": seeds,
        "per_seed": values,
        "mean": mean,
        "sd": sd,
        "interval": list(interval) if interval else None,
        "clear": interval is not None and interval[0] > 0 and all(v > 0 for v in values),
    }


def _costs(mine: list[dict], full: dict[int, dict]) -> dict:
    """An arm's per-seed paired differences against ``full``, in each unit, and their seeds."""
    pairs = sorted(
        ((r["seed"], r, full[r["seed"]]) for r in mine if r["seed"] in full), key=lambda p: p[0]
    )
    nats = [r["final_eval_loss"] - f["final_eval_loss"] for _, r, f in pairs]
    gains = [(f.get("step0_eval_loss") or 0.0) - f["final_eval_loss"] for _, _, f in pairs]
    return {
        "seeds": [s for s, _, _ in pairs],
        "nats": nats,
        "pct": [100 * d / f["final_eval_loss"] for d, (_, _, f) in zip(nats, pairs, strict=True)],
        # Not defined unless every paired seed gained: then the verdict is in nats.
        "share_of_gain": (
            [d / g for d, g in zip(nats, gains, strict=True)] if all(g > 0 for g in gains) else []
        ),
        "train_pct": [
            100 * (r["final_train_loss"] / f["final_train_loss"] - 1) for _, r, f in pairs
        ],
        # Empty unless every paired seed scored exact match on both sides.
        "rate": _rate_costs(pairs),
    }


def exact_match_rate(run: dict) -> float | None:
    """The run's exact-match rate, if it scored one."""
    return (run.get("exact_match") or {}).get("rate")


def _rate_costs(pairs: list[tuple]) -> list[float]:
    """``full``'s exact-match rate minus the arm's, per paired seed (a loss of matches is > 0)."""
    rates = [(exact_match_rate(r), exact_match_rate(f)) for _, r, f in pairs]
    if any(mine is None or theirs is None for mine, theirs in rates):
        return []
    return [theirs - mine for mine, theirs in rates]


def _cost(values: list[float], level: float | None) -> dict:
    """Mean, SD, unadjusted interval and the interval at the comparison's Holm level."""
    mean, sd = stats.mean_sd(values)
    interval = stats.t_interval(values)
    adjusted = stats.t_interval(values, level) if level is not None else None
    return {
        "mean": mean,
        "sd": sd,
        "interval": list(interval) if interval else None,
        "adjusted": list(adjusted) if adjusted else None,
    }


def _record(a: tuple, runs: list[dict], ok: list[dict], costs: dict, judged) -> dict:
    strategy, rank = a
    mine = [r for r in ok if _arm_of(r) == a]
    train_mean, train_std = stats.mean_sd([r["final_train_loss"] for r in mine])
    eval_mean, eval_std = stats.mean_sd([r["final_eval_loss"] for r in mine])
    rates = [exact_match_rate(r) for r in mine]
    rate_mean, rate_std = stats.mean_sd(rates if rates and None not in rates else [])
    record = {
        "arm": arm(strategy, rank),
        "strategy": strategy,
        "rank": rank,
        "n": len(mine),
        "failed": sum(_arm_of(r) == a and r.get("status") != "ok" for r in runs),
        "trainable_params": mine[0]["trainable_params"] if mine else None,
        "train_loss_mean": train_mean,
        "train_loss_std": train_std,
        "eval_loss_mean": eval_mean,
        "eval_loss_std": eval_std,
        "exact_match_mean": rate_mean,
        "exact_match_std": rate_std,
        "exact_match_samples": (mine[0].get("exact_match") or {}).get("samples", [])
        if mine
        else [],
        "delta_train_pct": stats.mean_sd(costs["train_pct"])[0],
        "delta_eval_pct": stats.mean_sd(costs["pct"])[0],
        "seeds": costs["seeds"],
    }
    if judged is None:  # the baseline
        return record | {"verdict": "baseline", "cost": None}
    return record | {
        "cost": {unit: _cost(costs[unit], judged.level) for unit in UNITS},
        "p_value": judged.p_value,
        "level": judged.level,
        "verdict": judged.verdict,
        "reason": judged.reason,
        "seeds_needed": judged.seeds_needed,
    }


def _crystallization_rank(records: list[dict], shapes: dict[str, list[int]] | None) -> dict | None:
    """The smallest crystal rank whose cost is below the margin (negligible or better)."""
    fits = [
        r["rank"]
        for r in records
        if r["strategy"] == "crystal" and r["verdict"] in ("negligible", "better")
    ]
    if not fits:
        return None
    k = min(fits)
    if not shapes:
        return {"rank": k, "factor_params": None, "dense_params": None}
    return {
        "rank": k,
        "factor_params": sum(k * (o + i) for o, i in shapes.values()),
        "dense_params": sum(o * i for o, i in shapes.values()),
    }
