"""``deadzone freeze``: SFT while schedules progressively freeze weight matrices, each judged
against full SFT on the same batches, with its savings."""

from __future__ import annotations

import argparse

from deadzone.cli import options as opt
from deadzone.cli.outcome import check_baseline, say_resumed, started, write_reports
from deadzone.experiments.configs import FreezeConfig


def add(sub: argparse._SubParsersAction) -> None:
    p = opt.command_parser(
        sub,
        "freeze",
        "Fine-tune while a schedule progressively freezes weight matrices, beside full SFT on "
        "the same batches; judge each schedule's cost against a margin and measure its savings.",
        FreezeConfig,
        run,
    )
    p.add_argument(
        "--save",
        metavar="DIR",
        help="write the fine-tuned model of seed 0 of the first schedule that is not full, in "
        "Hugging Face format, to a new or empty directory outside --out, or over a model an "
        "earlier --save wrote (default: not written)",
    )


def run(args: argparse.Namespace) -> int | None:
    from deadzone.experiments.freeze import BASELINE, freeze
    from deadzone.report.freeze import conclusion, table_model
    from deadzone.report.table import to_text

    config, main_process, before = started(FreezeConfig, args)
    results = freeze(config, save=args.save)
    if main_process:
        say_resumed(config.out, before, results)
        written = write_reports(config.out)
        print(f"{to_text(table_model(results))}\n\n{conclusion(results)}")
        for line in savings_lines(results.get("plan_savings") or {}):
            print(line)
        if args.save:
            written.append(f"{args.save} ({config.first_frozen()}, seed 0)")
        print(f"wrote {', '.join(written)}")
    return check_baseline(config.out, results, BASELINE, main_process)


def savings_lines(plan_savings: dict[str, dict]) -> list[str]:
    """One line per plan schedule: what its savings model predicts per step."""
    return [
        f"{name}: savings model: FLOPs ratio {m['flops_ratio']:.3f} of full's (prefix depth "
        f"{m['prefix_depth']}, frozen share {m['frozen_share']:.3f}"
        f"{', prefix outputs cached' if m.get('cached') else ''}), "
        f"{m['state_bytes_saved'] / 2**20:.1f} MiB of gradient and optimizer state and "
        f"{m['activation_bytes_saved'] / 2**20:.1f} MiB of activations saved"
        for name, m in plan_savings.items()
    ]
