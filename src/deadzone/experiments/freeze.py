"""The ``freeze`` experiment: fine-tune while a schedule freezes parameters, side by side with
``full``, over several seeds; what each schedule saves and what it costs.

Each schedule (``deadzone.training.schedules``: ``plan:FILE``, ``geometry:METRIC``, ``freezeout``,
``autofreeze``, ``lisa``, ``random``, ``full``) runs once per seed; for a seed, every run sees
the same batches (the paired design). A run carries its schedule as a
:class:`~deadzone.training.schedules.ScheduleSpec` and builds it where it trains, from its own
model,
steps and seed. The cost of a schedule is judged exactly as crystallize judges a strategy
(:func:`deadzone.experiments.crystallize.summarize`: a share of the fine-tuning gain against a
margin, Holm over the schedules); beside it, :func:`savings` gives each schedule's wall time,
CPU time, optimizer-state peak and tokens/s against ``full`` (paired ratios per seed) and the
share of block-matrix parameters it froze.

Every schedule is built once on the pristine model before any run, so a schedule that cannot
run (an unknown one, a plan for another model, one that would freeze every parameter) stops
the experiment before it starts. A ``plan:FILE`` schedule is identified by its file's name and
by its content (:func:`plan_digest`): resuming with an edited plan is refused, as any change to
what the finished runs computed is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from deadzone import __version__, fileio, plans
from deadzone.config import DEFAULT_MARGIN, DEFAULT_MARGIN_NATS
from deadzone.errors import DeadzoneError
from deadzone.experiments import crystallize as crystal
from deadzone.experiments import stats
from deadzone.experiments.configs import BASELINE, CONTROL, FreezeConfig
from deadzone.experiments.execute import Executor, RunTask
from deadzone.experiments.runs import ResultsDir, RunSpec, run_one
from deadzone.experiments.skeleton import (
    Design,
    Prepared,
    Session,
    plan_experiment,
    run_experiment,
)
from deadzone.ratios import geometric
from deadzone.training.schedules import ScheduleSpec
from deadzone.training.tracking import NO_TRACKING, Tracking

__all__ = ["BASELINE", "CONTROL", "FreezeConfig", "freeze", "plan_runs", "summarize"]

log = logging.getLogger(__name__)

EXPERIMENT = "freeze"


def plan_runs(specs: dict[str, ScheduleSpec], seeds: int) -> list[RunSpec]:
    """Seed-major order (complete pairs first); key ``SCHEDULE/seedN``."""
    return [
        RunSpec(
            key=f"{name}/seed{seed}",
            plan={},
            seed=seed,
            # "strategy" is the arm name crystallize's summary reads.
            labels={"schedule": name, "strategy": name, "rank": None, "seed": seed},
            schedule=None if name == BASELINE else spec,
            freeze_plan=_whole(spec.plan),
        )
        for seed in range(seeds)
        for name, spec in specs.items()
    ]


def freeze(
    config: FreezeConfig,
    out: str | Path | None = None,
    *,
    executor: Executor | None = None,
    save: str | Path | None = None,
    show_progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
    tracking: Tracking | None = None,
) -> dict:
    """Run (or resume, or extend) the experiment into ``out`` (default ``config.out``); return
    the ``results.json`` document. ``save``: a directory to write seed 0 of the first schedule
    that is not ``full`` to, in Hugging Face format (trained here, in this process; again if
    already recorded). ``executor`` and ``tracking`` default to what ``config.execution`` and
    ``config.tracking`` say. ``save`` must lie outside ``out``, and be new, empty, or a model an
    earlier ``save`` wrote (which it replaces). A plan or geometry schedule without the random
    control beside it runs, with a warning (:func:`design`)."""
    if save is not None:
        if config.first_frozen() is None:
            raise DeadzoneError("--save writes a frozen schedule's model: list one beside full")
        check_save_dir(save, out if out is not None else config.out)
    loaded = {name: _load_plan(name) for name in config.schedules}  # before the model loads
    # every experiment's entry has this shape: its own design and check, one skeleton
    return run_experiment(
        config,
        out,
        partial(design, config, save=save),
        check=partial(schedules, config, loaded),
        executor=executor,
        tracking=tracking,
        show_progress=show_progress,
        on_record=on_record,
    )


def plan(
    config: FreezeConfig, threads: int = 1, tracking: Tracking = NO_TRACKING
) -> tuple[Prepared, Design]:
    """The experiment's inputs and runs, loaded and planned; nothing run."""
    loaded = {name: _load_plan(name) for name in config.schedules}
    # the shape of every experiment's plan(): its design and check, nothing run
    return plan_experiment(
        config, partial(design, config), partial(schedules, config, loaded), threads, tracking
    )


