"""The ``scan`` experiment: which matrices of the whole model are negligible in a strategy, the
parameter count of the jointly negligible set, and whether cheap scores predict the costs.

Runs are :class:`deadzone.experiments.runs.RunSpec` s with keys a rerun recomputes:

- ``full/seed{k}``: the baseline of seed ``k`` (every site trains);
- ``{strategy}/{site}/seed{k}``: one site in the strategy;
- ``{strategy}/{n}x{sha256[:12]}/seed{k}``: a set of ``n`` sites at once (a group of the search,
  or a joint set), the hash over the sorted names; the names are in its labels.

A judgement of a set on ``seeds`` seeds needs the set's runs and the baselines of seeds
``0 .. seeds-1``; the results directory skips the ones it holds, so
adding a seed costs one run of the set.

The driver (:func:`scan`) runs the baselines of every seed first; their gains fix the unit of
every cost (the share of the fine-tuning gain, or nats against ``margin_nats`` when the gain's
interval does not lie above zero); in ``prior`` mode they also record each site's attribution,
the priors. Then it asks each strategy's search (:mod:`deadzone.experiments.search`: by prior,
:func:`~deadzone.experiments.search.prior_search`; group testing ordered by the step-0
gradient norm in ``adaptive`` mode; every site alone in ``exhaustive`` mode) its questions
against the recorded runs: a question whose runs are
missing stops that search for the round, and the missing runs of every strategy's next
question go to the executor at once. Every decision is a function of the recorded runs, so a
killed scan rerun replays the same questions, gets the same answers and runs only what is
missing; a rerun with more seeds or strategies extends it.

Statistics. A cost is negligible when its interval lies below the margin (an equivalence claim,
never "not significantly worse"). The family is every per-site claim of the scan: ``m`` = sites
x strategies. While it searches, a search decides one question at a time and cannot know Holm's
levels yet, so it steers (accept a set, split it, add a seed) by intervals read at ``0.05 / m``,
the strictest level Holm uses. When every search is answered, the final verdicts are Holm's
step-down (:func:`holm_verdicts`, :func:`deadzone.experiments.stats.judge`) over the claims
judged (a site a prior labelled was never run and makes none), each read from the judgement that
decided its site (its own, or its group's or set's), in every mode: an adaptive scan that ends
judging every site alone on every seed gives exactly the exhaustive verdicts, and Holm only adds
decisions to those the search took. The search's repeated looks at a site (group, half, alone;
more seeds) are not adjusted for (``docs/statistics.md``). The joint check then reads at ``0.05
/ m``, except a joint set that is exactly the set some site was decided with on every seed (a
whole group, say): that claim stands as Holm read it. A failed run (a non-finite loss) makes its
judgement ``costly``. Fewer than 2 seeds are refused: no interval, so no verdict but
undetermined.

Outputs besides ``results.json``: the freeze plan of the ``frozen`` strategy's jointly
negligible set (``plan.json``, ``axolotl.yaml``, ``frozen_parameters.txt``: the parameters
that need not train), with the strategy's other block sites in the plan's ``order``
(:func:`cost_order`), for a schedule that freezes more than the set. A ``random`` set (values
that carry nothing) is reported in the effective counts but not put in the plan, whose other
files only freeze; without ``frozen`` among the strategies no plan is written.

What the scan writes of each strategy (its sites, ρ, effective counts, the plan's order) and
the cheap scores are made in :mod:`deadzone.experiments.scan_summary`.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial
from pathlib import Path

from deadzone.errors import DeadzoneError
from deadzone.experiments import search as search_mod
from deadzone.experiments import stats
from deadzone.experiments.configs import MODES, SCAN_STRATEGIES, ScanConfig
from deadzone.experiments.configs import check_scan_strategies as check_strategies
from deadzone.experiments.execute import Executor
from deadzone.experiments.runs import RunSpec
from deadzone.experiments.scan_summary import (
    PRIOR_SCORE,
    attribution_cost,
    block_params,
    cheap_scores,
    cost_order,
    effective_counts,
    priors,
    run_scores,
    strategy_summary,
)
from deadzone.experiments.search import Judgement
from deadzone.experiments.skeleton import (
    Design,
    Prepared,
    Session,
    plan_experiment,
    run_experiment,
    select_sites,
)
from deadzone.models.sites import Site
from deadzone.plans import make_plan, write_plan
from deadzone.training.tracking import NO_TRACKING, Tracking

__all__ = ["MODES", "SCAN_STRATEGIES", "ScanConfig", "check_strategies", "scan"]

log = logging.getLogger(__name__)


def set_key(strategy: str, sites: Iterable[str], seed: int) -> str:
    names = sorted(sites)
    if not names:
        raise DeadzoneError("a run needs at least one site")
    if len(names) == 1:
        return f"{strategy}/{names[0]}/seed{seed}"
    digest = hashlib.sha256("\0".join(names).encode()).hexdigest()[:12]
    return f"{strategy}/{len(names)}x{digest}/seed{seed}"


def full_spec(seed: int, attribution: bool = False) -> RunSpec:
    """The baseline of ``seed``; with ``attribution``, recording the sites' attribution (every
    :data:`ATTRIBUTION_EVERY` steps on :data:`ATTRIBUTION_BATCHES` eval batches)."""
    every = ATTRIBUTION_EVERY if attribution else None
    return RunSpec(
        f"full/seed{seed}",
        {},
        seed,
        labels={"strategy": "full", "sites": []},
        attribution=every,
        attribution_batches=ATTRIBUTION_BATCHES,
    )


def set_spec(strategy: str, sites: Iterable[str], seed: int, rank: int = 1) -> RunSpec:
    """One run with every site of ``sites`` in ``strategy``."""
    names = sorted(sites)
    return RunSpec(
        set_key(strategy, names, seed),
        dict.fromkeys(names, strategy),
        seed,
        rank=rank,
        labels={"strategy": strategy, "sites": names},
    )


def exhaustive_specs(
    sites: list[str], strategies: Iterable[str], seeds: int, rank: int = 1
) -> list[RunSpec]:
    """``full`` per seed, then one run per (strategy, site, seed): the exhaustive scan."""
    specs = [full_spec(seed) for seed in range(seeds)]
    for strategy in strategies:
        for name in sites:
            specs += [set_spec(strategy, [name], seed, rank) for seed in range(seeds)]
    return specs


# --- the driver ----------------------------------------------------------------------------------

EXPERIMENT = "scan"
START_SEEDS = 2  # seeds a judgement of the adaptive search starts on
PRIORITY = "grad_norm"  # the cheap score that orders the search (higher: likelier costly)
# The prior mode's baselines record attribution every ATTRIBUTION_EVERY steps on the first
# ATTRIBUTION_BATCHES eval batches (every step costs ~70% of a run, every 10 ~25%).
ATTRIBUTION_EVERY = 10
ATTRIBUTION_BATCHES = 4
# How much pairing a run with its baseline (same batches) shrinks the SD of a cost below what
# the baselines' spread says: on builtin:tiny (50 steps, 3 seeds) the baselines give 0.035 of
# the gain, the paired costs of the exhaustive scan ~0.003 (docs/benchmarks.md). The prior mode
# refuses seeds that could not decide a free site even with the spread divided by this.
PAIRING = 10.0


class _Missing(Exception):
    """A judgement asked for runs not recorded yet: the driver runs them and asks again."""

    def __init__(self, specs: list[RunSpec]) -> None:
        super().__init__(f"{len(specs)} run(s) missing")
        self.specs = specs


def _scale(runs: dict[str, dict], seeds: int, config: ScanConfig, comparisons: int) -> dict:
    full = {s: runs[f"full/seed{s}"] for s in range(seeds)}
    scale = stats.gain_scale(full, config.margin, config.margin_nats)
    return scale | {"alpha": stats.ALPHA / comparisons, "comparisons": comparisons}


def _costs(runs: dict[str, dict], scale: dict, strategy: str, names, seeds: int) -> list | None:
    """Per-seed costs of ``names`` in ``strategy`` on seeds ``0..seeds-1`` in the scale's unit;
    None if a run failed; :class:`_Missing` for runs not recorded yet (or lost to a dead worker
    in an earlier invocation: ``scale["retried"]`` holds the keys this one already ran)."""
    specs = [set_spec(strategy, names, s) for s in range(seeds)]
    missing = [
        sp
        for sp in specs
        if sp.key not in runs or (runs[sp.key].get("crashed") and sp.key not in scale["retried"])
    ]
    if missing:
        raise _Missing(missing)
    costs = []
    for sp in specs:
        r, f = runs[sp.key], runs[f"full/seed{sp.seed}"]
        if r.get("status") != "ok":
            return None
        nats = r["final_eval_loss"] - f["final_eval_loss"]
        costs.append(nats / scale["gains"][str(sp.seed)] if scale["unit"] != "nats" else nats)
    return costs


def _judge_costs(costs: list[float] | None, margin: float, level: float) -> Judgement:
    """The verdict of per-seed costs at ``level`` (a failed run: ``costly``, no numbers)."""
    if costs is None:
        return Judgement("costly")
    mean, sd = stats.mean_sd(costs)
    interval = stats.t_interval(costs, level)
    word = stats.verdict(interval, margin)
    needed = stats.seeds_needed(mean, sd, margin, level) if word == "undetermined" else None
    return Judgement(word, mean, interval, needed)


def _judge(runs: dict[str, dict], state: dict, strategy: str):
    scale = state["scale"]

    def judge(names: frozenset[str], seeds: int) -> Judgement:
        costs = _costs(runs, scale, strategy, sorted(names), seeds)
        return _judge_costs(costs, scale["margin_used"], scale["alpha"])

    return judge


def holm_verdicts(records: dict[str, dict], runs: dict[str, dict], scale: dict) -> None:
    """Replace each site's verdict in ``records`` (strategy -> search record) by Holm's over the
    claims of every strategy's sites, each read from the judgement that decided it (the site's
    ``set`` on its ``seeds``), at the levels of :func:`deadzone.experiments.stats.judge`.

    A site's entry gains ``level`` (the level Holm read it at) and keeps the search's verdict as
    ``search_verdict``; a site whose runs failed stays ``costly`` and is not in the family.
    """
    claims = {}
    for strategy, record in records.items():
        for name, site in record["sites"].items():
            if site["seeds"] == 0:  # a prior's label (likely costly), never judged: no claim
                continue
            costs = _costs(runs, scale, strategy, site["set"], site["seeds"])
            if costs is not None:
                claims[(strategy, name)] = costs
    judged = stats.judge(claims, scale["margin_used"])

    def claim(strategy: str, name: str) -> tuple:  # the sites of one group share one claim
        return (strategy, *records[strategy]["sites"][name]["set"])

    strictest: dict[tuple, float] = {}
    for key, j in judged.items():
        group = claim(*key)
        strictest[group] = min(j.level, strictest.get(group, j.level))
    for (strategy, name), j in judged.items():
        site = records[strategy]["sites"][name]
        level = strictest[claim(strategy, name)]
        interval = stats.t_interval(claims[(strategy, name)], level)
        word = stats.verdict(interval, scale["margin_used"])
        if word == "better" and site["group_size"] > 1:
            word = "negligible"
        site.update(
            search_verdict=site["verdict"],
            verdict=word,
            cost=j.mean,
            interval=list(interval),
            seeds_needed=j.seeds_needed if word == "undetermined" else None,
            level=level,
        )


def _search(runs, state, config: ScanConfig, strategy, sites: list[Site], priority) -> dict:
    """The record of one strategy, replayed against the recorded runs (:class:`_Missing` at the
    first question they cannot answer yet; ``state["decided"][strategy]`` then holds the sites
    decided before it); its verdicts are the search's, its joint check not made yet
    (:func:`holm_verdicts`, then :func:`_joint`, which asks through the same tally)."""
    ask = state["askers"][strategy] = search_mod.Asker(_judge(runs, state, strategy))
    decided = state["decided"][strategy] = {}
    names = [s.name for s in sites]
    if config.mode == "exhaustive":
        return search_mod.exhaustive(ask, names, seeds=config.seeds, decided=decided)
    if config.mode == "prior":
        return search_mod.prior_search(
            ask,
            names,
            state["priors"][strategy],
            margin=state["scale"]["margin_used"],
            max_seeds=config.seeds,
            start_seeds=min(START_SEEDS, config.seeds),
            confirm=config.confirm,
            judge_rest=config.rest == "judge",
            joint=False,
            decided=decided,
            size={s.name: s.params for s in sites},
        )
    return search_mod.search(
        ask,
        search_mod.groups_by(sites, config.groups),
        max_seeds=config.seeds,
        start_seeds=min(START_SEEDS, config.seeds),
        priority=priority,
        joint=False,
        decided=decided,
    )


def _joint(state, config: ScanConfig, strategy, record: dict, sites, priority) -> None:
    """The joint check of one strategy's record, on its final verdicts (:class:`_Missing` until
    its runs are recorded); the record's counts then include its questions."""
    ask = state["askers"][strategy]
    record["joint"] = search_mod.joint_check(
        ask,
        record["sites"],
        max_seeds=config.seeds,
        priority=priority,
        names=[s.name for s in sites],
        margin=state["scale"]["margin_used"],
    )
    record["judgements"], record["runs"] = len(ask.answers), ask.runs


