"""Every option declared once: the parser is built from the config dataclasses, every field has
its flag and shows its default; the configs are checked once, before any model loads; the
``--out`` lock is the main process's only."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import typing

import pytest
from conftest import SRC

from deadzone.cli import build_parser, main
from deadzone.cli.options import shown
from deadzone.config import SFTConfig, TrackingConfig
from deadzone.errors import DeadzoneError
from deadzone.experiments.configs import (
    CrystallizeConfig,
    DemoExecution,
    FreezeConfig,
    ScanConfig,
)

COMMANDS = {
    "crystallize": [CrystallizeConfig],
    "scan": [ScanConfig],
    "freeze": [FreezeConfig],
    "demo": [DemoExecution, TrackingConfig],
}


def fields(cls) -> list[tuple[dataclasses.Field, object]]:
    """Every field of ``cls``, nested dataclasses flattened, with its annotation."""
    hints = typing.get_type_hints(cls)
    found = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            found += fields(hints[f.name])
        else:
            found.append((f, hints[f.name]))
    return found


def helps(command: str, capsys) -> dict[str, str]:
    """``--help`` of ``command``: each option (every spelling) -> its help, joined over lines."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    found: dict[str, str] = {}
    names: list[str] = []
    for line in text[text.index("options:") :].splitlines()[1:]:
        if line.startswith("  -"):
            head, _, rest = line.strip().partition("  ")
            names = [n.split()[0] for n in head.split(", ")]
            for name in names:
                found[name] = rest
        else:
            for name in names:
                found[name] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in found.items()}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_field_has_a_flag_whose_help_shows_its_default(command, capsys):
    options = helps(command, capsys)
    for cls in COMMANDS[command]:
        for f, _ in fields(cls):
            meta = f.metadata
            if meta.get("skip") or meta.get("positional"):
                continue
            flag = meta.get("flag", "--" + f.name.replace("_", "-"))
            assert flag in options, f"{cls.__name__}.{f.name} has no flag {flag}"
            text = options[flag]
            if meta.get("required"):
                assert text.endswith("(required)"), (flag, text)
            elif f.default is None:  # said in words
                assert "(default: " in text, (flag, text)
            else:
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default
                assert text.endswith(f"(default: {shown(default)})"), (flag, text)


def test_every_sft_field_but_the_run_seed_is_reachable_from_the_command_line():
    from deadzone.cli.options import read_config

    argv = [
        "scan", "M", "--out", "o", "--steps", "7", "--lr", "0.01", "--batch-size", "2",
        "--grad-accum", "3", "--warmup-steps", "2", "--warmup-fraction", "0.3",
        "--min-lr-ratio", "0.5", "--weight-decay", "0.1", "--betas", "0.8,0.95",
        "--max-grad-norm", "none", "--eval-every", "7", "--mixed-precision", "no",
        "--no-deterministic", "--cpu",
    ]  # fmt: skip
    sft = read_config(ScanConfig, build_parser().parse_args(argv)).sft
    assert sft == SFTConfig(
        steps=7, lr=0.01, batch_size=2, grad_accum=3, warmup_steps=2, warmup_fraction=0.3,
        min_lr_ratio=0.5, weight_decay=0.1, betas=(0.8, 0.95), max_grad_norm=None,
        eval_every=7, mixed_precision="no", deterministic=False, cpu=True,
    )  # fmt: skip
    reached = {f.name for f, _ in fields(SFTConfig) if not f.metadata.get("skip")}
    assert reached == {f.name for f in dataclasses.fields(SFTConfig)} - {"seed"}


def test_building_the_parser_imports_no_torch():
    code = (
        "import sys; from deadzone.cli import build_parser; build_parser(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": SRC})


@pytest.mark.parametrize("cls", [CrystallizeConfig, ScanConfig, FreezeConfig])
@pytest.mark.parametrize("field, value", [("seeds", True), ("margin", True), ("margin", 1)])
def test_every_experiment_refuses_the_same_bad_values(cls, field, value):
    extra = {"targets": "L0.*"} if cls is CrystallizeConfig else {}
    with pytest.raises(DeadzoneError, match=field):
        cls(model="m", **extra, **{field: value})


# --- checked before anything loads ----------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch):
    """Loading a model or building SFT data fails the test."""
    from deadzone.data import sft
    from deadzone.models import checkpoints

    def refuse(*args, **kwargs):
        raise AssertionError("loaded before the arguments were checked")

    monkeypatch.setattr(checkpoints, "load_model", refuse)
    monkeypatch.setattr(sft, "load_sft_data", refuse)


