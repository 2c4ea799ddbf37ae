"""Sites -> geometry records: orientation, streaming, batching, bad input, summary."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

from deadzone.errors import DeadzoneError
from deadzone.geometry import analysis, spectral
from deadzone.models.sites import Site, find_sites, get_parameter, site_matrix

KEYS = {"site", "layer", "role", "shape", "params", "finite", *spectral.METRICS}


def in_memory(model: torch.nn.Module) -> list[dict]:
    sites = find_sites(model)
    return analysis.analyze(((s, site_matrix(model, s)) for s in sites), progress=False)


def test_records_have_every_key_and_the_out_x_in_shape() -> None:
    model = tiny_gpt2()
    records = in_memory(model)
    assert [r["site"] for r in records] == [s.name for s in find_sites(model)]
    by_name = {r["site"]: r for r in records}
    for r in records:
        assert set(r) == KEYS
        assert r["params"] == r["shape"][0] * r["shape"][1]
        assert r["finite"] and all(isinstance(r[m], float) for m in spectral.METRICS)
    assert by_name["L1.mlp.c_fc"]["shape"] == [128, 32]  # out x in, though stored 32 x 128
    assert by_name["L1.mlp.c_fc"] | {"layer": 1, "role": "mlp_in"} == by_name["L1.mlp.c_fc"]
    assert by_name["L0.attn.c_proj"]["role"] == "attn_out"
    json.dumps(records, allow_nan=False)


def test_conv1d_matrices_are_measured_out_x_in() -> None:
    """GPT-2 stores Conv1D weights in x out; rows of the measured matrix must be output units."""
    model = tiny_gpt2()
    record = {r["site"]: r for r in in_memory(model)}["L0.mlp.c_fc"]
    stored = model.get_parameter("transformer.h.0.mlp.c_fc.weight").detach()  # (in, out)
    assert tuple(stored.shape) == (32, 128)
    right = spectral.geometry(stored.T)  # (out, in)
    wrong = spectral.geometry(stored)
    assert record["pr"] == pytest.approx(right.pr, rel=1e-12)
    assert record["amplitude_pr"] == pytest.approx(right.amplitude_pr, rel=1e-12)
    assert record["pr"] != pytest.approx(wrong.pr, rel=1e-3)  # centring over the other axis


def test_linear_matrices_are_measured_as_stored() -> None:
    model = tiny_llama()
    site = next(s for s in find_sites(model) if s.name == "L0.mlp.up_proj")
    assert not site.transposed
    record = {r["site"]: r for r in in_memory(model)}["L0.mlp.up_proj"]
    expected = spectral.geometry(get_parameter(model, site).detach())
    assert record["pr"] == pytest.approx(expected.pr, rel=1e-12)
    assert record["shape"] == [48, 32]


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_streaming_from_shards_equals_in_memory(tmp_path, build) -> None:
    model = build()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    streamed = analysis.analyze_checkpoint(str(tmp_path), progress=False)
    assert {r.pop("orientation") for r in streamed} == {"config"}
    assert streamed == in_memory(model)


def test_site_selection_and_glob_that_matches_nothing(gpt2_dir) -> None:
    path, _ = gpt2_dir
    records = analysis.analyze_checkpoint(str(path), "L1.attn.*", progress=False)
    assert [r["site"] for r in records] == ["L1.attn.c_attn", "L1.attn.c_proj"]
    with pytest.raises(DeadzoneError, match=r"no site matches 'L9\.attn\.\*'; closest: L"):
        analysis.analyze_checkpoint(str(path), "L9.attn.*", progress=False)


def test_non_finite_matrix_is_reported_and_the_others_carry_on() -> None:
    model = tiny_gpt2()
    clean = in_memory(model)
    with torch.no_grad():
        model.get_parameter("transformer.h.1.attn.c_proj.weight")[3, 5] = math.inf
        model.get_parameter("transformer.h.0.mlp.c_fc.weight")[0, 0] = math.nan
    records = in_memory(model)
    bad = {"L1.attn.c_proj", "L0.mlp.c_fc"}
    for before, after in zip(clean, records, strict=True):
        if after["site"] in bad:
            assert not after["finite"]
            assert all(after[m] is None for m in spectral.METRICS)
        else:
            assert after == before
    assert analysis.summarize(records)["not_computable"] == ["L0.mlp.c_fc", "L1.attn.c_proj"]
    json.dumps(records, allow_nan=False)


def test_a_vector_or_a_wrong_shape_is_a_one_line_error() -> None:
    site = Site("L0.attn.c_proj", "h.0.attn.c_proj.weight", 0, "attn_out", (4, 3), False)
    with pytest.raises(DeadzoneError, match="L0.attn.c_proj is not a matrix"):
        analysis.analyze([(site, torch.ones(12))], progress=False)
    with pytest.raises(DeadzoneError, match="expected a 4x3 matrix"):
        analysis.analyze([(site, torch.ones(3, 4))], progress=False)


def test_worker_threads_give_the_same_records_in_the_same_order() -> None:
    """One matrix per worker thread: the records do not depend on how many, nor on whether
    the matrices come as a stream; torch's thread count is restored afterwards."""
    g = torch.Generator().manual_seed(3)
    shapes = [(90, 40), (40, 90), (64, 64), (200, 48), (33, 120), (50, 50), (80, 36)]
    pairs = [
        (Site(f"m{i}", f"m{i}.weight", i, "other", shape, False), torch.randn(*shape, generator=g))
        for i, shape in enumerate(shapes)
    ]
    one = analysis.analyze(pairs, progress=False, workers=1)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        default = analysis.analyze(iter(pairs), progress=False)  # two workers, torch's threads
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    three = analysis.analyze(iter(pairs), progress=False, workers=3)
    assert one == default == three
    assert [r["site"] for r in three] == [site.name for site, _ in pairs]


