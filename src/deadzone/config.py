"""Every option of deadzone, declared once: the config dataclasses.

Each field is the single source of its option's name, type, default and help (the field's
``metadata``, made by :func:`option`); the command line is built from them
(``deadzone.cli.options``). An experiment config is validated once, in ``__post_init__``, where
it is built: a bad value is a one-line :class:`DeadzoneError` before anything is loaded.

Nothing here imports torch at import time, so that ``deadzone CMD --help`` stays fast; the few
checks that need the library's registries (strategies, schedules) import them when a config is
built. ``deadzone.training.train`` re-exports :class:`SFTConfig`.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field
from typing import ClassVar

from deadzone.errors import DeadzoneError

DEFAULT_DATA = "builtin:docstrings"
DEFAULT_SEEDS = 3
DEFAULT_MAX_LENGTH = 256
DEFAULT_MARGIN = 0.02  # of the fine-tuning gain
DEFAULT_MARGIN_NATS = 0.01  # of eval loss per token: a 1% change in perplexity
DEFAULT_MARGIN_RATE = 0.02  # of exact-match rate: two examples in a hundred
DEFAULT_EXACT_MATCH_EXAMPLES = 64
DTYPES = ("float32", "bfloat16", "auto")  # deadzone.models.device.weight_dtype reads them
ENDPOINTS = ("eval_loss", "exact_match")
MIXED_PRECISION = ("auto", "no", "bf16")
BACKENDS = ("local", "ray")
# tests/test_cli.py checks these against deadzone.training.tracking.CHOICES (which imports torch)
REPORT_TO_CHOICES = ("none", "tensorboard", "mlflow", "wandb")


def option(default=MISSING, help: str = "", *, factory=MISSING, **cli) -> field:
    """A dataclass field with its command-line ``help`` and, in ``cli``, how argparse shows and
    reads it: ``flag`` (default ``--field-name``), ``metavar``, ``choices``, ``required``,
    ``positional``, ``skip`` (no flag: set by the library, e.g. a run's seed), ``parse`` (how
    the flag's text is read, when the annotation does not say; a bad text raises
    :class:`DeadzoneError`), ``listed`` (choices shown in the usage, checked by the config)."""
    metadata = {"help": help, **cli}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


# --- one SFT run ------------------------------------------------------------------------------


@dataclass
class SFTConfig:
    """Hyperparameters of one SFT run. Validated where it is built.

    ``batch_size`` is the number of examples per micro-batch (the data layer batches with it);
    one optimizer step takes ``grad_accum`` micro-batches per process. Warmup lasts
    ``warmup_steps`` if given, else ``round(warmup_fraction * steps)``; the learning rate then
    decays along a cosine to ``min_lr_ratio * lr``. ``mixed_precision="auto"`` uses bf16 where
    the device computes it natively. ``deterministic`` asks torch for deterministic kernels.
    ``cache_prefix`` keeps the frozen prefix's output per example, so that later epochs skip
    its forward pass (``deadzone.training.prefix``). ``gradient_checkpointing`` recomputes each
    block's activations in the backward pass instead of keeping them (Hugging Face's
    non-reentrant activation checkpointing).
    """

    steps: int = option(50, "SFT optimizer steps per run")
    lr: float = option(3e-4, "peak learning rate")
    batch_size: int = option(8, "examples per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step (per process)")
    warmup_steps: int | None = option(
        None, "warmup steps (default: --warmup-fraction of the steps)", metavar="N"
    )
    warmup_fraction: float = option(0.1, "share of the steps spent warming up the learning rate")
    min_lr_ratio: float = option(0.1, "the cosine decays the learning rate to this share of --lr")
    weight_decay: float = option(0.0, "AdamW weight decay")
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas, two numbers", metavar="B1,B2")
    max_grad_norm: float | None = option(1.0, "gradient clipping norm; none: no clipping")
    eval_every: int = option(10, "steps between evaluations")
    seed: int = option(0, "the run's seed", skip=True)  # each run of an experiment takes its own
    mixed_precision: str = option(
        "auto", "auto: bf16 where the device computes it natively", choices=MIXED_PRECISION
    )
    deterministic: bool = option(True, "ask torch for deterministic kernels")
    cpu: bool = option(False, "train on the CPU even where a GPU is found (needed by a "
                       "multi-process CPU launch)")  # fmt: skip
    cache_prefix: bool = option(
        False,
        "keep the wholly frozen prefix's output per example so that later epochs skip its "
        "forward pass (refused unless the prefix is deterministic and the data the same)",
    )
    gradient_checkpointing: bool = option(
        False,
        "keep only each block's input in the forward pass and recompute the rest in the backward "
        "pass: less activation memory for one more forward pass per step (Hugging Face models)",
    )

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)  # JSON round trips give lists
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("grad_accum", self.grad_accum, 1)
        check_int("eval_every", self.eval_every, 1)
        check_int("seed", self.seed, 0)
        if self.warmup_steps is not None:
            check_int("warmup_steps", self.warmup_steps, 0)
            if self.warmup_steps > self.steps:
                raise DeadzoneError(f"warmup_steps {self.warmup_steps} exceeds steps {self.steps}")
        _check_float("lr", self.lr, 0.0, math.inf, low_open=True)
        _check_float("warmup_fraction", self.warmup_fraction, 0.0, 1.0)
        _check_float("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        _check_float("weight_decay", self.weight_decay, 0.0, math.inf)
        if len(self.betas) != 2:
            raise DeadzoneError(f"betas must be two numbers, got {self.betas!r}")
        for beta in self.betas:
            _check_float("betas", beta, 0.0, 1.0, high_open=True)
        if self.max_grad_norm is not None:
            _check_float("max_grad_norm", self.max_grad_norm, 0.0, math.inf, low_open=True)
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)

    @property
    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return round(self.warmup_fraction * self.steps)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


def is_number(value: object) -> bool:
    """A finite-or-infinite real that is not a bool and not NaN."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def check_int(name: str, value: object, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise DeadzoneError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_float(
    name: str, value: object, low: float, high: float, *, low_open=False, high_open=False
) -> None:
    ok = is_number(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open or math.isinf(high) else "]"  # infinities are never allowed
        raise DeadzoneError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")


def _check_choice(name: str, value: object, choices) -> None:
    if value not in choices:
        raise DeadzoneError(f"unknown {name} {value!r}; choose from {', '.join(choices)}")


# --- where runs execute, where they report ----------------------------------------------------


@dataclass
class ExecutionConfig:
    """Where the runs of an experiment execute (``deadzone.experiments.execute``)."""

    workers: int | None = option(
        None,
        "run N runs at once: a pool of N local processes, or N Ray tasks with --backend ray; "
        "each run gets --threads torch threads (default: one run after another in this "
        "process)",
        metavar="N",
    )
    threads: int | None = option(
        None,
        "torch threads per run (default: OMP_NUM_THREADS if set, else the cores other work "
        "leaves idle, divided among the runs at once; the choice is logged)",
        metavar="N",
    )
    backend: str = option(
        "local",
        "local: this process, or a process pool with --workers; ray: Ray tasks "
        "(pip install 'deadzone[ray]')",
        choices=BACKENDS,
    )
    ray_address: str | None = option(
        None,
        "HOST:PORT of a running Ray cluster (`ray start --head`) for --backend ray "
        "(default: start a local cluster on this machine)",
        metavar="ADDR",
    )

    def __post_init__(self) -> None:
        if self.workers is not None:
            check_int("workers", self.workers, 1)
        if self.threads is not None:
            check_int("threads", self.threads, 1)
        _check_choice("backend", self.backend, BACKENDS)
        if self.ray_address and self.backend != "ray":
            raise DeadzoneError("--ray-address needs --backend ray")


@dataclass
class TrackingConfig:
    """Where each SFT run reports its config and curves (``deadzone.training.tracking``)."""

    report_to: str = option(
        "none",
        "log each SFT run (config, train/eval loss, lr, trainable parameters) to TensorBoard or "
        "MLflow (local directories, offline) or W&B (offline mode)",
        choices=REPORT_TO_CHOICES,
    )
    tracking_dir: str | None = option(
        None, "where --report-to writes (default: OUT/tracking)", metavar="DIR"
    )

    def __post_init__(self) -> None:
        _check_choice("tracker", self.report_to, REPORT_TO_CHOICES)


# --- what every experiment of SFT runs judged against full takes ------------------------------


@dataclass(kw_only=True)
class ExperimentConfig:
    """The model, data, runs, verdict margin, execution, tracking and output directory of an
    experiment; a recipe's config (``deadzone.experiments.configs``) adds what it varies.

    ``seeds`` is the number of seeds (0..S-1), at least ``MIN_SEEDS``; ``sft.seed`` is ignored
    (each run takes its own). ``max_length`` is capped at the model's context length.
    ``margin`` is the largest cost called negligible, as a share of the fine-tuning gain, and
    ``margin_nats`` the same in nats, used when the gain itself is not clearly positive.
    ``out`` is where the library writes when no directory is passed to the experiment."""

    MIN_SEEDS = 1
    SEEDS_WHY: ClassVar[tuple[str, str] | None] = None  # (the recipe, what fewer seeds lack)

    model: str = option(help="model directory, hub id or builtin:tiny", positional=True)
    data: str = option(
        DEFAULT_DATA,
        "SFT data: a .txt, .jsonl, .json, .csv or .parquet file (text, prompt + completion, or "
        f"messages), a directory of them, a datasets hub id, or {DEFAULT_DATA}",
    )
    eval_data: str | None = option(
        None,
        "evaluation data, in the forms --data accepts (default: the builtin's own eval split, "
        "else a held-out 10% of --data)",
    )
    eval_fraction: float = option(
        0.1, "share of --data held out for evaluation when no --eval-data is given, in (0, 1)"
    )
    max_length: int = option(
        DEFAULT_MAX_LENGTH, "tokens kept per example, capped at the model's context length"
    )
    seeds: int = option(DEFAULT_SEEDS, "number of seeds (0..S-1) per arm")
    margin: float = option(
        DEFAULT_MARGIN,
        "largest cost called negligible, as a share of the fine-tuning gain, in (0, 1)",
    )
    margin_nats: float = option(
        DEFAULT_MARGIN_NATS,
        "the margin in nats of eval loss, used instead when the gain is not clearly positive",
    )
    margin_rate: float = option(
        DEFAULT_MARGIN_RATE,
        "with --endpoint exact_match: the largest cost called negligible, in exact-match rate "
        "(full's rate minus the strategy's, paired by seed), in (0, 1)",
    )
    endpoint: str = option(
        "eval_loss",
        "what verdicts are judged on: eval_loss (paired, low noise), or exact_match (of greedy "
        "completions, against --margin-rate; needs prompt/completion or chat eval data). "
        "Either way both are reported",
        choices=ENDPOINTS,
    )
    exact_match_examples: int | None = option(
        None,
        "each finished run of prompt/completion or chat data scores exact match on the first "
        f"N eval examples; 0: not scored (default: {DEFAULT_EXACT_MATCH_EXAMPLES} with "
        "--endpoint exact_match, else 0: greedy generation can take as long as the run)",
        metavar="N",
    )
    dtype: str = option(
        "float32",
        "weights' dtype for every run: float32, bfloat16 (half the memory; small updates "
        "round away), or auto (bfloat16 where the device computes it natively). float16 is "
        "refused (no loss scaling)",
        listed=DTYPES,
    )
    sft: SFTConfig = option(factory=SFTConfig)
    execution: ExecutionConfig = option(factory=ExecutionConfig)
    tracking: TrackingConfig = option(factory=TrackingConfig)
    out: str | None = option(
        None,
        "output directory, resumed (or extended with more seeds or arms) if it holds this "
        "experiment",
        required=True,
    )

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise DeadzoneError(f"no model given (got {self.model!r})")
        if not isinstance(self.data, str) or not self.data.strip():
            raise DeadzoneError(f"no data given (--data {self.data!r})")
        _check_float("eval_fraction", self.eval_fraction, 0.0, 1.0, low_open=True, high_open=True)
        check_int("max_length", self.max_length, 1)
        self.check_seeds()
        if not is_number(self.margin) or not 0 < self.margin < 1:
            raise DeadzoneError(
                f"margin must be a share of the gain in (0, 1), got {self.margin!r}"
            )
        if not is_number(self.margin_nats) or not self.margin_nats > 0:
            raise DeadzoneError(f"margin-nats must be > 0, got {self.margin_nats!r}")
        if not is_number(self.margin_rate) or not 0 < self.margin_rate < 1:
            raise DeadzoneError(f"margin-rate must be in (0, 1), got {self.margin_rate!r}")
        _check_choice("endpoint", self.endpoint, ENDPOINTS)
        if self.exact_match_examples is None:
            on = self.endpoint == "exact_match"
            self.exact_match_examples = DEFAULT_EXACT_MATCH_EXAMPLES if on else 0
        check_int("exact_match_examples", self.exact_match_examples, 0)
        if self.endpoint == "exact_match" and self.exact_match_examples == 0:
            raise DeadzoneError("--endpoint exact_match needs --exact-match-examples >= 1")
        if self.dtype == "float16":
            raise DeadzoneError(
                "dtype float16 is refused: without loss scaling its range loses AdamW's "
                "updates; use bfloat16"
            )
        _check_choice("dtype", self.dtype, DTYPES)

    def check_seeds(self) -> None:
        """``seeds`` is an integer, at least ``MIN_SEEDS``; a recipe whose ``SEEDS_WHY`` names
        itself and what fewer seeds could not give says why in those words."""
        seeds = self.seeds
        if self.SEEDS_WHY is None:
            check_int("seeds", seeds, self.MIN_SEEDS)
        elif not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < self.MIN_SEEDS:
            what, why = self.SEEDS_WHY
            raise DeadzoneError(
                f"{what} needs --seeds >= {self.MIN_SEEDS} (got {seeds!r}): with fewer there is "
                f"no interval, and {why}"
            )

    def sft_identity(self) -> dict:
        """The SFT config as a results identity holds it: less the seed, which each run takes,
        and gradient checkpointing, which computes the same runs in less memory (an experiment
        may be resumed with it turned on or off)."""
        sft = self.sft.to_dict()
        sft.pop("seed")
        sft.pop("gradient_checkpointing")
        return sft
