"""Thin command-line layer: parse arguments, call one library function, print.

Each command has an ``add_<command>`` function that registers its parser and handler.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from deadzone import __version__
from deadzone.errors import DeadzoneError

Handler = Callable[[argparse.Namespace], int | None]


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
            names = ", ".join(add.__name__.removeprefix("add_") for add in COMMANDS)
            message = f"no command given; choose one of {names}"
        where = "" if self.prog == "deadzone" else f"{self.prog}: "
        self.exit(2, f"deadzone: error: {where}{message} (see --help)\n")


def _parser(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)


# --- options every experiment command shares (declared once) ----------------------------------


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The SFT runs of an experiment: steps, seeds, data, optimiser; read by :func:`run_options`."""
    p.add_argument("--steps", type=int, default=50, help="SFT optimizer steps per run")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..S-1) per strategy")
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
    from deadzone.train import SFTConfig

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


def add_verdict_options(p: argparse.ArgumentParser) -> None:
    """The margin every comparison against ``full`` is judged by."""
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


def add_execution_options(p: argparse.ArgumentParser) -> None:
    """Where the runs execute; read by :func:`make_executor`."""
    p.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="run N runs at once: a pool of N local processes, or N Ray tasks with --backend "
        "ray; each run gets max(1, cores // N) torch threads unless OMP_NUM_THREADS is set "
        "(default: one run after another in this process)",
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


def add_tracking_options(p: argparse.ArgumentParser) -> None:
    """Where each SFT run reports its config and curves; read by :func:`tracking`."""
    from deadzone.tracking import CHOICES, NONE

    p.add_argument(
        "--report-to",
        choices=CHOICES,
        default=NONE,
        help="log each SFT run (config, train/eval loss, lr, trainable parameters) to "
        "TensorBoard or MLflow (local directories, offline) or W&B (offline mode)",
    )
    p.add_argument(
        "--tracking-dir",
        metavar="DIR",
        help="where --report-to writes (default: OUT/tracking)",
    )


def tracking(args: argparse.Namespace, out: str):
    """The ``deadzone.tracking.Tracking`` that :func:`add_tracking_options` describes."""
    from deadzone.tracking import tracking_for

    return tracking_for(args.report_to, out, args.tracking_dir)


# --- commands (one add_* function each) -------------------------------------------------------


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "pretrain", "Pretrain a builtin preset on the builtin corpus and save it.")
    p.add_argument("--preset", default="tiny", help="preset: tiny, paper or micro")
    p.add_argument(
        "--out",
        help="output directory (default: the user cache, where builtin:PRESET finds it)",
    )
    p.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> None:
    from deadzone.pretraining import pretrain

    done = pretrain(args.preset, args.out)
    r = done.record
    print(
        f"pretrained {r['preset']}: {r['params']:,} parameters, {r['tokens']:,} tokens, "
        f"eval loss {r['step0_eval_loss']:.3f} -> {r['eval_loss']:.3f} "
        f"(train {r['train_loss']:.3f}) in {r['seconds']:.0f} s\nsaved to {done.out}"
    )


def add_crystallize(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "crystallize",
        "Fine-tune while target matrices are trained, frozen, crystallized to rank k, "
        "re-initialised or zeroed; judge each cost, paired over seeds, against a margin.",
    )
    p.add_argument("model", metavar="MODEL", help="model directory, hub id or builtin:tiny")
    p.add_argument(
        "--target",
        required=True,
        help="site name(s) or glob(s), comma-separated, e.g. L4.attn.c_proj",
    )
    p.add_argument(
        "--strategies",
        default="full,frozen,crystal,random",
        help="comma-separated: full, frozen, crystal, random, zero (full is the baseline)",
    )
    p.add_argument(
        "--rank",
        default="1",
        help="rank(s) k of the crystal approximation, comma-separated for a sweep (1,2,4,8): "
        "crystal runs once per rank",
    )
    add_verdict_options(p)
    add_run_options(p)
    add_execution_options(p)
    add_tracking_options(p)
    p.add_argument(
        "--out",
        required=True,
        help="output directory, resumed (or extended with more seeds or strategies) if it "
        "holds this experiment",
    )
    p.set_defaults(handler=_crystallize)


