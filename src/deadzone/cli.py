"""Thin command-line layer: parse arguments, call one library function, print.

Each command has an ``add_<command>`` function that registers its parser and handler.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from deadzone import __version__
from deadzone.errors import DeadzoneError

Handler = Callable[[argparse.Namespace], int | None]


def _parser(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(
        name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


# --- commands (one add_* function each) -------------------------------------------------------


def add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "pretrain", "Pretrain a builtin preset on the builtin corpus and save it.")
    p.add_argument("--preset", default="tiny", help="preset: tiny, paper or micro")
    p.add_argument(
        "--out",
        default=None,
        help="output directory (default: the user cache, where builtin:PRESET finds it)",
    )
    p.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> None:
    from deadzone.pretraining import pretrain

    done = pretrain(args.preset, args.out)
    r = done.record
    print(
        f"pretrained {r['preset']}: {r['params']:,} parameters, {r['tokens']:,} tokens, "
        f"eval loss {r['step0_eval_loss']:.3f} -> {r['eval_loss']:.3f} "
        f"(train {r['train_loss']:.3f}) in {r['seconds']:.0f} s\nsaved to {done.out}"
    )


# --- entry point ------------------------------------------------------------------------------

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_pretrain]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deadzone",
        description="Find the weights of a transformer language model that carry nothing.",
    )
    parser.add_argument("--version", action="version", version=f"deadzone {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def _quiet_libraries() -> None:
    """Keep library chatter (info logs, per-shard bars) off the user's terminal."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries()
    try:
        return int(args.handler(args) or 0)
    except DeadzoneError as e:
        print(f"deadzone: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("deadzone: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
