"""Runs and results directories, shared by every experiment.

A run is one SFT of a fresh copy of the model with one strategy per site and one seed. An
experiment plans its runs as :class:`RunSpec` s, has an executor run them
(``deadzone.experiments.execute``), and keeps their records in a :class:`ResultsDir`, whose
``results.json`` is rewritten atomically after every run. Rerunning an experiment into the same
directory skips the runs already recorded and adds the missing ones (more seeds, another
strategy); an experiment whose finished runs computed something else (another model, data or
configuration) is refused, never mixed in.

Under several processes every process runs every run (each holds a shard of the batches) and
keeps every record, but only the main process writes ``results.json``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from deadzone import fileio, locks, plans
from deadzone.data.sft import SFTData, eval_batches, train_batches
from deadzone.errors import DeadzoneError
from deadzone.experiments.results import RESULTS, read_results
from deadzone.models.checkpoints import pristine_copy
from deadzone.models.sites import Site
from deadzone.provenance import git_state, versions
from deadzone.training import prefix, strategies
from deadzone.training.attribution import AttributionHook
from deadzone.training.schedules import ScheduleHook, ScheduleSpec, frozen_fraction
from deadzone.training.train import Batch, RunFailed, RunResult, SFTConfig, SFTLoop


@dataclass(frozen=True)
class RunSpec:
    """One planned run: ``plan`` maps site names to strategies; other sites train (``full``).

    ``key`` names the run uniquely within its experiment; ``labels`` are copied into its record.
    ``rank`` is the rank of every ``crystal`` site of the run. ``schedule``, if given, freezes
    parameters during the run (built inside the run from the run's model, steps and seed); its
    record then holds the schedule's ``timeline``. ``freeze_plan``, if given, is a deadzone plan
    applied whole (:func:`deadzone.plans.apply_plan`: its sites, its prefix, its untied head)
    just before the run trains.
    """

    key: str
    plan: dict[str, str]
    seed: int
    rank: int = 1
    labels: dict = field(default_factory=dict)
    schedule: ScheduleSpec | None = None
    freeze_plan: dict | None = None
    attribution: int | None = None
    attribution_batches: int = 4


@dataclass
class RunInputs:
    """What every run of an experiment shares: the pristine model, its sites, data and config.

    Every run trains a copy of ``model``, which itself is never modified. For a given seed
    every run sees the same training batches in the same order and the same eval batches.
    ``tokenizer`` (if given) lets a finished run score exact match on the eval examples.
    ``step0`` keeps, per seed, the step-0 eval loss of a run whose model at step 0 is ``model``
    itself, for the next such run of the seed to reuse (:data:`UNCHANGED_AT_STEP0`).
    """

    model: torch.nn.Module
    sites: dict[str, Site]
    data: SFTData
    pad_id: int
    config: SFTConfig
    tokenizer: object = None
    eval: list[Batch] = field(init=False)
    step0: dict[int, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # Eval loss is a token-weighted sum, so order is free: batch by length, pad little.
        by_length = sorted(self.data.eval, key=lambda e: len(e.input_ids))
        self.eval = eval_batches(by_length, self.config.batch_size, pad_id=self.pad_id)
        if not self.eval:
            raise DeadzoneError("no evaluation examples")

    def train_data(self, seed: int):
        return train_batches(self.data.train, self.config.batch_size, seed=seed, pad_id=self.pad_id)


# Strategies that leave a site's values as they are: a run of these alone (with or without a
# schedule, which freezes during training only) evaluates the pristine model at step 0.
UNCHANGED_AT_STEP0 = frozenset({"full", "frozen"})


class _Step0Loop(SFTLoop):
    """An SFT loop whose first evaluation (step 0) is ``step0`` when given, not computed."""

    def __init__(self, *args, step0: float | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._step0 = step0

    def evaluate(self) -> float:
        if self._step0 is not None:
            loss, self._step0 = self._step0, None
            return loss
        return super().evaluate()


def run_one(
    inputs: RunInputs,
    spec: RunSpec,
    *,
    accelerator=None,
    show_progress=True,
    hooks=(),
    on_model: Callable[[torch.nn.Module], None] | None = None,
    exact_match: int = 0,
) -> dict:
    """Train one run and return its record: ``labels``, the run result and the site records
    (and the schedule's ``timeline``: when the frozen set changed, what it held, and the share
    of block-matrix parameters frozen). ``on_model`` is given the trained model of a run that
    finished. A finished run scores exact match on the first ``exact_match`` eval examples
    (:func:`scored_exact_match`), recorded as ``exact_match`` when any of them has a prompt.

    ``hooks`` (``deadzone.training.train.Hook``) are called by the run's SFT loop; they observe (a
    tracker), they do not change what the run computes unless its plan says so.

    A strategy that cannot be applied (it raises :class:`RunFailed`) makes the run ``failed``
    with the reason, like a run that meets a non-finite loss; the runs beside it go on.

    A run whose model at step 0 is the pristine one (``full`` and ``frozen`` sites only, any
    schedule) reuses the step-0 eval loss of the last such run of its seed instead of
    evaluating the same model on the same batches again.
    """
    model = pristine_copy(inputs.model)  # read back from its files: one copy in memory
    plan = {inputs.sites[name]: strategy for name, strategy in spec.plan.items()}
    try:
        site_records = strategies.apply_strategies(model, plan, rank=spec.rank, seed=spec.seed)
    except RunFailed as e:
        return failed_record(spec, str(e))
    config = replace(inputs.config, seed=spec.seed)
    planned = [e["strategy"] for e in spec.freeze_plan["sites"]] if spec.freeze_plan else []
    pristine = {*spec.plan.values(), *planned} <= UNCHANGED_AT_STEP0
    schedule = None
    if spec.schedule is not None:
        schedule = ScheduleHook(spec.schedule.build(model, config.steps, spec.seed))
        hooks = [schedule, *hooks]
    if spec.freeze_plan is not None:
        plans.apply_plan(model, spec.freeze_plan)
    if config.cache_prefix and prefix.prefix_depth(model) == 0:
        config = replace(config, cache_prefix=False)  # nothing to cache: the prefix trains
    attribution = None
    if spec.attribution is not None:
        batches = inputs.eval[: spec.attribution_batches]
        attribution = AttributionHook(batches, every=spec.attribution)
        hooks = [*hooks, attribution]
    loop = _Step0Loop(
        model,
        inputs.train_data(spec.seed),
        inputs.eval,
        config,
        accelerator=accelerator,
        description=spec.key,
        show_progress=show_progress,
        hooks=list(hooks),
        step0=inputs.step0.get(spec.seed) if pristine else None,
    )
    result = loop.run()
    if pristine and result.step0_eval_loss is not None:
        inputs.step0[spec.seed] = result.step0_eval_loss
    record = {**spec.labels, "key": spec.key, **result.to_dict(), "sites": site_records}
    if schedule is not None:
        record["timeline"] = timeline(schedule)
    if result.status == "ok" and (scored := scored_exact_match(inputs, loop.module, exact_match)):
        record["exact_match"] = scored
    if attribution is not None and result.status == "ok":
        record["attribution"] = attribution.record.to_dict()
    if on_model is not None and result.status == "ok":
        on_model(loop.module)
    return record


def scored_exact_match(inputs: RunInputs, model: torch.nn.Module, examples: int) -> dict | None:
    """Exact match of ``model``'s greedy completions on the first ``examples`` eval examples
    (``deadzone.training.metrics``), with three samples; None when nothing was scored (no
    tokenizer, ``examples`` 0, or plain-text examples only)."""
    if examples <= 0 or inputs.tokenizer is None:
        return None
    from deadzone.training.metrics import exact_match

    scored = exact_match(model, inputs.tokenizer, inputs.data.eval[:examples], samples=3)
    return scored.to_dict() if scored.total else None


def timeline(hook: ScheduleHook) -> list[dict]:
    """``hook``'s timeline as record entries: step, frozen units, frozen share of the block
    matrices (step 1 always present)."""
    entries = list(hook.timeline)
    if not entries or entries[0][0] != 1:
        entries.insert(0, (1, []))
    return [
        {"step": step, "frozen": names, "fraction": frozen_fraction(hook.schedule, set(names))}
        for step, names in entries
    ]


def failed_record(spec: RunSpec, reason: str, **extra) -> dict:
    """The record of a run that failed before it trained, shaped like every other record.

    ``crashed=True`` marks a run lost to its worker dying: a rerun of the experiment tries it
    again, where a run that failed on its own numbers is kept as it is.
    """
    result = RunResult(status="failed", error=reason).to_dict()
    return {**spec.labels, "key": spec.key, **result, "sites": [], **extra}


LOCK = ".deadzone.lock"


@contextmanager
def writing(out: str | Path, writer: bool = True) -> Iterator[None]:
    """Hold ``out/.deadzone.lock`` inside the block, when ``writer`` (the main process).

    A second live writer is refused at once, naming the first (pid, host, command); a dead
    one's lock is free. Take it before loading anything, so that a refusal comes at once.
    """
    if not writer:
        yield
        return
    out = Path(out)
    if out.is_file():
        raise DeadzoneError(f"output directory {out} is a file")
    created = not out.exists()
    fileio.ensure_dir(out)
    try:
        with locks.file_lock(out / LOCK, wait=False, what=f"output directory {out}"):
            yield
    except BaseException:
        if created and not any(p.name != LOCK for p in out.iterdir()):
            shutil.rmtree(out, ignore_errors=True)  # refused before any result: leave no trace
        raise


class ResultsDir:
    """``results.json`` in ``out``: a header identifying the experiment, then run records.

    ``identity`` is what the finished runs computed (experiment name, model, data hash,
    configuration, ...): it must match for a rerun to resume. ``runset`` names the set of runs
    (lists such as ``strategies`` and ``seeds``): it may grow, and the file records the union
    of the old and new lists, first-seen order. ``header`` adds what is merely recorded
    (versions, git state). ``summarize`` turns the records into the ``summary`` saved beside
    them.

    Only a ``writer`` (the main process of a multi-process launch) writes the file; the others
    keep their records in memory, never overwriting it with a stale copy. A writer works inside
    :func:`writing`, which keeps other writers out.
    """

    def __init__(
        self,
        out: str | Path,
        identity: dict,
        header: dict | None = None,
        summarize: Callable[[list[dict]], object] | None = None,
        *,
        runset: dict | None = None,
        writer: bool = True,
    ) -> None:
        self.out = Path(out)
        self.writer = writer
        self.path = self.out / RESULTS
        self.identity = _normalise(identity)
        self.runset = _normalise(runset or {})
        self.header = _normalise(header or {})
        self.summarize = summarize
        self._order: dict[str, int] = {}
        if self.out.is_file():
            raise DeadzoneError(f"output directory {self.out} is a file")
        if writer:
            fileio.ensure_dir(self.out)  # fail now, not after the first run
        self.runs: dict[str, dict] = self._load()

    def _load(self) -> dict[str, dict]:
        old = read_results(self.out, self.identity.get("experiment"), missing_ok=True)
        if old is None:
            return {}
        _check_same(self.path, old, self.identity)
        for key, values in self.runset.items():
            there = old.get(key)
            if isinstance(there, list) and isinstance(values, list):
                self.runset[key] = there + [v for v in values if v not in there]
        return {r["key"]: r for r in old.get("runs", []) if isinstance(r, dict) and "key" in r}

    def finished(self, key: str) -> bool:
        """True for a recorded run, unless its worker died (``crashed``): that one runs again."""
        return key in self.runs and not self.runs[key].get("crashed")

    def add(self, record: dict) -> None:
        self.runs[record["key"]] = _normalise(record)
        self.save()

    def order_by(self, keys: list[str]) -> None:
        """Keep the records in the order of ``keys`` (the plan), whatever order they finish in;
        records of other keys (from an earlier, larger plan) follow in the order they came."""
        self._order = {key: i for i, key in enumerate(keys)}

    def document(self) -> dict:
        last = len(self._order)
        runs = sorted(self.runs.values(), key=lambda r: self._order.get(r["key"], last))
        doc = {**self.identity, **self.runset, **self.header, "runs": runs}
        if self.summarize is not None:
            doc["summary"] = self.summarize(runs)
        return doc

    def save(self) -> None:
        if not self.writer:
            return
        fileio.ensure_dir(self.out)
        fileio.write_json(self.path, self.document())


def _check_same(path: Path, old: dict, identity: dict) -> None:
    """Refuse a results file from another experiment or configuration, naming a difference."""
    if old.get("experiment") != identity.get("experiment"):
        raise DeadzoneError(
            f"{path.parent} holds another experiment ({old.get('experiment')!r}); "
            "choose another output directory"
        )
    difference = _first_difference(old, identity)
    if difference is not None:
        key, there, here = difference
        raise DeadzoneError(
            f"{path.parent} holds a {identity['experiment']} experiment with {key} "
            f"{_short(there)} ({_short(here)} now); choose another output directory"
        )


def _first_difference(old: dict, new: dict, prefix: str = "") -> tuple | None:
    """``(dotted key, old value, new value)`` of the first key of ``new`` that differs."""
    for key, value in new.items():
        there = old.get(key)
        if there == value:
            continue
        if isinstance(there, dict) and isinstance(value, dict):
            return _first_difference(there, value, f"{prefix}{key}.")
        return f"{prefix}{key}", there, value
    return None


def _short(value: object, limit: int = 60) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _normalise(obj: object) -> object:
    """``obj`` as it reads back from JSON (tuples become lists), with NaN refused."""
    return json.loads(json.dumps(obj, allow_nan=False))


def provenance() -> dict:
    """``versions`` and ``git`` for a results header."""
    return {"versions": versions(), "git": git_state()}
