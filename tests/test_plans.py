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
from deadzone.sites import find_sites


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
    assert set(paths) == {"plan.json", "axolotl.yaml", "frozen_parameters.txt"}
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
