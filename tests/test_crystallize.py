"""The crystallize experiment: results file, resume, refusals, summary statistics, report, CLI."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from conftest import config

from deadzone import fileio
from deadzone.cli import build_parser, main
from deadzone.errors import DeadzoneError
from deadzone.experiments.crystallize import (
    crystallize,
    plan_runs,
    summarize,
)
from deadzone.models.checkpoints import files_fingerprint
from deadzone.report.crystallize import markdown, table_model, write_report
from deadzone.report.table import to_markdown, to_text
from deadzone.schema import SCHEMA_VERSION
from deadzone.training import strategies
from deadzone.training.train import SFTConfig, computed

TOP_KEYS = [
    "schema_version", "experiment", "model", "targets", "ranks", "steps", "seeds", "data", "config",
]  # fmt: skip
RUN_KEYS = [
    "strategy", "seed", "status", "error", "trainable_params", "seconds", "step0_eval_loss",
    "final_train_loss", "final_eval_loss", "curve",
]  # fmt: skip
SUMMARY_KEYS = [
    "alpha", "unit", "margin", "margin_nats", "margin_used", "gain", "arms",
    "crystallization_rank",
]  # fmt: skip
ARM_KEYS = [
    "arm", "strategy", "rank", "n", "failed", "train_loss_mean", "train_loss_std",
    "eval_loss_mean", "eval_loss_std", "delta_train_pct", "delta_eval_pct", "seeds", "cost",
    "verdict",
]  # fmt: skip
COMPARED_KEYS = ["p_value", "level", "reason", "seeds_needed"]
COST_KEYS = ["mean", "sd", "interval", "adjusted"]


def test_cli_rank_sweep_writes_results_report_verdicts_and_curves(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "out"
    argv = [
        "crystallize", model, "--target", "L1.attn.c_proj", "--rank", "1,2",
        "--steps", "2", "--seeds", "2", "--data", data,
        "--eval-every", "2", "--batch-size", "4", "--lr", "3e-3",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "Full SFT (all params) (n=2)" in printed and "Crystal (rank-2" in printed
    assert "results.json" in printed and "verdicts.png" in printed

    results = fileio.read_json(out / "results.json")
    for key in [*TOP_KEYS, "versions", "git", "runs", "summary"]:
        assert key in results, key
    assert results["experiment"] == "crystallize" and results["schema_version"] == SCHEMA_VERSION
    assert results["targets"] == ["L1.attn.c_proj"] and results["ranks"] == [1, 2]
    assert results["steps"] == 2 and results["seeds"] == [0, 1]
    assert {"spec", "content_hash", "counts"} <= set(results["data"])
    assert results["data"]["max_length"] == 64  # capped at the model's context
    assert set(results["versions"]) == {"python", "torch", "transformers", "deadzone"}
    assert sorted(r["key"] for r in results["runs"]) == sorted(
        f"{arm}/seed{seed}"
        for arm in ("full", "frozen", "crystal@1", "crystal@2", "random")
        for seed in (0, 1)
    )
    for run in results["runs"]:
        assert set(RUN_KEYS) <= set(run), run.keys()
        assert run["status"] == "ok", run["error"]
        assert [p["step"] for p in run["curve"]] == [0, 1, 2]
        assert run["rank"] == (int(run["key"][8]) if run["strategy"] == "crystal" else None)
    by = {(r["key"].split("/")[0], r["seed"]): r for r in results["runs"]}
    for seed in (0, 1):  # the target is untouched before step 0 for full and frozen
        assert by["full", seed]["step0_eval_loss"] == by["frozen", seed]["step0_eval_loss"]
        assert (
            by["full", seed]["trainable_params"] - by["frozen", seed]["trainable_params"] == 32 * 32
        )
    summary = results["summary"]
    assert set(SUMMARY_KEYS) <= set(summary)
    assert summary["margin"] == 0.02 and summary["margin_nats"] == 0.01
    assert summary["margin_used"] == (0.02 if summary["unit"] == "share_of_gain" else 0.01)
    arms = summary["arms"]
    assert [a["arm"] for a in arms] == ["full", "frozen", "crystal@1", "crystal@2", "random"]
    for a in arms:
        assert set(ARM_KEYS) <= set(a) and a["n"] == 2 and a["seeds"] == [0, 1]
    assert arms[0]["verdict"] == "baseline" and arms[0]["delta_eval_pct"] == 0.0
    for a in arms[1:]:
        assert set(COMPARED_KEYS) <= set(a)
        assert set(a["cost"]) == {"nats", "pct", "share_of_gain", "rate"}
        assert all(set(COST_KEYS) <= set(c) for c in a["cost"].values())
        assert a["verdict"] in ("better", "negligible", "costly", "undetermined")
        assert a["level"] <= 0.05
    gain = summary["gain"]
    full = [by["full", seed] for seed in (0, 1)]
    assert gain["per_seed"] == [r["step0_eval_loss"] - r["final_eval_loss"] for r in full]

    report = (out / "report.md").read_text()
    assert "| Crystal (rank-2 approximation, frozen) (n=2)" in report
    assert "**Conclusion.**" in report and "Holm-adjusted" in report
    assert "![verdicts](verdicts.png)" in report
    for png in ("curves.png", "verdicts.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plan_runs_keys_crystal_by_rank():
    specs = plan_runs(("full", "crystal", "frozen"), ["a"], 2, (1, 4))
    assert [s.key for s in specs[:4]] == ["full/seed0", "crystal@1/seed0", "crystal@4/seed0",
                                           "frozen/seed0"]  # fmt: skip
    assert [s.rank for s in specs[:4]] == [1, 1, 4, 1]
    assert [s.labels["rank"] for s in specs[:4]] == [None, 1, 4, None]
    assert len({s.key for s in specs}) == len(specs) == 8


def test_resume_skips_finished_runs_and_reproduces_a_missing_one(setup, tmp_path):
    cfg = config(setup, strategies=("full", "zero"), seeds=1)
    first = crystallize(cfg, tmp_path, show_progress=False)
    assert len(first["runs"]) == 2

    ran = []
    again = crystallize(cfg, tmp_path, show_progress=False, on_record=ran.append)
    assert ran == [] and again["runs"] == first["runs"]

    # Drop one finished run: only it runs again, with bit-identical numbers (same seed).
    doc = fileio.read_json(tmp_path / "results.json")
    dropped = doc["runs"].pop(1)
    fileio.write_json(tmp_path / "results.json", doc)
    resumed = crystallize(cfg, tmp_path, show_progress=False, on_record=ran.append)
    assert [r["key"] for r in ran] == [dropped["key"]]
    assert computed(ran[0]) == computed(dropped)
    assert len(resumed["runs"]) == 2


def test_a_different_config_or_experiment_is_refused(setup, tmp_path):
    crystallize(config(setup, strategies=("full",), seeds=1), tmp_path, show_progress=False)
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(
        DeadzoneError,
        match="experiment with config.weight_decay 0.0 \\(0.1 now\\); choose another output",
    ):
        crystallize(
            config(setup, strategies=("full",), seeds=1, sft={"weight_decay": 0.1}),
            tmp_path,
            show_progress=False,
        )
    with pytest.raises(DeadzoneError, match='experiment with targets \\["L1.attn.c_proj"\\]'):
        crystallize(config(setup, strategies=("full",), seeds=1, targets="L1.mlp.c_fc"), tmp_path)
    assert (tmp_path / "results.json").read_text() == before

    other = tmp_path / "other"
    fileio.write_json(other / "results.json", {"experiment": "scan", "runs": []})
    with pytest.raises(DeadzoneError, match="holds another experiment \\('scan'\\)"):
        crystallize(config(setup), other)

    (tmp_path / "a_file").write_text("")
    with pytest.raises(DeadzoneError, match="is a file"):
        crystallize(config(setup), tmp_path / "a_file")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--target", "L1.attn.c_prj"], "no site matches 'L1.attn.c_prj'; closest: L1.attn.c_proj"),
        (["--target", "L1.attn.c_proj", "--rank", "0"], "rank must be an integer >= 1, got 0"),
        (["--target", "L1.attn.c_proj", "--rank", "1,-2"], "rank must be an integer >= 1, got -2"),
        (["--target", "L1.attn.c_proj", "--rank", "32"], "rank 32 must be >= 1 and < 32"),
        (["--target", "L1.attn.c_proj", "--rank", "1,32"], "rank 32 must be >= 1 and < 32"),
        (["--target", "L1.attn.c_proj", "--rank", "1,2,1"], "a rank is listed twice: 1,2,1"),
        (
            ["--target", "L1.attn.c_proj", "--rank", "1,2.5"],
            "rank must be an integer >= 1, got '2.5'",
        ),
        (["--target", "L1.attn.c_proj", "--rank", "1,"], "rank must be an integer >= 1, got ''"),
        (
            ["--target", "L1.attn.c_proj", "--rank", "1,2", "--strategies", "full,frozen"],
            "a rank sweep (1,2) needs crystal among the strategies",
        ),
        (["--target", "L1.*", "--margin", "0"], "margin must be a share of the gain in (0, 1)"),
        (["--target", "L1.*", "--margin", "1"], "margin must be a share of the gain in (0, 1)"),
        (["--target", "L1.*", "--margin", "-0.1"], "got -0.1"),
        (["--target", "L1.*", "--margin", "nan"], "margin must be a share of the gain"),
        (["--target", "L1.*", "--margin-nats", "0"], "margin-nats must be > 0, got 0.0"),
        (["--target", "L1.attn.c_proj", "--steps", "0"], "steps must be an integer >= 1, got 0"),
        (["--target", "L1.*", "--strategies", "full,melt"], "unknown strategy 'melt'"),
        (["--target", "L1.*", "--strategies", "frozen,crystal"], "must include full"),
        (["--target", "L1.*", "--seeds", "0"], "seeds must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(setup, tmp_path, capsys, args, message):
    model, data = setup
    rc = main(["crystallize", model, *args, "--data", data, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("deadzone: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no rows"),
        (
            '{"prompt": "a", "completion": ""}\n{"prompt": "b", "completion": ""}\n',
            "every completion is empty",
        ),
    ],
)
def test_bad_data_is_an_error(setup, tmp_path, capsys, content, message):
    model, _ = setup
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    rc = main(["crystallize", model, "--target", "L1.attn.c_proj", "--data", str(path),
               "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 2
    assert message in capsys.readouterr().err


# --- statistics and report, from synthetic records ---------------------------------------------


def run(strategy, seed, train, evaluation, status="ok", step0=None, rank=None):
    if status != "ok":
        return {"strategy": strategy, "rank": rank, "seed": seed, "status": status,
                "trainable_params": 10, "final_train_loss": None, "final_eval_loss": None,
                "step0_eval_loss": None, "curve": []}  # fmt: skip
    step0 = evaluation + 1 if step0 is None else step0
    return {
        "strategy": strategy, "rank": rank, "seed": seed, "status": status,
        "trainable_params": 10, "final_train_loss": train, "final_eval_loss": evaluation,
        "step0_eval_loss": step0,
        "curve": [{"step": 0, "train_loss": None, "eval_loss": step0},
                  {"step": 1, "train_loss": train, "eval_loss": evaluation}],
    }  # fmt: skip


# full gains 1 nat on every seed (3.0 -> 2.0, 3.2 -> 2.2, 3.1 -> 2.1).
SYNTHETIC = [
    run("full", 0, 2.0, 2.00), run("full", 1, 2.2, 2.20), run("full", 2, 2.1, 2.10),
    # 10% of the gain on every seed, give or take 1%: costly.
    run("zero", 0, 2.1, 2.10), run("zero", 1, 2.3, 2.31), run("zero", 2, 2.2, 2.19),
    # +0.1%, -0.1%, +0.05% of the gain: negligible.
    run("frozen", 0, 2.0, 2.001), run("frozen", 1, 2.2, 2.199), run("frozen", 2, 2.1, 2.1005),
    # +1%, +3%, -0.5%: undetermined against 2%.
    run("crystal", 0, 2.0, 2.01, rank=1), run("crystal", 1, 2.2, 2.23, rank=1),
    run("crystal", 2, 2.1, 2.095, rank=1),
    # 1% of the gain below full on every seed, give or take 0.1%: better.
    run("crystal", 0, 2.0, 1.99, rank=2), run("crystal", 1, 2.2, 2.189, rank=2),
    run("crystal", 2, 2.1, 2.091, rank=2),
    # one seed failed, one left beside full: undetermined.
    run("random", 0, 2.0, 1.9), run("random", 1, None, None, status="failed"),
]  # fmt: skip


def test_summary_costs_intervals_and_verdicts():
    summary = summarize(SYNTHETIC, shapes={"L4.attn.c_proj": [96, 96]})
    assert summary["unit"] == "share_of_gain" and summary["gain"]["clear"]
    assert math.isclose(summary["gain"]["mean"], 1.0) and summary["margin_used"] == 0.02
    arms = {s["arm"]: s for s in summary["arms"]}
    assert list(arms) == ["full", "zero", "frozen", "crystal@1", "crystal@2", "random"]
    full, zero, frozen = arms["full"], arms["zero"], arms["frozen"]
    assert full["verdict"] == "baseline" and full["n"] == 3 and full["cost"] is None
    assert abs(full["eval_loss_mean"] - 2.1) < 1e-12 and abs(full["eval_loss_std"] - 0.1) < 1e-12
    assert zero["verdict"] == "costly"
    share = zero["cost"]["share_of_gain"]
    assert math.isclose(share["mean"], 0.1, rel_tol=1e-9) and share["adjusted"][0] > 0.02
    nats = [0.1, 0.11, 0.09]  # per seed, vs full
    assert math.isclose(zero["cost"]["nats"]["mean"], 0.1, rel_tol=1e-9)
    pct = [100 * d / f for d, f in zip(nats, (2.0, 2.2, 2.1), strict=True)]
    assert math.isclose(zero["delta_eval_pct"], sum(pct) / 3, rel_tol=1e-9)
    assert math.isclose(zero["cost"]["pct"]["mean"], sum(pct) / 3, rel_tol=1e-9)
    assert frozen["verdict"] == "negligible" and frozen["seeds_needed"] is None
    assert arms["crystal@1"]["verdict"] == "undetermined" and arms["crystal@1"]["seeds_needed"] > 3
    assert arms["crystal@2"]["verdict"] == "better"
    rnd = arms["random"]
    assert rnd["verdict"] == "undetermined" and rnd["n"] == 1 and rnd["failed"] == 1
    assert rnd["eval_loss_std"] is None and rnd["cost"]["share_of_gain"]["interval"] is None
    assert "at least 2" in rnd["reason"] and rnd["level"] is None
    # Holm over the four testable comparisons: the levels are 0.05/4 ... in p order.
    levels = sorted(a["level"] for a in summary["arms"] if a.get("level"))
    assert math.isclose(levels[0], 0.05 / 4)
    for a in arms.values():  # adjusted intervals contain the unadjusted ones
        if a.get("level"):
            adj, raw = (
                a["cost"]["share_of_gain"]["adjusted"],
                a["cost"]["share_of_gain"]["interval"],
            )
            assert adj[0] <= raw[0] <= raw[1] <= adj[1]
    # The crystallization rank: the smallest rank whose cost is below the margin.
    assert summary["crystallization_rank"] == {
        "rank": 2, "factor_params": 2 * (96 + 96), "dense_params": 96 * 96,
    }  # fmt: skip


def test_a_gain_that_is_not_clearly_positive_is_judged_in_nats():
    runs = [
        run("full", 0, 2.0, 2.0, step0=2.01), run("full", 1, 2.0, 2.0, step0=1.99),
        run("frozen", 0, 2.0, 2.001), run("frozen", 1, 2.0, 2.002),
    ]  # fmt: skip
    summary = summarize(runs, margin_nats=0.05)
    assert summary["unit"] == "nats" and not summary["gain"]["clear"]
    assert summary["margin_used"] == 0.05
    frozen = summary["arms"][1]
    assert frozen["verdict"] == "negligible"
    assert frozen["cost"]["share_of_gain"]["mean"] is None  # one seed did not gain
    results = report_results(runs, summary=summary)
    assert "not clearly positive" in markdown(results) and "0.05 nats" in markdown(results)


def report_results(runs, summary=None):
    return {
        "schema_version": SCHEMA_VERSION, "experiment": "crystallize", "model": "m",
        "targets": ["L4.attn.c_proj"], "ranks": [1, 2], "steps": 1, "seeds": [0, 1, 2],
        "runs": runs, "summary": summary or summarize(runs, shapes={"L4.attn.c_proj": [96, 96]}),
        "data": {"spec": "d.jsonl", "content_hash": "ab" * 32, "counts": {}},
        "config": {"lr": 3e-4, "batch_size": 8, "grad_accum": 1},
    }  # fmt: skip


def test_report_is_built_from_results_alone(tmp_path):
    results = report_results(SYNTHETIC)
    text = markdown(results)
    assert "| Zero (zeros, frozen) (n=3) |" in text
    assert "| Random (re-initialised values, frozen) (n=1, 1 failed) |" in text
    assert "| Crystal (rank-2 approximation, frozen) (n=3) |" in text
    assert "margin of 2% of the gain" in text
    assert (
        "Freezing it costs +0.02% [" in text and "negligible — L4.attn.c_proj is redundant" in text
    )
    assert text.count("redundant") == 1  # only the negligible arm is called redundant
    zero = summarize(SYNTHETIC)["arms"][1]["cost"]["share_of_gain"]["adjusted"]
    assert f"Zeroing it costs +10.00% [{100 * zero[0]:+.2f}%, {100 * zero[1]:+.2f}%]" in text
    assert "of the gain: costly." in text
    assert "better than full SFT" in text and "about " in text and "seeds would decide it" in text
    assert (
        "Replacing it by random values: undetermined (1 paired seed(s); an interval needs at "
        "least 2)." in text
    )
    assert "Crystallization rank: 2" in text and "384 parameters" in text and "9,216" in text
    assert "1 run(s) failed" in text and "Holm-adjusted over the 4 comparisons" in text
    assert "shares its storage" not in text
    tied = [
        r | {"sites": [{"site": "embed", "shared_with": ["lm_head.weight"]}]} for r in SYNTHETIC
    ]
    assert "`embed` shares its storage with `lm_head.weight`" in markdown(results | {"runs": tied})
    fileio.write_json(tmp_path / "results.json", results)
    report, verdicts, curves = write_report(tmp_path)
    assert report.read_text() == text and curves.stat().st_size > 1000
    assert verdicts.stat().st_size > 1000
    fileio.write_json(tmp_path / "results.json", {"experiment": "scan"})
    with pytest.raises(DeadzoneError, match="not a crystallize results file"):
        write_report(tmp_path)
    fileio.write_json(tmp_path / "results.json", {"experiment": "crystallize"})
    with pytest.raises(DeadzoneError, match="schema version 1; this deadzone reads version 2"):
        write_report(tmp_path)


def test_table_model_renders_to_markdown_and_text():
    model = table_model(report_results(SYNTHETIC))
    md, text = to_markdown(model), to_text(model)
    assert md.splitlines()[0].startswith("| Strategy | Final train loss | vs full |")
    assert "Verdict" in model.columns and "Holm-adjusted 95% CI" in model.columns
    for row in model.rows:
        assert "| " + " | ".join(row) + " |" in md
        assert row[0] in text and row[8] in text
    assert len(text.splitlines()) == len(model.rows) + 2


def test_delta_is_the_mean_of_paired_differences_so_it_lies_in_its_interval():
    # full failed on seed 2, where the other strategy did unusually badly: comparing means
    # over every finished run would say +17%, outside the paired interval [+1%, +1%].
    runs = [
        run("full", 0, 2.0, 2.0), run("full", 1, 2.0, 2.0), run("full", 2, None, None, "failed"),
        run("zero", 0, 2.02, 2.02), run("zero", 1, 2.02, 2.02), run("zero", 2, 3.0, 3.0),
    ]  # fmt: skip
    zero = summarize(runs)["arms"][1]
    lo, hi = zero["cost"]["pct"]["interval"]
    assert math.isclose(zero["delta_eval_pct"], 1.0) and math.isclose(zero["delta_train_pct"], 1.0)
    assert lo <= zero["delta_eval_pct"] <= hi and zero["seeds"] == [0, 1]
    assert zero["n"] == 3 and math.isclose(zero["eval_loss_mean"], 7.04 / 3)


def nan_strategy(model, site, ctx):
    """A strategy whose runs meet a NaN loss: the site's weight is all NaN."""
    strategies.zero(model, site, ctx)
    strategies.get_parameter(model, site).data.fill_(float("nan"))


