"""Thin command-line layer: parse arguments, call one library function, print.

One module per command (``pretrain``, ``crystallize``, ``analyze``, ``scan``, ``freeze``,
``plan``, ``demo``, ``report``), each with ``add(sub)``, which declares its parser, and the
handler it sets; the options several commands share are
declared once in :mod:`deadzone.cli.options`.
This package holds the entry point: :func:`build_parser`, the logging set-up and :func:`main`.
Handlers import torch and the library lazily, so ``deadzone --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from deadzone import __version__
from deadzone.cli import analyze, crystallize, demo, freeze, plan, pretrain, report, scan
from deadzone.cli.options import Parser
from deadzone.errors import DeadzoneError

COMMANDS = (pretrain, crystallize, analyze, scan, freeze, plan, demo, report)  # in --help's order


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="deadzone",
        description="Find the weights of a transformer language model that carry nothing.",
    )
    parser.add_argument("--version", action="version", version=f"deadzone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def _quiet_libraries() -> None:
    """Keep library chatter (info logs, per-shard bars) off the user's terminal."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a message comes, not when it was made."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _log_to_stderr() -> None:
    """deadzone's own messages as ``deadzone: ...`` lines, from the main process only."""
    logger = logging.getLogger("deadzone")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("deadzone: %(message)s"))
    logger.addHandler(handler)
    main_process = os.environ.get("RANK", "0") == "0"  # set by accelerate / torchrun launches
    logger.setLevel(logging.INFO if main_process else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)  # a field's own parser may refuse a value
        _quiet_libraries()
        _log_to_stderr()
        return int(args.handler(args) or 0)
    except DeadzoneError as e:
        print(f"deadzone: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deadzone: interrupted; finished runs are kept", file=sys.stderr)
        return 130
