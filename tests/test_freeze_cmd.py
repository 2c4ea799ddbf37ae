"""The freeze experiment end to end: CLI, results file, report files, --save, resume, refusals."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from deadzone import fileio, plans
from deadzone.cli import main
from deadzone.errors import DeadzoneError
from deadzone.experiments.freeze import FreezeConfig, freeze, frozen_mean, savings
from deadzone.report.build import build
from deadzone.schema import SCHEMA_VERSION
from deadzone.training.schedules import ScheduleSpec
from deadzone.training.train import SFTConfig, computed

SCHEDULES = "geometry:pr,random,lisa"


def argv(setup, out, *extra) -> list[str]:
    model, data = setup
    return [
        "freeze", model, "--schedule", SCHEDULES, "--steps", "4", "--seeds", "2",
        "--data", data, "--eval-every", "4", "--batch-size", "4", "--lr", "3e-3",
        "--freeze-by", "2", "--out", str(out), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):
    """One CLI freeze run with --save, shared by the tests that read what it wrote."""
    root = tmp_path_factory.mktemp("run")
    out, saved = root / "out", root / "saved"
    assert main(argv(setup, out, "--save", str(saved))) == 0
    return out, saved


def test_cli_writes_results_report_plots(finished, capsys):
    out, _ = finished
    for name in ("results.json", "report.md", "pareto.png", "timeline.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = fileio.read_json(out / "results.json")
    assert results["experiment"] == "freeze" and results["schema_version"] == SCHEMA_VERSION
    assert results["schedules"] == ["full", *SCHEDULES.split(",")]
    assert results["seeds"] == [0, 1] and results["target_fraction"] == 0.5
    keys = sorted(r["key"] for r in results["runs"])
    assert keys == sorted(f"{s}/seed{k}" for s in results["schedules"] for k in (0, 1))
    for run in results["runs"]:
        assert run["status"] == "ok", run["error"]
        assert run["cpu_seconds"] > 0 and run["tokens_per_second"] > 0
        assert run["peak_memory_bytes"] > 0
        assert [p["step"] for p in run["curve"]] == [0, 1, 2, 3, 4]
        if run["schedule"] == "full":
            assert "timeline" not in run
            assert all(p["trainable_params"] == run["total_params"] for p in run["curve"][1:])
            continue
        # By --freeze-by (step 2) at least the target share of block matrices is frozen, and
        # the frozen parameters hold no optimizer state: it shrinks below full's.
        at_2 = [e for e in run["timeline"] if e["step"] <= 2][-1]
        assert at_2["fraction"] >= 0.5, run["timeline"]
        assert run["curve"][2]["trainable_params"] < run["total_params"]
        full = next(
            r for r in results["runs"] if r["schedule"] == "full" and r["seed"] == run["seed"]
        )
        assert run["curve"][4]["optimizer_state_bytes"] < full["curve"][4]["optimizer_state_bytes"]
        # Paired design: the same batches, so the same loss before any update.
        assert run["step0_eval_loss"] == full["step0_eval_loss"]
    arms = {a["schedule"]: a for a in results["summary"]["arms"]}
    assert arms["full"]["verdict"] == "baseline"
    for name in SCHEDULES.split(","):
        arm = arms[name]
        assert arm["verdict"] in ("negligible", "costly", "better", "undetermined")
        assert arm["savings"]["optimizer_peak"]["mean"] < 1
        assert arm["savings"]["wall_time"]["n"] == 2
        assert 0.5 <= arm["savings"]["frozen_fraction"] <= 1
    report = (out / "report.md").read_text()
    assert "Optimizer peak × full" in report and "| lisa (n=2)" in report
    assert "**Conclusion.**" in report
    # what each run measured, per schedule: throughput, its own peak memory, trainable share
    measured = report[report.index("Measured per run") :]
    assert "Tokens/s" in measured and "Peak memory (MiB)" in measured
    lisa = next(line for line in measured.splitlines() if line.startswith("| lisa "))
    cells = [c.strip() for c in lisa.strip("|").split("|")]
    assert cells[1] != "—" and cells[3] != "—" and cells[5].endswith("%")
    assert float(cells[5].rstrip("%")) < 100  # lisa keeps blocks frozen at the end


def test_saved_model_loads_and_is_the_trained_one(finished, setup):
    out, saved = finished
    model = AutoModelForCausalLM.from_pretrained(saved)
    assert (saved / "tokenizer.json").is_file() or (saved / "tokenizer_config.json").is_file()
    pristine = AutoModelForCausalLM.from_pretrained(setup[0])
    moved = [
        n
        for (n, p), (_, q) in zip(
            model.named_parameters(), pristine.named_parameters(), strict=True
        )
        if not torch.equal(p, q)
    ]
    assert moved, "the saved model is the pristine one"
    assert not [p.name for p in saved.parent.iterdir() if p.name.startswith(".saved")]


def test_the_saved_model_says_which_run_it_is(finished):
    out, saved = finished
    marker = fileio.read_json(saved / "deadzone_saved.json")
    assert marker["saved_by"] == "deadzone freeze" and marker["run"] == "geometry:pr/seed0"
    assert marker["out"] == str(out.resolve())


@pytest.mark.parametrize(
    "where, match",
    [
        ("occupied", "--save .*mine exists and is not a model deadzone saved"),
        ("out", "--save .* overlaps --out"),
        ("inside", "--save .* overlaps --out"),
        ("around", "--save .* overlaps --out"),
    ],
)
def test_save_refuses_what_it_did_not_write_and_what_overlaps_out(
    setup, tmp_path, capsys, where, match
):
    out = tmp_path / "exp" / "out"
    save = {
        "occupied": tmp_path / "mine", "out": out, "inside": out / "model", "around": out.parent
    }[where]  # fmt: skip
    if where == "occupied":
        save.mkdir()
        (save / "notes.txt").write_text("keep me")
    assert main(argv(setup, out, "--save", str(save))) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("deadzone: error:"), err
    assert re.search(match, err), err
    assert not out.exists() and not (tmp_path / "exp").exists()
    if where == "occupied":
        assert [p.name for p in save.iterdir()] == ["notes.txt"]
        assert (save / "notes.txt").read_text() == "keep me"


def test_save_replaces_a_model_an_earlier_save_wrote(setup, tmp_path):
    model, data = setup
    sft = SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2)
    config = FreezeConfig(model=model, schedules=("random",), seeds=1, data=data, sft=sft)
    saved = tmp_path / "saved"
    saved.mkdir()  # an empty directory is taken as it is
    freeze(config, tmp_path / "a", save=saved, show_progress=False)
    (saved / "stale.txt").write_text("from before")
    freeze(config, tmp_path / "b", save=saved, show_progress=False)
    marker = fileio.read_json(saved / "deadzone_saved.json")
    assert marker["out"] == str((tmp_path / "b").resolve()) and marker["run"] == "random/seed0"
    assert not (saved / "stale.txt").exists()  # replaced whole
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".saved")]


def test_resuming_with_an_edited_plan_is_refused(setup, tmp_path):
    model_dir, data = setup
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    fileio.write_json(first, plans.make_plan(model, {"L1.mlp.c_fc": "frozen"}))
    fileio.write_json(second, plans.make_plan(model, {"L0.mlp.c_fc": "frozen"}))
    sft = SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2)
    base = dict(model=model_dir, seeds=1, data=data, sft=sft, freeze_by=2)
    out = tmp_path / "out"
    freeze(FreezeConfig(schedules=(f"plan:{first}",), **base), out, show_progress=False)
    before = (out / "results.json").read_text()
    edited = plans.make_plan(model, {"L0.attn.c_proj": "frozen"})
    fileio.write_json(first, edited)
    with pytest.raises(DeadzoneError, match=rf"plan:{first} of sha256 \w{{12}} .*plan changed"):
        freeze(FreezeConfig(schedules=(f"plan:{first}",), **base), out, show_progress=False)
    assert (out / "results.json").read_text() == before
    # The plan as it was resumes, and another plan may join it.
    fileio.write_json(first, plans.make_plan(model, {"L1.mlp.c_fc": "frozen"}))
    both = (f"plan:{first}", f"plan:{second}")
    results = freeze(FreezeConfig(schedules=both, **base), out, show_progress=False)
    assert [p["schedule"] for p in results["plans"]] == list(both)
    assert len(results["runs"]) == 3


def test_resume_reuses_every_run_and_extends_with_a_schedule(finished, setup, capsys):
    out, _ = finished
    before = fileio.read_json(out / "results.json")
    capsys.readouterr()
    assert main(argv(setup, out)) == 0
    assert "resumed" in capsys.readouterr().out
    again = fileio.read_json(out / "results.json")
    assert [computed(r) for r in again["runs"]] == [computed(r) for r in before["runs"]]
    assert [r["seconds"] for r in again["runs"]] == [r["seconds"] for r in before["runs"]]
    extended = argv(setup, out)
    extended[extended.index("--schedule") + 1] = f"{SCHEDULES},freezeout"
    assert main(extended) == 0
    grown = fileio.read_json(out / "results.json")
    assert grown["schedules"][-1] == "freezeout" and len(grown["runs"]) == len(before["runs"]) + 2
    assert "freezeout (n=2)" in (out / "report.md").read_text()


def test_the_save_run_trained_here_gives_the_record_the_executor_would(setup, tmp_path):
    model, data = setup
    sft = SFTConfig(steps=3, lr=3e-3, batch_size=4, eval_every=3)
    base = dict(model=model, schedules=("random",), seeds=1, data=data, sft=sft, freeze_by=2)
    saved = freeze(FreezeConfig(**base), tmp_path / "a", save=tmp_path / "m", show_progress=False)
    plain = freeze(FreezeConfig(**base), tmp_path / "b", show_progress=False)
    assert [computed(r) for r in saved["runs"]] == [computed(r) for r in plain["runs"]]


def test_a_run_task_with_a_schedule_survives_pickling_and_gives_the_same_record(setup):
    import pickle

    from deadzone.experiments.execute import run_task
    from deadzone.experiments.freeze import plan
    from deadzone.experiments.runs import run_one

    model, data = setup
    sft = SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2)
    config = FreezeConfig(model=model, schedules=("geometry:pr",), seeds=1, data=data, sft=sft)
    prepared, design = plan(config, threads=1)
    tasks, inputs = [prepared.task(s) for s in design.specs], prepared.inputs
    task = next(t for t in tasks if t.run.schedule is not None)
    travelled = pickle.loads(pickle.dumps(task))
    assert travelled.run.schedule == task.run.schedule
    record = run_task(travelled)  # loads the model and data from disk, as a worker does
    alone = run_one(inputs, task.run, exact_match=task.exact_match)
    assert computed(record) == computed({**alone, "threads": 1})


@pytest.mark.slow
def test_schedules_travel_to_pool_workers_and_give_the_records_of_this_process(setup, tmp_path):
    from deadzone.experiments.execute import Pool

    model, data = setup
    sft = SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2)
    config = dict(model=model, schedules=("lisa", "autofreeze"), seeds=1, data=data, sft=sft)
    here = freeze(FreezeConfig(**config, freeze_by=2), tmp_path / "here", show_progress=False)
    pooled = freeze(
        FreezeConfig(**config, freeze_by=2),
        tmp_path / "pool",
        executor=Pool(2),
        show_progress=False,
    )
    strip = [{k: v for k, v in computed(r).items() if k != "threads"} for r in here["runs"]]
    assert strip == [
        {k: v for k, v in computed(r).items() if k != "threads"} for r in pooled["runs"]
    ]
    assert all(r["timeline"][-1]["fraction"] >= 0.5 for r in pooled["runs"] if "timeline" in r)


def test_a_plan_drives_the_schedule_and_one_for_another_model_is_refused(setup, tmp_path, capsys):
    model_dir, data = setup
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    plan = plans.make_plan(model, {"L1.mlp.c_fc": "frozen"}, source=model_dir)
    good = tmp_path / "plan.json"
    fileio.write_json(good, plan)
    sft = SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2)
    config = FreezeConfig(
        model=model_dir, schedules=(f"plan:{good}",), seeds=1, data=data, sft=sft, freeze_by=2
    )
    results = freeze(config, tmp_path / "out", show_progress=False)
    capsys.readouterr()  # the warning that the plan runs without the random control
    run = next(r for r in results["runs"] if r["schedule"] != "full")
    assert "L1.mlp.c_fc" in run["timeline"][0]["frozen"] and run["timeline"][0]["step"] == 1
    prints = {k: "0" * 64 for k in plan["model"] if k.startswith("fingerprint")}  # all kinds
    other = plan | {"model": plan["model"] | prints}
    bad = tmp_path / "other.json"
    fileio.write_json(bad, other)
    out = tmp_path / "refused"
    assert main([*argv(setup, out)[:3], f"plan:{bad}", *argv(setup, out)[4:]]) == 2
    err = capsys.readouterr().err
    assert "made for another model" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "change, match",
    [
        (("--schedule", "nope"), "unknown schedule 'nope'"),
        (("--schedule", "plan:/no/such/plan.json"), "no plan file /no/such/plan.json"),
        (("--target-fraction", "1.0"), r"target fraction must be in \(0, 1\)"),
        (("--target-fraction", "0"), r"target fraction must be in \(0, 1\)"),
        (("--freeze-by", "9"), "freeze-by step 9 is beyond the 4 steps"),
        (("--freeze-by", "soon"), "--freeze-by must be a step or a fraction"),
        (("--freeze-by", "0"), "freeze-by step must be >= 1"),
        (("--freeze-by", "1.5"), r"freeze_by as a fraction must be in \(0, 1\]"),
        (("--save", "/proc/nope/model"), "cannot write --save"),
        (("--schedule", "random:x"), "schedule random takes no argument; got 'random:x'"),
        (("--schedule", "freezeout:3"), "schedule freezeout takes no argument"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(setup, tmp_path, capsys, change, match):
    out = tmp_path / "out"
    args = argv(setup, out)
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("deadzone: error:"), err
    assert re.search(match, err), err
    assert not out.exists()


def test_a_schedule_that_would_freeze_every_parameter_is_refused(setup, tmp_path):
    """Refused when built, before any run: block-unit LISA on 2 blocks keeps one block frozen
    at a time, which here is everything left to train."""
    model = AutoModelForCausalLM.from_pretrained(setup[0])

    for name, p in model.named_parameters():
        p.requires_grad_(".h.1." in name)
    with pytest.raises(DeadzoneError, match="schedule lisa would freeze every parameter"):
        ScheduleSpec("lisa", unit="block", target_fraction=0.5, freeze_by=1).build(model, 4)


def test_frozen_mean_weights_each_fraction_by_its_steps():
    run = {"steps_done": 4, "timeline": [{"step": 1, "fraction": 0.0}, {"step": 3, "fraction": 1}]}
    assert frozen_mean(run) == 0.5


def test_deadzone_report_rebuilds_the_markdown_and_an_html_page(finished, capsys):
    out, _ = finished
    (out / "report.md").unlink()
    (out / "pareto.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "report.md").is_file() and (out / "pareto.png").is_file()
    page = (out / "report.html").read_text()
    assert "Freeze schedules on" in page and "Optimizer peak × full" in page
    assert "25–50% of its weight matrices" not in page and "data:image/png;base64" in page
    assert build([out], study=True).errors == []  # the study's claim, asked for
    assert "25–50% of its weight matrices" in (out / "report.html").read_text()


def test_a_peak_over_the_life_of_the_process_is_left_out_of_the_memory_ratio():
    """Where a run's own peak cannot be read, the process's lifetime peak is no run's saving."""

    def run(seed: int, peak: int, scope: str) -> dict:
        curve = [{"step": 0, "optimizer_state_bytes": 0}, {"step": 1, "optimizer_state_bytes": 8}]
        return {"seed": seed, "seconds": 1.0, "cpu_seconds": 1.0, "tokens_per_second": 10.0,
                "peak_memory_bytes": peak, "peak_memory_scope": scope, "curve": curve}  # fmt: skip

    full = {0: run(0, 100, "run"), 1: run(1, 100, "run")}
    mine = [run(0, 50, "run"), run(1, 900, "process")]
    assert savings(mine, full)["peak_memory"]["n"] == 1
    assert savings(mine, full)["peak_memory"]["mean"] == 0.5
    assert savings(mine, full)["wall_time"]["n"] == 2
