"""The scan driver's judging, from synthetic run records: units, levels, refusals, bounds."""

from __future__ import annotations

import pytest

from deadzone.errors import DeadzoneError
from deadzone.experiments import scan
from deadzone.experiments.scan import ScanConfig, _costs, _judge_costs, _scale


def record(key: str, final: float, step0: float | None = None, status: str = "ok") -> dict:
    return {"key": key, "status": status, "final_eval_loss": final, "step0_eval_loss": step0}


def runs(gains=(1.0, 1.2, 0.8), costs=(0.01, 0.0105, 0.0095)) -> dict[str, dict]:
    out = {}
    for seed, (g, c) in enumerate(zip(gains, costs, strict=True)):
        out[f"full/seed{seed}"] = record(f"full/seed{seed}", 2.0, 2.0 + g)
        key = scan.set_key("frozen", ["a"], seed)
        out[key] = record(key, 2.0 + c * g)
    return out


def config(**kwargs) -> ScanConfig:
    return ScanConfig(model="m", **kwargs)


def test_costs_are_shares_of_each_seeds_gain_and_judged_at_the_bonferroni_level():
    rs = runs()
    scale = _scale(rs, 3, config(), comparisons=10) | {"retried": set()}
    assert scale["unit"] == "share_of_gain" and scale["alpha"] == pytest.approx(0.005)
    costs = _costs(rs, scale, "frozen", ["a"], 3)
    assert costs == pytest.approx([0.01, 0.0105, 0.0095])
    j = _judge_costs(costs, 0.02, scale["alpha"])
    assert j.verdict == "negligible" and j.cost == pytest.approx(0.01)
    assert j.interval[1] < 0.02  # read at the level the verdict was taken at
    assert _judge_costs(costs, 0.005, scale["alpha"]).verdict == "costly"


def test_a_gain_not_clearly_positive_judges_in_nats_and_a_failed_baseline_is_refused():
    rs = runs(gains=(0.5, -0.4, 0.1), costs=(0.0, 0.0, 0.0))
    assert _scale(rs, 3, config(), comparisons=2)["unit"] == "nats"
    rs["full/seed1"]["status"] = "failed"
    with pytest.raises(DeadzoneError, match="baseline run full/seed1 failed"):
        _scale(rs, 3, config(), comparisons=2)


def test_missing_runs_are_asked_for_and_a_failed_run_is_costly():
    rs = runs()
    scale = _scale(rs, 3, config(), comparisons=1) | {"retried": set()}
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
    scale = _scale(rs, 3, config(), comparisons=1) | {"retried": set()}
    with pytest.raises(scan._Missing):
        _costs(rs, scale, "frozen", ["a"], 3)
    scale["retried"].add(key)
    assert _costs(rs, scale, "frozen", ["a"], 3) is not None
