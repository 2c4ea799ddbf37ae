"""The parser classes and every option more than one command takes, each declared once.

A command module calls the ``add_*`` functions here to declare its options and the matching
readers (:func:`experiment_options`, :func:`make_executor`, :func:`tracking`) to turn the
parsed arguments into library objects; :func:`add_experiment_options` declares at once all that
crystallize, scan and freeze share. Nothing here imports
torch or transformers at import time: building the parser must stay fast.
"""

from __future__ import annotations

import argparse
from typing import NoReturn

# what the tracking choices are, without importing deadzone.training.tracking (and torch with it);
# tests/test_cli.py checks these against deadzone.training.tracking.CHOICES
REPORT_TO_CHOICES = ("none", "tensorboard", "mlflow", "wandb")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends each option's default, or "(required)", unless its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help = action.help or ""
        if action.required and action.option_strings and "(required)" not in help:
            return f"{help} (required)"
        if "default" in help or "(required)" in help:
            return help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line, like every other deadzone error."""

    def error(self, message: str) -> NoReturn:
        if self.prog == "deadzone" and "required: COMMAND" in message:
            message = f"no command given; choose one of {', '.join(self.commands())}"
        where = "" if self.prog == "deadzone" else f"{self.prog}: "
        self.exit(2, f"deadzone: error: {where}{message} (see --help)\n")

    def commands(self) -> list[str]:
        """The names of this parser's subcommands, in the order they were added."""
        subs = (a for a in self._actions if isinstance(a, argparse._SubParsersAction))
        return [name for action in subs for name in action.choices]


def command_parser(sub: argparse._SubParsersAction, name: str, help: str) -> Parser:
    """The parser of the command ``name``; ``help`` is its line in ``deadzone --help`` and the
    description of its own ``--help``."""
    # the line in the command list goes through %-formatting; the description does not
    line = help.replace("%", "%%")
    return sub.add_parser(name, help=line, description=help, formatter_class=HelpFormatter)


def comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,c"`` -> ``("a", "b", "c")``, empty items dropped."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


# --- what an experiment is about: its model, sites, strategies, output ------------------------

MODEL_HELP = "model directory, hub id or builtin:tiny"


def add_model(p: argparse.ArgumentParser, help: str = MODEL_HELP) -> None:
    """The positional ``MODEL``."""
    p.add_argument("model", metavar="MODEL", help=help)


def add_sites(
    p: argparse.ArgumentParser,
    flag: str = "--sites",
    *,
    default: str | None = None,
    required: bool = False,
    metavar: str | None = "GLOB",
    help: str = "",
) -> None:
    """Which sites: names or globs, comma-separated; ``help`` says the rest (the example, or
    what a ``None`` default means)."""
    p.add_argument(
        flag,
        metavar=metavar,
        default=default,
        required=required,
        help=f"site name(s) or glob(s), comma-separated{help}",
    )


def add_strategies(p: argparse.ArgumentParser, default: str, help: str) -> None:
    """``--strategies``, comma-separated; read it with :func:`comma_list`."""
    p.add_argument("--strategies", default=default, help=f"comma-separated{help}")


def add_out(p: argparse.ArgumentParser, grows: str, what: str = "experiment") -> None:
    """The required ``--out`` of an experiment, resumed or extended (by more seeds or more of
    ``grows``) when it holds the same ``what``."""
    p.add_argument(
        "--out",
        required=True,
        help=f"output directory, resumed (or extended with more seeds or {grows}) if it holds "
        f"this {what}",
    )


def add_experiment_options(
    p: argparse.ArgumentParser, grows: str, what: str = "experiment", *, min_seeds: int = 1
) -> None:
    """Everything an experiment of SFT runs judged against ``full`` takes: the margin, the
    runs (``min_seeds``: see :func:`add_run_options`), where they execute, tracking and
    ``--out`` (see :func:`add_out`); read by :func:`experiment_options`, :func:`make_executor`
    and :func:`tracking`."""
    add_verdict_options(p)
    add_run_options(p, min_seeds=min_seeds)
    add_execution_options(p)
    add_tracking_options(p)
    add_out(p, grows, what)


def experiment_options(args: argparse.Namespace) -> dict:
    """The fields of an experiment config that :func:`add_experiment_options` declared."""
    return verdict_options(args) | run_options(args)


# --- the SFT runs: steps, seeds, data, optimiser ----------------------------------------------


