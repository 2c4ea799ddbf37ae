"""Writes docs/cli.md, the command reference, from deadzone's own argument parser.

Run from the repository root after changing an option: ``python docs/gen_cli.py``.
Each command's section is its ``--help`` as the parser prints it at 100 columns.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ["COLUMNS"] = "100"  # argparse wraps help to this width; fixed, so the file is stable

from deadzone.cli import build_parser  # noqa: E402
from deadzone.fileio import write_text  # noqa: E402

OUT = Path(__file__).parent / "cli.md"
HEADER = """\
# Command reference

Generated from the parser by `python docs/gen_cli.py`; do not edit by hand (rerun the script
after changing an option). Every option's default is shown beside it. Examples with real output:
[commands.md](commands.md); a first session on your own model and data:
[walkthrough.md](walkthrough.md).
"""


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The parser's subcommands by name, in the order ``deadzone --help`` lists them."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subs[0].choices) if subs else {}


def section(title: str, help_text: str) -> str:
    return f"## {title}\n\n```\n{help_text.rstrip()}\n```\n"


def render() -> str:
    parser = build_parser()
    parts = [HEADER, section("`deadzone`", parser.format_help())]
    parts += [
        section(f"`deadzone {name}`", sub.format_help())
        for name, sub in subcommands(parser).items()
    ]
    return "\n".join(parts)


if __name__ == "__main__":
    write_text(OUT, render())
    print(f"wrote {OUT}")
