"""The experiment skeleton every recipe (crystallize, scan, freeze) stands on.

An experiment is a config (:class:`deadzone.config.ExperimentConfig` and a recipe's fields),
checked before anything loads; :func:`prepare` loads the model, tokenizer, sites and data once;
a recipe's ``design`` turns them into a :class:`Design` (the runs' identity, the set of runs,
the summary, and the runs or a ``drive`` that asks for them round by round); and
:func:`run_experiment` owns the rest: the distributed state (``accelerate``'s ``PartialState``),
the ``--out`` lock (main process only), the results directory and the executor. A fourth
experiment copies the shape of ``crystallize.py``: a config, a ``design``, a summary.

Under ``accelerate launch`` every process runs every run on its shard of the batches; only the
main process takes the lock and writes ``results.json``.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from deadzone import __version__
from deadzone.config import ExperimentConfig
from deadzone.errors import DeadzoneError
from deadzone.experiments.execute import (
    DataRef,
    Executor,
    InProcess,
    ModelRef,
    RunTask,
    execute,
    executor_for,
    load_inputs,
    model_info,
    prime,
)
from deadzone.experiments.runs import ResultsDir, RunInputs, RunSpec, provenance, writing
from deadzone.models import sites as sites_mod
from deadzone.models.sites import Site
from deadzone.schema import SCHEMA_VERSION
from deadzone.training.tracking import NO_TRACKING, Tracking, tracking_of


@dataclass
class Prepared:
    """What :func:`prepare` loaded once for every run: the model and tokenizer, all its
    sites, the runs' shared inputs and the references a run task carries; ``chosen`` is what
    the recipe's ``check`` returned of the loaded model (its targets, its sites, its
    schedules)."""

    config: ExperimentConfig
    model: object
    tokenizer: object
    sites: list[Site]
    inputs: RunInputs
    model_ref: ModelRef
    data_ref: DataRef
    threads: int
    tracking: Tracking
    chosen: object = None

    def task(self, spec: RunSpec) -> RunTask:
        return RunTask(
            self.model_ref,
            self.data_ref,
            self.config.sft,
            spec,
            self.threads,
            self.tracking,
            self.config.exact_match_examples,
        )

    def identity(self, experiment: str, model_extra: dict | None = None, **extra) -> dict:
        """What the finished runs computed (a rerun that changes any of it is refused): the
        experiment, the model and its weights' dtype, ``extra`` (the recipe's), the steps, the
        data, the SFT config, how many eval examples exact match scores."""
        return {
            "experiment": experiment,
            "deadzone_version": __version__,
            "model": self.config.model,
            "model_info": model_info(self.model, self.model_ref) | (model_extra or {}),
            "dtype": self.model_ref.dtype,
            "exact_match_examples": self.config.exact_match_examples,
            **extra,
            "steps": self.config.sft.steps,
            "data": self.inputs.data.info,
            "config": self.config.sft_identity(),
        }


def prepare(
    config: ExperimentConfig,
    threads: int,
    tracking: Tracking,
    check: Callable[[object, list[Site]], object] | None = None,
) -> Prepared:
    """Load the model, tokenizer, sites and data of ``config`` once. ``check(model, sites)``
    (the recipe's: select its sites, build its schedules) runs on the loaded model before any
    data is built; what it returns is ``Prepared.chosen``. The model is loaded in
    ``config.dtype``; ``--endpoint exact_match`` on eval data of plain text is refused before
    the model loads, and on examples left with nothing to complete once tokenized, before any
    run."""
    from deadzone.models.checkpoints import load_model

    check_endpoint_early(config)
    model, tokenizer = load_model(config.model, dtype=load_dtype(config))
    if tokenizer is None:
        raise DeadzoneError(f"{config.model} has no tokenizer; SFT needs one")
    check_vocabulary(model, tokenizer)
    all_sites = sites_mod.find_sites(model)
    chosen = check(model, all_sites) if check is not None else None
    inputs, model_ref, data_ref = load_inputs(config, model, tokenizer, all_sites)
    check_endpoint(config, inputs)
    return Prepared(
        config, model, tokenizer, all_sites, inputs, model_ref, data_ref, threads, tracking, chosen
    )


def load_dtype(config: ExperimentConfig):
    """The torch dtype ``config.dtype`` names on the device the runs train on."""
    import torch

    from deadzone.models.device import weight_dtype

    return weight_dtype(config.dtype, torch.device("cpu") if config.sft.cpu else None)


def check_endpoint_early(config: ExperimentConfig) -> None:
    """``--endpoint exact_match`` needs eval rows with something to complete: refused here,
    before the model or tokenizer loads, when every table the eval examples come from (the
    ``--eval-data``, a builtin's eval split, else the ``--data`` a share is held out of) is
    plain text. The rows' shapes are read from their columns; nothing is tokenized."""
    if config.endpoint != "exact_match":
        return
    from deadzone.data.formats import TEXT, table_format
    from deadzone.data.sources import is_builtin, read_spec

    spec, split = config.data, "train"
    if config.eval_data is not None:
        spec, split = config.eval_data, "eval"
    elif is_builtin(spec):
        split = "eval"
    formats = {table_format(table) for table in read_spec(spec, split)}
    if formats <= {TEXT}:
        raise _nothing_to_complete(config, "+".join(sorted(formats)))


def check_endpoint(config: ExperimentConfig, inputs: RunInputs) -> None:
    """``--endpoint exact_match`` needs eval examples with a prompt to complete, once tokenized
    (rows with a prompt may still leave none: :func:`check_endpoint_early` reads only shapes)."""
    from deadzone.training.metrics import targets

    if config.endpoint != "exact_match":
        return
    scored = inputs.data.eval[: config.exact_match_examples]
    if not any(targets(example) for example in scored):
        raise _nothing_to_complete(config, inputs.data.info.get("format"))


def _nothing_to_complete(config: ExperimentConfig, fmt: str | None) -> DeadzoneError:
    return DeadzoneError(
        f"--endpoint exact_match needs prompt/completion or chat eval examples; the eval "
        f"data of {config.data} is plain text ({fmt})"
    )


def check_vocabulary(model, tokenizer) -> None:
    """Every token id the tokenizer can produce has a row in the model's input embedding."""
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise DeadzoneError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} "
            "rows: they do not belong together"
        )


