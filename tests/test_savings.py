"""The savings model against what PyTorch counts and holds: FLOPs exactly, bytes within 10%."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_neox
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from deadzone.errors import DeadzoneError
from deadzone.training.freezing import optimizer_state_bytes
from deadzone.training.prefix import FrozenPrefix, prefix_parameters, untie_head
from deadzone.training.savings import activation_bytes, ceilings, savings, step_flops
from deadzone.training.train import SFTConfig, SFTLoop, batch_stream, loss_sum

BATCH, SEQ = 3, 16


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=3, n_embd=32, n_head=2, n_positions=64, vocab_size=VOCAB,
        attn_implementation="eager", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )  # fmt: skip
    return GPT2LMHeadModel(config)


def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        num_hidden_layers=3, hidden_size=32, intermediate_size=48, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=VOCAB, attn_implementation="eager",
        tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def batch() -> dict:
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def frozen_set(model: torch.nn.Module, variant: str) -> list[str]:
    names = [n for n, _ in model.named_parameters()]
    prefix = [n for n, _ in prefix_parameters(model, 2)]
    roles = ("c_attn", "q_proj", "down_proj", "mlp.c_proj")
    return {
        "full": [],
        "scattered": [n for n in names if n.endswith("weight") and any(r in n for r in roles)],
        "prefix": prefix,
        "prefix, part of block 2": prefix + [n for n in names if ".2.mlp" in n],
        "head only": [n for n in names if n.endswith(("wte.weight", "embed_tokens.weight"))],
    }[variant]


VARIANTS = ["full", "scattered", "prefix", "prefix, part of block 2", "head only"]


def freeze(model: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    for n, p in model.named_parameters():
        p.requires_grad_(n not in names)
    return model


@pytest.mark.parametrize("build", [gpt2, llama])
@pytest.mark.parametrize("variant", VARIANTS)
def test_flops_match_the_counter_exactly(build, variant):
    model = build()
    names = frozen_set(model, variant)
    freeze(model, names)
    with FlopCounterMode(display=False) as counter:
        total, _ = loss_sum(model, batch())
        total.backward()
    predicted, _ = step_flops(model, names, BATCH, SEQ)
    assert predicted.total == counter.get_total_flops()


def test_untied_head_counts_its_weight_gradient():
    model = gpt2()
    untie_head(model)
    names = frozen_set(model, "prefix")
    freeze(model, names)
    with FlopCounterMode(display=False) as counter:
        loss_sum(model, batch())[0].backward()
    assert step_flops(model, names, BATCH, SEQ)[0].total == counter.get_total_flops()


def test_cached_prefix_drops_its_forward_flops():
    model = llama()
    names = frozen_set(model, "prefix")
    plain = savings(model, BATCH, SEQ, frozen=names)
    cached = savings(model, BATCH, SEQ, frozen=names, cached=True)
    assert plain.prefix_depth == cached.prefix_depth == 2 and plain.forward_flops_saved == 0
    assert cached.flops.total == plain.flops.total - cached.forward_flops_saved > 0
    phi = plain.frozen_share
    assert ceilings(phi)["cached"] <= cached.flops_ratio + 1e-12 < plain.flops_ratio
    assert ceilings(phi)["prefix"] <= plain.flops_ratio + 1e-12


def held_bytes(model: torch.nn.Module, names: list[str]) -> int:
    """Gradient and optimizer bytes after one SFT step with ``names`` frozen."""
    data = [batch()]
    loop = SFTLoop(model, data, data, SFTConfig(steps=1, cpu=True), show_progress=False)
    loop.freeze(names)
    loop.train_step(batch_stream(data), 1)
    loss_sum(loop.model, data[0])[0].backward()  # gradients as they stand at the next backward
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return sum(g.numel() * g.element_size() for g in grads) + optimizer_state_bytes(loop.optimizer)


def saved_activation_bytes(model: torch.nn.Module) -> int:
    """Storages autograd keeps for the backward pass of one forward pass, weights excepted."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            kept[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = loss_sum(model, batch())[0]
    del out
    return sum(kept.values())


@pytest.mark.parametrize("build", [gpt2, llama])
@pytest.mark.parametrize("variant", ["scattered", "prefix"])
def test_bytes_within_ten_percent(build, variant):
    names = frozen_set(build(), variant)
    predicted = savings(build(), BATCH, SEQ, frozen=names)
    state = held_bytes(build(), []) - held_bytes(build(), names)
    assert predicted.state_bytes_saved == pytest.approx(state, rel=0.10)
    activations = saved_activation_bytes(build()) - saved_activation_bytes(freeze(build(), names))
    if variant == "scattered":
        assert predicted.activation_bytes_saved == 0
    else:
        assert predicted.activation_bytes_saved == pytest.approx(activations, rel=0.10)


def test_unknown_family_and_names_refused():
    with pytest.raises(DeadzoneError, match="savings model knows"):
        step_flops(tiny_neox(), [], 1, 8)
    with pytest.raises(DeadzoneError, match="no parameter named 'nope'"):
        step_flops(gpt2(), ["nope"], 1, 8)
    with pytest.raises(DeadzoneError, match="need a frozen prefix"):
        savings(gpt2(), 1, 8, frozen=[], cached=True)


def test_activation_probe_sees_through_an_installed_fast_path():
    model = freeze(llama(), frozen_set(llama(), "prefix"))
    alone = activation_bytes(model, SEQ)
    FrozenPrefix(model)
    assert activation_bytes(model, SEQ) == alone and alone.prefix(2) > 0
