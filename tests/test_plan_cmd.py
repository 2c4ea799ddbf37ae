"""``deadzone plan`` end to end on a micro GPT-2: every file written, a resume that runs nothing,
a plan that ``freeze --schedule plan:FILE`` and ``apply_plan`` take; refusals before any run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from deadzone import fileio, plans
from deadzone.cli import main

FILES = ("results.json", "report.md", "report.html", "plan.json", "axolotl.yaml",
         "frozen_parameters.txt", "lora_config.json")  # fmt: skip


def argv(setup, out, *extra) -> list[str]:
    model, data = setup
    return [
        "plan", model, "--steps", "4", "--seeds", "2", "--data", data, "--eval-every", "4",
        "--batch-size", "4", "--lr", "3e-3", "--margin", "0.5", "--horizon", "2",
        "--grow", "1", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    code = main(argv(setup, out))
    return out, code


@pytest.mark.slow
def test_plan_writes_every_file_and_resumes(finished, setup, capsys):
    out, code = finished
    results = fileio.read_json(out / "results.json")
    long = results["summary"]["long_horizon"]
    assert code == (1 if long is not None and not long["holds"] else 0)
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert results["experiment"] == "plan"
    md = (out / "report.md").read_text()
    assert md.startswith(f"# Plan of `{setup[0]}`\n\n## What to do next\n\n- ")
    assert "What to do next" in (out / "report.html").read_text()
    for run in results["runs"]:
        assert run["status"] == "ok", run["error"]
    summary = results["summary"]
    assert summary["prefix_depths"], "the bisection judged no depth"
    assert summary["runs"] == sum(not r["key"].startswith("h") for r in results["runs"])
    plan = plans.load_plan(out / "plan.json")
    assert plan["certified"]["plan"]["prefix_depth"] == plan["prefix_depth"]
    assert plan["savings"]["flops_ratio"] <= 1.0
    before = len(results["runs"])
    capsys.readouterr()
    main(argv(setup, out))
    printed = capsys.readouterr().out
    assert "Prefix depth" in printed and str(out / "report.html") in printed.splitlines()[-1]
    assert len(fileio.read_json(out / "results.json")["runs"]) == before  # replayed, none run
    model = AutoModelForCausalLM.from_pretrained(setup[0])
    plans.apply_plan(model, plan)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(plans.frozen_after(model, plan))
    freeze_out = out.parent / "freeze"
    code = main([
        "freeze", setup[0], "--schedule", f"plan:{out / 'plan.json'}", "--steps", "4",
        "--seeds", "2", "--data", setup[1], "--batch-size", "4", "--eval-every", "4",
        "--out", str(freeze_out),
    ])  # fmt: skip
    assert code == 0
    runs = fileio.read_json(freeze_out / "results.json")["runs"]
    assert all(r["status"] == "ok" for r in runs)


def test_untie_of_an_untied_model_is_refused(setup, tmp_path, capsys):
    model = AutoModelForCausalLM.from_pretrained(setup[0])
    model.config.tie_word_embeddings = False
    untied = tmp_path / "untied"
    model.lm_head.weight = type(model.lm_head.weight)(model.lm_head.weight.detach().clone())
    model.save_pretrained(untied)
    for f in Path(setup[0]).glob("*token*"):
        shutil.copy(f, untied / f.name)
    capsys.readouterr()
    assert main(argv((str(untied), setup[1]), tmp_path / "out", "--untie-head")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not tied" in err
    assert not (tmp_path / "out" / "results.json").exists()


def test_one_seed_is_refused(setup, tmp_path, capsys):
    assert main([*argv(setup, tmp_path / "out"), "--seeds", "1"]) == 2
    assert "--seeds >= 2" in capsys.readouterr().err