# --- site names, checked before anything loads --------------------------------------------------

_BLOCK = re.compile(r"^L(\d+)(?=\.|$)")


def select_sites(sites: list[Site], pattern: str | None) -> list[Site]:
    """:func:`deadzone.models.sites.select`, except that a pattern naming a block the model
    does not have (``L9.*`` of an 8-block model) says which blocks it has."""
    blocks = sorted({s.layer for s in sites if s.layer is not None})
    names = [s.name for s in sites]
    for part in (p.strip() for p in (pattern or "").split(",")):
        found = _BLOCK.match(part)
        missing = found and blocks and int(found.group(1)) not in blocks
        if missing and not any(fnmatch.fnmatchcase(n, part) for n in names):
            raise DeadzoneError(
                f"no site matches {part!r}: the model's blocks are L{blocks[0]}–L{blocks[-1]}"
            )
    return sites_mod.select(sites, pattern)


def check_sites_early(model: str, pattern: str | None) -> None:
    """Site names or globs checked against the checkpoint's safetensors headers and config,
    without building the model (nothing to check, or no safetensors: the loaded model is)."""
    if pattern is None or pattern.strip() in ("", "*"):
        return
    from deadzone.models.checkpoints import open_checkpoint, resolve

    path = resolve(model)
    if not (path.suffix == ".safetensors" or (path.is_dir() and any(path.glob("*.safetensors")))):
        return  # open_checkpoint would build the model to find its sites: prepare does
    select_sites(open_checkpoint(model).sites, pattern)


# --- the run of an experiment -------------------------------------------------------------------