def _whole(plan: dict | None) -> dict | None:
    """A plan with a frozen prefix or an untied head, applied whole before its runs train (the
    schedule freezes its sites; the prefix's biases and norms, and the untying, are this)."""
    if plan is not None and (plan.get("prefix_depth") or plan.get("untie_head")):
        return plan
    return None


def _load_plan(name: str) -> dict | None:
    kind, _, arg = name.partition(":")
    return plans.load_plan(arg) if kind == "plan" and arg else None


def schedules(config: FreezeConfig, loaded: dict, model, sites) -> dict[str, ScheduleSpec]:
    """Every schedule, built once on the pristine model, so that one that cannot run (a plan
    for another model, one that would freeze every parameter) stops here, before any data."""
    specs = {}
    for name in config.schedules:
        spec = ScheduleSpec(
            name, config.unit, config.target_fraction, config.freeze_by, plan=loaded[name]
        )
        spec.build(model, config.sft.steps)  # refuses what cannot run, before any run
        specs[name] = spec
    if config.sft.cache_prefix:
        _check_cacheable(model, specs)
    return specs


def _check_cacheable(model, specs: dict[str, ScheduleSpec]) -> None:
    """``--cache-prefix`` needs a plan schedule with a frozen prefix from step 1, and that
    prefix deterministic (no dropout): a one-line error otherwise, before any data."""
    from deadzone.training import prefix

    depths = [(s.plan or {}).get("prefix_depth", 0) for s in specs.values()]
    if not any(depths):
        raise DeadzoneError(
            "--cache-prefix needs a wholly frozen prefix: give a plan:FILE schedule whose plan "
            "has a prefix_depth (deadzone plan writes one)"
        )
    prefix.check_deterministic(model, max(depths))


def plan_savings(prepared: Prepared) -> dict[str, dict]:
    """The savings model (``deadzone.training.savings``) of each plan schedule's plan, per step
    at the batch size and the mean training length, with cached prefix outputs if asked."""
    import copy
    import statistics

    from deadzone.training.savings import savings as model_savings

    sft, out = prepared.config.sft, {}
    seq = max(1, round(statistics.fmean(len(e.input_ids) for e in prepared.inputs.data.train)))
    for name, spec in prepared.chosen.items():
        if spec.plan is None:
            continue
        model = copy.deepcopy(prepared.model)
        plans.apply_plan(model, spec.plan)
        cached = sft.cache_prefix and bool(spec.plan.get("prefix_depth"))
        found = model_savings(model, sft.batch_size, seq, cached=cached)
        out[name] = {**found.to_dict(), "batch_size": sft.batch_size, "seq_len": seq,
                     "cached": cached}  # fmt: skip
    return out


def design(config: FreezeConfig, prepared: Prepared, *, save=None) -> Design:
    """Every schedule on every seed; the schedules, seeds and plans may grow. A plan or
    geometry schedule without the random control beside it is said, once it can run."""
    uncontrolled = config.uncontrolled()
    if uncontrolled:
        log.warning(
            "warning: %s runs without the %s control: its cost is judged against full only; "
            "add %s to the schedules to see whether it beats freezing at random",
            ", ".join(uncontrolled), CONTROL, CONTROL,
        )  # fmt: skip
    specs = plan_runs(prepared.chosen, config.seeds)
    return Design(
        identity=prepared.identity(
            EXPERIMENT,
            unit=config.unit,
            target_fraction=config.target_fraction,
            freeze_by=config.freeze_by,
        ),
        runset={
            "schedules": list(config.schedules),
            "seeds": list(range(config.seeds)),
            "plans": _plan_digests(specs),
        },
        summarize=partial(summarize, margin=config.margin, margin_nats=config.margin_nats),
        specs=specs,
        header={"plan_savings": plan_savings(prepared)},
        drive=partial(_drive, config, specs, save),
    )


