"""The frozen prefix: no graph below it, the same updates as without the fast path, cached
outputs that give the same losses, an untied head that trains beside a frozen embedding."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_gpt2, tiny_llama, tiny_neox
from transformers import GPT2Config, GPT2LMHeadModel

from deadzone.errors import DeadzoneError
from deadzone.training.prefix import (
    FrozenPrefix,
    check_same_every_epoch,
    prefix_depth,
    prefix_parameters,
    untie_head,
)
from deadzone.training.train import SFTConfig, SFTLoop

BUILDERS = [tiny_gpt2, tiny_llama]


def batches(n: int = 2, seed: int = 0) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, VOCAB, (3, 16), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return out


def no_dropout(model: torch.nn.Module) -> torch.nn.Module:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def freeze_prefix(model: torch.nn.Module, depth: int) -> torch.nn.Module:
    for _, p in prefix_parameters(model, depth):
        p.requires_grad_(False)
    return model


def saved_by_block(model: torch.nn.Module, batch: dict) -> dict[int, int]:
    """Tensors autograd saves for the backward pass during each block's forward pass."""
    owner, counts = [None], {}
    from deadzone.training.prefix import blocks

    def enter(i):
        return lambda m, a: owner.__setitem__(0, i)

    handles = [b.register_forward_pre_hook(enter(i)) for i, b in enumerate(blocks(model))]

    def pack(t):
        if owner[0] is not None:
            counts[owner[0]] = counts.get(owner[0], 0) + 1
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**{k: v for k, v in batch.items() if k != "labels"}).logits.sum().backward()
    for h in handles:
        h.remove()
    return counts


@pytest.mark.parametrize("build", BUILDERS)
def test_frozen_prefix_builds_no_graph_below_it(build):
    model = freeze_prefix(build(), 1)
    model.enable_input_require_grads()  # forces the embeddings' output to require grad
    assert saved_by_block(model, batches(1)[0]).get(0, 0) > 0  # today's path: block 0 saves
    prefix = FrozenPrefix(model)
    assert prefix.depth == 1
    counts = saved_by_block(model, batches(1)[0])
    assert 0 not in counts and counts.get(1, 0) > 0
    norm = next(p for _, p in prefix_parameters(model, 1) if p.ndim == 1)
    norm.requires_grad_(True)  # behind the fast path's back: it must stand aside
    assert saved_by_block(model, batches(1)[0]).get(0, 0) > 0
    prefix.remove()
    assert saved_by_block(model, batches(1)[0]).get(0, 0) > 0


def train_params(build, *, fast: bool, cache: bool = False, steps: int = 4) -> tuple:
    model = freeze_prefix(no_dropout(build()), 1)
    data = batches()
    config = SFTConfig(steps=steps, cpu=True, eval_every=2, cache_prefix=cache)
    loop = SFTLoop(model, data, data[:1], config, show_progress=False)
    if not fast:
        loop.prefix.remove()
    prefix = loop.prefix
    result = loop.run()
    return {n: p.detach().clone() for n, p in model.named_parameters()}, result, prefix


@pytest.mark.parametrize("build", BUILDERS)
def test_fast_path_gives_bit_identical_updates(build):
    today, r0, _ = train_params(build, fast=False)
    fast, r1, prefix = train_params(build, fast=True)
    assert prefix.misses == 0 and prefix.hits == 0
    moved = [n for n in today if n.startswith(("transformer.h.1.", "model.layers.1."))]
    assert moved and all(torch.equal(today[n], fast[n]) for n in today)
    assert [p["train_loss"] for p in r0.curve] == [p["train_loss"] for p in r1.curve]


@pytest.mark.parametrize("build", BUILDERS)
def test_cached_prefix_outputs_give_the_same_losses(build):
    recomputed, r0, _ = train_params(build, fast=True, steps=6)
    cached, r1, prefix = train_params(build, fast=True, cache=True, steps=6)
    # two training batches and one eval batch: each computed once, then replayed
    assert prefix.misses == 2 and prefix.hits > 4
    assert [p["train_loss"] for p in r0.curve] == [p["train_loss"] for p in r1.curve]
    assert [p["eval_loss"] for p in r0.curve] == [p["eval_loss"] for p in r1.curve]
    assert all(torch.equal(recomputed[n], cached[n]) for n in recomputed)


