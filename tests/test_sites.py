import pytest
import torch
from conftest import FAMILIES, tiny_gpt2
from transformers.pytorch_utils import Conv1D

from deadzone.errors import DeadzoneError
from deadzone.models.sites import find_sites, get_parameter, select, site_matrix

EXPECTED_L1 = {
    "gpt2": {
        "L1.attn.c_attn": ("attn_qkv", (96, 32)),
        "L1.attn.c_proj": ("attn_out", (32, 32)),
        "L1.mlp.c_fc": ("mlp_in", (128, 32)),
        "L1.mlp.c_proj": ("mlp_out", (32, 128)),
    },
    "llama": {
        "L1.self_attn.q_proj": ("attn_q", (32, 32)),
        "L1.self_attn.k_proj": ("attn_k", (16, 32)),
        "L1.self_attn.v_proj": ("attn_v", (16, 32)),
        "L1.self_attn.o_proj": ("attn_out", (32, 32)),
        "L1.mlp.gate_proj": ("mlp_gate", (48, 32)),
        "L1.mlp.up_proj": ("mlp_in", (48, 32)),
        "L1.mlp.down_proj": ("mlp_out", (32, 48)),
    },
    "gpt_neox": {
        "L1.attention.query_key_value": ("attn_qkv", (96, 32)),
        "L1.attention.dense": ("attn_out", (32, 32)),
        "L1.mlp.dense_h_to_4h": ("mlp_in", (64, 32)),
        "L1.mlp.dense_4h_to_h": ("mlp_out", (32, 64)),
    },
    "opt": {
        "L1.self_attn.q_proj": ("attn_q", (32, 32)),
        "L1.self_attn.k_proj": ("attn_k", (32, 32)),
        "L1.self_attn.v_proj": ("attn_v", (32, 32)),
        "L1.self_attn.out_proj": ("attn_out", (32, 32)),
        "L1.fc1": ("mlp_in", (64, 32)),
        "L1.fc2": ("mlp_out", (32, 64)),
    },
}
EXPECTED_L1["qwen2"] = EXPECTED_L1["mistral"] = EXPECTED_L1["llama"]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_block_sites_have_names_roles_and_out_in_shapes(family):
    sites = {s.name: s for s in find_sites(FAMILIES[family]())}
    layer1 = {n: (s.role, s.shape) for n, s in sites.items() if s.layer == 1}
    assert layer1 == EXPECTED_L1[family]
    assert all(s.params == s.shape[0] * s.shape[1] for s in sites.values())
    assert sites["embed"].role == "embed"


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tied_weights_are_listed_once(family):
    model = FAMILIES[family]()
    names = [s.name for s in find_sites(model)]
    assert len(names) == len(set(names))
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert ("lm_head" in names) is not tied


def test_conv1d_orientation_matches_the_modules_forward():
    model = tiny_gpt2()
    checked = 0
    for site in find_sites(model):
        module = model.get_submodule(site.param_name.removesuffix(".weight"))
        if not isinstance(module, Conv1D):
            continue
        assert site.transposed
        w = site_matrix(model, site)  # (out, in)
        assert w.shape == site.shape
        x_in = torch.randn(3, site.shape[1])
        torch.testing.assert_close(x_in @ w.T + module.bias, module(x_in))
        checked += 1
    assert checked == 8


def test_site_matrix_is_a_view_of_the_parameter():
    model = tiny_gpt2()
    site = select(find_sites(model), "L1.attn.c_proj")[0]
    assert site_matrix(model, site).data_ptr() == get_parameter(model, site).data_ptr()


def test_other_architectures_get_role_other():
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(n_layer=2, hidden_size=32, n_head=4, vocab_size=96))
    roles = {s.name: s.role for s in find_sites(model)}
    assert roles["L0.self_attention.query_key_value"] == "other"
    assert roles["L1.self_attention.dense"] == "other"
    assert len([n for n in roles if n.startswith("L1.")]) == 4


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("L1.attn.*", ["L1.attn.c_attn", "L1.attn.c_proj"]),
        ("*.c_proj", ["L0.attn.c_proj", "L0.mlp.c_proj", "L1.attn.c_proj", "L1.mlp.c_proj"]),
        ("L[0-0].*", ["L0.attn.c_attn", "L0.attn.c_proj", "L0.mlp.c_fc", "L0.mlp.c_proj"]),
        ("L1.mlp.c_fc,embed", ["embed", "L1.mlp.c_fc"]),
    ],
)
def test_select_by_name_or_glob(pattern, expected):
    sites = find_sites(tiny_gpt2())
    assert [s.name for s in select(sites, pattern)] == expected


def test_select_nothing_lists_closest_names():
    sites = find_sites(tiny_gpt2())
    with pytest.raises(DeadzoneError, match=r"no site matches 'L1.attn.c_prj'.*L1.attn.c_proj"):
        select(sites, "L1.attn.c_prj")
