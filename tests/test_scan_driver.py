"""The scan driver's judging, from synthetic run records: units, levels, refusals, bounds."""

from __future__ import annotations

import pytest
from conftest import TIGHT, claims_runs, judging_config, record, searched

from deadzone.errors import DeadzoneError
from deadzone.experiments import scan
from deadzone.experiments.scan import _costs, _judge_costs, _scale


def runs(gains=(1.0, 1.2, 0.8), costs=(0.01, 0.0105, 0.0095)) -> dict[str, dict]:
    out = {}
    for seed, (g, c) in enumerate(zip(gains, costs, strict=True)):
        out[f"full/seed{seed}"] = record(f"full/seed{seed}", 2.0, 2.0 + g)
        key = scan.set_key("frozen", ["a"], seed)
        out[key] = record(key, 2.0 + c * g)
    return out


def test_costs_are_shares_of_each_seeds_gain_and_judged_at_the_bonferroni_level():
    rs = runs()
    scale = _scale(rs, 3, judging_config(), comparisons=10) | {"retried": set()}
    assert scale["unit"] == "share_of_gain" and scale["alpha"] == pytest.approx(0.005)
    costs = _costs(rs, scale, "frozen", ["a"], 3)
    assert costs == pytest.approx([0.01, 0.0105, 0.0095])
    j = _judge_costs(costs, 0.02, scale["alpha"])
    assert j.verdict == "negligible" and j.cost == pytest.approx(0.01)
    assert j.interval[1] < 0.02  # read at the level the verdict was taken at
    assert _judge_costs(costs, 0.005, scale["alpha"]).verdict == "costly"


def test_a_gain_not_clearly_positive_judges_in_nats_and_a_failed_baseline_is_refused():
    rs = runs(gains=(0.5, -0.4, 0.1), costs=(0.0, 0.0, 0.0))
    assert _scale(rs, 3, judging_config(), comparisons=2)["unit"] == "nats"
    rs["full/seed1"]["status"] = "failed"
    with pytest.raises(DeadzoneError, match="baseline run full/seed1 failed"):
        _scale(rs, 3, judging_config(), comparisons=2)


def test_missing_runs_are_asked_for_and_a_failed_run_is_costly():
    rs = runs()
    scale = _scale(rs, 3, judging_config(), comparisons=1) | {"retried": set()}
    with pytest.raises(scan._Missing) as missing:
        _costs(rs, scale, "frozen", ["a", "b"], 2)
    assert [s.key for s in missing.value.specs] == [
        scan.set_key("frozen", ["a", "b"], 0),
        scan.set_key("frozen", ["a", "b"], 1),
    ]
    rs[scan.set_key("frozen", ["a"], 1)]["status"] = "failed"
    assert _costs(rs, scale, "frozen", ["a"], 3) is None
    assert _judge_costs(None, 0.02, 0.05).verdict == "costly"


def test_a_run_lost_to_a_dead_worker_is_asked_for_once_per_invocation():
    rs = runs()
    key = scan.set_key("frozen", ["a"], 0)
    rs[key]["crashed"] = True
    scale = _scale(rs, 3, judging_config(), comparisons=1) | {"retried": set()}
    with pytest.raises(scan._Missing):
        _costs(rs, scale, "frozen", ["a"], 3)
    scale["retried"].add(key)
    assert _costs(rs, scale, "frozen", ["a"], 3) is not None


LOOSE = (0.010, 0.013, 0.007)  # per-seed costs: p = 0.029, against TIGHT's p far below 0.05/4


def test_holm_over_every_claim_decides_what_the_strictest_level_left_undetermined():
    rs = claims_runs({("frozen", ("a",)): TIGHT, ("frozen", ("b",)): TIGHT,
                      ("random", ("a",)): TIGHT, ("random", ("b",)): LOOSE})  # fmt: skip
    scale = _scale(rs, 3, judging_config(), comparisons=4) | {"retried": set()}
    steered = _judge_costs(_costs(rs, scale, "random", ["b"], 3), 0.02, scale["alpha"])
    assert steered.verdict == "undetermined"  # at 0.05 / 4 its interval reaches the margin
    records = {st: {"sites": {**searched(["a"], ["a"]), **searched(["b"], ["b"])}}
               for st in ("frozen", "random")}  # fmt: skip
    scan.holm_verdicts(records, rs, scale)
    b = records["random"]["sites"]["b"]
    assert b["verdict"] == "negligible" and b["search_verdict"] == "undetermined"
    assert b["level"] == pytest.approx(0.05)  # the last of 4 in Holm's order
    assert b["interval"][1] < 0.02 and b["cost"] == pytest.approx(0.01)
    levels = sorted(records[st]["sites"][n]["level"] for st in records for n in "ab")
    assert levels == pytest.approx([0.05 / 4, 0.05 / 3, 0.05 / 2, 0.05])


def test_holm_stops_at_the_first_claim_it_cannot_decide_and_the_later_ones_stay_open():
    rs = claims_runs({("frozen", ("a",)): TIGHT, ("frozen", ("b",)): LOOSE,
                      ("frozen", ("c",)): LOOSE})  # fmt: skip
    scale = _scale(rs, 3, judging_config(), comparisons=3) | {"retried": set()}
    records = {"frozen": {"sites": {n: searched([n], [n])[n] for n in "abc"}}}
    scan.holm_verdicts(records, rs, scale)
    sites = records["frozen"]["sites"]
    assert sites["a"]["verdict"] == "negligible"
    assert sites["b"]["verdict"] == sites["c"]["verdict"] == "undetermined"  # 0.029 > 0.05 / 2
    assert sites["b"]["seeds_needed"] > 3


def test_the_sites_of_a_group_share_its_claim_and_a_group_better_than_full_is_negligible():
    better = (-0.02, -0.021, -0.019)
    rs = claims_runs({("frozen", ("a", "b")): better})
    scale = _scale(rs, 3, judging_config(), comparisons=2) | {"retried": set()}
    records = {"frozen": {"sites": searched(["a", "b"], ["a", "b"], "better")}}
    scan.holm_verdicts(records, rs, scale)
    a, b = records["frozen"]["sites"]["a"], records["frozen"]["sites"]["b"]
    assert a["verdict"] == b["verdict"] == "negligible"
    assert a["interval"] == b["interval"] and a["interval"][1] < 0  # one claim, one interval
    assert a["level"] == b["level"] == pytest.approx(0.05 / 2)  # the strictest of its two
