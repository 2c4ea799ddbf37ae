"""Gradient (activation) checkpointing: the same losses with less activation memory, with the
frozen prefix and with a trainable set that changes during the run."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_gpt2, tiny_llama

from deadzone.errors import DeadzoneError
from deadzone.experiments.configs import CrystallizeConfig
from deadzone.training.train import Hook, SFTConfig, SFTLoop

SEQ = 16
BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


def batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Random tokens, the first quarter of each row unlabelled."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (4, SEQ), generator=gen)
        labels = ids.clone()
        labels[:, : SEQ // 4] = -100
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    return out


TRAIN, EVAL = batches(4, seed=1), batches(2, seed=2)


class FreezeAt(Hook):
    """Freezes ``names`` at the start of step ``step``."""

    def __init__(self, step: int, names: list[str]) -> None:
        self.step, self.names = step, names

    def on_step_start(self, loop: SFTLoop, step: int) -> None:
        if step == self.step:
            loop.freeze(self.names)


def block_calls(model: torch.nn.Module, family: str) -> list[int]:
    """Per block, a counter of its MLP's forward calls (inside a checkpointed block's forward,
    so a recomputed block counts twice; module hooks do not run in the recomputation)."""
    blocks = model.transformer.h if family == "gpt2" else model.model.layers
    counts = [0] * len(blocks)

    def counted(i: int, forward):
        def call(*args, **kwargs):
            counts[i] += 1
            return forward(*args, **kwargs)

        return call

    for i, block in enumerate(blocks):
        block.mlp.forward = counted(i, block.mlp.forward)
    return counts


def run(family: str, checkpointing: bool, frozen=(), hook_names=()):
    """(train losses, eval losses, MLP calls per block, model) of a 4-step run."""
    model = BUILDERS[family]()
    for name, p in model.named_parameters():
        p.requires_grad_(not any(name.startswith(f) for f in frozen))
    calls = block_calls(model, family)
    config = SFTConfig(
        steps=4, lr=3e-3, batch_size=4, eval_every=2, gradient_checkpointing=checkpointing
    )
    hooks = [FreezeAt(3, list(hook_names))] if hook_names else []
    result = SFTLoop(model, TRAIN, EVAL, config, show_progress=False, hooks=hooks).run()
    assert result.status == "ok", result.error
    train = [p["train_loss"] for p in result.curve[1:]]
    evals = [p["eval_loss"] for p in result.curve if p["eval_loss"] is not None]
    return train, evals, calls, model


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_checkpointing_gives_the_same_losses_and_recomputes_each_block(family):
    train, evals, calls, _ = run(family, checkpointing=False)
    train_ck, evals_ck, calls_ck, model = run(family, checkpointing=True)
    assert train_ck == pytest.approx(train, rel=1e-5)
    assert evals_ck == pytest.approx(evals, rel=1e-5)
    assert model.is_activation_checkpointing
    # every block ran its forward once more per training step: the backward pass recomputed it
    assert [c - n for c, n in zip(calls_ck, calls, strict=True)] == [4] * len(calls)


PREFIX = {  # the embeddings and block 0: a frozen prefix of depth 1
    "gpt2": ("transformer.wte", "transformer.wpe", "transformer.h.0."),
    "llama": ("model.embed_tokens", "model.layers.0."),
}
LATER = {  # frozen at step 3
    "gpt2": ["transformer.h.1.mlp.c_fc.weight"],
    "llama": ["model.layers.1.mlp.up_proj.weight"],
}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_checkpointing_composes_with_a_frozen_prefix_and_freezing_mid_run(family):
    prefix, later = PREFIX[family], LATER[family]
    train, evals, calls, _ = run(family, False, prefix, later)
    train_ck, evals_ck, calls_ck, model = run(family, True, prefix, later)
    assert train_ck == pytest.approx(train, rel=1e-5)
    assert evals_ck == pytest.approx(evals, rel=1e-5)
    # the prefix's block runs without autograd: nothing to recompute; the block above it is
    assert calls_ck[0] == calls[0] and calls_ck[1] == calls[1] + 4
    pristine = BUILDERS[family]()
    for (name, p), q in zip(model.named_parameters(), pristine.parameters(), strict=True):
        if name.startswith(prefix) or name in later:
            assert not p.requires_grad
        if name.startswith(prefix):  # frozen from the start: bit-identical
            assert torch.equal(p, q), name


def test_a_model_without_checkpointing_is_refused_before_training():
    class Bare(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

    config = SFTConfig(steps=1, gradient_checkpointing=True)
    with pytest.raises(DeadzoneError, match=r"^gradient_checkpointing: this model \(Bare\)"):
        SFTLoop(Bare(), TRAIN, EVAL, config, show_progress=False)


def test_checkpointing_is_no_part_of_an_experiments_identity():
    """It computes the same runs: an experiment may be resumed with it on or off."""
    on, off = (
        CrystallizeConfig(
            model="m", targets="L0.attn.c_proj", sft=SFTConfig(gradient_checkpointing=flag)
        ).sft_identity()
        for flag in (True, False)
    )
    assert "gradient_checkpointing" not in on and on == off
