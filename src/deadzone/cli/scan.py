"""``deadzone scan``: map which weight matrices of the whole model are negligible to freeze or
re-draw during SFT, check the set jointly, and write the freeze plan."""

from __future__ import annotations

import argparse
from pathlib import Path

from deadzone.cli import options as opt
from deadzone.cli.outcome import write_reports
from deadzone.experiments.configs import ScanConfig


def add(sub: argparse._SubParsersAction) -> None:
    opt.command_parser(
        sub,
        "scan",
        "Map which weight matrices of the whole model are negligible to freeze or re-draw at "
        "random during SFT (runs spent by the baselines' attribution, seeds planned from their "
        "spread), check the set jointly, count the parameters, and test whether cheap scores "
        "predict the costs.",
        ScanConfig,
        run,
    )


def run(args: argparse.Namespace) -> None:
    import time

    from accelerate import PartialState

    from deadzone.experiments.scan import scan
    from deadzone.report.scan import effective_text, rho_note, rho_table

    started = time.monotonic()
    config = opt.read_config(ScanConfig, args)
    ran: list[dict] = []
    plan_files: list[Path] = []
    results = scan(config, on_record=ran.append, on_file=plan_files.append)
    if not PartialState(cpu=config.sft.cpu).is_main_process:
        return
    summary = results["summary"]
    written = write_reports(config.out) + [str(p) for p in plan_files]
    for strategy, st in summary["strategies"].items():
        counts = ", ".join(f"{n} {v}" for v, n in st["verdicts"].items() if n)
        print(f"{strategy}: {counts}; {st['search']['runs']} runs besides the baselines")
    for strategy in summary["strategies"]:
        print(effective_text(summary, strategy))
    print(rho_table(summary), end="")
    note = rho_note(summary)
    if note:
        print(note)
    print(
        f"{len(ran)} run(s) now, {summary['runs']} in results.json; "
        f"{time.monotonic() - started:.0f} s"
    )
    print(f"wrote {', '.join(written)}")