def _crystallize(args: argparse.Namespace) -> int | None:
    from accelerate import PartialState

    from deadzone.experiments.crystallize import BASELINE, CrystallizeConfig, crystallize
    from deadzone.report.crystallize import conclusion, table_model, write_report
    from deadzone.report.table import to_text

    config = CrystallizeConfig(
        model=args.model,
        targets=args.target,
        strategies=tuple(s.strip() for s in args.strategies.split(",") if s.strip()),
        ranks=_ranks(args.rank),
        margin=args.margin,
        margin_nats=args.margin_nats,
        **run_options(args),
    )
    executor = make_executor(args)
    tracked = tracking(args, args.out)
    main_process = PartialState().is_main_process
    if config.seeds == 1 and main_process:
        print(
            "deadzone: warning: with one seed there is no confidence interval; "
            "every verdict will be undetermined",
            file=sys.stderr,
        )
    before = _recorded_keys(args.out)
    results = crystallize(config, args.out, executor=executor, tracking=tracked)
    reused = sum(r["key"] in before for r in results["runs"])
    if reused and main_process:
        print(
            f"resumed {args.out}: {reused} run(s) reused, {len(results['runs']) - reused} run now"
        )
    baseline = [r for r in results["runs"] if r["strategy"] == BASELINE]
    if main_process:
        report, verdicts, curves = write_report(args.out)
        print(f"{to_text(table_model(results))}\n\n{conclusion(results)}")
        print(f"wrote {report.with_name('results.json')}, {report}, {verdicts}, {curves}")
    if baseline and all(r["status"] != "ok" for r in baseline):
        if not main_process:
            return 2  # the main process says why
        raise DeadzoneError(
            f"every {BASELINE} run failed ({baseline[0]['error']}): nothing to compare against; "
            f"see {args.out}/results.json"
        )
    return None


def _recorded_keys(out: str) -> set[str]:
    """Keys of the runs already in ``out``'s results file (none if it cannot be read)."""
    from deadzone.experiments.runs import RESULTS
    from deadzone.fileio import read_json

    try:
        runs = read_json(f"{out}/{RESULTS}").get("runs", [])
        return {r["key"] for r in runs if isinstance(r, dict) and isinstance(r.get("key"), str)}
    except (OSError, ValueError, AttributeError):
        return set()


def _ranks(text: str) -> tuple[int, ...]:
    ranks = []
    for part in text.split(","):
        try:
            ranks.append(int(part))
        except ValueError:
            raise DeadzoneError(f"rank must be an integer >= 1, got {part.strip()!r}") from None
    return tuple(ranks)


def add_scan(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "scan",
        "Map which weight matrices of the whole model are negligible to freeze or re-draw at "
        "random during SFT (group testing over seeds), check the set jointly, count the "
        "parameters, and test whether cheap scores predict the costs.",
    )
    p.add_argument("model", metavar="MODEL", help="model directory, hub id or builtin:tiny")
    p.add_argument(
        "--sites",
        metavar="GLOB",
        help="site name(s) or glob(s), comma-separated (default: every matrix inside the blocks)",
    )
    p.add_argument(
        "--strategies",
        default="frozen,random",
        help="comma-separated strategies to scan: frozen, crystal, random, zero (full, the "
        "baseline, always runs)",
    )
    p.add_argument(
        "--mode",
        default="adaptive",
        help="adaptive: group testing, seeds added only where undetermined; exhaustive: every "
        "site alone on every seed",
    )
    p.add_argument(
        "--groups",
        default="layer",
        help="how the adaptive search groups sites first: layer (all matrices of a block) or "
        "role (one role across blocks)",
    )
    add_verdict_options(p)
    add_run_options(p)
    add_execution_options(p)
    p.add_argument(
        "--out",
        required=True,
        help="output directory, resumed (or extended with more seeds or strategies) if it "
        "holds this scan",
    )
    p.set_defaults(handler=_scan)


def _scan(args: argparse.Namespace) -> None:
    import time

    from deadzone.experiments.scan import ScanConfig, scan
    from deadzone.report.scan import effective_text, rho_table, write_report

    started = time.monotonic()
    config = ScanConfig(
        model=args.model,
        sites=args.sites,
        strategies=tuple(s.strip() for s in args.strategies.split(",")),
        mode=args.mode,
        groups=args.groups,
        margin=args.margin,
        margin_nats=args.margin_nats,
        **run_options(args),
    )
    ran: list[dict] = []
    results = scan(config, args.out, executor=make_executor(args), on_record=ran.append)
    summary = results["summary"]
    paths = write_report(args.out)
    for strategy, st in summary["strategies"].items():
        counts = ", ".join(f"{n} {v}" for v, n in st["verdicts"].items() if n)
        print(f"{strategy}: {counts}; {st['search']['runs']} runs besides the baselines")
    for strategy in summary["strategies"]:
        print(effective_text(summary, strategy))
    print(rho_table(summary), end="")
    written = [f"{args.out}/results.json", *map(str, paths.values())]
    written += [f"{args.out}/{n}" for n in _plan_files(args.out)]
    print(
        f"{len(ran)} run(s) now, {summary['runs']} in results.json; "
        f"{time.monotonic() - started:.0f} s"
    )
    print(f"wrote {', '.join(written)}")


