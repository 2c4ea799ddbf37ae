"""``deadzone demo``: the study, reproduced and judged on the builtin model, in one command.

The demo runs a list of :class:`Stage` s, each an ordinary experiment writing its own results
directory under the demo's (``DIR/analyze``, ``DIR/crystallize``, ...), so a rerun resumes
every stage and each stage can be rerun alone with its own command. ``DIR/results.json``
(``experiment: "demo"``) records the stages: what each ran, in which directory, how long it
took, or why it was skipped; ``DIR/report.md`` and ``DIR/report.html`` are built from it and
the stages' own results files (``deadzone report DIR`` rebuilds them).

Stages: ``pretrain`` (only when the builtin model is not cached), ``analyze`` (every matrix),
``crystallize`` (the study's target with the study's strategies), ``scan`` (adaptive, frozen
and random, over the budget's sites; the effective parameter count, jointly checked) and one
``freeze-NN`` per target fraction of :data:`FRACTIONS` (the scan's plan when it names a site,
else ``geometry:pr``, against ``random`` and ``full``). The scan and freeze runs use the
budget's ``sweep_steps`` and ``sweep_seeds``. A stage is one entry of :func:`stages`: a name,
a title, what it runs, the function that runs it, and its units of progress (its runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deadzone import __version__, fileio
from deadzone.config import DEFAULT_DATA
from deadzone.errors import DeadzoneError
from deadzone.experiments.execute import Executor, make_executor
from deadzone.experiments.results import check_schema, read_results
from deadzone.experiments.runs import RESULTS, provenance, writing
from deadzone.progress import make_progress
from deadzone.schema import SCHEMA_VERSION
from deadzone.training.tracking import NO_TRACKING, Tracking
from deadzone.training.train import SFTConfig

EXPERIMENT = "demo"
FRACTIONS = (0.25, 0.5)  # freeze's target fractions: one stage and directory each


@dataclass(frozen=True)
class Budget:
    """The size of the demo: which model, which target, how many SFT steps and seeds."""

    name: str
    model: str
    target: str
    steps: int
    seeds: int
    batch_size: int
    eval_every: int
    max_length: int
    strategies: tuple[str, ...] = ("full", "frozen", "crystal", "random")
    data: str = DEFAULT_DATA
    workers: int | None = None  # runs at once (a process pool); None: one after another here
    scan_sites: str | None = None  # the scan's sites (globs); None: every block matrix
    scan_strategies: tuple[str, ...] = ("frozen", "random")
    scan_runs: int = 40  # the scan's runs the progress display expects (not known ahead)
    scan_mode: str = "prior"  # the scan's mode (deadzone.experiments.configs.MODES)
    scan_rest: str = "judge"  # the prior mode's rest (deadzone.experiments.configs.RESTS)
    scan_seeds: int | None = None  # the scan's seeds (None: sweep_seeds)
    sweep_steps: int | None = None  # SFT steps of the scan's and freeze's runs (None: steps)
    sweep_seeds: int | None = None  # their seeds (None: seeds)
    cut: str = ""  # what the budget cut, said in the report

    def sft(self) -> SFTConfig:
        return SFTConfig(
            steps=self.steps, batch_size=self.batch_size, eval_every=self.eval_every, lr=3e-4
        )

    def sweep_sft(self) -> SFTConfig:
        """The SFT of the scan's and freeze's runs: ``sweep_steps``, evaluated at the start and
        the end only (their verdicts read the final eval loss)."""
        steps = self.sweep_steps or self.steps
        return SFTConfig(steps=steps, batch_size=self.batch_size, eval_every=steps, lr=3e-4)

    def sweeps(self) -> int:
        return self.sweep_seeds or self.seeds

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model,
            "target": self.target,
            "steps": self.steps,
            "seeds": self.seeds,
            "batch_size": self.batch_size,
            "eval_every": self.eval_every,
            "max_length": self.max_length,
            "strategies": list(self.strategies),
            "data": self.data,
            "scan_sites": self.scan_sites,
            "scan_strategies": list(self.scan_strategies),
            "scan_mode": self.scan_mode,
            "scan_rest": self.scan_rest,
            "scan_seeds": self.scan_seeds,
            "sweep_steps": self.sweep_steps,
            "sweep_seeds": self.sweep_seeds,
            "cut": self.cut,
        }


FULL = Budget(
    "full",
    model="builtin:tiny",
    target="L4.attn.c_proj",
    steps=50,
    seeds=3,
    batch_size=8,
    eval_every=50,
    max_length=128,
    workers=2,
    scan_strategies=("frozen",),
    scan_runs=16,
    scan_rest="label",  # the whole model by prior: the lowest priors' set judged, the rest not
    scan_seeds=3,  # the prior mode's seed plan refuses 2 seeds of 20 steps
    sweep_steps=20,
    sweep_seeds=2,
    cut=(
        "To fit 2 CPU cores, the demo runs builtin:tiny (8 blocks, 96 wide) rather than the "
        "study's 10.2M-parameter model, 3 seeds of 50 SFT steps per strategy (the study's "
        "steps; 3 seeds, where the study ran 1, is the fewest that give an interval), "
        "evaluates at steps 0 and 50 only, cuts examples to the model's 128-token context, "
        "and runs two runs at once. The scan covers all 32 block matrices by prior in the "
        "frozen strategy only (random is tested on L4 c_proj by the crystallize stage): it "
        "finds the longest run of the lowest priors per parameter that is negligible "
        "together and labels the other matrices by their calibrated prior without running "
        "them (deadzone scan --rest judge maps each of them). The scan runs 3 seeds and the "
        "freeze stages 2 seeds, of 20 steps each (evaluated at steps 0 and 20), so their "
        "intervals are wide and many of their verdicts undetermined."
    ),
)
QUICK = Budget(
    "quick",
    model="builtin:micro",
    target="L1.attn.c_proj",
    steps=4,
    seeds=2,
    batch_size=4,
    eval_every=2,
    max_length=64,
    scan_sites="L1.attn.*",
    scan_runs=14,
    scan_mode="adaptive",  # 2 seeds of 4 steps: the prior mode's seed plan would refuse them
    cut=(
        "--quick: a smoke test, not a measurement: builtin:micro (2 blocks, 32 wide), its last "
        "attention output projection, 2 seeds of 4 SFT steps; the scan covers the last block's "
        "two attention matrices only, in the adaptive mode (the prior mode refuses 2 seeds "
        "that cannot decide anything)."
    ),
)


@dataclass
class Context:
    """What the stages share: the demo's directory, its budget, where runs report, progress."""

    out: Path
    budget: Budget
    tracking: Tracking = NO_TRACKING
    advance: Callable[[float], None] = lambda units: None
    executor: Executor | None = None  # where the stages' runs run (the demo's, for all stages)


