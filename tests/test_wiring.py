"""--threads, --dtype and --endpoint reach the runs of an experiment; bad ones are refused in
one line before anything loads."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import save_micro_experiment

from deadzone.cli import main
from deadzone.errors import DeadzoneError
from deadzone.experiments import execute
from deadzone.experiments.crystallize import CrystallizeConfig, crystallize, plan
from deadzone.experiments.runs import RunSpec
from deadzone.training.train import SFTConfig

COLOURS = ["red", "blue", "green", "black", "white", "pink", "grey", "brown"]
FRUITS = ["apple", "plum", "lime", "cherry", "pear", "fig", "kiwi", "date"]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A micro GPT-2 and a colour -> fruit table it can learn to exact-match, as
    prompt/completion rows (trained and evaluated on the same table)."""
    rows = [
        {"prompt": f"{c} ->", "completion": f" {f}"} for c, f in zip(COLOURS, FRUITS, strict=True)
    ] * 4
    model, path = save_micro_experiment(tmp_path_factory.mktemp("planted"), rows)
    return str(model), str(path)


def config(planted, **kwargs) -> CrystallizeConfig:
    model, data = planted
    sft = SFTConfig(steps=2, lr=1e-2, batch_size=8, eval_every=2)
    base = dict(
        model=model, targets="L1.attn.c_proj", strategies=("full",), seeds=2, data=data,
        eval_data=data, max_length=16, sft=sft,
    )  # fmt: skip
    return CrystallizeConfig(**(base | kwargs))


def test_threads_are_recorded_and_said(planted, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="deadzone"):
        doc = crystallize(
            config(planted, seeds=1, exact_match_examples=0, **threads(1)),
            tmp_path,
            show_progress=False,
        )
    assert [r["threads"] for r in doc["runs"]] == [1]
    assert caplog.text.count("torch threads: 1 (asked for)") == 1


def threads(n: int) -> dict:
    from deadzone.config import ExecutionConfig

    return {"execution": ExecutionConfig(threads=n)}


def test_bfloat16_weights_train_and_are_in_the_identity(planted, tmp_path):
    bf16 = config(planted, seeds=1, dtype="bfloat16", exact_match_examples=2)
    prepared, _ = plan(bf16)
    assert next(prepared.model.parameters()).dtype is torch.bfloat16
    execute._loaded.clear()  # as a worker: the task alone says how to load the model
    record = execute.run_task(prepared.task(RunSpec("full/seed0", {}, 0, labels={"seed": 0})))
    assert record["status"] == "ok" and record["exact_match"]["total"] == 2
    loaded = next(iter(execute._loaded.values())).model
    assert next(loaded.parameters()).dtype is torch.bfloat16
    doc = crystallize(bf16, tmp_path, show_progress=False)
    assert doc["dtype"] == "bfloat16" and doc["runs"][0]["status"] == "ok"
    with pytest.raises(DeadzoneError, match=r'dtype "bfloat16" \("float32" now\)'):
        crystallize(config(planted, seeds=1, exact_match_examples=2), tmp_path)


def test_exact_match_endpoint_judges_the_rates(planted, tmp_path):
    em = config(
        planted,
        strategies=("full", "zero"),
        targets="L1.mlp.c_fc",
        endpoint="exact_match",
        margin_rate=0.1,
        sft=SFTConfig(steps=120, lr=1e-2, batch_size=8, eval_every=120, warmup_steps=10),
    )
    doc = crystallize(em, tmp_path, show_progress=False)
    runs = {r["key"]: r for r in doc["runs"]}
    assert all(r["exact_match"]["total"] == len(COLOURS) * 4 for r in runs.values())
    assert all(len(r["exact_match"]["samples"]) == 3 for r in runs.values())
    assert max(r["exact_match"]["rate"] for r in runs.values()) > 0  # the table is learnt
    summary = doc["summary"]
    assert summary["endpoint"] == "exact_match" and summary["unit"] == "rate"
    assert summary["margin_used"] == 0.1
    zero = next(a for a in summary["arms"] if a["strategy"] == "zero")
    costs = [
        runs[f"full/seed{s}"]["exact_match"]["rate"] - runs[f"zero/seed{s}"]["exact_match"]["rate"]
        for s in (0, 1)
    ]
    assert zero["cost"]["rate"]["mean"] == pytest.approx(sum(costs) / 2)
    assert zero["verdict"] in ("negligible", "costly", "better", "undetermined")
    assert zero["cost"]["nats"]["interval"] is not None  # eval loss is still summarized
    from deadzone.report.crystallize import markdown

    text = markdown(doc)
    assert "Exact match" in text and "of exact match" in text and "full SFT's samples" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dtype", "float64"], "unknown dtype 'float64'; choose from float32, bfloat16, auto"),
        (["--dtype", "float16"], "dtype float16 is refused"),
        (["--threads", "0"], "threads must be an integer >= 1, got 0"),
        (["--endpoint", "accuracy"], "invalid choice: 'accuracy'"),
        (["--margin-rate", "1.5"], "margin-rate must be in (0, 1), got 1.5"),
    ],
)
def test_bad_options_are_refused_before_the_model_loads(tmp_path, capsys, args, message):
    missing = str(tmp_path / "no-such-model")  # loading it would be another error
    argv = ["crystallize", missing, "--target", "L0.attn.c_proj", *args]
    try:
        rc = main([*argv, "--out", str(tmp_path / "o")])
    except SystemExit as e:  # argparse's own refusals (an unknown choice)
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("deadzone: error: ") and err.count("\n") == 1
    assert message in err


def test_exact_match_on_plain_text_is_refused_before_any_run(planted, tmp_path, capsys):
    text = tmp_path / "plain.txt"
    text.write_text(
        "".join(f"{c} is a colour and {f} a fruit.\n" for c, f in zip(COLOURS, FRUITS, strict=True))
    )
    out = tmp_path / "o"
    argv = ["crystallize", planted[0], "--target", "L1.attn.c_proj", "--data", str(text)]
    rc = main([*argv, "--eval-data", str(text), "--endpoint", "exact_match", "--out", str(out)])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("deadzone: error: ")]
    assert rc == 2 and len(errors) == 1 and "Traceback" not in err
    assert "--endpoint exact_match needs prompt/completion or chat eval examples" in err
    assert not (out / "results.json").exists()
