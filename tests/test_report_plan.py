"""The plan report, from a hand-written ``results.json`` alone: it opens with what to do next,
the numbers it shows are the file's, and ``deadzone report DIR`` rebuilds it with its page."""

from __future__ import annotations

import copy

import pytest

from deadzone import fileio
from deadzone.cli import main
from deadzone.report import plan as report
from deadzone.schema import SCHEMA_VERSION

MARGIN = {"unit": "share_of_gain", "margin_used": 0.02, "gains": {"0": 0.3, "1": 0.31, "2": 0.29}}


def judged(verdict: str, cost: float, low: float, high: float, **more) -> dict:
    return {"verdict": verdict, "cost": cost, "interval": [low, high], **more}


DEPTHS = [
    {"depth": 2, **judged("negligible", 0.0041, -0.0062, 0.0144), "seeds": 3},
    {"depth": 3, **judged("costly", 0.1656, 0.0777, 0.2536), "seeds": 2},
]
STEPS = [
    {"phase": "prefix", "depth": 2, "sites": [], "seeds": 3, "seeds_needed": None,
     "action": "accepted", **judged("negligible", 0.0041, -0.0062, 0.0144)},
    {"phase": "prefix", "depth": 3, "sites": [], "seeds": 2, "seeds_needed": None,
     "action": "rejected", **judged("costly", 0.1656, 0.0777, 0.2536)},
    {"phase": "grow", "depth": 2, "sites": ["L3.mlp.c_fc"], "seeds": 3, "seeds_needed": None,
     "action": "accepted", **judged("negligible", 0.0057, -0.0031, 0.0145)},
]  # fmt: skip
PLAN = {"prefix_depth": 2, "sites": ["L3.mlp.c_fc"], "empty": False, "seeds": 3,
        "seeds_needed": None, "unit": "share_of_gain", "margin": 0.02, "steps": 50,
        **judged("negligible", 0.0057, -0.0031, 0.0145)}  # fmt: skip
SAVINGS = {"flops_ratio": 0.6789, "frozen_share": 0.4321, "cached_flops_ratio": 0.5432,
           "ceilings": {"scattered": 0.856, "prefix": 0.7119, "cached": 0.5679},
           "state_bytes_saved": 3 * 2**20, "activation_bytes_saved": 5 * 2**19,
           "batch_size": 8, "seq_len": 78}  # fmt: skip
LONG = {"horizon": 4, "steps": 200, "seeds": 3, "unit": "share_of_gain", "margin": 0.02,
        "holds": True, "step_time": {"ratio": 0.7346, "n": 3, "interval": [0.7011, 0.7696]},
        **judged("negligible", 0.0012, -0.0101, 0.0125)}  # fmt: skip


def certified() -> dict:
    summary = {"scale": MARGIN, "steps": STEPS, "prefix_depths": DEPTHS, "plan": PLAN,
               "savings": SAVINGS, "long_horizon": LONG, "runs": 18, "runs_long": 6,
               "step_time": {"ratio": 0.8123, "n": 3, "interval": [0.7712, 0.8556]}}  # fmt: skip
    return copy.deepcopy({
        "experiment": "plan", "schema_version": SCHEMA_VERSION, "model": "org/tiny-gpt2",
        "data": {"spec": "sft.jsonl"}, "steps": 50, "seeds": [0, 1, 2], "horizon": 4, "grow": 2,
        "versions": {"deadzone": "0.1.0"}, "runs": [], "summary": summary,
    })  # fmt: skip


def empty() -> dict:
    results = certified()
    s = results["summary"]
    s["plan"] = {**PLAN, "prefix_depth": 0, "sites": [], "empty": True, "seeds": 0,
                 **judged("negligible", 0.0, 0.0, 0.0)}  # fmt: skip
    s["prefix_depths"] = DEPTHS[1:]
    s["steps"] = [STEPS[1], {**STEPS[2], "depth": 0, "action": "rejected", "seeds_needed": 5,
                             **judged("undetermined", 0.0274, 0.0195, 0.0354)}]  # fmt: skip
    s["step_time"] = s["long_horizon"] = None
    s["runs_long"] = 0
    return results


def long_failure() -> dict:
    results = certified()
    results["summary"]["long_horizon"].update(
        holds=False, **judged("undetermined", 0.0312, 0.0118, 0.0506)
    )
    return results