@dataclass
class Done:
    """What one stage did: ``status`` ran | reused | skipped, its directory, runs it trained."""

    status: str
    directory: str | None = None
    runs: int = 0
    note: str = ""


@dataclass(frozen=True)
class Stage:
    """One step of the demo: ``run(context)`` does it and says what it did, advancing the
    progress display by ``units(budget)`` in all (1, or one per SFT run for stages of runs)."""

    name: str
    title: str
    what: Callable[[Budget], str]
    run: Callable[[Context], Done]
    units: Callable[[Budget], float] = lambda budget: 1.0


# --- the stages ---------------------------------------------------------------------------------


def _pretrain(ctx: Context) -> Done:
    from deadzone.data import corpus
    from deadzone.models.checkpoints import resolve
    from deadzone.models.presets import builtin_dir

    preset = ctx.budget.model.removeprefix("builtin:")
    cached = (builtin_dir(preset, corpus.corpus_hash()) / "config.json").is_file()
    resolve(ctx.budget.model)  # pretrains and caches it when it is not there
    ctx.advance(1.0)
    if cached:
        return Done("reused", note=f"{ctx.budget.model} was cached")
    return Done("ran", note=f"pretrained {ctx.budget.model} into the user cache")


def _analyze(ctx: Context) -> Done:
    from deadzone.experiments.analyze import analyze_experiment

    out = ctx.out / "analyze"
    before = (out / RESULTS).is_file()
    analyze_experiment(ctx.budget.model, "*", out, progress=False)
    ctx.advance(1.0)
    return Done("reused" if before else "ran", "analyze")