def scan(
    config: ScanConfig,
    out: str | Path | None = None,
    *,
    executor: Executor | None = None,
    show_progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    on_file: Callable[[Path], None] | None = None,
    say: Callable[[str], None] = print,
    tracking: Tracking | None = None,
) -> dict:
    """Run (or resume, or extend) a scan into ``out`` (default ``config.out``); return the
    ``results.json`` document. ``executor`` and ``tracking`` default to what
    ``config.execution`` and ``config.tracking`` say; ``on_file`` is called with the path of
    each freeze-plan file this call writes; ``say`` prints the progress lines (main process).

    Rounds (:func:`_drive`): the baselines of every seed first (as many as run at once first,
    timed, for the plan's estimate), then, until every strategy's search is answered, the runs
    of the next question of every strategy at once. A resumed scan replays each search against
    the recorded runs and runs only what is missing. The main process writes ``plan.json``,
    ``axolotl.yaml`` and ``frozen_parameters.txt`` of the ``frozen`` joint set when ``frozen``
    was scanned.
    """
    # every experiment's entry has this shape: its own design and check, one skeleton
    return run_experiment(
        config,
        out,
        partial(design, config, on_file=on_file, say=say),
        check=partial(chosen_sites, config),
        executor=executor,
        tracking=tracking,
        show_progress=show_progress,
        on_record=on_record,
    )


