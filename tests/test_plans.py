"""Freeze plans on tiny GPT-2 and Llama: written, loaded, applied; axolotl's matcher selects
exactly the trainable parameters."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from conftest import tiny_gpt2, tiny_llama

from deadzone import plans
from deadzone.errors import DeadzoneError
from deadzone.experiments.search import deepest
from deadzone.models.sites import find_sites, get_parameter
from deadzone.training.savings import savings


def axolotl_unfrozen(model: torch.nn.Module, patterns: list[str]) -> set[str]:
    """Parameters axolotl's ``freeze_layers_except`` leaves trainable: each pattern compiled with
    every '.' not followed by '+' made literal, then ``re.match`` on each parameter name."""
    compiled = [re.compile(re.sub(r"\.(?!\+)", "\\.", p)) for p in patterns]
    return {n for n, _ in model.named_parameters() if any(c.match(n) for c in compiled)}


def choose(model, every: int = 3) -> dict[str, str]:
    sites = [s for s in find_sites(model) if s.layer is not None]
    return {s.name: "frozen" for s in sites[::every]}


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_plan_written_loaded_and_applied_freezes_exactly_its_parameters(build, tmp_path) -> None:
    model = build()
    plan = plans.make_plan(model, choose(model), source="tiny")
    paths = plans.write_plan(tmp_path, model, plan)
    assert set(paths) == {"plan.json", "axolotl.yaml", "frozen_parameters.txt", "lora_config.json"}
    loaded = plans.load_plan(paths["plan.json"])
    assert loaded == json.loads(json.dumps(plan))
    frozen = set(paths["frozen_parameters.txt"].read_text().split())
    assert frozen == {e["param_name"] for e in plan["sites"]} and len(frozen) > 1

    fresh = build()  # the same weights, as a user's own code would load them
    records = plans.apply_plan(fresh, paths["plan.json"])
    assert {n for n, p in fresh.named_parameters() if not p.requires_grad} == frozen
    assert [r["site"] for r in records] == [e["site"] for e in plan["sites"]]
    for (_, a), (_, b) in zip(fresh.named_parameters(), model.named_parameters(), strict=True):
        assert torch.equal(a, b)  # frozen keeps its values

    # axolotl's matcher selects exactly the parameters that stay trainable
    patterns = yaml.safe_load(paths["axolotl.yaml"].read_text())["unfrozen_parameters"]
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert axolotl_unfrozen(fresh, patterns) == trainable
    assert len(patterns) == len(trainable)


def test_patterns_are_exact_where_an_unanchored_or_dotted_one_would_not_be() -> None:
    """``h.1.attn`` style names: '^transformer.h.1.mlp.c_fc.weight$' must not also select
    layer 11's (a prefix) or any name differing only where a dot is."""
    model = tiny_gpt2(n_layer=12)
    names = [n for n, _ in model.named_parameters()]
    for name in names:
        assert axolotl_unfrozen(model, plans.axolotl_patterns([name])) == {name}
    with pytest.raises(DeadzoneError, match="cannot be written"):
        plans.axolotl_patterns(["weird[0].weight"])


def test_random_sites_are_redrawn_then_frozen() -> None:
    model = tiny_gpt2()
    site = find_sites(model)[3]
    plan = plans.make_plan(model, {site.name: "random"}, seed=5)
    fresh = tiny_gpt2()
    plans.apply_plan(fresh, plan)
    after = fresh.get_parameter(site.param_name)
    assert not after.requires_grad
    assert not torch.equal(after, model.get_parameter(site.param_name))


def test_a_plan_for_another_model_is_refused(tmp_path) -> None:
    model = tiny_gpt2()
    plan = plans.make_plan(model, choose(model), source="tiny gpt2")
    other = tiny_gpt2()
    with torch.no_grad():
        other.transformer.h[0].mlp.c_fc.weight.add_(0.01)  # further trained, say
    with pytest.raises(DeadzoneError, match="made for another model.*tiny gpt2"):
        plans.apply_plan(other, plan)
    assert all(p.requires_grad for p in other.parameters())  # refused before touching it
    plans.apply_plan(other, plan, check_fingerprint=False)  # same architecture: on request
    with pytest.raises(DeadzoneError, match="does not have"):
        plans.apply_plan(tiny_llama(), plan, check_fingerprint=False)
    renamed = json.loads(json.dumps(plan))
    renamed["sites"][0]["site"] = "L9.attn.c_attn"
    with pytest.raises(DeadzoneError, match="this model"):
        plans.apply_plan(tiny_gpt2(), renamed)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_plan_applies_to_its_model_loaded_in_another_dtype_and_not_to_another_model(dtype):
    plan = plans.make_plan(tiny_gpt2(), choose(tiny_gpt2()), source="tiny gpt2")
    copy = tiny_gpt2().to(dtype)  # the same checkpoint, loaded in a dtype to fine-tune in
    assert plans.weights_fingerprint(copy) != plan["model"]["fingerprint"]
    plans.apply_plan(copy, plan)
    assert {n for n, p in copy.named_parameters() if not p.requires_grad} == {
        e["param_name"] for e in plan["sites"]
    }
    other = tiny_gpt2()
    with torch.no_grad():
        other.transformer.h[0].mlp.c_fc.weight.add_(0.01)
    with pytest.raises(DeadzoneError, match="made for another model"):
        plans.apply_plan(other.to(dtype), plan)
    exact_only = json.loads(json.dumps(plan))  # a plan file written before the rounded ones
    for key in plans.ROUNDED:
        del exact_only["model"][key]
    with pytest.raises(DeadzoneError, match="made for another model"):
        plans.apply_plan(tiny_gpt2().to(dtype), exact_only)
    plans.apply_plan(tiny_gpt2(), exact_only)


