"""The ``crystallize`` experiment: one or more target sites trained, frozen, crystallized to rank k,
randomized or zeroed during SFT, over several seeds, with the noise measured.

Every strategy is applied to all targets at once; every other site trains. Each strategy runs
once per seed (``crystal`` once per seed and rank of ``ranks``); for a seed, all runs see the
same batches (the paired design), so the per-seed differences against ``full`` are paired.
:func:`summarize` turns them into costs (in nats, in % of ``full``'s eval loss and as a share
of the fine-tuning gain) and verdicts (:mod:`deadzone.experiments.stats`): ``negligible``,
``costly``, ``better`` or ``undetermined``, and ``baseline`` for ``full``.

The runs go to an executor (in this process, a process pool or Ray: see
``deadzone.experiments.execute``). Under ``accelerate launch`` every process runs every run on
its shard of the batches; only the main process writes ``results.json``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from accelerate import PartialState

from deadzone import __version__
from deadzone.errors import DeadzoneError
from deadzone.experiments import stats
from deadzone.experiments.execute import (
    Executor,
    InProcess,
    RunTask,
    execute,
    load_inputs,
    model_info,
    prime,
)
from deadzone.experiments.runs import ResultsDir, RunInputs, RunSpec, provenance, writing
from deadzone.models import sites as sites_mod
from deadzone.schema import SCHEMA_VERSION
from deadzone.training.strategies import STRATEGIES, check_rank
from deadzone.training.tracking import NO_TRACKING, Tracking
from deadzone.training.train import SFTConfig

EXPERIMENT = "crystallize"
BASELINE = "full"
DEFAULT_STRATEGIES = ("full", "frozen", "crystal", "random")
DEFAULT_MARGIN = 0.02  # of the fine-tuning gain
DEFAULT_MARGIN_NATS = 0.01  # of eval loss per token: a 1% change in perplexity


@dataclass
class CrystallizeConfig:
    """What to crystallize, how, and on which data. ``seeds`` is the number of seeds (0..S-1);
    ``sft.seed`` is ignored (each run takes its own). ``max_length`` is capped at the model's
    context length. ``ranks`` are the ranks ``crystal`` runs at; ``margin`` is the largest cost
    called negligible, as a share of the fine-tuning gain, and ``margin_nats`` the same in nats,
    used when the gain itself is not clearly positive."""

    model: str
    targets: str
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    ranks: tuple[int, ...] = (1,)
    seeds: int = 3
    data: str = "builtin:docstrings"
    eval_data: str | None = None
    eval_fraction: float = 0.1
    max_length: int = 256
    margin: float = DEFAULT_MARGIN
    margin_nats: float = DEFAULT_MARGIN_NATS
    sft: SFTConfig = field(default_factory=SFTConfig)

    def __post_init__(self) -> None:
        self.strategies = tuple(self.strategies)
        for name in self.strategies:
            if name not in STRATEGIES:
                raise DeadzoneError(
                    f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}"
                )
        if len(set(self.strategies)) != len(self.strategies):
            raise DeadzoneError(f"a strategy is listed twice: {','.join(self.strategies)}")
        if BASELINE not in self.strategies:
            raise DeadzoneError("the strategies must include full, the baseline of the comparison")
        if not isinstance(self.seeds, int) or self.seeds < 1:
            raise DeadzoneError(f"seeds must be an integer >= 1, got {self.seeds!r}")
        self.ranks = tuple(self.ranks)
        _check_ranks(self.ranks)
        if len(self.ranks) > 1 and "crystal" not in self.strategies:
            raise DeadzoneError(
                f"a rank sweep ({','.join(map(str, self.ranks))}) needs crystal among the "
                "strategies"
            )
        if not _is_number(self.margin) or not 0 < self.margin < 1:
            raise DeadzoneError(
                f"margin must be a share of the gain in (0, 1), got {self.margin!r}"
            )
        if not _is_number(self.margin_nats) or not self.margin_nats > 0:
            raise DeadzoneError(f"margin-nats must be > 0, got {self.margin_nats!r}")
        if not self.targets or not any(t.strip() for t in self.targets.split(",")):
            raise DeadzoneError(f"no target site given (--target {self.targets!r})")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _check_ranks(ranks: tuple[int, ...]) -> None:
    if not ranks:
        raise DeadzoneError("no rank given")
    for rank in ranks:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise DeadzoneError(f"rank must be an integer >= 1, got {rank!r}")
    if len(set(ranks)) != len(ranks):
        raise DeadzoneError(f"a rank is listed twice: {','.join(map(str, ranks))}")


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
    out: str | Path,
    *,
    executor: Executor | None = None,
    show_progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    tracking: Tracking = NO_TRACKING,
) -> dict:
    """Run (or resume, or extend) the experiment into ``out``; return the ``results.json`` document.

    ``executor`` runs the runs (default: :class:`InProcess`, here, one after another);
    ``tracking`` is where each run reports its curves (``deadzone.training.tracking``;
    default none).
    """
    executor = executor or InProcess(show_progress=show_progress)
    state = PartialState(cpu=config.sft.cpu)  # the processes of this launch, if several
    if state.num_processes > 1 and not isinstance(executor, InProcess):
        raise DeadzoneError("under accelerate launch, runs execute in process (no --workers)")
    with writing(out, state.is_main_process), executor:  # workers start as this loads
        tasks, inputs, identity, shapes = _plan(config, executor.threads, tracking)
        prime(tasks[0], inputs)  # runs in this process use the model and data loaded here
        runset = {
            "strategies": list(config.strategies),
            "ranks": list(config.ranks),
            "seeds": list(range(config.seeds)),
        }
        summary = partial(
            summarize, margin=config.margin, margin_nats=config.margin_nats, shapes=shapes
        )
        header = {"schema_version": SCHEMA_VERSION, **provenance()}
        results = ResultsDir(
            out, identity, header, summary, runset=runset, writer=state.is_main_process
        )
        state.wait_for_everyone()  # all have read results.json before the first run rewrites it
        execute(tasks, results, executor, on_record=on_record, show_progress=show_progress)
        results.save()
    state.wait_for_everyone()  # the file is complete before any process reads it
    return results.document()


def _plan(
    config: CrystallizeConfig, threads: int, tracking: Tracking = NO_TRACKING
) -> tuple[list[RunTask], RunInputs, dict, dict]:
    """Load the model and data once here: the run tasks, their inputs, the identity, and the
    targets' shapes."""
    from deadzone.models.checkpoints import load_model

    model, tokenizer = load_model(config.model)
    if tokenizer is None:
        raise DeadzoneError(f"{config.model} has no tokenizer; SFT needs one")
    check_vocabulary(model, tokenizer)
    all_sites = sites_mod.find_sites(model)
    targets = sites_mod.select(all_sites, config.targets)
    if "crystal" in config.strategies:
        for site in targets:
            for rank in config.ranks:
                check_rank(site, rank)
    inputs, model_ref, data_ref = load_inputs(config, model, tokenizer, all_sites)
    data = inputs.data
    specs = plan_runs(config.strategies, [s.name for s in targets], config.seeds, config.ranks)
    tasks = [RunTask(model_ref, data_ref, config.sft, spec, threads, tracking) for spec in specs]
    identity = _identity(config, model, model_ref, targets, data.info)
    return tasks, inputs, identity, {s.name: list(s.shape) for s in targets}


