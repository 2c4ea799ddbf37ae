"""``deadzone crystallize``: SFT with target matrices trained, frozen, crystallized to rank k,
re-initialised or zeroed, each cost judged against a margin over seeds."""

from __future__ import annotations

import argparse
import sys

from deadzone.cli import options as opt
from deadzone.cli.outcome import check_baseline, say_resumed, started, write_reports
from deadzone.experiments.configs import CrystallizeConfig


def add(sub: argparse._SubParsersAction) -> None:
    opt.command_parser(
        sub,
        "crystallize",
        "Fine-tune while target matrices are trained, frozen, crystallized to rank k, "
        "re-initialised or zeroed; judge each cost, paired over seeds, against a margin.",
        CrystallizeConfig,
        run,
    )


def run(args: argparse.Namespace) -> int | None:
    from deadzone.experiments.crystallize import BASELINE, crystallize
    from deadzone.report.crystallize import conclusion, table_model
    from deadzone.report.table import to_text

    config, main_process, before = started(CrystallizeConfig, args)
    if config.seeds == 1 and main_process:
        print(
            "deadzone: warning: with one seed there is no confidence interval; "
            "every verdict will be undetermined",
            file=sys.stderr,
        )
    results = crystallize(config)
    if main_process:
        say_resumed(config.out, before, results)
        written = write_reports(config.out)
        print(f"{to_text(table_model(results))}\n\n{conclusion(results)}")
        print(f"wrote {', '.join(written)}")
    return check_baseline(config.out, results, BASELINE, main_process)