def _plan_files(out: str) -> list[str]:
    from deadzone.plans import AXOLOTL, FROZEN_LIST, PLAN

    return [n for n in (PLAN, AXOLOTL, FROZEN_LIST) if os.path.exists(os.path.join(out, n))]


def add_analyze(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "analyze",
        "Measure the geometry of every weight matrix (PR, PC1, ranks, amplitude PR); "
        "safetensors checkpoints are streamed one matrix at a time.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="model directory, .safetensors file, hub id or builtin:tiny"
    )
    p.add_argument(
        "--sites",
        metavar="GLOB",
        default="*",
        help="site name(s) or glob(s), comma-separated (L4.attn.*, *.c_proj)",
    )
    not_written = "(default: not written)"
    p.add_argument("--json", metavar="FILE", help=f"write the records as JSON {not_written}")
    p.add_argument("--csv", metavar="FILE", help=f"write the records as CSV {not_written}")
    p.add_argument("--plot", metavar="FILE", help=f"PNG of PR and PC1%% per layer {not_written}")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="also write an experiment directory: results.json, geometry.json/.csv and the "
        "report beside the study's figures; reused if it holds this analysis "
        f"{not_written}",
    )
    p.set_defaults(handler=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    from rich.console import Console

    from deadzone.analysis import analyze_checkpoint, summarize
    from deadzone.fileio import check_file_path
    from deadzone.report import geometry as report

    for path in (args.json, args.csv, args.plot):
        if path:
            check_file_path(path)  # before minutes of analysis, not after
    if args.out:
        from deadzone.experiments.analyze import analyze_experiment
        from deadzone.report.build import report_directory

        records = analyze_experiment(args.model, args.sites, args.out)["records"]
        html, _ = report_directory(args.out)
    else:
        records = analyze_checkpoint(args.model, args.sites)
    if not records:
        raise DeadzoneError(f"{args.model} has no weight matrices to analyse")
    summary = summarize(records)
    Console(width=None if sys.stdout.isatty() else 160).print(report.table(records))
    print(report.summary_text(summary))
    written = []
    for path, write in ((args.json, report.write_json), (args.csv, report.write_csv),
                        (args.plot, report.write_plot)):  # fmt: skip
        if path:
            write(path, records)
            written.append(str(path))
    if args.out:
        written += [f"{args.out}/results.json", str(html.with_name("report.md")), str(html)]
    if written:
        print(f"wrote {', '.join(written)}")
    return 0


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "demo",
        "Reproduce and judge the study on the builtin model: pretrain (if not cached), analyze, "
        "crystallize, scan, freeze at 25% and 50%, then the report; each stage an experiment "
        "directory under --out, resumed on a rerun.",
    )
    p.add_argument("--out", default="deadzone-demo", help="the demo's directory")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke version of about a minute: builtin:micro, 2 seeds of 4 steps "
        "(default: the full demo on builtin:tiny)",
    )
    add_execution_options(p)
    for action in p._actions:  # the demo's own default: the budget's
        if action.dest == "workers":
            action.help = (
                "run N runs at once (a pool of N local processes, or N Ray tasks with --backend "
                "ray) (default: 2 processes for the full demo, one after another for --quick)"
            )
    add_tracking_options(p)
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from deadzone.experiments.demo import demo
    from deadzone.report.build import report_directory
    from deadzone.report.demo import stage_table
    from deadzone.report.table import to_text

    given = args.workers is not None or args.backend != "local"
    results = demo(
        args.out,
        quick=args.quick,
        tracking=tracking(args, args.out),
        executor=make_executor(args) if given else None,
    )
    html, report = report_directory(args.out)
    print(to_text(stage_table(results)))
    print()
    for claim in report.claims:
        print(f"[{claim.verdict}] {claim.claim}. Study: {claim.study}. {claim.numbers}")
    md = html.with_name("report.md")
    print(f"\ndemo finished in {results['seconds']:.0f} s; wrote {md}, {html}")
    return 0