def _counting(ctx: Context, expected: float) -> tuple[list[str], Callable[[dict], None]]:
    """The keys of the runs trained now, and the ``on_record`` that records them and advances
    the display by one per run, up to ``expected`` (the stage's units)."""
    ran: list[str] = []

    def finished(record: dict) -> None:
        ran.append(record["key"])
        if len(ran) <= expected:
            ctx.advance(1.0)

    return ran, finished


def _crystallize(ctx: Context) -> Done:
    from deadzone.experiments.crystallize import CrystallizeConfig, crystallize

    b = ctx.budget
    config = CrystallizeConfig(
        model=b.model,
        targets=b.target,
        strategies=b.strategies,
        seeds=b.seeds,
        data=b.data,
        max_length=b.max_length,
        sft=b.sft(),
    )
    ran, finished = _counting(ctx, _crystallize_units(b))
    crystallize(
        config, ctx.out / "crystallize", executor=ctx.executor, show_progress=False,
        on_record=finished, tracking=ctx.tracking,
    )  # fmt: skip
    ctx.advance(max(0, _crystallize_units(b) - len(ran)))  # the reused runs
    return Done("ran" if ran else "reused", "crystallize", runs=len(ran))


def _scan(ctx: Context) -> Done:
    from deadzone.experiments.scan import ScanConfig, scan

    b = ctx.budget
    config = ScanConfig(
        model=b.model,
        sites=b.scan_sites,
        strategies=b.scan_strategies,
        mode=b.scan_mode,
        rest=b.scan_rest,
        seeds=b.scan_seeds or b.sweeps(),
        data=b.data,
        max_length=b.max_length,
        sft=b.sweep_sft(),
    )
    ran, finished = _counting(ctx, b.scan_runs)
    scan(
        config, ctx.out / "scan", executor=ctx.executor, show_progress=False, on_record=finished,
        tracking=ctx.tracking, say=lambda text: None,
    )  # fmt: skip
    ctx.advance(max(0, b.scan_runs - len(ran)))
    return Done("ran" if ran else "reused", "scan", runs=len(ran))


def freeze_schedule(out: Path) -> str:
    """The demo's best plan- or geometry-driven schedule: the scan's plan when it names sites
    that need not train, else geometry:pr."""
    from deadzone.plans import PLAN

    path = out / "scan" / PLAN
    if path.is_file() and fileio.read_json(path).get("sites"):
        return f"plan:{path}"
    return "geometry:pr"


def freeze_directory(fraction: float) -> str:
    return f"freeze-{round(100 * fraction)}"


def _freeze_units(b: Budget) -> float:
    return float(3 * b.sweeps())  # full, the schedule and random, per seed


def _freezing(fraction: float) -> Callable[[Context], Done]:
    """The stage running freeze at ``fraction`` into ``DIR/freeze-NN``."""

    def run(ctx: Context) -> Done:
        from deadzone.experiments.freeze import CONTROL, FreezeConfig, freeze

        b = ctx.budget
        schedule = freeze_schedule(ctx.out)
        config = FreezeConfig(
            model=b.model,
            schedules=(schedule, CONTROL),
            target_fraction=fraction,
            seeds=b.sweeps(),
            data=b.data,
            max_length=b.max_length,
            sft=b.sweep_sft(),
        )
        ran, finished = _counting(ctx, _freeze_units(b))
        name = freeze_directory(fraction)
        freeze(
            config, ctx.out / name, executor=ctx.executor, show_progress=False,
            on_record=finished, tracking=ctx.tracking,
        )  # fmt: skip
        ctx.advance(max(0, _freeze_units(b) - len(ran)))
        if schedule.startswith("plan:"):
            note = "schedule: plan:scan/plan.json (the scan's jointly negligible frozen set)"
        else:
            note = "schedule: geometry:pr (the scan's plan names no site)"
        return Done("ran" if ran else "reused", name, runs=len(ran), note=note)

    return run


def _crystallize_units(b: Budget) -> float:
    return float(len(b.strategies) * b.seeds)