def test_stacked_batches_equal_one_at_a_time() -> None:
    """The accelerator path stacks runs of same-shaped matrices; numbers must not change."""
    model = tiny_gpt2(n_layer=3)
    pairs = [(s, site_matrix(model, s)) for s in find_sites(model)]
    batches = list(analysis._batches(iter(pairs), torch.device("cpu"), stack=True))
    # embed, pos_embed, then per block four shapes: no two neighbours share a shape here ...
    assert sum(len(sites) for sites, _ in batches) == len(pairs)
    by_shape = sorted(pairs, key=lambda p: p[0].shape)  # ... so group them to make runs
    batches = list(analysis._batches(iter(by_shape), torch.device("cpu"), stack=True))
    assert max(len(sites) for sites, _ in batches) == 4  # 3 c_attn plus the 96x32 embedding
    stacked = {
        site.name: geo
        for sites, batch in batches
        for site, geo in zip(sites, spectral.geometry_batch(batch), strict=True)
    }
    for site, matrix in pairs:
        single = spectral.geometry(matrix.contiguous())  # stacking copies into this layout
        for metric in spectral.METRICS:
            assert getattr(stacked[site.name], metric) == pytest.approx(
                getattr(single, metric), rel=1e-12
            )


def test_batches_respect_the_memory_budget(monkeypatch) -> None:
    monkeypatch.setattr(analysis, "BATCH_BYTES", 2 * 32 * 32 * 4)
    site = Site("x", "x.weight", 0, "other", (32, 32), False)
    pairs = iter([(site, torch.randn(32, 32)) for _ in range(5)])
    sizes = [len(s) for s, _ in analysis._batches(pairs, torch.device("cpu"), stack=True)]
    assert sizes == [2, 2, 1]


def _rec(site: str, layer: int | None, role: str, pr: float | None, pc1: float | None) -> dict:
    metrics = dict.fromkeys(spectral.METRICS, 1.0) | {"pr": pr, "pc1": pc1}
    return {"site": site, "layer": layer, "role": role, "shape": [2, 2], "params": 4,
            "finite": pr is not None, **metrics}  # fmt: skip


def test_summary_compares_attention_output_with_input_projections() -> None:
    records = [
        _rec("embed", None, "embed", 30.0, 0.1),
        _rec("L0.attn.c_attn", 0, "attn_qkv", 200.0, 0.05),
        _rec("L0.attn.c_proj", 0, "attn_out", 100.0, 0.10),
        _rec("L1.attn.c_attn", 1, "attn_qkv", 150.0, 0.08),
        _rec("L1.attn.c_proj", 1, "attn_out", 160.0, 0.224),
        _rec("L2.attn.c_proj", 2, "attn_out", None, None),  # not computable
    ]
    summary = analysis.summarize(records)
    assert summary["sites"] == 6
    assert summary["mean_pr_by_role"] == {"embed": 30.0, "attn_qkv": 175.0, "attn_out": 130.0}
    cmp = summary["attn_out_vs_in"]
    assert cmp["attn_out_mean_pr"] == 130.0 and cmp["attn_in_mean_pr"] == 175.0
    assert cmp["ratio"] == pytest.approx(130 / 175)
    assert (cmp["layers_out_lower"], cmp["layers"]) == (1, 2)
    assert summary["highest_pc1"] == {"site": "L1.attn.c_proj", "pc1": 0.224}
    assert summary["not_computable"] == ["L2.attn.c_proj"]


def test_summary_of_llama_style_projections_averages_q_k_v_per_layer() -> None:
    records = [
        _rec("L0.self_attn.q_proj", 0, "attn_q", 10.0, 0.1),
        _rec("L0.self_attn.k_proj", 0, "attn_k", 20.0, 0.1),
        _rec("L0.self_attn.v_proj", 0, "attn_v", 30.0, 0.1),
        _rec("L0.self_attn.o_proj", 0, "attn_out", 25.0, 0.1),
        _rec("L0.mlp.up_proj", 0, "mlp_in", 40.0, 0.1),
    ]
    cmp = analysis.summarize(records)["attn_out_vs_in"]
    assert cmp["attn_in_mean_pr"] == 20.0 and cmp["layers_out_lower"] == 0
    assert analysis.summarize(records[-1:])["attn_out_vs_in"] is None