def plan(
    config: ScanConfig, threads: int = 1, tracking: Tracking = NO_TRACKING
) -> tuple[Prepared, Design]:
    """The scan's inputs and design, loaded and planned; nothing run."""
    # the shape of every experiment's plan(): its design and check, nothing run
    return plan_experiment(
        config, partial(design, config), partial(chosen_sites, config), threads, tracking
    )


def chosen_sites(config: ScanConfig, model, sites: list[Site]) -> list[Site]:
    """The sites to scan: ``config.sites``, or every matrix inside the blocks."""
    if config.sites is None:
        chosen = [s for s in sites if s.layer is not None]
    else:
        chosen = select_sites(sites, config.sites)
    if not chosen:
        raise DeadzoneError(f"{config.model} has no site to scan ({config.sites or 'blocks'})")
    return chosen


def design(
    config: ScanConfig,
    prepared: Prepared,
    *,
    on_file: Callable[[Path], None] | None = None,
    say: Callable[[str], None] = print,
) -> Design:
    """The scan's identity, its runset (strategies and seeds may grow), and its rounds."""
    ctx = _context(config, prepared)
    state: dict = {"scale": None, "records": {}, "askers": {}, "pending": True, "decided": {},
                   "priors": {}, "seed_plan": None, "attribution": None}  # fmt: skip
    return Design(
        identity=ctx["identity"],
        runset={"strategies": list(config.strategies), "seeds": list(range(config.seeds))},
        summarize=partial(_summary, state, ctx, config),
        header={"mode": config.mode},
        drive=partial(_drive, config, ctx, state, on_file=on_file, say=say),
    )