def stages() -> list[Stage]:
    """The demo's stages, in order."""
    return [
        Stage("pretrain", "Pretrain", lambda b: f"{b.model}, if not cached", _pretrain),
        Stage("analyze", "Analyze", lambda b: f"geometry of every matrix of {b.model}", _analyze),
        Stage(
            "crystallize",
            "Crystallize",
            lambda b: f"{b.target}: {', '.join(b.strategies)} × {b.seeds} seeds, {b.steps} steps",
            _crystallize,
            _crystallize_units,
        ),
        Stage(
            "scan",
            "Scan",
            lambda b: (
                f"{b.scan_sites or 'every block matrix'}: {', '.join(b.scan_strategies)}, "
                f"{b.scan_mode}{', the rest labelled' if b.scan_rest == 'label' else ''}, "
                f"{b.scan_seeds or b.sweeps()} seeds, {b.sweep_sft().steps} steps; the "
                "effective parameter count, jointly checked"
            ),
            _scan,
            lambda b: float(b.scan_runs),
        ),
        *(
            Stage(
                freeze_directory(f),
                f"Freeze {100 * f:.0f}%",
                lambda b, f=f: (
                    f"the scan's plan (or geometry:pr) against random and full, {100 * f:.0f}% "
                    f"frozen, {b.sweeps()} seeds, {b.sweep_sft().steps} steps"
                ),
                _freezing(f),
                _freeze_units,
            )
            for f in FRACTIONS
        ),
    ]


# --- the driver ---------------------------------------------------------------------------------


def _identity(budget: Budget) -> dict:
    return {
        "experiment": EXPERIMENT,
        "deadzone_version": __version__,
        "budget": budget.to_dict(),
    }


def check_out(out: Path, budget: Budget) -> None:
    """``out`` is new, empty, or a demo of the same budget; anything else is refused."""
    if out.is_file():
        raise DeadzoneError(f"--out {out} is a file, not a directory")
    if not out.exists() or not any(p for p in out.iterdir() if p.name != ".deadzone.lock"):
        return
    path = out / RESULTS
    if not path.is_file():
        raise DeadzoneError(
            f"--out {out} holds files but no demo ({RESULTS} missing); choose a new or empty "
            "directory"
        )
    old = read_results(out, schema=False)
    if old["experiment"] != EXPERIMENT:
        raise DeadzoneError(f"--out {out} holds a {old['experiment']!r} experiment, not a demo")
    if old.get("budget") != budget.to_dict():
        raise DeadzoneError(
            f"--out {out} holds a demo of another size ({old.get('budget', {}).get('name')!r}, "
            f"{budget.name!r} now); choose another directory"
        )
    check_schema(path, old)


def demo(
    out: str | Path,
    *,
    quick: bool = False,
    tracking: Tracking = NO_TRACKING,
    executor: Executor | None = None,
    show_progress: bool = True,
) -> dict:
    """Run (or resume) every stage into ``out`` and write ``out/results.json``; return the
    demo's results document. ``executor`` runs the SFT runs (default: the budget's workers)."""
    out = Path(out)
    budget = QUICK if quick else FULL
    check_out(out, budget)
    document = {"schema_version": SCHEMA_VERSION, **_identity(budget), **provenance()}
    plan = stages()
    executor = executor or make_executor(workers=budget.workers, show_progress=False)
    progress = make_progress("{task.fields[doing]}", disable=not show_progress)
    with writing(out), executor, progress as bar:  # one set of workers for every stage
        total = sum(s.units(budget) for s in plan)
        task = bar.add_task("demo", total=total, doing="")
        ctx = Context(
            out, budget, tracking, lambda units: bar.update(task, advance=units), executor
        )
        records = []
        start = time.perf_counter()
        for i, stage in enumerate(plan, 1):
            bar.update(task, description=f"{i}/{len(plan)} {stage.name}", doing=stage.what(budget))
            t0 = time.perf_counter()
            done = stage.run(ctx)
            records.append(
                {
                    "name": stage.name,
                    "title": stage.title,
                    "what": stage.what(budget),
                    "status": done.status,
                    "directory": done.directory,
                    "runs": done.runs,
                    "seconds": round(time.perf_counter() - t0, 1),
                    "note": done.note,
                }
            )
            document["stages"] = records
            fileio.write_json(out / RESULTS, document)
        document["seconds"] = round(time.perf_counter() - start, 1)
        fileio.write_json(out / RESULTS, document)
    return document
