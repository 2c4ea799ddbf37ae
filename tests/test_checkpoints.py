import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

from deadzone.checkpoints import load_model, open_checkpoint, resolve
from deadzone.errors import DeadzoneError
from deadzone.sites import find_sites, site_matrix


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
