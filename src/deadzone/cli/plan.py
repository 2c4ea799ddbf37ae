"""``deadzone plan``: the frozen set (a frozen prefix, grown above it) that saves most per step
at a cost shown negligible, certified and checked again at a longer horizon."""

from __future__ import annotations

import argparse
from pathlib import Path

from deadzone.cli import options as opt
from deadzone.cli.outcome import say_resumed, started
from deadzone.experiments.configs import PlanConfig


def add(sub: argparse._SubParsersAction) -> None:
    opt.command_parser(
        sub,
        "plan",
        "Search the deepest frozen prefix whose cost is negligible, grow it with sites above "
        "it, certify the plan found and check it again at a longer horizon.",
        PlanConfig,
        run,
    )


def run(args: argparse.Namespace) -> int | None:
    from deadzone.experiments.plan import find_plan
    from deadzone.report.plan import summary_text

    config, main_process, before = started(PlanConfig, args)
    results = find_plan(config)
    if not main_process:
        return None
    say_resumed(config.out, before, results)
    print(summary_text(results), end="")
    names = ("results.json", "report.md", "report.html", "plan.json", "axolotl.yaml",
             "frozen_parameters.txt", "lora_config.json")  # fmt: skip
    print(f"wrote {', '.join(str(Path(config.out) / n) for n in names)}")
    long = results["summary"]["long_horizon"]
    return 1 if long is not None and not long["holds"] else None