def test_untied_head_trains_while_the_embedding_stays():
    model = no_dropout(tiny_gpt2())
    embed = model.get_input_embeddings().weight
    before = embed.detach().clone()
    head = untie_head(model)
    freeze_prefix(model, 1)
    assert model.config.tie_word_embeddings is False and head is not embed
    assert prefix_depth(model) == 1 and head.requires_grad
    data = batches()
    SFTLoop(model, data, data[:1], SFTConfig(steps=3, cpu=True), show_progress=False).run()
    assert torch.equal(embed, before)
    assert not torch.equal(head, before)


def test_untied_head_is_saved_untied(tmp_path):
    model = tiny_gpt2()
    head = untie_head(model)
    with torch.no_grad():
        head.add_(1.0)
    model.save_pretrained(tmp_path)
    back = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert back.lm_head.weight is not back.transformer.wte.weight
    assert torch.equal(back.lm_head.weight, head.detach())


def test_tied_head_freezes_with_the_embedding():
    model = freeze_prefix(tiny_gpt2(), 1)
    assert not model.lm_head.weight.requires_grad  # the same parameter as the embedding
    assert prefix_depth(model) == 1


def test_trainable_embedding_means_no_prefix():
    model = tiny_llama()
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith("model.layers.0."))
    assert prefix_depth(model) == 0


def test_untie_refused_without_tied_weights():
    model = tiny_llama()  # LlamaConfig ties nothing by default
    with pytest.raises(DeadzoneError, match="not tied"):
        untie_head(model)


def test_cache_refused_with_dropout():
    model = freeze_prefix(tiny_gpt2(), 1)  # GPT2Config's dropout is 0.1
    with pytest.raises(DeadzoneError, match="deterministic prefix: transformer.drop"):
        FrozenPrefix(model, cache=True)


def test_cache_refused_without_a_frozen_prefix():
    with pytest.raises(DeadzoneError, match="needs a frozen prefix"):
        FrozenPrefix(no_dropout(tiny_gpt2()), cache=True)


def test_cache_refused_for_an_unknown_family():
    with pytest.raises(DeadzoneError, match="cache_prefix supports"):
        FrozenPrefix(tiny_neox(), cache=True)


def test_cache_refused_when_data_changes_between_epochs():
    model = freeze_prefix(no_dropout(tiny_gpt2()), 1)
    config = SFTConfig(steps=2, cpu=True, cache_prefix=True)

    def fresh(epoch: int) -> list[dict]:
        return batches(seed=epoch)

    with pytest.raises(DeadzoneError, match="changes between epochs"):
        SFTLoop(model, fresh, batches(1), config, show_progress=False)
    shuffled = batches()
    assert check_same_every_epoch(lambda e: shuffled[::-1] if e else shuffled)


def test_prefix_follows_the_trainable_set():
    model = no_dropout(tiny_gpt2(n_layer=3))
    data = batches()
    loop = SFTLoop(freeze_prefix(model, 1), data, data[:1], SFTConfig(steps=2, cpu=True))
    assert loop.prefix.depth == 1
    loop.freeze([n for n, _ in prefix_parameters(loop.module, 2)])
    loop.train_step(iter(data * 2), 1)
    assert loop.prefix.depth == 2


def test_gpt2_dropout_config_is_named():
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=VOCAB, embd_pdrop=0.0)
    model = freeze_prefix(GPT2LMHeadModel(config), 1)
    with pytest.raises(DeadzoneError, match=r"transformer.h.0.attn.attn_dropout has dropout 0.1"):
        FrozenPrefix(model, cache=True)


def test_steps_for_epochs_and_a_cached_second_epoch():
    from deadzone.training.train import steps_for_epochs

    data = batches(3)
    assert steps_for_epochs(data, 2) == 6 and steps_for_epochs(lambda e: data, 3, grad_accum=2) == 4
    with pytest.raises(DeadzoneError, match="make no step"):
        steps_for_epochs(data[:1], 1, grad_accum=2)
    model = freeze_prefix(no_dropout(tiny_llama()), 1)
    config = SFTConfig(steps=steps_for_epochs(data, 2), cpu=True, cache_prefix=True)
    loop = SFTLoop(model, data, data[:1], config, show_progress=False)
    prefix = loop.prefix
    loop.run()
    # each of the 3 batches computed once (the first by the step-0 evaluation); then replayed:
    # step 1, the 3 steps of epoch 2 and the final evaluation
    assert prefix.misses == 3 and prefix.hits == 1 + 3 + 1