def test_an_entry_without_a_rank_is_valid_and_applies() -> None:
    """``rank`` matters to crystal sites alone: another site may leave it out."""
    model = tiny_gpt2()
    plan = plans.make_plan(model, choose(model))
    for entry in plan["sites"]:
        del entry["rank"]
    fresh = tiny_gpt2()
    records = plans.apply_plan(fresh, plans.validate(plan))
    assert len(records) == len(plan["sites"])
    assert {n for n, p in fresh.named_parameters() if not p.requires_grad} == {
        e["param_name"] for e in plan["sites"]
    }


def test_order_is_written_loaded_and_checked_against_the_model(tmp_path) -> None:
    model = tiny_gpt2()
    chosen = choose(model)
    rest = [s.name for s in find_sites(model) if s.layer is not None and s.name not in chosen]
    plan = plans.make_plan(model, chosen, order=rest[::-1])
    paths = plans.write_plan(tmp_path, model, plan)
    assert plans.load_plan(paths["plan.json"])["order"] == rest[::-1]
    assert plans.make_plan(model, chosen)["order"] == []
    with pytest.raises(DeadzoneError, match="no site 'L7.mlp.c_fc'"):
        plans.make_plan(model, chosen, order=["L7.mlp.c_fc"])
    with pytest.raises(DeadzoneError, match="order names site 'L7.mlp.c_fc'.*lacks"):
        plans.apply_plan(tiny_gpt2(), plan | {"order": ["L7.mlp.c_fc"]})
    older = {k: v for k, v in plan.items() if k != "order"}  # the field is optional
    plans.apply_plan(tiny_gpt2(), older)


