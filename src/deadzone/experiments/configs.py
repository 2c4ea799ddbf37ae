"""The configs of the recipes on the experiment skeleton: what each one varies besides what
every experiment takes (:class:`deadzone.config.ExperimentConfig`).

Torch-free, like ``deadzone.config``: the command line is built from these fields. The checks
that need the library's registries (strategies, schedules) import them when a config is built,
before any model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass

from deadzone.config import ExecutionConfig, ExperimentConfig, is_number, option
from deadzone.errors import DeadzoneError

BASELINE = "full"
CONTROL = "random"  # the schedule every plan- or geometry-driven one must beat
CONTROLLED = ("plan", "geometry")  # the schedules judged against the random control
SCAN_STRATEGIES = ("frozen", "crystal", "random", "zero")  # full is the baseline, always run
MODES = ("prior", "adaptive", "exhaustive")
GROUPS = ("layer", "role")
RESTS = ("judge", "label")  # what the prior mode does with the sites it does not find first
UNITS = ("matrix", "block")  # deadzone.training.units.UNITS (tests/test_cli.py checks)


@dataclass(kw_only=True)
class CrystallizeConfig(ExperimentConfig):
    """What to crystallize: ``targets`` (names or globs, comma-separated) in each of
    ``strategies`` at once, every other site training; ``crystal`` once per rank of ``ranks``."""

    targets: str = option(help="target site name(s) or glob(s), comma-separated, e.g. "
                          "L4.attn.c_proj", flag="--target", required=True)  # fmt: skip
    strategies: tuple[str, ...] = option(
        ("full", "frozen", "crystal", "random"),
        "comma-separated: full, frozen, crystal, random, zero (full is the baseline)",
    )
    ranks: tuple[int, ...] = option(
        (1,),
        "rank(s) k of the crystal approximation, comma-separated for a sweep (1,2,4,8): crystal "
        "runs once per rank",
        flag="--rank",
        parse=lambda text: parse_ranks(text),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        from deadzone.training.strategies import STRATEGIES

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
        self.ranks = tuple(self.ranks)
        _check_ranks(self.ranks)
        if len(self.ranks) > 1 and "crystal" not in self.strategies:
            raise DeadzoneError(
                f"a rank sweep ({','.join(map(str, self.ranks))}) needs crystal among the "
                "strategies"
            )
        if not self.targets or not any(t.strip() for t in self.targets.split(",")):
            raise DeadzoneError(f"no target site given (--target {self.targets!r})")


def parse_ranks(text: str) -> tuple[int, ...]:
    """``--rank``'s comma-separated integers."""
    found = []
    for part in text.split(","):
        try:
            found.append(int(part))
        except ValueError:
            raise DeadzoneError(f"rank must be an integer >= 1, got {part.strip()!r}") from None
    return tuple(found)