def _drive(config: ScanConfig, ctx: dict, state: dict, session: Session, *, on_file, say) -> None:
    """The baselines, then every strategy's search round by round, Holm's verdicts, the joint
    checks and (main process) the freeze plan."""
    say = say if session.main else _silent
    results, sites = session.results, ctx["sites"]
    names = [s.name for s in sites]
    retried: set[str] = set()  # a run lost again is not asked for again

    def run(specs: list[RunSpec]) -> None:
        retried.update(t.key for t in session.run(specs))

    exhaustive = config.seeds * (1 + len(config.strategies) * len(names))
    most = _at_most(config, sites)
    say(
        f"scan: {len(names)} sites x {len(config.strategies)} strategies "
        f"({', '.join(config.strategies)}), {config.mode}, up to {config.seeds} seeds: "
        f"at most {most} runs, {exhaustive} for the exhaustive scan without its joint check "
        f"({len(results.runs)} recorded already)"
    )
    workers = getattr(session.executor, "workers", None) or 1
    attribution = config.mode == "prior"
    if not results.finished("full/seed0"):  # the baselines that run at once, timed
        run([full_spec(s, attribution) for s in range(min(config.seeds, workers))])
    first = results.runs["full/seed0"].get("seconds") or 0.0
    left = max(0, most - len(results.runs))
    say(
        f"scan: one run takes {first:.1f} s; at most {left} runs left, at most "
        f"{_duration(left * first / workers)} with {workers} at a time"
    )
    run([full_spec(s, attribution) for s in range(config.seeds)])
    comparisons = len(names) * len(config.strategies)
    state["scale"] = _scale(results.runs, config.seeds, config, comparisons)
    state["scale"]["retried"] = retried
    worst, best = _seed_plans(results.runs, config.seeds, state["scale"])
    state["seed_plan"] = {"worst": asdict(worst), "best": asdict(best)}
    if attribution and best.decision == "refuse":  # only the baselines ran; more seeds reuse them
        raise DeadzoneError(f"even if pairing divides the spread by {PAIRING:g}, {best.message()}")
    say(f"scan: at worst (the baselines' unpaired spread), {worst.message()}")
    if attribution:
        _read_priors(config, ctx, state, results.runs, say)
    rounds = 0
    while missing := _missing(config, ctx, state, results.runs):
        if config.mode == "exhaustive" and rounds == 0:  # every single-site run at once
            every = exhaustive_specs(names, config.strategies, config.seeds)
            missing = [spec for spec in every if not results.finished(spec.key)] or missing
        rounds += 1
        done = len(results.runs)
        say(
            f"scan: round {rounds}: {len(missing)} run(s); {done} done of at most {most} "
            f"(at most {_duration((most - done) * first / workers)} left); "
            f"{_so_far(state['decided'])}"
        )
        run(missing)
    state["pending"] = False
    if attribution:
        for strategy, record in state["records"].items():
            say(_split_line(strategy, record["priors"]))
    results.save()
    if "frozen" in config.strategies and session.main:
        for path in _write_plan(results.out, ctx, config, state["records"]["frozen"]).values():
            if on_file is not None:
                on_file(path)