def add_run_options(p: argparse.ArgumentParser, *, min_seeds: int = 1) -> None:
    """The SFT runs of an experiment: steps, seeds (the help says the command needs at least
    ``min_seeds``), data, optimiser; read by :func:`run_options`."""
    seeds = "number of seeds (0..S-1) per strategy"
    if min_seeds > 1:
        seeds += f"; at least {min_seeds} (with fewer there is no interval, so no verdict)"
    p.add_argument("--steps", type=int, default=50, help="SFT optimizer steps per run")
    p.add_argument("--seeds", type=int, default=3, help=seeds)
    p.add_argument(
        "--data",
        default="builtin:docstrings",
        help="SFT data: a .txt, .jsonl, .json, .csv or .parquet file (text, prompt + "
        "completion, or messages), a directory of them, a datasets hub id, or builtin:docstrings",
    )
    p.add_argument(
        "--eval-data",
        help="evaluation data, in the forms --data accepts (default: the builtin's own eval "
        "split, else a held-out 10%% of --data)",
    )
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--batch-size", type=int, default=8, help="examples per micro-batch")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    p.add_argument("--eval-every", type=int, default=10, help="steps between evaluations")
    p.add_argument(
        "--max-length",
        type=int,
        default=256,
        help="tokens kept per example, capped at the model's context length",
    )


def run_options(args: argparse.Namespace) -> dict:
    """The fields of an experiment config that :func:`add_run_options` declared."""
    from deadzone.training.train import SFTConfig

    sft = SFTConfig(
        steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        eval_every=args.eval_every,
    )
    return dict(
        seeds=args.seeds,
        data=args.data,
        eval_data=args.eval_data,
        max_length=args.max_length,
        sft=sft,
    )


# --- verdicts ---------------------------------------------------------------------------------


def add_verdict_options(p: argparse.ArgumentParser) -> None:
    """The margin every comparison against ``full`` is judged by; read by
    :func:`verdict_options`."""
    p.add_argument(
        "--margin",
        type=float,
        default=0.02,
        help="largest cost called negligible, as a share of the fine-tuning gain, in (0, 1)",
    )
    p.add_argument(
        "--margin-nats",
        type=float,
        default=0.01,
        help="the margin in nats of eval loss, used instead when the gain is not clearly positive",
    )


def verdict_options(args: argparse.Namespace) -> dict:
    """The fields of an experiment config that :func:`add_verdict_options` declared."""
    return dict(margin=args.margin, margin_nats=args.margin_nats)


# --- where runs execute -----------------------------------------------------------------------

WORKERS_DEFAULT = "one run after another in this process"


def add_execution_options(p: argparse.ArgumentParser, workers_default: str = WORKERS_DEFAULT):
    """Where the runs execute; read by :func:`make_executor`. ``workers_default`` says in words
    what happens without ``--workers``."""
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N runs at once: a pool of N local processes, or N Ray tasks with --backend "
        "ray; each run gets max(1, cores // N) torch threads unless OMP_NUM_THREADS is set "
        f"(default: {workers_default})",
    )
    p.add_argument(
        "--backend",
        choices=("local", "ray"),
        default="local",
        help="local: this process, or a process pool with --workers; ray: Ray tasks "
        "(pip install 'deadzone[ray]')",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="HOST:PORT of a running Ray cluster (`ray start --head`) for --backend ray "
        "(default: start a local cluster on this machine)",
    )


def make_executor(args: argparse.Namespace):
    """The executor :func:`add_execution_options` describes."""
    from deadzone.experiments.execute import make_executor as build

    return build(args.backend, args.workers, args.ray_address)


# --- experiment tracking ----------------------------------------------------------------------


def add_tracking_options(p: argparse.ArgumentParser) -> None:
    """Where each SFT run reports its config and curves; read by :func:`tracking`."""
    p.add_argument(
        "--report-to",
        choices=REPORT_TO_CHOICES,
        default=REPORT_TO_CHOICES[0],
        help="log each SFT run (config, train/eval loss, lr, trainable parameters) to "
        "TensorBoard or MLflow (local directories, offline) or W&B (offline mode)",
    )
    p.add_argument(
        "--tracking-dir",
        metavar="DIR",
        help="where --report-to writes (default: OUT/tracking)",
    )


def tracking(args: argparse.Namespace, out: str):
    """The ``deadzone.training.tracking.Tracking`` that :func:`add_tracking_options` describes."""
    from deadzone.training.tracking import tracking_for

    return tracking_for(args.report_to, out, args.tracking_dir)
