"""``deadzone report``: rebuild each experiment directory's report from its results file
alone, and one combined page for several."""

from __future__ import annotations

import argparse
import sys

from deadzone.cli.options import command_parser


def add(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
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
    p.add_argument(
        "--study",
        action="store_true",
        help="also judge the seed study's claims on these experiments (the demo's report "
        "always does; an ordinary experiment's report never does unless asked)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from deadzone.report.build import build

    outcome = build(args.dirs, args.out, study=args.study)
    if outcome.written:
        print(f"wrote {', '.join(str(p) for p in outcome.written)}")
    for error in outcome.errors:
        print(f"deadzone: error: {error}", file=sys.stderr)
    return 2 if outcome.errors else 0
