"""Bad input and faults: every failure is one line and exit 2, and no wrong number has exit 0."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import tiny_llama

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