def reported(tmp_path, results: dict) -> tuple[str, str]:
    """``deadzone report DIR`` on ``results``: report.md and report.html."""
    fileio.write_json(tmp_path / "results.json", results)
    assert main(["report", str(tmp_path)]) == 0
    return (tmp_path / "report.md").read_text(), (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("make", "first"),
    [
        (certified, "- Freeze the certified plan, the embeddings and blocks 0-1, and 1 matrix"),
        (empty, "- Keep full SFT for now: no frozen set was shown negligible at the margin 2%"),
        (long_failure, "- Do not use this plan for runs of 200 steps: there it costs +3.12% "),
    ],
)
def test_the_report_opens_with_what_to_do_next(tmp_path, make, first):
    md, page = reported(tmp_path, make())
    lines = md.splitlines()
    assert lines[:4] == ["# Plan of `org/tiny-gpt2`", "", "## What to do next", ""]
    assert lines[4].startswith(first)
    assert "What to do next" in page and "Plan of <code>org/tiny-gpt2</code>" in page
    assert page.index("What to do next") < page.index("Prefix depths")


def test_a_certified_plan_shows_the_files_numbers_and_commands(tmp_path):
    md, page = reported(tmp_path, certified())
    for said in (
        "joint cost +0.57% [-0.31%, +1.45%] of the fine-tuning gain, negligible on 3 seeds at 50",
        "| 2 | the embeddings and blocks 0-1 | 3 | negligible | +0.41% [-0.62%, +1.44%] |",
        "| 3 | the embeddings and blocks 0-2 | 2 | costly | +16.56% [+7.77%, +25.36%] |",
        "| Time per step × full | 0.679 (FLOPs) | 0.812× [0.771, 0.856] (3 seeds) |",
        "| … at 200 steps | — | 0.735× [0.701, 0.770] (3 seeds) |",
        "| … with cached prefix outputs | 0.543 | — |",
        "| Optimizer state and gradients saved | 3.0 MiB | — |",
        "`L3.mlp.c_fc`",
        "costs +0.12% [-1.01%, +1.25%] of the fine-tuning gain (against +0.57% [-0.31%, +1.45%]"
        " at 50 steps): still negligible",
        "--schedule plan:DIR/plan.json,random --data sft.jsonl",
        "`DIR/axolotl.yaml`",
        "`DIR/lora_config.json`",
        "It was checked up to 200 steps",
    ):
        assert said in md, said
    for said in ("0.812× [0.771, 0.856] (3 seeds)", "+16.56% [+7.77%, +25.36%]", "axolotl.yaml"):
        assert said in page, said


def test_an_empty_plan_says_what_to_try(tmp_path):
    md, _ = reported(tmp_path, empty())
    steps = md.split("\n\n")[2]
    assert "`--seeds 5`" in steps and "larger `--margin`" in steps
    assert "`deadzone scan org/tiny-gpt2 --data sft.jsonl --out DIR2`" in steps
    assert "plan.json" not in steps and "## Savings" not in md and "## Long horizon" not in md
    assert "| 8 matrices" not in md and "| 1 matrix | 3 | undetermined | +2.74%" in md
    printed = report.summary_text(empty())
    assert "the certified plan is the empty one" in printed and "Savings" not in printed
    assert "Savings model: step FLOPs 0.679× full's" in report.summary_text(certified())


def test_a_plan_failing_at_the_long_horizon_says_so_first(tmp_path):
    md, page = reported(tmp_path, long_failure())
    first = md.split("\n\n")[2].splitlines()[0]
    assert "undetermined, no longer negligible" in first
    assert "`deadzone plan org/tiny-gpt2 --data sft.jsonl --steps 200 --out DIR2`" in first
    assert "It was checked up to" not in md
    assert (
        md.split("\n\n")[2]
        .splitlines()[1]
        .startswith("- For runs of about 50 steps only, freeze the certified plan")
    )
    assert "no longer negligible (undetermined)" in md and "no longer negligible" in page


def test_an_unfinished_search_is_refused_in_one_line(tmp_path, capsys):
    results = certified()
    results["summary"] = None
    fileio.write_json(tmp_path / "results.json", results)
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has not finished" in err
    assert not (tmp_path / "report.md").exists()


def test_plans_share_a_combined_page(tmp_path):
    for name, make in (("a", certified), ("b", empty)):
        (tmp_path / name).mkdir()
        fileio.write_json(tmp_path / name / "results.json", make())
    page = tmp_path / "both.html"
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(page)]) == 0
    text = page.read_text()
    assert "Freeze the certified plan" in text and "Keep full SFT for now" in text
    assert "a/results.json" in text and "b/results.json" in text
