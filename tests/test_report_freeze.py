"""The freeze report's ratios, title and summary, from results alone."""

from __future__ import annotations

from deadzone.ratios import geometric
from deadzone.report import freeze as report


def arm(schedule: str, verdict: str, wall: dict, cost: float = 0.001) -> dict:
    judged = {"mean": cost, "adjusted": [cost - 0.004, cost + 0.004], "interval": None}
    savings = {"wall_time": wall, "optimizer_peak": geometric([0.6, 0.62, 0.61])}
    cost = {"share_of_gain": judged, "nats": judged}
    return {"schedule": schedule, "verdict": verdict, "seeds_needed": None, "cost": cost,
            "savings": savings}  # fmt: skip


def results(wall: dict, fraction: float = 0.25) -> dict:
    full = {"schedule": "full", "verdict": "baseline", "savings": {"wall_time": {"mean": None}}}
    return {"model": "m", "target_fraction": fraction, "steps": 20, "data": {"spec": "d.jsonl"},
            "summary": {"unit": "share_of_gain", "arms": [full, arm("plan:p.json", "negligible",
                                                                     wall)]}}  # fmt: skip


def test_a_ratio_is_never_printed_with_a_bound_at_or_below_zero():
    arithmetic = {"mean": 1.37, "interval": [-2.34, 5.08], "n": 3}  # what an old results file held
    assert "-" not in report._ratio(arithmetic) and report._ratio(arithmetic).startswith("1.37×")
    logged = geometric([0.4, 3.9, 0.6])
    said = report._ratio(logged)
    low, high = (float(x) for x in said.split("[")[1].rstrip("]").split(", "))
    assert 0 < low < logged["mean"] < high
    assert "geometric means" in report.ratio_words(results(logged))
    assert "geometric" not in report.ratio_words(results(arithmetic))


def test_two_freeze_reports_at_different_shares_have_different_titles():
    wall = geometric([0.8, 0.82, 0.81])
    assert report.title(results(wall, 0.25)) != report.title(results(wall, 0.5))
    assert report.title(results(wall, 0.5)).endswith("50% frozen")


def test_the_summary_says_what_to_freeze_what_it_saves_and_costs_and_what_to_run():
    wall = geometric([0.8, 0.82, 0.81])
    first, second = report.next_steps(results(wall))
    assert first.startswith("Freeze with `plan:p.json`: 0.81× [") and "full's wall time" in first
    assert "optimizer state" in first and "+0.10% [-0.30%, +0.50%] of the gain, negligible" in first
    assert "FreezeCallback('plan:p.json')" in second and "--steps 40" in second
    slower = geometric([1.2, 1.25, 1.22])
    assert report.next_steps(results(slower))[0].startswith("Keep full SFT for now")
