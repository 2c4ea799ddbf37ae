"""``deadzone analyze``: the geometry of every weight matrix, printed and optionally written
as JSON, CSV, a plot or an experiment directory."""

from __future__ import annotations

import argparse
import sys

from deadzone.cli import options as opt
from deadzone.errors import DeadzoneError

NOT_WRITTEN = "(default: not written)"


def add(sub: argparse._SubParsersAction) -> None:
    p = opt.command_parser(
        sub,
        "analyze",
        "Measure the geometry of every weight matrix (PR, PC1, ranks, amplitude PR); "
        "safetensors checkpoints are streamed one matrix at a time.",
    )
    p.add_argument(
        "model", metavar="MODEL", help="model directory, .safetensors file, hub id or builtin:tiny"
    )
    p.add_argument(
        "--sites",
        metavar="GLOB",
        default="*",
        help="site name(s) or glob(s), comma-separated (L4.attn.*, *.c_proj)",
    )
    p.add_argument("--json", metavar="FILE", help=f"write the records as JSON {NOT_WRITTEN}")
    p.add_argument("--csv", metavar="FILE", help=f"write the records as CSV {NOT_WRITTEN}")
    p.add_argument("--plot", metavar="FILE", help=f"PNG of PR and PC1%% per layer {NOT_WRITTEN}")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="also write an experiment directory: results.json, geometry.json/.csv and the "
        "report beside the study's figures; reused if it holds this analysis "
        f"{NOT_WRITTEN}",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from deadzone.fileio import check_file_path
    from deadzone.geometry.analysis import analyze_checkpoint, summarize
    from deadzone.report import geometry as report

    for path in (args.json, args.csv, args.plot):
        if path:
            check_file_path(path)  # before minutes of analysis, not after
    if args.out:
        from deadzone.experiments.analyze import analyze_experiment
        from deadzone.report.build import report_directory

        records = analyze_experiment(args.model, args.sites, args.out)["records"]
        html, _ = report_directory(args.out)
    else:
        records = analyze_checkpoint(args.model, args.sites)
    if not records:
        raise DeadzoneError(f"{args.model} has no weight matrices to analyse")
    summary = summarize(records)
    Console(width=None if sys.stdout.isatty() else 160).print(report.table(records))
    print(report.summary_text(summary))
    written = []
    for path, write in ((args.json, report.write_json), (args.csv, report.write_csv),
                        (args.plot, report.write_plot)):  # fmt: skip
        if path:
            write(path, records)
            written.append(str(path))
    if args.out:
        written += [f"{args.out}/results.json", str(html.with_name("report.md")), str(html)]
    if written:
        print(f"wrote {', '.join(written)}")
    return 0
