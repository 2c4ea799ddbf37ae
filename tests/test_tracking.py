"""Experiment tracking: each SFT run's config and curves in TensorBoard / MLflow, read back."""

from __future__ import annotations

import importlib.util
import json

import pytest

from deadzone import fileio
from deadzone.cli import main
from deadzone.errors import DeadzoneError
from deadzone.models.presets import get_preset
from deadzone.models.pretraining import build_model, train_tokenizer
from deadzone.training.tracking import Tracking, flat_config, tracking_for
from deadzone.training.train import SFTConfig, lr_factor


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A micro GPT-2 with its tokenizer, and a small prompt/completion file."""
    root = tmp_path_factory.mktemp("tracking")
    rows = [{"prompt": f"Count {i}:", "completion": f" {i} {i + 1} {i + 2}."} for i in range(40)]
    tokenizer = train_tokenizer([r["prompt"] + r["completion"] for r in rows], 300)
    model = build_model(get_preset("micro"), tokenizer)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "model"), str(root / "data.jsonl")


def crystallize(setup, out, *extra) -> dict:
    model, data = setup
    argv = [
        "crystallize", model, "--target", "L1.attn.c_proj", "--strategies", "full,frozen",
        "--steps", "4", "--seeds", "1", "--data", data, "--eval-every", "2",
        "--batch-size", "4", "--lr", "3e-3", "--out", str(out), *extra,
    ]  # fmt: skip
    assert main(argv) == 0
    return fileio.read_json(out / "results.json")


def expected_lr(step: int) -> float:
    config = SFTConfig(steps=4, lr=3e-3, batch_size=4, eval_every=2)
    return config.lr * lr_factor(step - 1, config)


def test_tensorboard_scalars_match_each_runs_curve(setup, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    results = crystallize(setup, out, "--report-to", "tensorboard")
    assert len(results["runs"]) == 2
    for run in results["runs"]:
        logdir = out / "tracking" / "tensorboard" / run["key"]
        events = EventAccumulator(str(logdir))
        events.Reload()
        scalars = {tag: events.Scalars(tag) for tag in events.Tags()["scalars"]}
        assert {"train_loss", "eval_loss", "lr", "trainable_params"} <= set(scalars)
        curve = run["curve"]
        train = [(p["step"], p["train_loss"]) for p in curve if p["train_loss"] is not None]
        evals = [(p["step"], p["eval_loss"]) for p in curve if p["eval_loss"] is not None]
        assert [e.step for e in scalars["train_loss"]] == [s for s, _ in train] == [1, 2, 3, 4]
        assert [e.step for e in scalars["eval_loss"]] == [s for s, _ in evals] == [0, 2, 4]
        for events_, points in ((scalars["train_loss"], train), (scalars["eval_loss"], evals)):
            assert [e.value for e in events_] == pytest.approx([v for _, v in points], rel=1e-6)
        trainable = [p["trainable_params"] for p in curve if p["step"] > 0]
        assert [e.value for e in scalars["trainable_params"]] == trainable
        assert [e.value for e in scalars["lr"]] == pytest.approx(
            [expected_lr(s) for s in (1, 2, 3, 4)], rel=1e-6
        )
    full, frozen = (r["trainable_params"] for r in results["runs"])
    assert full - frozen == 32 * 32  # the frozen target, as the tracker saw it too


def test_tracking_changes_no_result_and_is_no_part_of_the_identity(setup, tmp_path):
    from deadzone.training.train import computed

    plain = crystallize(setup, tmp_path / "plain")
    out = tmp_path / "tracked"
    tracked = crystallize(setup, out, "--report-to", "tensorboard", "--tracking-dir",
                          str(tmp_path / "tb"))  # fmt: skip
    assert [computed(r) for r in plain["runs"]] == [computed(r) for r in tracked["runs"]]
    assert (tmp_path / "tb" / "tensorboard" / "full/seed0").is_dir()
    # resuming with tracking off reuses every run: tracking is not what a run computed
    again = crystallize(setup, out)
    assert [r["seconds"] for r in again["runs"]] == [r["seconds"] for r in tracked["runs"]]


def test_mlflow_metrics_and_params_match_each_runs_curve(setup, tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    results = crystallize(setup, out, "--report-to", "mlflow")
    client = MlflowClient(tracking_uri=(out / "tracking" / "mlflow").absolute().as_uri())
    experiment = client.get_experiment_by_name("deadzone")
    found = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(found) == {r["key"] for r in results["runs"]}
    for run in results["runs"]:
        tracked = found[run["key"]]
        assert tracked.data.params["strategy"] == run["strategy"]
        assert tracked.data.params["targets"] == "L1.attn.c_proj"
        assert tracked.data.params["sft.steps"] == "4"
        history = client.get_metric_history(tracked.info.run_id, "eval_loss")
        evals = [(p["step"], p["eval_loss"]) for p in run["curve"] if p["eval_loss"] is not None]
        assert [(m.step, m.value) for m in history] == [
            (s, pytest.approx(v, rel=1e-6)) for s, v in evals
        ]
        history = client.get_metric_history(tracked.info.run_id, "train_loss")
        train = [p["train_loss"] for p in run["curve"] if p["train_loss"] is not None]
        assert [m.value for m in history] == pytest.approx(train, rel=1e-6)


def test_bad_choices_are_one_line_errors(setup, tmp_path, capsys):
    with pytest.raises(DeadzoneError, match="unknown tracker"):
        Tracking("neptune", "/tmp")
    model, data = setup
    with pytest.raises(SystemExit) as exit:
        main(["crystallize", model, "--target", "L1.attn.c_proj", "--report-to", "comet",
              "--out", str(tmp_path / "o")])  # fmt: skip
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'comet'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_a_missing_tracker_package_names_how_to_install_it(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(DeadzoneError, match=r"needs wandb, not installed here: pip install wandb"):
        tracking_for("wandb", tmp_path)
    assert tracking_for("none", tmp_path) == Tracking()


def test_flat_config_gives_trackers_plain_values():
    flat = flat_config({"sft": {"lr": 0.1, "betas": [0.9, 0.99]}, "rank": None, "key": "a/b"})
    assert flat == {"sft.lr": 0.1, "sft.betas": "0.9,0.99", "rank": "none", "key": "a/b"}


def test_runs_in_a_worker_process_report_too(setup, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "out"
    results = crystallize(setup, out, "--report-to", "tensorboard", "--workers", "1")
    for run in results["runs"]:
        events = EventAccumulator(str(out / "tracking" / "tensorboard" / run["key"]))
        events.Reload()
        logged = [e.value for e in events.Scalars("eval_loss")]
        expected = [p["eval_loss"] for p in run["curve"] if p["eval_loss"] is not None]
        assert logged == pytest.approx(expected, rel=1e-6)


def test_a_scan_reports_each_of_its_runs(setup, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model, data = setup
    out = tmp_path / "scan"
    argv = [
        "scan", model, "--sites", "L1.attn.c_proj", "--strategies", "frozen",
        "--mode", "exhaustive", "--steps", "2", "--seeds", "2", "--data", data,
        "--eval-every", "2", "--batch-size", "4", "--lr", "3e-3", "--max-length", "32",
        "--report-to", "tensorboard", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    runs = fileio.read_json(out / "results.json")["runs"]
    board = out / "tracking" / "tensorboard"
    # one event file per run, in the run's directory (TensorBoard puts the run's hparams in a
    # subdirectory named by a timestamp)
    files = [p for p in board.rglob("events.out.tfevents*") if not _timestamp(p.parent.name)]
    logged = sorted(p.parent.relative_to(board).as_posix() for p in files)
    assert logged == sorted(r["key"] for r in runs) and len(runs) == 4  # 2 full, 2 frozen
    for run in runs:
        events = EventAccumulator(str(board / run["key"]))
        events.Reload()
        expected = [p["eval_loss"] for p in run["curve"] if p["eval_loss"] is not None]
        assert [e.value for e in events.Scalars("eval_loss")] == pytest.approx(expected, rel=1e-6)


def _timestamp(name: str) -> bool:
    try:
        return float(name) > 0
    except ValueError:
        return False
