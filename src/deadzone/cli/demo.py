"""``deadzone demo``: the study reproduced and judged on the builtin model, stage by stage,
ending in one report."""

from __future__ import annotations

import argparse

from deadzone.cli import options as opt
from deadzone.config import TrackingConfig
from deadzone.experiments.configs import DemoExecution


def add(sub: argparse._SubParsersAction) -> None:
    p = opt.command_parser(
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
    opt.add_config(p, DemoExecution)
    opt.add_config(p, TrackingConfig)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from deadzone.experiments.demo import demo
    from deadzone.experiments.execute import executor_for
    from deadzone.report.build import report_directory
    from deadzone.report.demo import stage_table
    from deadzone.report.table import to_text
    from deadzone.training.tracking import tracking_of

    execution = opt.read_config(DemoExecution, args)
    tracking = opt.read_config(TrackingConfig, args)
    given = execution.workers is not None or execution.backend != "local"
    results = demo(
        args.out,
        quick=args.quick,
        tracking=tracking_of(tracking, args.out),
        executor=executor_for(execution) if given else None,
    )
    html, report = report_directory(args.out)
    print(to_text(stage_table(results)))
    print()
    for claim in report.claims:
        print(f"[{claim.verdict}] {claim.claim}. Study: {claim.study}. {claim.numbers}")
    md = html.with_name("report.md")
    print(f"\ndemo finished in {results['seconds']:.0f} s; wrote {md}, {html}")
    return 0