BAD_SITES = (
    '{"plan_version": 1, "model": {"fingerprint": "x"}, "seed": 0, '
    '"sites": [{"site": "a", "param_name": "a.weight", "strategy": "frozen"}]'
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "cannot read plan"),
        ("[]", "not a JSON object"),
        ('{"plan_version": 2}', "plan_version 2"),
        ('{"plan_version": 1, "seed": 0, "sites": []}', "no model fingerprint"),
        ('{"plan_version": 1, "model": {"fingerprint": "x"}, "seed": 0, '
         '"sites": [{"site": "a", "param_name": "a.weight", "strategy": "full"}]}',
         "strategy 'full'"),
        ('{"plan_version": 1, "model": {"fingerprint": "x"}, "seed": 0, '
         '"sites": [{"site": "a", "param_name": "a.weight", "strategy": "crystal"}]}',
         "integer rank"),
        ('{"plan_version": 1, "model": {"fingerprint": "x"}, "seed": 0, '
         '"sites": [{"site": "a", "param_name": "a.weight", "strategy": "crystal", "rank": 0}]}',
         "integer rank >= 1"),
        ('{"plan_version": 1, "model": {"fingerprint": "x", "fingerprint_bf16": 3}, "seed": 0, '
         '"sites": []}', "fingerprint_bf16 must be a string"),
        (BAD_SITES + ', "order": "b"}', "order must be a list of site names"),
        (BAD_SITES + ', "order": ["b", 2]}', "order must be a list of site names"),
        (BAD_SITES + ', "order": ["b", "c", "b"]}', "order lists b twice"),
        (BAD_SITES + ', "order": ["b", "a"]}', "order lists a, which is one of the plan's sites"),
    ],
)  # fmt: skip
def test_bad_plan_files_are_one_line_errors(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "plan.json"
    path.write_text(text)
    with pytest.raises(DeadzoneError, match=re.escape(message)) as info:
        plans.load_plan(path)
    assert "\n" not in str(info.value)
    with pytest.raises(DeadzoneError, match="no plan file"):
        plans.load_plan(tmp_path / "missing.json")


def test_sample_indices_are_exact_integers_in_range_for_any_size() -> None:
    for numel in (1, 2, 15, 16, 17, 2**24 - 1, 2**24 + 1, 28_311_552, 2**40 + 3):
        index = plans.sample_indices(numel)
        assert index.dtype == torch.int64
        assert int(index[0]) == 0 and int(index[-1]) == numel - 1
        assert bool((index[1:] >= index[:-1]).all())


def test_the_fingerprint_of_a_parameter_past_2_to_the_24_elements_reads_its_last_value() -> None:
    """A float32 linspace rounds numel - 1 up to numel past 2**24 elements: an IndexError."""
    model = torch.nn.Module()
    model.config = None
    model.w = torch.nn.Parameter(torch.zeros(28_311_552))  # a real LM's token embedding
    before = plans.weights_fingerprint(model)
    with torch.no_grad():
        model.w[-1] = 1.0
    assert plans.weights_fingerprint(model) != before
    assert plans.rounded_fingerprint(model, torch.bfloat16)


def peft_targets(model: torch.nn.Module, lora: dict) -> set[str]:
    """The modules peft puts adapters on when the plan's LoraConfig is applied."""
    from peft import LoraConfig, get_peft_model

    adapted = get_peft_model(model, LoraConfig(**lora))
    base = "base_model.model."
    return {
        n.removeprefix(base).removesuffix(".lora_A.default.weight")
        for n, _ in adapted.named_parameters()
        if n.endswith("lora_A.default.weight")
    }


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_peft_adapters_land_on_exactly_the_trainable_matrices(build, tmp_path) -> None:
    model = build()
    plan = plans.make_plan(model, choose(model), prefix_depth=1)
    paths = plans.write_plan(tmp_path, model, plan)
    lora = json.loads(paths["lora_config.json"].read_text())
    fresh = build()
    plans.apply_plan(fresh, plan)
    trainable = {
        s.param_name.removesuffix(".weight")
        for s in find_sites(fresh)
        if s.layer is not None and get_parameter(fresh, s).requires_grad
    }
    assert trainable and peft_targets(build(), lora) == trainable
    assert not any(t.startswith(("transformer.h.0.", "model.layers.0.")) for t in trainable)


def test_prefix_plan_freezes_the_prefix_whole_and_unties_the_head(tmp_path) -> None:
    model = tiny_gpt2(n_layer=3)
    sites = {name: "frozen" for name in plans.prefix_sites(model, 2)}
    assert "embed" in sites and "L1.mlp.c_proj" in sites and "L2.attn.c_attn" not in sites
    plan = plans.make_plan(model, sites, prefix_depth=2, untie_head=True)
    fresh = tiny_gpt2(n_layer=3)
    plans.apply_plan(fresh, plan)  # the model as the plan trains it: the head untied
    saved = savings(fresh, 4, 32).to_dict()
    assert saved["prefix_depth"] == 2 and saved["flops_ratio"] < 1
    plan = plans.make_plan(model, sites, prefix_depth=2, untie_head=True, savings=saved)
    paths = plans.write_plan(tmp_path, model, plan)
    assert plans.load_plan(paths["plan.json"])["savings"] == saved
    frozen = paths["frozen_parameters.txt"].read_text().split()
    assert "transformer.h.1.ln_2.bias" in frozen and "transformer.wpe.weight" in frozen
    yaml_text = paths["axolotl.yaml"].read_text()
    assert "tie_word_embeddings: false" in yaml_text and "'^lm_head.weight$'" in yaml_text

    fresh = tiny_gpt2(n_layer=3)
    plans.apply_plan(fresh, paths["plan.json"])
    from deadzone.training.prefix import prefix_depth

    assert prefix_depth(fresh) == 2 and fresh.config.tie_word_embeddings is False
    assert fresh.lm_head.weight.requires_grad and not fresh.transformer.wte.weight.requires_grad
    assert {n for n, p in fresh.named_parameters() if not p.requires_grad} == set(frozen)


def test_prefix_plan_bad_input() -> None:
    llama = tiny_llama()  # its head is not tied
    with pytest.raises(DeadzoneError, match="head is not tied"):
        plans.make_plan(llama, {}, untie_head=True)
    with pytest.raises(DeadzoneError, match="prefix of 5 blocks; this model has 2"):
        plans.make_plan(llama, {}, prefix_depth=5)
    plan = plans.make_plan(tiny_gpt2(), {}, untie_head=True)
    plan["model"] = plans.make_plan(llama, {})["model"]
    with pytest.raises(DeadzoneError, match="head is not tied"):
        plans.apply_plan(llama, plan, check_fingerprint=False)
    with pytest.raises(DeadzoneError, match="prefix_depth must be an integer"):
        plans.validate(plans.make_plan(llama, {}) | {"prefix_depth": -1})


@pytest.mark.parametrize("answer", [0, 1, 5, 12])
def test_deepest_finds_the_largest_negligible_depth_by_bisection(answer) -> None:
    depth, judged = deepest(lambda d: d <= answer, 12)
    assert depth == answer and len(judged) <= 4 and len(set(judged)) == len(judged)