def test_runs_meeting_nan_fail_with_a_reason_while_the_others_go_on(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(strategies.STRATEGIES, "zero", nan_strategy)
    results = crystallize(
        config(setup, strategies=("full", "frozen", "zero")), tmp_path, show_progress=False
    )
    by = {(r["strategy"], r["seed"]): r for r in results["runs"]}
    assert len(by) == 6
    for (strategy, _), r in by.items():
        if strategy == "zero":
            assert r["status"] == "failed" and "non-finite eval loss" in r["error"]
            assert r["final_eval_loss"] is None
        else:
            assert r["status"] == "ok" and r["error"] is None
    summary = {s["strategy"]: s for s in results["summary"]["arms"]}
    assert (summary["zero"]["n"], summary["zero"]["failed"]) == (0, 2)
    assert summary["zero"]["verdict"] == "undetermined"
    assert (summary["frozen"]["n"], summary["frozen"]["failed"]) == (2, 0)
    assert fileio.read_json(tmp_path / "results.json")["summary"] == results["summary"]
    write_report(tmp_path)
    assert "2 run(s) failed" in (tmp_path / "report.md").read_text()


def test_cli_exits_nonzero_after_writing_results_when_every_full_run_failed(
    setup, tmp_path, capsys, monkeypatch, recwarn
):
    monkeypatch.setitem(strategies.STRATEGIES, "full", nan_strategy)
    model, data = setup
    out = tmp_path / "out"
    argv = ["crystallize", model, "--target", "L1.attn.c_proj", "--strategies", "full",
            "--steps", "1", "--seeds", "1", "--data", data, "--out", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "torch threads" not in line]
    assert err[0].startswith("deadzone: warning: with one seed there is no confidence interval")
    assert len(err) == 2 and err[1].startswith("deadzone: error: every full run failed (")
    assert fileio.read_json(out / "results.json")["runs"][0]["status"] == "failed"
    assert (out / "report.md").is_file() and (out / "curves.png").is_file()
    assert not [w for w in recwarn if "No artists with labels" in str(w.message)]


def test_help_gives_every_option_its_default_or_says_it_is_required(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["crystallize", "--help"])
    text = capsys.readouterr().out
    options = text[text.index("options:") :]
    helps = {}  # option -> its help text, joined over lines
    for line in options.splitlines()[1:]:
        if line.startswith("  -"):
            name = line.split()[0].rstrip(",")
            helps[name] = line.strip()[len(name) :]
        else:
            helps[name] += " " + line.strip()
    helps = {k: " ".join(v.split()) for k, v in helps.items()}
    defaults = {
        "--strategies": "full,frozen,crystal,random", "--rank": "1", "--margin": "0.02",
        "--margin-nats": "0.01", "--steps": "50",
        "--seeds": "3", "--data": "builtin:docstrings", "--lr": "0.0003", "--batch-size": "8",
        "--grad-accum": "1", "--eval-every": "10", "--max-length": "256", "--backend": "local",
        "--report-to": "none",
    }  # fmt: skip
    explained = {"--eval-data", "--workers", "--ray-address", "--tracking-dir"}
    assert set(helps) >= {"-h", "--target", "--out", *explained, *defaults}
    for option, default in defaults.items():
        assert helps[option].endswith(f"(default: {default})"), helps[option]
    assert helps["--target"].endswith("(required)") and helps["--out"].endswith("(required)")
    assert (
        "(default: the builtin's own eval split, else a held-out 10% of --data)"
        in (helps["--eval-data"])
    )
    assert "capped at the model's context length" in helps["--max-length"]
    assert helps["--workers"].endswith("(default: one run after another in this process)")
    assert helps["--ray-address"].endswith("(default: start a local cluster on this machine)")
    assert helps["--tracking-dir"].endswith("(default: OUT/tracking)")
    for form in (".txt", ".jsonl", ".json", ".csv", ".parquet", "directory", "hub id"):
        assert form in helps["--data"], form
    assert "None" not in options


def test_a_model_resaved_with_other_weights_is_refused(setup, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, data = setup
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    print_ = files_fingerprint(tmp_path / "model")
    assert print_ == files_fingerprint(source)  # the same weights, saved again
    cfg = config((str(tmp_path / "model"), data), strategies=("full",), seeds=1)
    crystallize(cfg, tmp_path / "out", show_progress=False)

    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight.add_(1e-3)
    model.save_pretrained(tmp_path / "model")
    assert files_fingerprint(tmp_path / "model") != print_
    with pytest.raises(DeadzoneError, match="with model_info.fingerprint"):
        crystallize(cfg, tmp_path / "out", show_progress=False)


TWO_PROCESS_SCRIPT = """
import sys, torch
from deadzone.experiments.crystallize import CrystallizeConfig, crystallize
from deadzone.training.train import SFTConfig

torch.set_num_threads(1)
model, data, out = sys.argv[1:4]
sft = SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2, cpu=True)
cfg = CrystallizeConfig(
    model=model, targets="L1.attn.c_proj", strategies=("full", "frozen"), seeds=2, data=data,
    max_length=48, sft=sft,
)
assert len(crystallize(cfg, out, show_progress=False)["runs"]) == 4
"""


@pytest.mark.slow
def test_two_processes_write_every_run_once(setup, tmp_path):
    model, data = setup
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    out = tmp_path / "out"
    subprocess.run([*launch, str(script), model, data, str(out)], check=True, timeout=600)
    results = fileio.read_json(out / "results.json")
    assert len(results["runs"]) == 4
    assert all(r["status"] == "ok" and r["processes"] == 2 for r in results["runs"])
    assert [s["n"] for s in results["summary"]["arms"]] == [2, 2]


# --- verdicts on real runs ---------------------------------------------------------------------


def test_a_strategy_identical_to_full_costs_exactly_zero_and_is_negligible(
    setup, tmp_path, monkeypatch
):
    monkeypatch.setitem(strategies.STRATEGIES, "zero", strategies.full)  # "zero" trains it
    results = crystallize(config(setup, strategies=("full", "zero")), tmp_path, show_progress=False)
    same = results["summary"]["arms"][1]
    assert same["seeds"] == [0, 1]
    for unit in ("nats", "pct", "share_of_gain"):
        cost = same["cost"][unit]
        assert cost["mean"] == 0.0 and cost["interval"] == [0.0, 0.0] == cost["adjusted"]
    assert same["verdict"] == "negligible" and same["seeds_needed"] is None


@pytest.fixture(scope="module")
def trained(setup, tmp_path_factory):
    """The micro model of ``setup`` trained for 150 steps on its data, saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deadzone.data.batching import eval_batches, train_batches
    from deadzone.data.sft import load_sft_data, pad_id_for
    from deadzone.training.train import train

    source, data = setup
    model = AutoModelForCausalLM.from_pretrained(source)
    tokenizer = AutoTokenizer.from_pretrained(source)
    sft = load_sft_data(data, tokenizer, max_length=48)
    pad = pad_id_for(tokenizer)
    result = train(
        model,
        train_batches(sft.train, 8, seed=0, pad_id=pad),
        eval_batches(sft.eval, 8, pad_id=pad),
        SFTConfig(steps=150, lr=3e-3, batch_size=8, eval_every=150),
        show_progress=False,
    )
    assert result.final_eval_loss < result.step0_eval_loss - 1.0  # it learnt the task
    out = tmp_path_factory.mktemp("trained") / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out), data


def test_zeroing_the_attention_of_a_trained_model_is_costly(trained, tmp_path):
    # The completions copy words from the prompt, which needs layer 0's attention.
    cfg = config(trained, targets="L0.attn.c_attn", strategies=("full", "frozen", "zero"), seeds=3)
    cfg.sft.lr = 3e-4  # fine-tuning, not retraining: the trained model is the starting point
    summary = crystallize(cfg, tmp_path, show_progress=False)["summary"]
    arms = {a["arm"]: a for a in summary["arms"]}
    assert arms["zero"]["verdict"] == "costly", arms["zero"]["cost"]
    low = arms["zero"]["cost"][summary["unit"]]["adjusted"][0]
    assert low > summary["margin_used"]


def rank_k_model(source: str, out, k: int) -> torch.Tensor:
    """Save the model of ``source`` with ``L1.attn.c_proj`` replaced by an exactly rank-k
    matrix of the same Frobenius norm; return that matrix (out x in)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    conv = model.transformer.h[1].attn.c_proj  # Conv1D: weight stored (in, out)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(32, k, generator=g), torch.randn(k, 32, generator=g)
    w = a @ b  # (out, in), rank k
    w *= conv.weight.norm() / w.norm()
    with torch.no_grad():
        conv.weight.copy_(w.T)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return w


def test_crystal_at_a_rank_at_least_the_true_rank_reproduces_the_matrix_and_frozen(setup, tmp_path):
    from transformers import AutoModelForCausalLM

    from deadzone.models.sites import find_sites

    source, data = setup
    w = rank_k_model(source, tmp_path / "model", 2)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    site = next(s for s in find_sites(model) if s.name == "L1.attn.c_proj")
    stored = site.matrix(strategies.get_parameter(model, site).detach())
    for k in (1, 2, 3, 8):
        copy = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
        strategies.apply_strategies(copy, {site: "crystal"}, rank=k)
        crystal = site.matrix(strategies.get_parameter(copy, site).detach())
        error = (crystal - stored).abs().max() / stored.abs().max()
        assert (error < 1e-6) == (k >= 2), (k, error)  # float32 rounding: eps = 1.2e-7
    assert torch.allclose(stored, w, atol=1e-6)

    cfg = config((str(tmp_path / "model"), data), strategies=("full", "frozen", "crystal"))
    cfg.ranks = (1, 2, 3)
    results = crystallize(cfg, tmp_path / "out", show_progress=False)
    by = {(r["key"].split("/")[0], r["seed"]): r for r in results["runs"]}
    for seed in (0, 1):
        frozen = by["frozen", seed]
        for k in (1, 2, 3):
            crystal = by[f"crystal@{k}", seed]
            for key in ("step0_eval_loss", "final_eval_loss", "final_train_loss"):
                close = math.isclose(crystal[key], frozen[key], rel_tol=1e-5)
                assert close == (k >= 2), (k, key, crystal[key], frozen[key])


def test_another_margin_rejudges_the_same_runs_without_training_again(setup, tmp_path):
    first = crystallize(config(setup, strategies=("full", "frozen")), tmp_path, show_progress=False)
    ran = []
    strict = config(setup, strategies=("full", "frozen"), margin=1e-9, margin_nats=1e-9)
    again = crystallize(strict, tmp_path, show_progress=False, on_record=ran.append)
    assert ran == [] and again["runs"] == first["runs"]
    assert again["summary"]["margin_used"] == 1e-9 and first["summary"]["margin_used"] != 1e-9
    assert fileio.read_json(tmp_path / "results.json")["summary"] == again["summary"]