def _seed_plans(
    runs: dict[str, dict], seeds: int, scale: dict
) -> tuple[stats.SeedPlan, stats.SeedPlan]:
    """How well ``seeds`` seeds can call a free site negligible: at worst, at the strictest
    level the scan reads (``0.05 / m``) with the SD the baselines' spread gives (it holds the
    batch order's noise, which pairing removes); at best, at the loosest level Holm reads
    (0.05) with that SD over :data:`PAIRING`. The prior mode refuses seeds whose best case
    is ``refuse``: they could not decide even one claim."""
    finals = [runs[f"full/seed{s}"]["final_eval_loss"] for s in range(seeds)]
    gains = list(scale["gains"].values())
    gain = sum(gains) / len(gains) if scale["unit"] != "nats" else None
    sd = stats.paired_sd_from_baselines(finals, gain)
    worst = stats.plan_seeds(seeds, sd, scale["margin_used"], level=scale["alpha"])
    return worst, stats.plan_seeds(seeds, sd / PAIRING, scale["margin_used"])


def _read_priors(config: ScanConfig, ctx: dict, state: dict, runs: dict, say) -> None:
    """The baselines' run scores (:func:`run_scores`) and each strategy's prior in the margin's
    units (:func:`priors`) into ``state``."""
    records = [runs[f"full/seed{s}"].get("attribution") for s in range(config.seeds)]
    if any(r is None for r in records):  # baselines of another mode: no prior, every site alone
        say("scan: the baselines hold no attribution (recorded by another mode): no prior")
        state["priors"] = {strategy: {} for strategy in config.strategies}
        return
    scores = run_scores(ctx["model"], ctx["sites"], records)
    state["run_scores"] = scores
    state["attribution"] = attribution_cost(runs, config.seeds)
    state["priors"] = {
        strategy: priors(strategy, scores, state["scale"]) for strategy in config.strategies
    }
    for strategy, prior in state["priors"].items():
        known = sum(v is not None for v in prior.values())
        say(
            f"scan: {strategy} by prior ({PRIOR_SCORE[strategy]}): {known} sites ranked; the "
            "lowest per parameter judged together first (bisection over how many), the rest by "
            "calibrated prior"
            + (", the likely costly judged too (--confirm)" if config.confirm else "")
        )


