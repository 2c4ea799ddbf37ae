"""``deadzone analyze`` end to end on a tiny checkpoint: terminal output, files, bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from conftest import tiny_gpt2

from deadzone.cli import main
from deadzone.geometry import spectral


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["analyze", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_analyze_writes_table_summary_json_csv_and_plot(tmp_path, capsys) -> None:
    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "model", max_shard_size="20KB")  # several shards
    files = {kind: tmp_path / "out" / f"geometry.{kind}" for kind in ("json", "csv", "png")}
    rc, out, _ = run(
        capsys, str(tmp_path / "model"),
        "--json", str(files["json"]), "--csv", str(files["csv"]), "--plot", str(files["png"]),
    )  # fmt: skip
    assert rc == 0
    for header in ("site", "shape", "params", "PR", "PC1 %", "stable rank", "eff. rank"):
        assert header in out
    assert "L1.attn.c_proj" in out and "32x32" in out
    assert "Mean PR by role:" in out and "Highest PC1:" in out
    assert "Attention output projections" in out

    records = json.loads(files["json"].read_text())
    assert [r["site"] for r in records][:3] == ["embed", "pos_embed", "L0.attn.c_attn"]
    fc = next(r for r in records if r["site"] == "L0.mlp.c_fc")
    assert fc["shape"] == [128, 32] and fc["layer"] == 0 and fc["role"] == "mlp_in"
    stored = model.get_parameter("transformer.h.0.mlp.c_fc.weight").detach()
    assert fc["pr"] == pytest.approx(spectral.pr(stored.T), rel=1e-12)
    assert set(spectral.METRICS) <= set(fc)

    rows = list(csv.DictReader(files["csv"].open()))
    assert [r["site"] for r in rows] == [r["site"] for r in records]
    assert float(rows[2]["pr"]) == pytest.approx(records[2]["pr"], rel=1e-12)
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(files["json"].parent.glob(".*.tmp"))  # written atomically


def test_sites_glob_selects(gpt2_dir, tmp_path, capsys) -> None:
    path, _ = gpt2_dir
    rc, out, _ = run(capsys, str(path), "--sites", "*.c_proj", "--json", str(tmp_path / "g.json"))
    assert rc == 0
    names = [r["site"] for r in json.loads((tmp_path / "g.json").read_text())]
    assert names == ["L0.attn.c_proj", "L0.mlp.c_proj", "L1.attn.c_proj", "L1.mlp.c_proj"]
    assert "4 matrices analysed" in out


def test_nan_matrix_is_not_computable_and_said_so(tmp_path, capsys) -> None:
    model = tiny_gpt2()
    with torch.no_grad():
        model.get_parameter("transformer.h.1.mlp.c_proj.weight")[0, 0] = math.nan
    model.save_pretrained(tmp_path / "model")
    rc, out, _ = run(capsys, str(tmp_path / "model"), "--json", str(tmp_path / "g.json"))
    assert rc == 0
    assert "Not computable (NaN or Inf in the matrix): 1 site(s): L1.mlp.c_proj." in out
    records = {r["site"]: r for r in json.loads((tmp_path / "g.json").read_text())}
    assert records["L1.mlp.c_proj"]["finite"] is False
    assert records["L1.mlp.c_proj"]["pr"] is None
    assert records["L1.mlp.c_fc"]["pr"] > 1


def bad_path(tmp_path, kind: str):
    """A path of the given kind under ``tmp_path``."""
    if kind == "missing":
        return tmp_path / "missing"
    if kind == "no config":
        return tmp_path
    path = tmp_path / ("w.bin" if kind == "pickle" else "w.safetensors")
    path.write_bytes(b"\x80\x04junk" * 8)
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "does not exist"),
        ("no config", "not a model directory"),
        ("pickle", "not a model directory or a .safetensors file"),
        ("corrupt safetensors", "not a valid safetensors file"),
    ],
)
def test_bad_model_path_is_a_one_line_error(tmp_path, capsys, kind, message) -> None:
    rc, _, err = run(capsys, str(bad_path(tmp_path, kind)))
    assert rc == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_glob_matching_nothing_lists_closest_names(gpt2_dir, capsys) -> None:
    path, _ = gpt2_dir
    rc, _, err = run(capsys, str(path), "--sites", "L1.attn.c_prj")
    assert rc == 2
    assert "no site matches 'L1.attn.c_prj'; closest: L1.attn.c_proj" in err
    assert err.count("\n") == 1


def test_help_states_every_default(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = capsys.readouterr().out
    for option in ("--sites", "--json", "--csv", "--plot", "--out"):
        assert option in text
    assert text.count("(default:") == 5
    assert "(default: None)" not in text
