"""The ``crystallize`` experiment: one or more target sites trained, frozen, crystallized to rank k,
randomized or zeroed during SFT, over several seeds, with the noise measured.

Every strategy is applied to all targets at once; every other site trains. Each strategy runs
once per seed; for a seed, all strategies see the same batches (the paired design), so the
per-seed differences against ``full`` give a paired 95% confidence interval, and a verdict:
``better`` or ``worse`` when the interval excludes zero, ``within noise`` when it does not,
``undetermined`` when fewer than two seeds finished for both, and ``baseline`` for ``full``.
The reported difference (``delta_eval_pct``) is the mean of those same per-seed differences,
so it always lies inside its interval.

The runs go to an executor (in this process, a process pool or Ray: see
``deadzone.experiments.execute``). Under ``accelerate launch`` every process runs every run on
its shard of the batches; only the main process writes ``results.json``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState

from deadzone import __version__
from deadzone import sites as sites_mod
from deadzone.data.sft import load_sft_data, pad_id_for
from deadzone.errors import DeadzoneError
from deadzone.experiments.execute import (
    DataRef,
    Executor,
    InProcess,
    ModelRef,
    RunTask,
    execute,
    prime,
)
from deadzone.experiments.runs import ResultsDir, RunInputs, RunSpec, provenance, writing
from deadzone.strategies import STRATEGIES, check_rank
from deadzone.train import SFTConfig

EXPERIMENT = "crystallize"
BASELINE = "full"
DEFAULT_STRATEGIES = ("full", "frozen", "crystal", "random")


@dataclass
class CrystallizeConfig:
    """What to crystallize, how, and on which data. ``seeds`` is the number of seeds (0..S-1);
    ``sft.seed`` is ignored (each run takes its own). ``max_length`` is capped at the model's
    context length."""

    model: str
    targets: str
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    rank: int = 1
    seeds: int = 3
    data: str = "builtin:docstrings"
    eval_data: str | None = None
    eval_fraction: float = 0.1
    max_length: int = 256
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
        if not isinstance(self.rank, int) or self.rank < 1:
            raise DeadzoneError(f"rank must be an integer >= 1, got {self.rank!r}")
        if not self.targets or not self.targets.strip():
            raise DeadzoneError("no target site given")


def plan_runs(
    strategies: tuple[str, ...], targets: list[str], seeds: int, rank: int = 1
) -> list[RunSpec]:
    """Seed-major order, so that an interrupted experiment already holds complete pairs."""
    return [
        RunSpec(
            key=f"{strategy}/seed{seed}",
            plan={t: strategy for t in targets},
            seed=seed,
            rank=rank,
            labels={"strategy": strategy, "seed": seed},
        )
        for seed in range(seeds)
        for strategy in strategies
    ]


def crystallize(
    config: CrystallizeConfig,
    out: str | Path,
    *,
    executor: Executor | None = None,
    show_progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> dict:
    """Run (or resume, or extend) the experiment into ``out``; return the ``results.json`` document.

    ``executor`` runs the runs (default: :class:`InProcess`, here, one after another).
    """
    executor = executor or InProcess(show_progress=show_progress)
    state = PartialState(cpu=config.sft.cpu)  # the processes of this launch, if several
    if state.num_processes > 1 and not isinstance(executor, InProcess):
        raise DeadzoneError("under accelerate launch, runs execute in process (no --workers)")
    with writing(out, state.is_main_process):
        tasks, inputs, identity = _plan(config, executor.threads)
        prime(tasks[0], inputs)  # runs in this process use the model and data loaded here
        runset = {"strategies": list(config.strategies), "seeds": list(range(config.seeds))}
        results = ResultsDir(
            out, identity, provenance(), summarize, runset=runset, writer=state.is_main_process
        )
        state.wait_for_everyone()  # all have read results.json before the first run rewrites it
        execute(tasks, results, executor, on_record=on_record, show_progress=show_progress)
        results.save()
    state.wait_for_everyone()  # the file is complete before any process reads it
    return results.document()


def _plan(config: CrystallizeConfig, threads: int) -> tuple[list[RunTask], RunInputs, dict]:
    """Load the model and data once here: the run tasks, their inputs, and the identity."""
    from deadzone.checkpoints import context_length, load_model, model_fingerprint, resolve

    model, tokenizer = load_model(config.model)
    if tokenizer is None:
        raise DeadzoneError(f"{config.model} has no tokenizer; SFT needs one")
    all_sites = sites_mod.find_sites(model)
    targets = sites_mod.select(all_sites, config.targets)
    if "crystal" in config.strategies:
        for site in targets:
            check_rank(site, config.rank)
    max_length = min(config.max_length, context_length(model) or config.max_length)
    data = load_sft_data(
        config.data,
        tokenizer,
        max_length=max_length,
        eval_spec=config.eval_data,
        eval_fraction=config.eval_fraction,
    )
    inputs = RunInputs(
        model, {s.name: s for s in all_sites}, data, pad_id_for(tokenizer), config.sft
    )
    path = resolve(config.model)
    model_ref = ModelRef(config.model, model_fingerprint(path), str(path))
    data_ref = DataRef(
        config.data, config.eval_data, config.eval_fraction, max_length, data.info["content_hash"]
    )
    specs = plan_runs(config.strategies, [s.name for s in targets], config.seeds, config.rank)
    tasks = [RunTask(model_ref, data_ref, config.sft, spec, threads) for spec in specs]
    return tasks, inputs, _identity(config, model, model_ref, targets, data.info)


def _identity(config: CrystallizeConfig, model, model_ref, targets: list, data_info: dict) -> dict:
    """What the finished runs computed: a rerun that changes any of it is refused.

    The strategies and seeds are not part of it: a rerun may add some (``runset``).
    """
    sft = config.sft.to_dict()
    sft.pop("seed")
    return {
        "experiment": EXPERIMENT,
        "deadzone_version": __version__,
        "model": config.model,
        "model_info": {
            "model_type": getattr(model.config, "model_type", None),
            "params": sum(p.numel() for p in model.parameters()),
            "fingerprint": model_ref.fingerprint,
        },
        "targets": [s.name for s in targets],
        "target_params": sum(s.params for s in targets),
        "rank": config.rank,
        "steps": config.sft.steps,
        "data": data_info,
        "config": sft,
    }


# --- summary: means, paired intervals, verdicts -----------------------------------------------

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("df must be >= 1")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964  # Cornish-Fisher expansion around the normal quantile; error < 1e-4 past 30
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def paired_ci(diffs: list[float]) -> tuple[float, float] | None:
    """95% interval of the mean of paired differences, or None for fewer than two."""
    if len(diffs) < 2:
        return None
    mean = statistics.fmean(diffs)
    half = t975(len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean - half, mean + half


def verdict(ci: tuple[float, float] | None) -> str:
    """Lower loss is better: ``better`` if the whole interval is below zero, ``worse`` above."""
    if ci is None:
        return "undetermined"
    if ci[1] < 0:
        return "better"
    if ci[0] > 0:
        return "worse"
    return "within noise"


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _pct(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else 100.0 * (value - base) / base


def _paired_pct(mine: list[dict], base: dict[int, dict], key: str) -> list[float]:
    """Per seed where both finished, the difference of ``key`` against the baseline, in %."""
    return [_pct(r[key], base[r["seed"]][key]) for r in mine if r["seed"] in base]


def summarize(runs: list[dict]) -> list[dict]:
    """One record per strategy, in the order strategies first appear, ``full`` first.

    ``delta_train_pct`` and ``delta_eval_pct`` are means of the per-seed (paired) differences
    against ``full``, over the seeds where both finished; ``ci95_eval_pct`` is the interval of
    the same eval differences. Means and standard deviations of the losses are over every run
    that finished.
    """
    ok = [r for r in runs if r.get("status") == "ok"]
    by_seed = {r["seed"]: r for r in ok if r["strategy"] == BASELINE}
    order = sorted(dict.fromkeys(r["strategy"] for r in runs), key=lambda s: s != BASELINE)
    summary = []
    for strategy in order:
        mine = [r for r in ok if r["strategy"] == strategy]
        train_mean, train_std = _mean_std([r["final_train_loss"] for r in mine])
        eval_mean, eval_std = _mean_std([r["final_eval_loss"] for r in mine])
        diffs = _paired_pct(mine, by_seed, "final_eval_loss")
        delta_train, _ = _mean_std(_paired_pct(mine, by_seed, "final_train_loss"))
        delta_eval, _ = _mean_std(diffs)
        ci = paired_ci(diffs)
        summary.append(
            {
                "strategy": strategy,
                "n": len(mine),
                "failed": sum(r["strategy"] == strategy and r.get("status") != "ok" for r in runs),
                "trainable_params": mine[0]["trainable_params"] if mine else None,
                "train_loss_mean": train_mean,
                "train_loss_std": train_std,
                "eval_loss_mean": eval_mean,
                "eval_loss_std": eval_std,
                "delta_train_pct": delta_train,
                "delta_eval_pct": delta_eval,
                "ci95_eval_pct": list(ci) if ci else None,
                "verdict": "baseline" if strategy == BASELINE else verdict(ci),
            }
        )
    return summary