def _split_line(strategy: str, part: dict) -> str:
    """What the priors did for ``strategy`` (a :class:`~deadzone.experiments.search.PriorSplit`
    as a dict), in a line."""
    per = " per parameter" if part.get("per_parameter") else ""  # absent: an older record
    found = f"the {len(part['candidates'])} lowest priors{per} negligible together"
    calibrated = (
        f"priors x{part['factor']:.3g} from the {len(part['calibrated_on'])} first"
        if part["calibrated_on"]
        else "priors not calibrated (no set refused)"
    )
    rest = (
        f"{sum(map(len, part['groups']))} judged in {len(part['groups'])} group(s)"
        if part["groups"] or not part["middle"]
        else f"{len(part['middle'])} not judged (--rest label)"
    )
    return (
        f"scan: {strategy} by prior: {found}; {calibrated}; {rest}, "
        f"{len(part['likely_costly'])} likely costly (prior)"
    )


def _silent(text: str) -> None:
    """``say`` on the processes that do not write."""


def _missing(config: ScanConfig, ctx: dict, state: dict, runs: dict[str, dict]) -> list[RunSpec]:
    """The runs every strategy's next question needs; none when every search is answered,
    Holm's verdicts are read and every joint check is answered."""
    missing: list[RunSpec] = []
    for strategy in config.strategies:
        try:
            state["records"][strategy] = _search(
                runs, state, config, strategy, ctx["sites"], ctx["priority"]
            )
        except _Missing as m:
            missing += m.specs
    if missing:
        return missing
    holm_verdicts(state["records"], runs, state["scale"])
    for strategy, record in state["records"].items():
        try:
            _joint(state, config, strategy, record, ctx["sites"], ctx["priority"])
        except _Missing as m:
            missing += m.specs
    return missing


