"""``deadzone crystallize``: SFT with target matrices trained, frozen, crystallized to rank k,
re-initialised or zeroed, each cost judged against a margin over seeds."""

from __future__ import annotations

import argparse
import sys

from deadzone.cli import options as opt
from deadzone.cli.outcome import check_baseline, recorded_keys, say_resumed
from deadzone.errors import DeadzoneError


def add(sub: argparse._SubParsersAction) -> None:
    p = opt.command_parser(
        sub,
        "crystallize",
        "Fine-tune while target matrices are trained, frozen, crystallized to rank k, "
        "re-initialised or zeroed; judge each cost, paired over seeds, against a margin.",
    )
    opt.add_model(p)
    opt.add_sites(p, "--target", required=True, metavar=None, help=", e.g. L4.attn.c_proj")
    opt.add_strategies(
        p,
        "full,frozen,crystal,random",
        ": full, frozen, crystal, random, zero (full is the baseline)",
    )
    p.add_argument(
        "--rank",
        default="1",
        help="rank(s) k of the crystal approximation, comma-separated for a sweep (1,2,4,8): "
        "crystal runs once per rank",
    )
    opt.add_experiment_options(p, "strategies")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int | None:
    from accelerate import PartialState

    from deadzone.experiments.crystallize import BASELINE, CrystallizeConfig, crystallize
    from deadzone.report.crystallize import conclusion, table_model, write_report
    from deadzone.report.table import to_text

    config = CrystallizeConfig(
        model=args.model,
        targets=args.target,
        strategies=opt.comma_list(args.strategies),
        ranks=ranks(args.rank),
        **opt.experiment_options(args),
    )
    executor = opt.make_executor(args)
    tracked = opt.tracking(args, args.out)
    main_process = PartialState().is_main_process
    if config.seeds == 1 and main_process:
        print(
            "deadzone: warning: with one seed there is no confidence interval; "
            "every verdict will be undetermined",
            file=sys.stderr,
        )
    before = recorded_keys(args.out)
    results = crystallize(config, args.out, executor=executor, tracking=tracked)
    if main_process:
        say_resumed(args.out, before, results)
        report, verdicts, curves = write_report(args.out)
        print(f"{to_text(table_model(results))}\n\n{conclusion(results)}")
        print(f"wrote {report.with_name('results.json')}, {report}, {verdicts}, {curves}")
    return check_baseline(args.out, results, BASELINE, main_process)


def ranks(text: str) -> tuple[int, ...]:
    """``--rank``'s comma-separated integers."""
    found = []
    for part in text.split(","):
        try:
            found.append(int(part))
        except ValueError:
            raise DeadzoneError(f"rank must be an integer >= 1, got {part.strip()!r}") from None
    return tuple(found)