def run_cli(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("deadzone: error: ") and err.count("\n") == 1, err
    return err


def test_an_unknown_geometry_metric_is_refused_before_loading(setup, tmp_path, capsys, no_loading):
    model, data = setup
    argv = ["freeze", model, "--schedule", "geometry:participation", "--data", data]
    err = run_cli([*argv, "--out", str(tmp_path / "o")], capsys)
    assert "unknown geometry metric 'participation'" in err and "pr, " in err


@pytest.mark.parametrize(
    "command, flag, glob, message",
    [
        ("scan", "--sites", "L1.mlp.nope", "no site matches 'L1.mlp.nope'; closest: L1.mlp.c_"),
        ("crystallize", "--target", "L9.*", "no site matches 'L9.*': the model's blocks are L0–L1"),
        ("scan", "--sites", "L9.*", "the model's blocks are L0–L1"),
    ],
)
def test_site_globs_are_checked_against_the_checkpoint_header_before_loading(
    setup,
    tmp_path,
    capsys,
    no_loading,
    command,
    flag,
    glob,
    message,
):
    model, data = setup
    argv = [command, model, flag, glob, "--data", data, "--out", str(tmp_path / "o")]
    assert message in run_cli(argv, capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("eval_too", [False, True])
def test_exact_match_on_plain_text_is_refused_before_loading(
    setup,  # noqa: F811
    tmp_path,
    capsys,
    no_loading,
    eval_too,
):
    model, data = setup  # prompt/completion rows
    text = tmp_path / "plain.txt"
    text.write_text("a line of plain text\n" * 20)
    # plain text as the data a share is held out of, or as the eval data beside prompt/completion
    data_args = ["--data", data, "--eval-data", str(text)] if eval_too else ["--data", str(text)]
    argv = ["crystallize", model, "--target", "L0.attn.c_proj", *data_args]
    err = run_cli([*argv, "--endpoint", "exact_match", "--out", str(tmp_path / "o")], capsys)
    assert "--endpoint exact_match needs prompt/completion or chat eval examples" in err
    assert "is plain text (text)" in err


def test_mode_lists_its_choices_in_the_help_and_the_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["scan", "--help"])
    assert "--mode {prior,adaptive,exhaustive}" in capsys.readouterr().out
    err = run_cli(["scan", "M", "--mode", "clever", "--out", "o"], capsys)
    assert "unknown mode 'clever'; choose prior, adaptive, exhaustive" in err


def test_a_geometry_schedule_alone_runs_with_a_warning_that_it_has_no_control(
    setup,
    tmp_path,
    caplog,
    capsys,
):
    from deadzone.experiments.freeze import freeze

    model, data = setup
    sft = SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2)
    config = FreezeConfig(model=model, schedules=("geometry:pr",), seeds=1, data=data, sft=sft)
    assert config.uncontrolled() == ["geometry:pr"]
    assert FreezeConfig(model=model, schedules=("geometry:pr", "random")).uncontrolled() == []
    with caplog.at_level(logging.WARNING, logger="deadzone"):
        results = freeze(config, tmp_path / "o", show_progress=False)
    assert "geometry:pr runs without the random control" in caplog.text
    assert {r["schedule"] for r in results["runs"]} == {"full", "geometry:pr"}
    # the choice is documented where the option is
    assert "without random is run, with a warning" in helps("freeze", capsys)["--schedule"]


# --- the lock ---------------------------------------------------------------------------------


class OtherProcess:
    """``PartialState`` as a process of a two-process launch that is not the main one sees it."""

    num_processes = 2
    is_main_process = False

    def __init__(self, cpu: bool = False) -> None:
        pass

    def wait_for_everyone(self) -> None:
        pass


def test_only_the_main_process_takes_the_out_lock(setup, tmp_path, monkeypatch):
    import accelerate

    from deadzone.experiments.runs import writing
    from deadzone.experiments.scan import scan

    model, data = setup
    sft = SFTConfig(steps=2, lr=3e-3, batch_size=4, eval_every=2)
    config = ScanConfig(model=model, sites="L1.mlp.c_fc", seeds=2, data=data, sft=sft)
    monkeypatch.setattr(accelerate, "PartialState", OtherProcess)
    with writing(tmp_path):  # the main process holds it
        results = scan(config, tmp_path, show_progress=False, say=lambda _: None)
    assert results["summary"]["complete"]
    assert not (tmp_path / "results.json").exists()  # the main process writes, not this one
    assert not (tmp_path / "plan.json").exists()