def _so_far(decided: dict[str, dict[str, dict]]) -> str:
    """``frozen 12 negligible, 3 undetermined; random none decided so far``: the verdicts each
    strategy's search has reached (Holm's, once it is answered)."""
    parts = []
    for strategy, sites in decided.items():
        counts = search_mod.verdict_counts({"sites": sites})
        said = ", ".join(f"{n} {verdict}" for verdict, n in counts.items() if n)
        parts.append(f"{strategy} {said or 'none decided'}")
    return "; ".join(parts) + " so far"


def _write_plan(out: str | Path, ctx: dict, config: ScanConfig, record: dict) -> dict[str, Path]:
    """The freeze plan of the ``frozen`` joint set, the other block sites in its ``order`` (the
    schedules that read it freeze block matrices only); the paths written."""
    joint = record["joint"]["sites"] if record["joint"] else []
    blocks = [s.name for s in ctx["sites"] if s.layer is not None]
    plan = make_plan(
        ctx["model"],
        dict.fromkeys(joint, "frozen"),
        source=config.model,
        order=cost_order(record, blocks),
    )
    return write_plan(out, ctx["model"], plan)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _at_most(config: ScanConfig, sites: list[Site]) -> int:
    """An upper bound on the scan's runs, baselines included: per strategy, every node of every
    group's halving tree (``2g - 1`` for a group of ``g``; one per site when exhaustive) and
    every step of the joint check (at most one per site), each on every seed."""
    n = len(sites)
    if config.mode == "exhaustive":
        judged = n
    elif config.mode == "prior":  # the search over the first priors, then the rest
        judged = 2 * n.bit_length() + (n if config.rest == "judge" else 0)
    else:
        judged = sum(2 * len(g) - 1 for g in search_mod.groups_by(sites, config.groups))
    return config.seeds * (1 + len(config.strategies) * (judged + n))


def _context(config: ScanConfig, prepared: Prepared) -> dict:
    """What the scan's rounds and summary read: the chosen sites, identity, cheap scores,
    the search's priority and the parameter counts."""
    model, chosen = prepared.model, prepared.chosen
    scores = cheap_scores(model, chosen, prepared.inputs)
    priority = {n: v for n, v in scores.get(PRIORITY, {}).items() if v is not None}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    in_blocks = block_params((n, p.numel()) for n, p in model.named_parameters())
    identity = prepared.identity(
        EXPERIMENT,
        {"trainable_params": trainable, "block_params": in_blocks},
        sites=[s.name for s in chosen],
    )
    return {
        "model": model,
        "sites": chosen,
        "identity": identity,
        "scores": scores,
        "priority": priority,
        "trainable": trainable,
        "in_blocks": in_blocks,
    }


def _summary(state: dict, ctx: dict, config: ScanConfig, runs: list[dict]) -> dict:
    """What the report reads: per strategy its sites, correlations, joint check and search
    record; the effective counts; the scale; the scores."""
    scale = state["scale"] or {}
    strategies = {}
    effective = {}
    scores = ctx["scores"] | state.get("run_scores", {})
    for strategy, record in state["records"].items():
        strategies[strategy] = {
            **strategy_summary(record, ctx["sites"], scores),
            "search": {k: record.get(k) for k in ("steps", "judgements", "runs", "priors")},
            "verdicts": search_mod.verdict_counts(record),
        }
        effective[strategy] = effective_counts(
            record["joint"], ctx["sites"], trainable=ctx["trainable"], in_blocks=ctx["in_blocks"]
        )
    return {
        "complete": not state["pending"],
        "mode": config.mode,
        "confirm": config.confirm,
        "seed_plan": state.get("seed_plan"),
        "attribution": state.get("attribution"),
        "alpha": scale.get("alpha"),
        "comparisons": scale.get("comparisons"),
        "unit": scale.get("unit"),
        "margin": config.margin,
        "margin_nats": config.margin_nats,
        "margin_used": scale.get("margin_used"),
        "gains": scale.get("gains"),
        "gain_interval": scale.get("gain_interval"),
        "runs": len(runs),
        "seeds": config.seeds,
        "strategies": strategies,
        "effective": effective,
        "scores": ctx["scores"] | state.get("run_scores", {}),
    }