def _drive(config: FreezeConfig, specs: list[RunSpec], save, session: Session) -> None:
    _check_plans_unchanged(session.results)
    if save is not None:
        _train_and_save(session, config, save)
    session.run(specs)


# --- plan:FILE schedules: identified by their content too -------------------------------------


def plan_digest(plan: dict) -> str:
    """sha256 of what a plan decides: the model's fingerprint, its sites and its order."""
    content = {
        "fingerprint": plan["model"]["fingerprint"],
        "sites": plan["sites"],
        "order": plan.get("order") or [],
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _plan_digests(runs: list[RunSpec]) -> list[dict]:
    """``{"schedule": "plan:FILE", "sha256": ...}`` of each plan schedule of ``runs``."""
    specs = {r.schedule.spec: r.schedule.plan for r in runs if r.schedule}
    return [
        {"schedule": spec, "sha256": plan_digest(plan)}
        for spec, plan in specs.items()
        if plan is not None
    ]


def _check_plans_unchanged(results: ResultsDir) -> None:
    """Refuse to resume runs of a ``plan:FILE`` whose file has changed since (the results
    record the old content and the new one, first-seen first)."""
    seen: dict[str, str] = {}
    for entry in results.runset.get("plans", []):
        spec, digest = entry["schedule"], entry["sha256"]
        if seen.setdefault(spec, digest) != digest:
            raise DeadzoneError(
                f"{results.out} holds a freeze experiment with {spec} of sha256 "
                f"{seen[spec][:12]} ({digest[:12]} now: the plan changed); choose another "
                "output directory"
            )


# --- --save: the fine-tuned model, written whole or not at all ---------------------------------

SAVED = "deadzone_saved.json"  # in a model --save wrote: which run it is; marks it replaceable


def check_save_dir(path: str | Path, out: str | Path | None = None) -> Path:
    """``path`` as a directory the model can be written to, or a one-line error now, before
    any training: its parent writable; new, empty, or a model an earlier ``--save`` wrote
    (marked by ``deadzone_saved.json``, and replaced); apart from the output directory ``out``
    (neither inside the other)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DeadzoneError(f"--save {path} is a file; give a directory")
    if out is not None:
        here, there = path.resolve(), Path(out).resolve()
        if here == there or there in here.parents or here in there.parents:
            raise DeadzoneError(f"--save {path} overlaps --out {out}; give a directory apart")
    if path.is_dir() and any(path.iterdir()) and not (path / SAVED).is_file():
        raise DeadzoneError(f"--save {path} exists and is not a model deadzone saved")
    parent = path.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise DeadzoneError(f"cannot write --save {path}: {parent} is not a writable directory")
    return path


def save_model(model, tokenizer, path: str | Path, source: dict) -> Path:
    """Write ``model`` and ``tokenizer`` in Hugging Face format to ``path``, with ``source``
    (which run it is) in ``deadzone_saved.json``: into a temporary directory beside it, then
    renamed over it (a previous save there is replaced whole)."""
    path = check_save_dir(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    old = None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        fileio.write_json(tmp / SAVED, {"saved_by": "deadzone freeze", **source})
        fileio.ordinary_permissions(tmp)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            path.rename(old / "model")
        tmp.rename(path)
    except OSError as e:
        raise DeadzoneError(f"cannot write --save {path}: {e.strerror or e}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return path


def _train_and_save(session: Session, config: FreezeConfig, save) -> None:
    """Train seed 0 of the first frozen schedule here and save its model (record it too, if it
    was not recorded yet: the same run, computed again, gives the same record)."""
    key = f"{config.first_frozen()}/seed0"
    prepared, results = session.prepared, session.results
    task: RunTask = next(prepared.task(sp) for sp in plan_runs(prepared.chosen, 1) if sp.key == key)
    saved: list = []
    torch.set_num_threads(task.threads)
    record = run_one(
        prepared.inputs,
        task.run,
        show_progress=session.main,
        on_model=saved.append,
        exact_match=task.exact_match,
    )
    if not saved:
        raise DeadzoneError(f"the run {key} failed ({record.get('error')}); no model to save")
    if session.main:
        source = {"model": config.model, "out": str(results.out.resolve()), "run": key}
        save_model(saved[0], prepared.tokenizer, save, source | {"deadzone_version": __version__})
    if not results.finished(key):
        results.add({**record, "threads": task.threads})


# --- summary: cost (as crystallize judges it) and savings against full --------------------------


def summarize(
    runs: list[dict],
    *,
    margin: float = DEFAULT_MARGIN,
    margin_nats: float = DEFAULT_MARGIN_NATS,
) -> dict:
    """Crystallize's summary of the schedules' costs, each arm with its ``savings``."""
    summary = crystal.summarize(runs, margin=margin, margin_nats=margin_nats)
    ok = [r for r in runs if r.get("status") == "ok"]
    full = {r["seed"]: r for r in ok if r["strategy"] == BASELINE}
    control = {r["seed"]: r for r in ok if r["strategy"] == CONTROL}
    for arm in summary["arms"]:
        mine = [r for r in ok if r["strategy"] == arm["strategy"]]
        arm["schedule"] = arm["strategy"]
        arm["savings"] = savings(mine, full)
        if control and arm["strategy"] not in (BASELINE, CONTROL):
            arm["vs_random"] = _versus(mine, control)
    return summary


def _versus(mine: list[dict], control: dict[int, dict]) -> dict:
    """Per-seed paired differences in final eval loss (nats) against the random control, on
    the same batches: below zero means ahead of it; ``ahead`` if the whole 95% interval is."""
    diffs = [
        r["final_eval_loss"] - control[r["seed"]]["final_eval_loss"]
        for r in mine
        if r["seed"] in control
    ]
    mean, sd = stats.mean_sd(diffs)
    interval = stats.t_interval(diffs)
    return {
        "nats": diffs,
        "mean": mean,
        "sd": sd,
        "interval": list(interval) if interval else None,
        "ahead": interval is not None and interval[1] < 0,
    }


RATIOS = {  # name -> what of a run record is compared against full's
    "wall_time": lambda r: r["seconds"],
    "cpu_time": lambda r: r.get("cpu_seconds") or None,
    "optimizer_peak": lambda r: max(p["optimizer_state_bytes"] for p in r["curve"]),
    "optimizer_mean": lambda r: (
        sum(p["optimizer_state_bytes"] for p in r["curve"][1:]) / max(1, len(r["curve"]) - 1)
    ),
    "tokens_per_second": lambda r: r["tokens_per_second"],
    # a peak over the life of the process (where it cannot be reset) is not the run's
    "peak_memory": lambda r: (
        r["peak_memory_bytes"] if r.get("peak_memory_scope") != "process" else None
    ),
}


def savings(mine: list[dict], full: dict[int, dict]) -> dict:
    """Per-seed ratios against ``full`` (geometric mean, log-scale interval: ``ratios.geometric``)
    and the frozen shares of a schedule."""
    out: dict = {}
    for name, of in RATIOS.items():
        ratios = []
        for r in mine:
            f = full.get(r["seed"])
            if f is not None and of(r) and of(f):
                ratios.append(of(r) / of(f))
        out[name] = geometric(ratios)
    finals = [frozen_final(r) for r in mine]
    means = [frozen_mean(r) for r in mine]
    out["frozen_fraction"] = stats.mean_sd(finals)[0] if mine else None
    out["frozen_fraction_mean"] = stats.mean_sd(means)[0] if mine else None
    return out


def frozen_final(run: dict) -> float:
    """Share of block-matrix parameters frozen at the last step of ``run``."""
    timeline = run.get("timeline") or []
    return timeline[-1]["fraction"] if timeline else 0.0


def frozen_mean(run: dict) -> float:
    """Share of block-matrix parameters frozen, averaged over the steps of ``run``."""
    timeline = run.get("timeline") or []
    steps = run.get("steps_done") or 0
    if not timeline or not steps:
        return 0.0
    total = 0.0
    for i, entry in enumerate(timeline):
        end = timeline[i + 1]["step"] if i + 1 < len(timeline) else steps + 1
        total += entry["fraction"] * (min(end, steps + 1) - entry["step"])
    return total / steps
