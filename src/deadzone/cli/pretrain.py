"""``deadzone pretrain``: pretrain a builtin preset on the builtin corpus and save it."""

from __future__ import annotations

import argparse

from deadzone.cli.options import command_parser


def add(sub: argparse._SubParsersAction) -> None:
    p = command_parser(
        sub, "pretrain", "Pretrain a builtin preset on the builtin corpus and save it."
    )
    p.add_argument("--preset", default="tiny", help="preset: tiny, paper or micro")
    p.add_argument(
        "--out",
        help="output directory (default: the user cache, where builtin:PRESET finds it)",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from deadzone.models.pretraining import pretrain

    done = pretrain(args.preset, args.out)
    r = done.record
    print(
        f"pretrained {r['preset']}: {r['params']:,} parameters, {r['tokens']:,} tokens, "
        f"eval loss {r['step0_eval_loss']:.3f} -> {r['eval_loss']:.3f} "
        f"(train {r['train_loss']:.3f}) in {r['seconds']:.0f} s\nsaved to {done.out}"
    )
