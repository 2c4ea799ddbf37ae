"""Cheap scores on tiny models: against direct computations, and properties that must hold."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import VOCAB, tiny_gpt2, tiny_llama, tiny_neox, tiny_qwen2
from scipy import stats

from deadzone.data.batching import collate
from deadzone.data.sft import Example
from deadzone.errors import DeadzoneError
from deadzone.geometry import scores
from deadzone.models.sites import find_sites, get_parameter
from deadzone.training.train import loss_sum


def examples(n: int, seed: int, lengths=(5, 12)) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        ids = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        labels = [-100] * (length // 2) + ids[length // 2 :]  # a prompt, then a completion
        out.append(Example(ids, labels))
    return out


def data(seed: int = 0) -> scores.ScoreData:
    return scores.ScoreData(
        train=[collate(examples(4, seed + i), pad_id=0) for i in range(3)],
        eval=[collate(examples(4, seed + 10 + i), pad_id=0) for i in range(2)],
    )


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_grad_norm_is_the_norm_of_the_mean_loss_gradient(build) -> None:
    model = build()
    sites = [s for s in find_sites(model) if s.layer is not None]
    frozen = get_parameter(model, sites[0])
    frozen.requires_grad_(False)
    model.train()
    d = data()
    got = scores.grad_norm(model, sites, d)
    # the model comes back as it was: mode, flags, no gradients left behind
    assert model.training and not frozen.requires_grad
    assert all(p.grad is None for p in model.parameters())

    reference = build()  # the same weights (seeded), plain backward in eval mode
    reference.eval()
    total, tokens = 0.0, 0
    for batch in d.train:
        loss, count = loss_sum(reference, batch)
        total, tokens = total + loss, tokens + int(count)
    (total / tokens).backward()
    for site in sites:
        expected = float(get_parameter(reference, site).grad.double().norm())
        assert got[site.name] == pytest.approx(expected, rel=1e-5), site.name
        assert got[site.name] > 0


def _zero(model, site) -> None:
    with torch.no_grad():
        get_parameter(model, site).zero_()
        bias = site.param_name.removesuffix(".weight") + ".bias"
        if bias in dict(model.named_parameters()):
            model.get_parameter(bias).zero_()


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama, tiny_qwen2])
def test_block_influence_is_zero_for_a_sublayer_that_adds_nothing(build) -> None:
    model = build()
    sites = find_sites(model)
    by_role = {(s.layer, s.role): s for s in sites}
    _zero(model, by_role[0, "mlp_out"])  # layer 0's MLP adds zero to the stream
    _zero(model, by_role[1, "attn_out"])  # layer 1's attention adds zero
    got = scores.block_influence(model, sites, data())
    for site in sites:
        value = got[site.name]
        if site.layer is None:
            assert value is None
            continue
        part = "attn" if site.role.startswith("attn") else "mlp"
        if (site.layer, part) in ((0, "mlp"), (1, "attn")):
            assert value == pytest.approx(0.0, abs=1e-6), site.name
        else:
            assert 1e-4 < value <= 2.0, site.name
    # every site of one sub-layer shares its score
    attn0 = {got[s.name] for s in sites if s.layer == 0 and s.role.startswith("attn")}
    assert len(attn0) == 1


def test_block_influence_leaves_padding_out() -> None:
    """One padded batch of two examples scores as the token-weighted mean of the two alone."""
    model = tiny_gpt2()
    sites = [s for s in find_sites(model) if s.layer is not None]
    short, long = examples(1, 1, (4, 4))[0], examples(1, 2, (11, 11))[0]
    together = scores.block_influence(
        model, sites, scores.ScoreData(eval=[collate([short, long], 0)])
    )
    alone = [
        scores.block_influence(model, sites, scores.ScoreData(eval=[collate([e], 0)]))
        for e in (short, long)
    ]
    for s in sites:
        expected = (4 * alone[0][s.name] + 11 * alone[1][s.name]) / 15
        assert together[s.name] == pytest.approx(expected, rel=1e-4), s.name


def test_block_influence_refuses_parallel_blocks_and_empty_data() -> None:
    model = tiny_neox()
    with pytest.raises(DeadzoneError, match="parallel"):
        scores.block_influence(model, find_sites(model), data())
    with pytest.raises(DeadzoneError, match="evaluation batch"):
        scores.block_influence(tiny_gpt2(), find_sites(tiny_gpt2()), scores.ScoreData())
    with pytest.raises(DeadzoneError, match="training batch"):
        scores.grad_norm(tiny_gpt2(), find_sites(tiny_gpt2()), scores.ScoreData())


def test_compute_scores_and_geometry_scores() -> None:
    model = tiny_gpt2()
    sites = find_sites(model)
    both = scores.compute_scores(model, sites, data())
    assert set(both) == {"grad_norm", "block_influence"}
    assert set(both["grad_norm"]) == {s.name for s in sites}
    with pytest.raises(DeadzoneError, match="unknown score 'nope'"):
        scores.compute_scores(model, sites, data(), ("nope",))
    records = [{"site": "a", "pr": 2.0, "snr": None}, {"site": "b", "pr": 3.0, "snr": 0.1}]
    assert scores.geometry_scores(records, ("pr", "snr")) == {
        "pr": {"a": 2.0, "b": 3.0},
        "snr": {"a": None, "b": 0.1},
    }


def test_spearman_permutation() -> None:
    x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    rho, p = scores.spearman_permutation(x, [v**3 for v in x], n_perm=9999, seed=0)
    assert rho == pytest.approx(1.0)
    assert p < 0.002  # exact: 2 / 8! = 5e-5, plus the +1 correction
    rho, p = scores.spearman_permutation(x, [-v for v in x], n_perm=999)
    assert rho == pytest.approx(-1.0) and p < 0.01
    # undefined values are left out; too few pairs or a constant side: undefined
    rho_none, _ = scores.spearman_permutation([*x, None], [*x, 3.0])
    assert rho_none == pytest.approx(1.0)
    assert scores.spearman_permutation([1.0, 2.0], [2.0, 1.0]) == (None, None)
    assert scores.spearman_permutation(x, [1.0] * 8) == (None, None)
    assert scores.spearman_permutation(x, [math.nan] * 8) == (None, None)
    with pytest.raises(DeadzoneError):
        scores.spearman_permutation(x, x[:3])


def test_spearman_permutation_p_agrees_with_scipy_and_is_calibrated() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=12)
    b = 0.5 * a + rng.normal(size=12)
    rho, p = scores.spearman_permutation(a.tolist(), b.tolist(), n_perm=20000, seed=1)
    assert rho == pytest.approx(stats.spearmanr(a, b).statistic)
    ref = stats.permutation_test(
        (b,),
        lambda y: stats.spearmanr(a, y).statistic,
        permutation_type="pairings",
        n_resamples=20000,
        rng=np.random.default_rng(2),
    ).pvalue
    assert p == pytest.approx(ref, abs=0.01)
    # under independence, p < 0.05 about 5% of the time
    hits = 0
    for i in range(300):
        x, y = rng.normal(size=10), rng.normal(size=10)
        hits += scores.spearman_permutation(x.tolist(), y.tolist(), n_perm=199, seed=i)[1] < 0.05
    assert 0.02 <= hits / 300 <= 0.09