def add_freeze(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "freeze",
        "Fine-tune while a schedule progressively freezes weight matrices, beside full SFT on "
        "the same batches; judge each schedule's cost against a margin and measure its savings.",
    )
    p.add_argument("model", metavar="MODEL", help="model directory, hub id or builtin:tiny")
    p.add_argument(
        "--schedule",
        default="geometry:pr,random",
        help="comma-separated schedules: plan:FILE (a scan's plan.json), geometry:METRIC "
        "(pr, pc1, stable_rank, ...), freezeout, autofreeze, lisa, random, full; full, the "
        "baseline, is always run",
    )
    p.add_argument(
        "--target-fraction",
        type=float,
        default=0.5,
        help="share of the block-matrix parameters frozen by --freeze-by, in (0, 1)",
    )
    p.add_argument(
        "--freeze-by",
        default="0.5",
        help="the step (an integer) or the fraction of training (a number in (0, 1]) by which "
        "the target fraction is frozen",
    )
    p.add_argument(
        "--unit",
        choices=("matrix", "block"),
        default="matrix",
        help="what freezes at once: one block weight matrix, or a whole block (its biases and "
        "norms too)",
    )
    add_verdict_options(p)
    p.add_argument(
        "--save",
        metavar="DIR",
        help="write the fine-tuned model of seed 0 of the first schedule that is not full, in "
        "Hugging Face format (default: not written)",
    )
    add_run_options(p)
    add_execution_options(p)
    p.add_argument(
        "--out",
        required=True,
        help="output directory, resumed (or extended with more seeds or schedules) if it holds "
        "this experiment",
    )
    add_tracking_options(p)
    p.set_defaults(handler=_freeze)


def _freeze_by(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise DeadzoneError(f"--freeze-by must be a step or a fraction, got {text!r}") from None


def _freeze(args: argparse.Namespace) -> int | None:
    from accelerate import PartialState

    from deadzone.experiments.freeze import BASELINE, FreezeConfig, freeze
    from deadzone.report.freeze import conclusion, table_model, write_report
    from deadzone.report.table import to_text

    config = FreezeConfig(
        model=args.model,
        schedules=tuple(args.schedule.split(",")),
        target_fraction=args.target_fraction,
        freeze_by=_freeze_by(args.freeze_by),
        unit=args.unit,
        margin=args.margin,
        margin_nats=args.margin_nats,
        **run_options(args),
    )
    executor = make_executor(args)
    main_process = PartialState().is_main_process
    before = _recorded_keys(args.out)
    results = freeze(
        config, args.out, executor=executor, save=args.save, tracking=tracking(args, args.out)
    )
    reused = sum(r["key"] in before for r in results["runs"])
    if reused and main_process:
        print(
            f"resumed {args.out}: {reused} run(s) reused, {len(results['runs']) - reused} run now"
        )
    if main_process:
        paths = write_report(args.out)
        print(f"{to_text(table_model(results))}\n\n{conclusion(results)}")
        written = [str(paths[0].with_name("results.json")), *map(str, paths)]
        if args.save:
            written.append(f"{args.save} ({config.first_frozen()}, seed 0)")
        print(f"wrote {', '.join(written)}")
    baseline = [r for r in results["runs"] if r["strategy"] == BASELINE]
    if baseline and all(r["status"] != "ok" for r in baseline):
        if not main_process:
            return 2
        raise DeadzoneError(
            f"every {BASELINE} run failed ({baseline[0]['error']}): nothing to compare against; "
            f"see {args.out}/results.json"
        )
    return None


def add_report(sub: argparse._SubParsersAction) -> None:
    p = _parser(
        sub,
        "report",
        "Rebuild report.md and report.html in each experiment directory from its results.json "
        "alone (nothing is recomputed); several directories also give one combined page.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="experiment directories")
    p.add_argument(
        "--out",
        metavar="FILE",
        help="the combined page (default: with several DIRs, report.html in their nearest "
        "common parent; with one, none)",
    )
    p.set_defaults(handler=_report)


def _report(args: argparse.Namespace) -> int:
    from deadzone.report.build import build

    outcome = build(args.dirs, args.out)
    if outcome.written:
        print(f"wrote {', '.join(str(p) for p in outcome.written)}")
    for error in outcome.errors:
        print(f"deadzone: error: {error}", file=sys.stderr)
    return 2 if outcome.errors else 0


# --- entry point ------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_pretrain,
    add_crystallize,
    add_analyze,
    add_scan,
    add_freeze,
    add_demo,
    add_report,
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="deadzone",
        description="Find the weights of a transformer language model that carry nothing.",
    )
    parser.add_argument("--version", action="version", version=f"deadzone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _quiet_libraries() -> None:
    """Keep library chatter (info logs, per-shard bars) off the user's terminal."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes, not when it was made."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """deadzone's own messages as ``deadzone: ...`` lines, from the main process only."""
    logger = logging.getLogger("deadzone")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("deadzone: %(message)s"))
    logger.addHandler(handler)
    main_process = os.environ.get("RANK", "0") == "0"  # set by accelerate / torchrun launches
    logger.setLevel(logging.INFO if main_process else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    _log_to_stderr()
    try:
        return int(args.handler(args) or 0)
    except DeadzoneError as e:
        print(f"deadzone: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deadzone: interrupted; finished runs are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
