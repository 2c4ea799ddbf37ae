"""``deadzone demo``: the study reproduced and judged on the builtin model, stage by stage,
ending in one report."""

from __future__ import annotations

import argparse

from deadzone.cli import options as opt


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
    # the demo's own default: the budget's
    opt.add_execution_options(p, "2 processes for the full demo, one after another for --quick")
    opt.add_tracking_options(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from deadzone.experiments.demo import demo
    from deadzone.report.build import report_directory
    from deadzone.report.demo import stage_table
    from deadzone.report.table import to_text

    given = args.workers is not None or args.backend != "local"
    results = demo(
        args.out,
        quick=args.quick,
        tracking=opt.tracking(args, args.out),
        executor=opt.make_executor(args) if given else None,
    )
    html, report = report_directory(args.out)
    print(to_text(stage_table(results)))
    print()
    for claim in report.claims:
        print(f"[{claim.verdict}] {claim.claim}. Study: {claim.study}. {claim.numbers}")
    md = html.with_name("report.md")
    print(f"\ndemo finished in {results['seconds']:.0f} s; wrote {md}, {html}")
    return 0
