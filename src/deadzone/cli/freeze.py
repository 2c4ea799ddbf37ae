"""``deadzone freeze``: SFT while schedules progressively freeze weight matrices, each judged
against full SFT on the same batches, with its savings."""

from __future__ import annotations

import argparse

from deadzone.cli import options as opt
from deadzone.cli.outcome import check_baseline, recorded_keys, say_resumed
from deadzone.errors import DeadzoneError


def add(sub: argparse._SubParsersAction) -> None:
    p = opt.command_parser(
        sub,
        "freeze",
        "Fine-tune while a schedule progressively freezes weight matrices, beside full SFT on "
        "the same batches; judge each schedule's cost against a margin and measure its savings.",
    )
    opt.add_model(p)
    p.add_argument(
        "--schedule",
        default="geometry:pr,random",
        help="comma-separated schedules: plan:FILE (a scan's plan.json), geometry:METRIC "
        "(pr, pc1, stable_rank, ...), freezeout, autofreeze, lisa, random (the control of plan "
        "and geometry: their units on their ramp to the target, in a seeded random order), "
        "full; full, the baseline, is always run",
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
    p.add_argument(
        "--save",
        metavar="DIR",
        help="write the fine-tuned model of seed 0 of the first schedule that is not full, in "
        "Hugging Face format, to a new or empty directory outside --out, or over a model an "
        "earlier --save wrote (default: not written)",
    )
    opt.add_experiment_options(p, "schedules")
    p.set_defaults(handler=run)


def freeze_by(text: str) -> int | float:
    """``--freeze-by``: a step (an integer) or a fraction of training."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise DeadzoneError(f"--freeze-by must be a step or a fraction, got {text!r}") from None


def run(args: argparse.Namespace) -> int | None:
    from accelerate import PartialState

    from deadzone.experiments.freeze import BASELINE, FreezeConfig, freeze
    from deadzone.report.freeze import conclusion, table_model, write_report
    from deadzone.report.table import to_text

    config = FreezeConfig(
        model=args.model,
        schedules=opt.comma_list(args.schedule),
        target_fraction=args.target_fraction,
        freeze_by=freeze_by(args.freeze_by),
        unit=args.unit,
        **opt.experiment_options(args),
    )
    executor = opt.make_executor(args)
    main_process = PartialState().is_main_process
    before = recorded_keys(args.out)
    results = freeze(
        config, args.out, executor=executor, save=args.save, tracking=opt.tracking(args, args.out)
    )
    if main_process:
        say_resumed(args.out, before, results)
        paths = write_report(args.out)
        print(f"{to_text(table_model(results))}\n\n{conclusion(results)}")
        written = [str(paths[0].with_name("results.json")), *map(str, paths)]
        if args.save:
            written.append(f"{args.save} ({config.first_frozen()}, seed 0)")
        print(f"wrote {', '.join(written)}")
    return check_baseline(args.out, results, BASELINE, main_process)
