"""Bad input and faults: every failure is one line and exit 2, and no wrong number has exit 0."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_gpt2, tiny_llama

from deadzone.cli import main


def analyze(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["analyze", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc: int, err: str, message: str) -> None:
    assert rc == 2, err
    assert err.startswith("deadzone: error: ") and err.count("\n") == 1, err
    assert message in err, err


# --- orientation of a bare .safetensors file ----------------------------------------------------


def records(capsys, path, tmp_path, *argv: str) -> tuple[dict, str]:
    out_json = tmp_path / "g.json"
    rc, out, err = analyze(capsys, str(path), "--json", str(out_json), *argv)
    assert rc == 0, err
    return {r["site"]: r for r in json.loads(out_json.read_text())}, out


@pytest.mark.parametrize("config", ["none", "without model_type"])
def test_bare_gpt2_safetensors_is_read_as_the_directory_is(gpt2_dir, tmp_path, capsys, config):
    path, _ = gpt2_dir
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(path / "model.safetensors", bare / "t.safetensors")
    if config == "without model_type":
        cfg = json.loads((path / "config.json").read_text())
        del cfg["model_type"]
        (bare / "config.json").write_text(json.dumps(cfg))
    whole, _ = records(capsys, path, tmp_path)
    alone, out = records(capsys, bare / "t.safetensors", tmp_path)
    assert alone["L1.attn.c_attn"]["shape"] == [96, 32] == whole["L1.attn.c_attn"]["shape"]
    for site in ("L1.attn.c_attn", "L1.mlp.c_fc", "L0.mlp.c_proj"):
        assert alone[site]["pr"] == pytest.approx(whole[site]["pr"], rel=1e-12)
    assert whole["L1.mlp.c_fc"]["orientation"] == "config"
    assert alone["L1.mlp.c_fc"]["orientation"] == "tensor names"
    assert "assumed" not in out


def test_bare_llama_safetensors_orientation_comes_from_its_names(tmp_path, capsys):
    tiny_llama().save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    alone, _ = records(capsys, tmp_path / "m" / "model.safetensors", tmp_path)
    assert alone["L0.mlp.up_proj"]["shape"] == [48, 32]
    assert alone["L0.mlp.up_proj"]["orientation"] == "tensor names"


def test_unknown_names_say_the_orientation_was_assumed(tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    tensors = {f"blocks.{i}.mix.weight": torch.randn(8, 5, generator=g) for i in range(2)}
    save_file(tensors, tmp_path / "w.safetensors")
    got, out = records(capsys, tmp_path / "w.safetensors", tmp_path)
    assert got["L0.mix"]["shape"] == [8, 5] and got["L0.mix"]["orientation"] == "assumed"
    assert "orientation assumed" in out


# --- analyze: broken config, index and output paths ---------------------------------------------


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("config.json", "[1, 2]", "config.json is not a JSON object"),
        ("model.safetensors.index.json", "{not json", "is not valid JSON"),
        ("model.safetensors.index.json", '{"metadata": {}}', "has no 'weight_map'"),
        ("model.safetensors.index.json", '{"weight_map": [1]}', "has no 'weight_map'"),
    ],
)
def test_broken_config_or_index_is_one_line(gpt2_dir, capsys, file, content, message):
    path, _ = gpt2_dir
    (path / file).write_text(content)
    rc, _, err = analyze(capsys, str(path))
    one_line_error(rc, err, message)


@pytest.mark.parametrize("option", ["--json", "--csv", "--plot"])
def test_output_path_that_is_a_directory_is_refused_before_analysis(
    gpt2_dir, tmp_path, capsys, option
):
    path, _ = gpt2_dir
    rc, out, err = analyze(capsys, str(path), option, str(tmp_path))
    one_line_error(rc, err, f"{tmp_path} is a directory")
    assert out == ""


# --- crystallize --------------------------------------------------------------------------------


def crystallize(capsys, model, data, out, *argv: str) -> tuple[int, str, str]:
    argv = ("--target", "L1.attn.c_proj", "--steps", "1", "--seeds", "2", "--batch-size", "4",
            "--max-length", "32", *argv)  # fmt: skip
    rc = main(["crystallize", str(model), *argv, "--data", str(data), "--out", str(out)])
    o, e = capsys.readouterr()
    return rc, o, e


def copy_model(micro, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(micro[0], model)
    return model


def corrupt(file, how: str) -> None:
    if how == "truncated":
        with file.open("r+b") as f:
            f.truncate(file.stat().st_size // 2)
    elif how == "garbage header":
        data = bytearray(file.read_bytes())
        data[8:40] = b"\xff" * 32
        file.write_bytes(bytes(data))
    else:  # a header length of 2**62
        data = bytearray(file.read_bytes())
        data[:8] = (2**62).to_bytes(8, "little")
        file.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "garbage header", "huge header"])
def test_crystallize_on_a_corrupt_safetensors_is_one_line(micro, tmp_path, capsys, how):
    model = copy_model(micro, tmp_path)
    corrupt(model / "model.safetensors", how)
    rc, _, err = crystallize(capsys, model, micro[1], tmp_path / "o")
    one_line_error(rc, err, "is not a valid safetensors file")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("target", [",", " , ,"])
def test_a_target_list_naming_nothing_is_refused_before_any_run(micro, tmp_path, capsys, target):
    rc = main(["crystallize", str(micro[0]), "--target", target, "--data", str(micro[1]),
               "--out", str(tmp_path / "o")])  # fmt: skip
    one_line_error(rc, capsys.readouterr().err, "no target site given")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("which", "name", "content"),
    [
        ("--data", "bad.jsonl", b'{"prompt": "caf\xe9", "completion": " ok"}\n'),
        ("--eval-data", "bad.jsonl", b'{"prompt": "caf\xe9", "completion": " ok"}\n'),
        ("--data", "bad.csv", b"prompt,completion\ncaf\xe9,ok\n"),
        ("--data", "bad.txt", b"caf\xe9\n"),
    ],
)
def test_text_that_is_not_utf8_is_one_line_naming_the_line(
    micro, tmp_path, capsys, which, name, content
):
    bad = tmp_path / name
    bad.write_bytes(content)
    data, extra = (bad, ()) if which == "--data" else (micro[1], ("--eval-data", str(bad)))
    rc, _, err = crystallize(capsys, micro[0], data, tmp_path / "o", *extra)
    line = 2 if name.endswith(".csv") else 1
    one_line_error(rc, err, f"{bad}: line {line}: not UTF-8 text")


def test_a_nan_target_fails_the_crystal_runs_with_a_reason_and_the_others_go_on(micro, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deadzone.experiments.crystallize import CrystallizeConfig
    from deadzone.experiments.crystallize import crystallize as run_experiment
    from deadzone.training.train import SFTConfig

    model = AutoModelForCausalLM.from_pretrained(micro[0])
    with torch.no_grad():
        model.get_parameter("transformer.h.1.attn.c_proj.weight")[3, 5] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    AutoTokenizer.from_pretrained(micro[0]).save_pretrained(tmp_path / "nan")
    config = CrystallizeConfig(
        model=str(tmp_path / "nan"), targets="L1.attn.c_proj", seeds=2, data=str(micro[1]),
        strategies=("full", "crystal", "zero"), max_length=32,
        sft=SFTConfig(steps=1, batch_size=4, eval_every=1),
    )  # fmt: skip
    results = run_experiment(config, tmp_path / "o", show_progress=False)
    by = {(r["strategy"], r["seed"]): r for r in results["runs"]}
    assert len(by) == 6
    for seed in (0, 1):
        crystal = by[("crystal", seed)]
        assert crystal["status"] == "failed" and crystal["final_eval_loss"] is None
        assert "crystal cannot be applied to L1.attn.c_proj" in crystal["error"]
        assert "NaN or Inf" in crystal["error"]
        assert by[("zero", seed)]["status"] == "ok"  # zero overwrites the NaN
    saved = json.loads((tmp_path / "o" / "results.json").read_text())
    assert [r["status"] for r in saved["runs"]] == [r["status"] for r in results["runs"]]


def test_a_tokenizer_larger_than_the_embedding_is_refused_naming_both(micro, tmp_path, capsys):
    from transformers import AutoTokenizer

    model = copy_model(micro, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(model)
    embedding = len(tokenizer)
    tokenizer.add_tokens([f"<extra{i}>" for i in range(40)])
    tokenizer.save_pretrained(model)
    rc, _, err = crystallize(capsys, model, micro[1], tmp_path / "o")
    one_line_error(rc, err, f"tokenizer has {embedding + 40} tokens")
    assert f"embedding has {embedding} rows" in err
    assert not (tmp_path / "o").exists()


# --- smaller defects ----------------------------------------------------------------------------


@pytest.fixture
def hub_online(monkeypatch):
    """The hub not in offline mode, whatever the caller's shell exports: ``huggingface_hub``
    read ``HF_HUB_OFFLINE`` when it was imported, so its constant is set back too."""
    import huggingface_hub.constants

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


@pytest.mark.parametrize("why", ["offline", "unreachable"])
def test_a_data_name_that_is_no_file_fails_fast_and_quietly(
    micro, tmp_path, capsys, monkeypatch, hub_online, why
):
    import time

    import huggingface_hub.constants

    if why == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:  # a port nobody listens on: the connection is refused at once
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    rc, _, err = crystallize(capsys, micro[0], "mydata", tmp_path / "o")
    assert time.monotonic() - start < 20
    expected = "HF_HUB_OFFLINE is set" if why == "offline" else "127.0.0.1:9 is unreachable"
    one_line_error(rc, err, "cannot load data set mydata:train from the Hugging Face hub")
    assert expected in err


def test_the_hub_probe_goes_through_a_configured_proxy(monkeypatch, hub_online):
    import socket

    from deadzone.data import sources

    server = socket.create_server(("127.0.0.1", 0))  # a "proxy": the kernel completes connects
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("no_proxy", "")
    try:
        assert sources._offline_reason() is None  # huggingface.co itself is not asked
    finally:
        server.close()


def test_no_command_is_one_clean_line(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deadzone: error: ")
    assert "deadzone: error: deadzone:" not in err and "pretrain, crystallize, analyze" in err


def test_lr_inf_names_the_interval_enforced(micro, tmp_path, capsys):
    rc, _, err = crystallize(capsys, micro[0], micro[1], tmp_path / "o", "--lr", "inf")
    one_line_error(rc, err, "lr must be in (0.0, inf), got inf")


def test_a_resumed_experiment_says_what_it_reused(micro, tmp_path, capsys):
    out = tmp_path / "o"
    argv = ("--strategies", "full,frozen")
    assert crystallize(capsys, micro[0], micro[1], out, *argv)[0] == 0
    rc, stdout, _ = crystallize(capsys, micro[0], micro[1], out, *argv)
    assert rc == 0
    assert f"resumed {out}: 4 run(s) reused, 0 run now" in stdout
    rc, stdout, _ = crystallize(capsys, micro[0], micro[1], out, *argv[:-1], "full,frozen,zero")
    assert rc == 0  # another strategy extends the experiment
    assert f"resumed {out}: 4 run(s) reused, 2 run now" in stdout


def test_without_a_terminal_sft_prints_plain_progress_lines(capsys, monkeypatch):
    import torch

    from deadzone import progress
    from deadzone.training.train import SFTConfig, train

    monkeypatch.setattr(progress, "INTERVAL", 0.0)  # a line at every step
    model = tiny_gpt2()
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    result = train(model, [batch], [batch], SFTConfig(steps=3, eval_every=3), description="demo")
    assert result.status == "ok"
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["demo: 1/3", "demo: 2/3", "demo: 3/3"]
    assert all("elapsed" in line and "loss " in line and "tok/s" in line for line in lines)
    assert not any("\x1b" in line or "\r" in line for line in lines)  # no terminal control


def test_plain_progress_is_printed_at_a_steady_interval(capsys, monkeypatch):
    from deadzone import progress

    clock = iter(range(0, 1000, 10))  # ten seconds pass between updates
    monkeypatch.setattr(progress, "INTERVAL", 30.0)
    monkeypatch.setattr(progress, "_clock", lambda: next(clock))
    with progress.make_progress() as bar:
        task = bar.add_task("work", total=10)
        for _ in range(10):
            bar.update(task, advance=1)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(",")[0] for line in lines] == ["work: 3/10", "work: 6/10", "work: 9/10",
                                                      "work: 10/10"]  # fmt: skip