def check_vocabulary(model, tokenizer) -> None:
    """Every token id the tokenizer can produce has a row in the model's input embedding."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise DeadzoneError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} "
            "rows: they do not belong together"
        )


def _identity(config: CrystallizeConfig, model, model_ref, targets: list, data_info: dict) -> dict:
    """What the finished runs computed: a rerun that changes any of it is refused.

    The strategies, ranks and seeds are not part of it: a rerun may add some (``runset``).
    """
    sft = config.sft.to_dict()
    sft.pop("seed")
    return {
        "experiment": EXPERIMENT,
        "deadzone_version": __version__,
        "model": config.model,
        "model_info": model_info(model, model_ref),
        "targets": [s.name for s in targets],
        "target_params": sum(s.params for s in targets),
        "steps": config.sft.steps,
        "data": data_info,
        "config": sft,
    }


# --- summary: costs in three units, verdicts, crystallization rank -----------------------------

UNITS = ("nats", "pct", "share_of_gain")  # of each arm's cost, paired per seed against full


def summarize(
    runs: list[dict],
    *,
    margin: float = DEFAULT_MARGIN,
    margin_nats: float = DEFAULT_MARGIN_NATS,
    shapes: dict[str, list[int]] | None = None,
) -> dict:
    """Costs and verdicts of every arm against ``full``, from the run records alone.

    Per seed where both finished, an arm's cost is its final eval loss minus ``full``'s: in
    nats, in % of ``full``'s, and as a share of that seed's fine-tuning gain (``full``'s step-0
    eval loss minus its final one). Verdicts are judged on the share of the gain against
    ``margin`` — or, when the gain's own interval does not lie above zero, in nats against
    ``margin_nats`` — with Holm over the arms (:func:`stats.judge`). ``shapes`` (target name ->
    ``[out, in]``) sizes the factors of the crystallization rank.
    """
    ok = [r for r in runs if r.get("status") == "ok"]
    full = {r["seed"]: r for r in ok if r["strategy"] == BASELINE}
    gain = _gain(full)
    unit, used = ("share_of_gain", margin) if gain["clear"] else ("nats", margin_nats)
    arms = _arms(runs)
    costs = {a: _costs([r for r in ok if _arm_of(r) == a], full) for a in arms}
    compared = [a for a in arms if a[0] != BASELINE]
    judged = stats.judge({arm(*a): costs[a][unit] for a in compared}, used)
    records = [_record(a, runs, ok, costs[a], judged.get(arm(*a))) for a in arms]
    return {
        "alpha": stats.ALPHA,
        "unit": unit,
        "margin": margin,
        "margin_nats": margin_nats,
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
    }


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
