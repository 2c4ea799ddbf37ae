"""What the experiment commands share around their runs: the config read from the flags, how
much of a resumed directory was reused, and the error when every baseline run failed."""

from __future__ import annotations

import argparse

from deadzone.errors import DeadzoneError


def started(cls: type, args: argparse.Namespace) -> tuple:
    """``(config, main_process, before)``: the experiment config of class ``cls`` read from
    ``args``, whether this is the main process of the launch (the one that prints and writes),
    and the keys of the runs already recorded in its ``--out``."""
    from accelerate import PartialState

    from deadzone.cli.options import read_config

    config = read_config(cls, args)
    main_process = PartialState(cpu=config.sft.cpu).is_main_process
    return config, main_process, recorded_keys(config.out)


def recorded_keys(out: str) -> set[str]:
    """Keys of the runs already in ``out``'s results file (none if it cannot be read)."""
    from deadzone.experiments.results import read_results

    try:
        results = read_results(out, missing_ok=True) or {}
    except DeadzoneError:
        return set()  # the experiment says why, in its own words
    runs = results.get("runs", [])
    return {r["key"] for r in runs if isinstance(r, dict) and isinstance(r.get("key"), str)}


def say_resumed(out: str, before: set[str], results: dict) -> None:
    """Print how many of ``results``' runs were in ``out`` before (``before``: their keys),
    if any were."""
    reused = sum(r["key"] in before for r in results["runs"])
    if reused:
        print(f"resumed {out}: {reused} run(s) reused, {len(results['runs']) - reused} run now")


def check_baseline(out: str, results: dict, baseline: str, main_process: bool) -> int | None:
    """Raise when every ``baseline`` run failed (nothing to compare against), on the main
    process; return 2 on the others (the main process says why); None when one succeeded."""
    runs = [r for r in results["runs"] if r["strategy"] == baseline]
    if not runs or any(r["status"] == "ok" for r in runs):
        return None
    if not main_process:
        return 2
    raise DeadzoneError(
        f"every {baseline} run failed ({runs[0]['error']}): nothing to compare against; "
        f"see {out}/results.json"
    )


def write_reports(out: str) -> list[str]:
    """Write the experiment's ``report.md``, its plots and ``report.html`` from its results
    file; return the files ``out`` now holds, results first, for the ``wrote`` line."""
    from pathlib import Path

    from deadzone.report.build import write_reports as write

    report, page = write(out)
    plots = sorted(str(p) for p in Path(out).glob("*.png"))
    return [str(report.with_name("results.json")), str(report), str(page), *plots]
