"""``deadzone crystallize``: SFT with target matrices trained, frozen, crystallized to rank k,
re-initialised or zeroed, each cost judged against a margin over seeds."""

from __future__ import annotations

import argparse
import sys

from deadzone.cli import options as opt
from deadzone.cli.outcome import check_baseline, recorded_keys, say_resumed, write_reports
from deadzone.experiments.configs import CrystallizeConfig


def add(sub: argparse._SubParsersAction) -> None:
    p = opt.command_parser(
        sub,
        "crystallize",
        "Fine-tune while target matrices are trained, frozen, crystallized to rank k, "
        "re-initialised or zeroed; judge each cost, paired over seeds, against a margin.",
    )
    opt.add_config(p, CrystallizeConfig)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int | None:
    from accelerate import PartialState

    from deadzone.experiments.crystallize import BASELINE, crystallize
    from deadzone.report.crystallize import conclusion, table_model
    from deadzone.report.table import to_text

    config = opt.read_config(CrystallizeConfig, args)
    main_process = PartialState(cpu=config.sft.cpu).is_main_process
    if config.seeds == 1 and main_process:
        print(
            "deadzone: warning: with one seed there is no confidence interval; "
            "every verdict will be undetermined",
            file=sys.stderr,
        )
    before = recorded_keys(config.out)
    results = crystallize(config)
    if main_process:
        say_resumed(config.out, before, results)
        written = write_reports(config.out)
        print(f"{to_text(table_model(results))}\n\n{conclusion(results)}")
        print(f"wrote {', '.join(written)}")
    return check_baseline(config.out, results, BASELINE, main_process)