@dataclass
class Session:
    """An experiment under way: its inputs, results directory and executor; :meth:`run` runs
    the runs of some specs not finished yet. ``main`` is the process that writes."""

    prepared: Prepared
    results: ResultsDir
    executor: Executor
    main: bool
    on_record: Callable[[dict], None] | None = None
    show_progress: bool = True

    def run(self, specs: list[RunSpec]) -> list[RunTask]:
        tasks = [self.prepared.task(sp) for sp in {sp.key: sp for sp in specs}.values()]
        execute(
            tasks,
            self.results,
            self.executor,
            on_record=self.on_record,
            show_progress=self.show_progress,
        )
        return tasks


@dataclass
class Design:
    """What a recipe makes of its prepared inputs: the results ``identity`` (what the finished
    runs computed), the ``runset`` (lists that may grow on a rerun), the ``summarize`` of the
    records, ``header`` entries merely recorded, and either the ``specs`` to run or a ``drive``
    that runs them itself (a scan's rounds), given the session."""

    identity: dict
    runset: dict
    summarize: Callable[[list[dict]], object]
    specs: list[RunSpec] = field(default_factory=list)
    header: dict = field(default_factory=dict)
    drive: Callable[[Session], None] | None = None


def run_experiment(
    config: ExperimentConfig,
    out: str | Path | None,
    design: Callable[[Prepared], Design],
    *,
    check: Callable[[object, list[Site]], object] | None = None,
    executor: Executor | None = None,
    tracking: Tracking | None = None,
    show_progress: bool = True,
    on_record: Callable[[dict], None] | None = None,
) -> dict:
    """Run (or resume, or extend) the experiment ``design`` plans into ``out`` (default
    ``config.out``); return the ``results.json`` document. ``executor`` and ``tracking``
    default to those ``config.execution`` and ``config.tracking`` describe."""
    from accelerate import PartialState

    out = output_directory(config, out)
    check_sites_early(config.model, site_patterns(config))
    executor = executor or executor_for(config.execution, show_progress)
    tracking = tracking_of(config.tracking, out) if tracking is None else tracking
    state = PartialState(cpu=config.sft.cpu)  # the processes of this launch, if several
    if state.num_processes > 1 and not isinstance(executor, InProcess):
        raise DeadzoneError("under accelerate launch, runs execute in process (no --workers)")
    main = state.is_main_process
    with writing(out, main), executor:  # workers start as this loads
        prepared, plan = plan_experiment(config, design, check, executor.threads, tracking)
        prime(prepared.task(RunSpec("prime", {}, 0)), prepared.inputs)  # runs here reuse them
        header = {"schema_version": SCHEMA_VERSION, **provenance(), **plan.header}
        results = ResultsDir(
            out, plan.identity, header, plan.summarize, runset=plan.runset, writer=main
        )
        state.wait_for_everyone()  # all have read results.json before the first run rewrites it
        session = Session(prepared, results, executor, main, on_record, show_progress)
        if plan.drive is not None:
            plan.drive(session)
        else:
            session.run(plan.specs)
        results.save()
    state.wait_for_everyone()  # the file is complete before any process reads it
    return results.document()


def plan_experiment(
    config: ExperimentConfig,
    design: Callable[[Prepared], Design],
    check: Callable[[object, list[Site]], object] | None = None,
    threads: int = 1,
    tracking: Tracking = NO_TRACKING,
) -> tuple[Prepared, Design]:
    """The inputs and the design of an experiment, loaded and planned, nothing run."""
    prepared = prepare(config, threads, tracking, check)
    return prepared, design(prepared)


def output_directory(config: ExperimentConfig, out: str | Path | None) -> Path:
    """``out``, else ``config.out``; one of them is needed."""
    out = out if out is not None else config.out
    if out is None:
        raise DeadzoneError("no output directory given (--out)")
    return Path(out)


def site_patterns(config: ExperimentConfig) -> str | None:
    """The site names or globs a recipe's config selects (``targets`` or ``sites``), if any."""
    return getattr(config, "targets", None) or getattr(config, "sites", None)
