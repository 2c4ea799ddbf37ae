"""Strategies on a tiny GPT-2: what each does to a site, before any training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import FAMILIES
from transformers import GPT2Config, GPT2LMHeadModel

from deadzone.errors import DeadzoneError
from deadzone.models import sites
from deadzone.training import strategies

INIT_RANGE = 0.02
N_LAYER = 2


def tiny_gpt2(seed: int = 0, n_embd: int = 64, tie: bool = True) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=N_LAYER,
        n_embd=n_embd,
        n_head=2,
        vocab_size=96,
        n_positions=32,
        initializer_range=INIT_RANGE,
        tie_word_embeddings=tie,
    )
    return GPT2LMHeadModel(config)


@pytest.fixture
def model() -> GPT2LMHeadModel:
    m = tiny_gpt2()
    # Move away from the initialiser's distribution so a re-draw is distinguishable.
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0).add_(0.01)
    return m


def by_name(model: torch.nn.Module) -> dict[str, sites.Site]:
    return {s.name: s for s in sites.find_sites(model)}


@pytest.mark.parametrize("site_name", ["L0.attn.c_proj", "L1.mlp.c_fc", "L0.attn.c_attn"])
@pytest.mark.parametrize("rank", [1, 3])
def test_crystal_is_the_numpy_rank_k_reconstruction(model, site_name, rank):
    site = by_name(model)[site_name]
    w = sites.site_matrix(model, site).numpy().astype(np.float64)  # (out, in)
    u, s, vh = np.linalg.svd(w, full_matrices=False)
    expected = ((u[:, :rank] * s[:rank]) @ vh[:rank]).astype(np.float32)

    strategies.apply_strategies(model, {site: "crystal"}, rank=rank)
    got = sites.site_matrix(model, site).numpy()

    assert got.shape == site.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert np.linalg.matrix_rank(got) <= rank
    assert not sites.get_parameter(model, site).requires_grad


def test_crystal_rank_out_of_range_is_an_error(model):
    site = by_name(model)["L0.attn.c_proj"]  # 64 x 64
    before = sites.site_matrix(model, site).clone()
    for bad in (0, -1, 64, 100):
        with pytest.raises(DeadzoneError, match=f"rank {bad}.*L0.attn.c_proj"):
            strategies.apply_strategies(model, {site: "crystal"}, rank=bad)
    assert torch.equal(sites.site_matrix(model, site), before)
    assert sites.get_parameter(model, site).requires_grad


@pytest.mark.parametrize(
    "site_name, std",
    [
        ("L0.mlp.c_fc", INIT_RANGE),
        ("L1.attn.c_attn", INIT_RANGE),
        # GPT-2 scales residual projections by 1/sqrt(2 * n_layer).
        ("L0.attn.c_proj", INIT_RANGE / (2 * N_LAYER) ** 0.5),
        ("L1.mlp.c_proj", INIT_RANGE / (2 * N_LAYER) ** 0.5),
    ],
)
def test_random_has_the_initialisers_std(model, site_name, std):
    site = by_name(model)[site_name]
    before = sites.site_matrix(model, site).clone()
    strategies.apply_strategies(model, {site: "random"}, seed=7)
    w = sites.site_matrix(model, site)
    n = w.numel()
    assert not torch.equal(w, before)
    # The sample std of n normal draws has relative standard error 1/sqrt(2n); allow 5 of them.
    assert abs(w.std().item() / std - 1) < 5 / (2 * n) ** 0.5
    assert abs(w.mean().item()) < 5 * std / n**0.5
    assert not sites.get_parameter(model, site).requires_grad


def test_random_matches_a_fresh_model_and_depends_on_seed_only():
    fresh = tiny_gpt2(seed=1)
    site = by_name(fresh)["L1.attn.c_proj"]
    fresh_std = sites.site_matrix(fresh, site).std().item()
    a, b, c = tiny_gpt2(seed=2), tiny_gpt2(seed=3), tiny_gpt2(seed=2)
    torch.manual_seed(123)
    strategies.apply_strategies(a, {site: "random"}, seed=5)
    state = torch.get_rng_state()
    strategies.apply_strategies(b, {site: "random"}, seed=5)
    strategies.apply_strategies(c, {site: "random"}, seed=6)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    wa, wb, wc = (sites.site_matrix(m, site) for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    assert abs(wa.std().item() / fresh_std - 1) < 0.1


def test_zero_and_frozen_and_full(model):
    named = by_name(model)
    zero, frozen, full = named["L0.mlp.c_proj"], named["L1.attn.c_attn"], named["L0.attn.c_attn"]
    before = sites.site_matrix(model, frozen).clone()
    sites.get_parameter(model, full).requires_grad_(False)
    records = strategies.apply_strategies(model, {zero: "zero", frozen: "frozen", full: "full"})
    assert torch.count_nonzero(sites.site_matrix(model, zero)) == 0
    assert torch.equal(sites.site_matrix(model, frozen), before)
    assert [r["trainable"] for r in records] == [False, False, True]
    # The bias beside a frozen matrix is not part of the site.
    assert model.transformer.h[1].attn.c_attn.bias.requires_grad
    total = sum(p.numel() for p in model.parameters())
    assert strategies.trainable_params(model) == total - zero.params - frozen.params


def test_tied_embedding_reports_what_it_shares():
    tied = tiny_gpt2(tie=True)
    site = by_name(tied)["embed"]
    (record,) = strategies.apply_strategies(tied, {site: "frozen"})
    assert record["shared_with"] == ["lm_head.weight"]
    assert not tied.lm_head.weight.requires_grad

    untied = tiny_gpt2(tie=False)
    (record,) = strategies.apply_strategies(untied, {by_name(untied)["embed"]: "frozen"})
    assert record["shared_with"] == []
    assert untied.lm_head.weight.requires_grad


def test_unknown_strategy_is_an_error_before_anything_changes(model):
    named = by_name(model)
    plan = {named["L0.mlp.c_fc"]: "zero", named["L0.mlp.c_proj"]: "melt"}
    with pytest.raises(DeadzoneError, match="unknown strategy 'melt'.*crystal"):
        strategies.apply_strategies(model, plan)
    assert torch.count_nonzero(sites.site_matrix(model, named["L0.mlp.c_fc"])) > 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_strategy_on_every_family(family):
    """Each strategy leaves each site of each family with its stated value and trainability."""
    model = FAMILIES[family]()
    named = by_name(model)
    std = getattr(model.config, "initializer_range", None) or model.config.init_std
    for i, (name, site) in enumerate(named.items()):
        strategy = list(strategies.STRATEGIES)[i % len(strategies.STRATEGIES)]
        before = sites.site_matrix(model, site).clone()
        strategies.apply_strategies(model, {site: strategy}, rank=1, seed=i)
        after = sites.site_matrix(model, site)
        assert sites.get_parameter(model, site).requires_grad == (strategy == "full"), name
        if strategy in ("full", "frozen"):
            assert torch.equal(after, before), name
        elif strategy == "crystal":
            assert np.linalg.matrix_rank(after.numpy()) == 1, name
        elif strategy == "zero":
            assert torch.count_nonzero(after) == 0, name
        else:
            assert not torch.equal(after, before), name
            assert 0.4 * std < after.std().item() < 1.2 * std, name