def parse_freeze_by(text: str) -> int | float:
    """``--freeze-by``: a step (an integer) or a fraction of training."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    raise DeadzoneError(f"--freeze-by must be a step or a fraction, got {text!r}")


def _check_ranks(ranks: tuple[int, ...]) -> None:
    if not ranks:
        raise DeadzoneError("no rank given")
    for rank in ranks:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise DeadzoneError(f"rank must be an integer >= 1, got {rank!r}")
    if len(set(ranks)) != len(ranks):
        raise DeadzoneError(f"a rank is listed twice: {','.join(map(str, ranks))}")


@dataclass(kw_only=True)
class ScanConfig(ExperimentConfig):
    """What to scan: ``sites`` (names or globs; default every matrix inside the blocks) in each
    of ``strategies``; ``mode`` prior (runs spent by the baselines' attribution), adaptive
    (group testing) or exhaustive; ``groups``: how the adaptive search groups sites first;
    ``confirm``: judge the sites the prior calls likely costly too; ``rest``: whether the prior
    mode judges the sites outside the set of the lowest priors per parameter found negligible
    together (``judge``) or labels them by calibrated prior without a run (``label``). At least
    2 seeds: the fewest a judgement uses, and every exhaustive one."""

    MIN_SEEDS = 2
    SEEDS_WHY = ("a scan", "no verdict could be anything but undetermined")

    sites: str | None = option(
        None,
        "site name(s) or glob(s), comma-separated (default: every matrix inside the blocks)",
        metavar="GLOB",
    )
    strategies: tuple[str, ...] = option(
        ("frozen", "random"),
        "comma-separated strategies to scan: frozen, crystal, random, zero (full, the "
        "baseline, always runs)",
    )
    mode: str = option(
        "prior",
        "prior: the baselines record each site's attribution; ranked by prior per parameter, "
        "the longest run of the lowest that is negligible together is found first, the smallest"
        " set refused calibrates the priors, the rest is group-tested in packs by calibrated "
        "prior on sequential seeds and those far above the margin are labelled likely costly (a"
        " prior, not a verdict); adaptive: group testing, seeds added only where undetermined; "
        "exhaustive: every site alone on every seed",
        listed=MODES,
    )
    confirm: bool = option(
        False,
        "prior mode: judge the sites the prior calls likely costly too (otherwise they are "
        "labelled, not run)",
    )
    rest: str = option(
        "judge",
        "prior mode: the sites outside the set of the lowest priors per parameter found "
        "negligible together are judge: each judged, in packs by calibrated prior (the whole "
        "map); label: not run, each labelled by its calibrated prior (a prior, not a verdict: "
        "the set and a few runs only)",
        listed=RESTS,
    )
    groups: str = option(
        "layer",
        "how the adaptive search groups sites first: layer (all matrices of a block) or role "
        "(one role across blocks)",
        listed=GROUPS,
    )
    seeds: int = option(
        3,
        "number of seeds (0..S-1) per arm; at least 2 (with fewer there is no interval, so no "
        "verdict)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.strategies = check_scan_strategies(self.strategies)
        if self.mode not in MODES:
            raise DeadzoneError(f"unknown mode {self.mode!r}; choose {', '.join(MODES)}")
        if self.groups not in GROUPS:
            raise DeadzoneError(f"groups must be 'layer' or 'role', not {self.groups!r}")
        if self.rest not in RESTS:
            raise DeadzoneError(f"--rest must be judge or label, not {self.rest!r}")
        if self.rest == "label" and self.mode != "prior":
            raise DeadzoneError(f"--rest label is for --mode prior, not {self.mode}")
        if self.rest == "label" and self.confirm:
            raise DeadzoneError(
                "--confirm judges the likely costly sites; --rest label judges none"
            )


def check_scan_strategies(strategies) -> tuple[str, ...]:
    """The strategies to scan, validated: at least one, none ``full``, none unknown."""
    chosen = tuple(dict.fromkeys(s.strip() for s in strategies if s.strip()))
    unknown = [s for s in chosen if s not in SCAN_STRATEGIES and s != BASELINE]
    if unknown:
        raise DeadzoneError(
            f"unknown strategy {unknown[0]!r}; a scan takes {', '.join(SCAN_STRATEGIES)}"
        )
    chosen = tuple(s for s in chosen if s != BASELINE)
    if not chosen:
        raise DeadzoneError(
            "a scan needs a strategy besides full (the baseline is always run): "
            f"one of {', '.join(SCAN_STRATEGIES)}"
        )
    return chosen


@dataclass(kw_only=True)
class FreezeConfig(ExperimentConfig):
    """Which schedules, on equal footing (``target_fraction`` of the block-matrix parameters
    frozen by ``freeze_by``, a step or a fraction of the steps; ``unit`` matrix or block).
    ``full`` is added first when not listed."""

    schedules: tuple[str, ...] = option(
        ("geometry:pr", CONTROL),
        "comma-separated schedules: plan:FILE (a scan's plan.json), geometry:METRIC (pr, pc1, "
        "stable_rank, ...), freezeout, autofreeze, lisa, random (the control of plan and "
        "geometry: their units on their ramp to the target, in a seeded random order), full; "
        "full, the baseline, is always run; a plan or geometry schedule without random is "
        "run, with a warning that nothing controls it",
        flag="--schedule",
    )
    target_fraction: float = option(
        0.5, "share of the block-matrix parameters frozen by --freeze-by, in (0, 1)"
    )
    freeze_by: int | float = option(
        0.5,
        "the step (an integer) or the fraction of training (a number in (0, 1]) by which the "
        "target fraction is frozen",
        parse=lambda text: parse_freeze_by(text),
    )
    unit: str = option(
        "matrix",
        "what freezes at once: one block weight matrix, or a whole block (its biases and norms "
        "too)",
        choices=UNITS,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        names = tuple(s.strip() for s in self.schedules if s.strip())
        if not names:
            raise DeadzoneError("no schedule given")
        for spec in names:
            check_schedule(spec)
        if len(set(names)) != len(names):
            raise DeadzoneError(f"a schedule is listed twice: {','.join(names)}")
        self.schedules = names if BASELINE in names else (BASELINE, *names)
        tf = self.target_fraction
        if not is_number(tf) or not 0 < tf < 1:
            raise DeadzoneError(f"target fraction must be in (0, 1), got {tf!r}")
        if self.unit not in UNITS:
            raise DeadzoneError(f"unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if isinstance(self.freeze_by, int) and self.freeze_by < 1:
            raise DeadzoneError(f"freeze-by step must be >= 1, got {self.freeze_by}")
        if isinstance(self.freeze_by, int) and self.freeze_by > self.sft.steps:
            raise DeadzoneError(
                f"freeze-by step {self.freeze_by} is beyond the {self.sft.steps} steps"
            )

    def first_frozen(self) -> str | None:
        """The schedule whose seed-0 model ``--save`` writes: the first that is not ``full``."""
        return next((s for s in self.schedules if s != BASELINE), None)

    def uncontrolled(self) -> list[str]:
        """The plan and geometry schedules that run without the random control beside them."""
        if CONTROL in self.schedules:
            return []
        return [s for s in self.schedules if s.partition(":")[0] in CONTROLLED]


def check_schedule(spec: str) -> None:
    """A one-line error now for a schedule that cannot be built whatever the model: an unknown
    one, an argument to one that takes none, an unknown geometry metric."""
    from deadzone.training.schedules import GEOMETRY_DIRECTIONS, check_spec

    check_spec(spec)
    kind, _, arg = spec.partition(":")
    if kind == "geometry" and arg not in GEOMETRY_DIRECTIONS:
        raise DeadzoneError(
            f"unknown geometry metric {arg!r} in {spec!r}; choose geometry:METRIC with METRIC "
            f"one of {', '.join(GEOMETRY_DIRECTIONS)}"
        )
    if kind == "plan" and not arg:
        raise DeadzoneError("plan needs a file: plan:FILE (a scan's plan.json)")


@dataclass
class DemoExecution(ExecutionConfig):
    """Where the demo's runs execute: without ``--workers``, the demo's budget decides."""

    workers: int | None = option(
        None,
        "run N runs at once: a pool of N local processes, or N Ray tasks with --backend ray "
        "(default: 2 processes for the full demo, one after another for --quick)",
        metavar="N",
    )


@dataclass(kw_only=True)
class PlanConfig(ExperimentConfig):
    """The search for the cheapest certified plan: the deepest negligible frozen prefix (the
    embeddings and blocks below it), grown by sites above it in the order of their cheap
    scores for at most ``grow`` joint checks; the plan found checked again at ``horizon``
    times the steps (0: not checked). ``untie_head``: a tied head gets its own trainable
    copy, so that the frozen embedding does not freeze it."""

    MIN_SEEDS = 2
    SEEDS_WHY = ("a plan search", "no plan could be certified")

    seeds: int = option(
        3, "the most seeds a judgement looks at (sequentially: 2 first, more while undetermined)"
    )
    horizon: int = option(
        4, "check the plan found again at this many times --steps (0: no long-horizon check)"
    )
    grow: int = option(
        2, "joint checks spent growing the plan with sites above the prefix (0: the prefix alone)"
    )
    untie_head: bool = option(
        False, "give a head tied to the embedding its own trainable copy (recorded in the plan)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, low in (("horizon", 0), ("grow", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise DeadzoneError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.horizon == 1:
            raise DeadzoneError("horizon 1 repeats the search's own runs: give 0 or >= 2")
