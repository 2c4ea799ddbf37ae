"""``deadzone scan``: map which weight matrices of the whole model are negligible to freeze or
re-draw during SFT, check the set jointly, and write the freeze plan."""

from __future__ import annotations

import argparse
from pathlib import Path

from deadzone.cli import options as opt


def add(sub: argparse._SubParsersAction) -> None:
    p = opt.command_parser(
        sub,
        "scan",
        "Map which weight matrices of the whole model are negligible to freeze or re-draw at "
        "random during SFT (group testing over seeds), check the set jointly, count the "
        "parameters, and test whether cheap scores predict the costs.",
    )
    opt.add_model(p)
    opt.add_sites(p, help=" (default: every matrix inside the blocks)")
    opt.add_strategies(
        p,
        "frozen,random",
        " strategies to scan: frozen, crystal, random, zero (full, the baseline, always runs)",
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
    opt.add_experiment_options(p, "strategies", "scan", min_seeds=2)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    import time

    from deadzone.experiments.scan import ScanConfig, scan
    from deadzone.report.scan import effective_text, rho_note, rho_table, write_report

    started = time.monotonic()
    config = ScanConfig(
        model=args.model,
        sites=args.sites,
        strategies=opt.comma_list(args.strategies),
        mode=args.mode,
        groups=args.groups,
        **opt.experiment_options(args),
    )
    ran: list[dict] = []
    plan_files: list[Path] = []
    results = scan(
        config,
        args.out,
        executor=opt.make_executor(args),
        tracking=opt.tracking(args, args.out),
        on_record=ran.append,
        on_file=plan_files.append,
    )
    summary = results["summary"]
    paths = write_report(args.out)
    for strategy, st in summary["strategies"].items():
        counts = ", ".join(f"{n} {v}" for v, n in st["verdicts"].items() if n)
        print(f"{strategy}: {counts}; {st['search']['runs']} runs besides the baselines")
    for strategy in summary["strategies"]:
        print(effective_text(summary, strategy))
    print(rho_table(summary), end="")
    note = rho_note(summary)
    if note:
        print(note)
    written = [f"{args.out}/results.json", *map(str, [*paths.values(), *plan_files])]
    print(
        f"{len(ran)} run(s) now, {summary['runs']} in results.json; "
        f"{time.monotonic() - started:.0f} s"
    )
    print(f"wrote {', '.join(written)}")
