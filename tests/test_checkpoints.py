import argparse
from pathlib import Path

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

from deadzone.errors import DeadzoneError
from deadzone.models.checkpoints import absent_sites, load_model, open_checkpoint, resolve
from deadzone.models.sites import find_sites, site_matrix


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_streaming_from_shards_equals_the_model_in_memory(tmp_path, build):
    model = build()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    ckpt = open_checkpoint(str(tmp_path))
    in_memory = {s.name: (s, site_matrix(model, s)) for s in find_sites(model)}
    assert [s.name for s in ckpt.sites] == list(in_memory)
    for site, matrix in ckpt.matrices():
        assert site == in_memory[site.name][0]
        assert torch.equal(matrix, in_memory[site.name][1])


def test_single_safetensors_file_is_a_checkpoint(gpt2_dir):
    path, model = gpt2_dir
    ckpt = open_checkpoint(str(path / "model.safetensors"))
    assert [s.name for s in ckpt.sites] == [s.name for s in find_sites(model)]


def test_load_model_gives_the_same_logits(gpt2_dir):
    path, model = gpt2_dir
    loaded, tokenizer = load_model(str(path))
    assert tokenizer is None
    x = torch.randint(0, 96, (2, 10))
    torch.testing.assert_close(loaded(x).logits, model.eval()(x).logits)


def test_missing_path(tmp_path):
    with pytest.raises(DeadzoneError, match="does not exist"):
        resolve(str(tmp_path / "nope"))


def test_directory_that_is_not_a_model(tmp_path):
    with pytest.raises(DeadzoneError, match="not a model directory"):
        resolve(str(tmp_path))


def test_file_that_is_not_safetensors(tmp_path):
    bad = tmp_path / "weights.bin"
    bad.write_bytes(b"\x80\x04not a tensor file")
    with pytest.raises(DeadzoneError, match="not a model directory or a .safetensors file"):
        resolve(str(bad))
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"garbage" * 10)
    with pytest.raises(DeadzoneError, match="not a valid safetensors file"):
        open_checkpoint(str(fake))


def test_hub_id_offline_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(DeadzoneError, match="cannot fetch 'some-org/some-model'.*offline"):
        resolve("some-org/some-model")


def test_unknown_builtin_preset():
    with pytest.raises(DeadzoneError, match="unknown preset 'huge'"):
        resolve("builtin:huge")


def test_a_checkpoint_with_missing_or_unexpected_weights_is_refused_naming_them(gpt2_dir):
    import safetensors.torch

    path, _ = gpt2_dir
    weights = safetensors.torch.load_file(path / "model.safetensors")
    del weights["transformer.h.0.attn.c_proj.weight"]
    weights["transformer.h.0.attn.surplus"] = torch.zeros(2)
    safetensors.torch.save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DeadzoneError) as refused:
        load_model(str(path))
    message = str(refused.value)
    assert "does not match its architecture" in message and "\n" not in message
    assert "missing weight(s) transformer.h.0.attn.c_proj.weight" in message
    assert "unexpected weight(s) transformer.h.0.attn.surplus" in message


FIRST_USE = """
import logging
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from deadzone.models.checkpoints import resolve
print(resolve("builtin:micro"))
"""


@pytest.mark.slow
def test_two_concurrent_first_uses_of_a_builtin_pretrain_it_once(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": src}
    env["OMP_NUM_THREADS"] = "1"
    users = [
        subprocess.Popen(
            [sys.executable, "-c", FIRST_USE],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(2)
    ]
    answers = [u.communicate(timeout=900) for u in users]
    assert [u.returncode for u in users] == [0, 0], answers
    paths = {out.strip() for out, _ in answers}
    assert len(paths) == 1 and (Path(paths.pop()) / "config.json").is_file()
    said = sum(err.count("pretraining builtin:micro once") for _, err in answers)
    assert said == 1, [err for _, err in answers]


def test_analysis_of_a_checkpoint_lacking_a_matrix_names_it(gpt2_dir, caplog):
    import safetensors.torch

    from deadzone.geometry.analysis import analyze_checkpoint

    path, _ = gpt2_dir
    assert absent_sites(open_checkpoint(str(path))) == []
    weights = safetensors.torch.load_file(path / "model.safetensors")
    del weights["transformer.h.1.mlp.c_fc.weight"]
    safetensors.torch.save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    assert absent_sites(open_checkpoint(str(path))) == ["L1.mlp.c_fc"]
    with caplog.at_level("WARNING", logger="deadzone"):
        records = analyze_checkpoint(str(path), "L1.mlp.*")
    assert [r["site"] for r in records] == ["L1.mlp.c_proj"]
    assert "lacks 1 matrix(es) of its architecture: L1.mlp.c_fc" in caplog.text


class _Touch:
    """Unpickling this would create ``marker``: the proof that a pickle was executed."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.mark.parametrize("extra", ["namespace", "code"])
def test_a_bin_checkpoint_holding_objects_is_one_line_naming_it_never_executed(tmp_path, extra):
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    marker = tmp_path / "executed"
    state = dict(model.state_dict())
    state["args"] = argparse.Namespace(lr=1e-3) if extra == "namespace" else _Touch(marker)
    torch.save(state, tmp_path / "pytorch_model.bin")
    for load in (load_model, open_checkpoint):
        with pytest.raises(DeadzoneError) as caught:
            load(str(tmp_path))
        message = str(caught.value)
        assert "\n" not in message
        assert str(tmp_path / "pytorch_model.bin") in message
        assert "safetensors" in message
    assert not marker.exists()
    if extra == "namespace":
        assert "argparse.Namespace" in message


def test_a_bin_checkpoint_of_tensors_alone_still_loads(tmp_path):
    model = tiny_gpt2()
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    loaded, _ = load_model(str(tmp_path))
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded(ids).logits, model.eval()(ids).logits, rtol=0, atol=0)
