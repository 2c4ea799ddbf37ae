"""What the experiment commands share after their runs: how much of a resumed directory was
reused, and the error when every baseline run failed."""

from __future__ import annotations

from deadzone.errors import DeadzoneError


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
