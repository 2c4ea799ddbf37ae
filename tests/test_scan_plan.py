"""A scan's runs and summary as plain data: keys, the runs of the exhaustive scan, and a search
record turned into the summary the report draws."""

from __future__ import annotations

import json

import pytest
from conftest import MARGIN, Oracle, tiny_gpt2

from deadzone.errors import DeadzoneError
from deadzone.experiments import scan, scan_summary, search
from deadzone.models.sites import find_sites
from deadzone.report import scan as report


def test_keys_are_stable_and_name_the_set() -> None:
    assert scan.set_key("frozen", ["L0.attn.c_proj"], 2) == "frozen/L0.attn.c_proj/seed2"
    a = scan.set_key("random", ["b", "a", "c"], 0)
    assert a == scan.set_key("random", ["c", "a", "b"], 0) and a.startswith("random/3x")
    assert a != scan.set_key("random", ["a", "b", "d"], 0)
    spec = scan.set_spec("frozen", ["b", "a"], 1)
    assert spec.plan == {"a": "frozen", "b": "frozen"} and spec.seed == 1
    assert spec.labels == {"strategy": "frozen", "sites": ["a", "b"]}
    with pytest.raises(DeadzoneError):
        scan.set_key("frozen", [], 0)


def test_runs_of_the_exhaustive_scan() -> None:
    names = [s.name for s in find_sites(tiny_gpt2()) if s.layer is not None]
    every = scan.exhaustive_specs(names, ("frozen", "random"), 3)
    assert len({s.key for s in every}) == len(every) == 3 * (1 + 2 * len(names))
    assert [s.key for s in every[:3]] == ["full/seed0", "full/seed1", "full/seed2"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["full"], "besides full"),
        (["frozen", "melted"], "unknown strategy .melted."),
        ([], "besides full"),
    ],
)
def test_strategies_are_checked(given, message) -> None:
    with pytest.raises(DeadzoneError, match=message):
        scan.check_strategies(given)
    assert scan.check_strategies(["full", "frozen", "random", "frozen"]) == ("frozen", "random")


def test_search_record_to_summary_and_report(tmp_path) -> None:
    model = tiny_gpt2(n_layer=4)
    sites = [s for s in find_sites(model) if s.layer is not None]
    costly = {sites[1].name, sites[6].name}
    costs = {s.name: (0.2 if s.name in costly else 0.001 * (i % 3)) for i, s in enumerate(sites)}
    groups = search.groups_by(sites, "layer")
    record = search.search(Oracle(costs, 0.001), groups, max_seeds=3, margin=MARGIN)
    pr = {s.name: costs[s.name] + 0.01 * i for i, s in enumerate(sites)}  # ranks the costs
    entry = scan_summary.strategy_summary(record, sites, {"pr": pr, "flat": dict.fromkeys(pr, 1.0)})
    json.dumps(entry)
    single = [r for r in entry["sites"] if r["single"]]
    assert {r["site"] for r in single} >= costly  # split down to themselves
    assert entry["correlations"]["pr"]["n"] == len(single)
    assert entry["correlations"]["pr"]["rho"] > 0.5
    assert entry["correlations"]["flat"]["rho"] is None  # a constant score ranks nothing

    total = sum(p.numel() for p in model.parameters())
    blocks = scan_summary.block_params((n, p.numel()) for n, p in model.named_parameters())
    assert 0 < blocks < total
    counts = scan_summary.effective_counts(
        record["joint"], sites, trainable=total, in_blocks=blocks
    )
    assert counts["sites"] == len(record["joint"]["sites"]) > 0
    assert counts["params"] == sum(s.params for s in sites if s.name in record["joint"]["sites"])
    assert 0 < counts["fraction_of_block_params"] < 1 and counts["verdict"] == "negligible"

    summary = {"margin": MARGIN, "strategies": {"frozen": entry}, "scores": {"pr": pr}}
    report.heatmap(summary, tmp_path / "heatmap.png")
    report.scores_plot(summary, tmp_path / "scores.png")
    assert "| pr |" in report.rho_table(summary)


def entry(cost: float | None, group: int = 1) -> dict:
    return {"verdict": "negligible", "cost": cost, "group_size": group}


def test_cost_order_is_by_single_site_cost_then_name_with_the_costless_last() -> None:
    """A site's own cost, or its group's shared out; the joint set and other names left out."""
    record = {
        "sites": {
            "a": entry(0.03), "b": entry(None), "c": entry(0.04, group=4), "d": entry(0.01),
            "e": entry(0.01), "f": entry(-0.02), "g": entry(0.0), "joint": entry(0.0),
        },
        "joint": {"sites": ["joint"]},
    }  # fmt: skip
    names = ["a", "b", "c", "d", "e", "f", "g", "joint", "not judged"]
    assert scan_summary.cost_order(record, names) == ["f", "g", "c", "d", "e", "a", "b"]
    assert scan_summary.cost_order(record | {"joint": None}, ["joint", "a"]) == ["joint", "a"]
