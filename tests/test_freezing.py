"""Freezing during a run: the optimizer lets go, autograd stops, two processes agree."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BLOCK0, DDP_CONFIG, EVAL, TRAIN, FreezeAtStep, gpt2, no_dropout_gpt2

from deadzone.errors import DeadzoneError
from deadzone.training.freezing import optimizer_state_bytes
from deadzone.training.train import Hook, SFTConfig, SFTLoop

CONFIG = SFTConfig(steps=6, lr=3e-3, eval_every=3, warmup_steps=1, seed=0)
MATRIX = "transformer.h.0.mlp.c_fc.weight"
PREFIX = ["transformer.wte.weight", "transformer.wpe.weight", *BLOCK0]


class At(Hook):
    """Freeze (or unfreeze) names at the start of one step; snapshot every parameter after
    every step, and the optimizer state bytes before and after the change."""

    def __init__(self, step: int, freeze: list[str] = (), unfreeze: list[str] = ()) -> None:
        self.step, self.to_freeze, self.to_unfreeze = step, list(freeze), list(unfreeze)
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}
        self.bytes: tuple[int, int] | None = None
        self.after_step_state: dict[str, dict] = {}

    def on_step_start(self, loop, step):
        if step == self.step:
            before = optimizer_state_bytes(loop.optimizer)
            loop.freeze(self.to_freeze)
            loop.unfreeze(self.to_unfreeze)
            self.bytes = (before, optimizer_state_bytes(loop.optimizer))

    def on_step_end(self, loop, step, loss):
        named = dict(loop.module.named_parameters())
        self.snapshots[step] = {n: p.detach().clone() for n, p in named.items()}
        if step == self.step:
            state = loop.optimizer.state
            self.after_step_state = {
                n: {k: v.clone() for k, v in state.get(p, {}).items()} for n, p in named.items()
            }


def run(hook: Hook, model=None, config: SFTConfig = CONFIG):
    loop = SFTLoop(model or gpt2(2), TRAIN, EVAL, config, show_progress=False, hooks=[hook])
    return loop, loop.run()


def test_a_parameter_frozen_mid_run_is_bit_identical_after_and_leaves_the_optimizer():
    hook = At(3, freeze=[MATRIX])
    loop, result = run(hook)
    assert result.status == "ok", result.error
    param = loop.module.get_parameter(MATRIX)
    # Gone from the optimizer: groups and state (Adam's exp_avg and exp_avg_sq, step).
    assert all(param is not p for g in loop.optimizer.param_groups for p in g["params"])
    assert param not in loop.optimizer.state
    assert not param.requires_grad and param.grad is None
    before, after = hook.bytes
    assert before - after == 2 * param.numel() * 4 + 4  # two float32 moments and a step scalar
    # Moved while it trained (steps 1-2), unchanged from step 3 to the end; the rest moves.
    snaps = hook.snapshots
    assert not torch.equal(snaps[1][MATRIX], snaps[2][MATRIX])
    for step in range(3, CONFIG.steps + 1):
        assert torch.equal(snaps[step][MATRIX], snaps[2][MATRIX]), step
    other = "transformer.h.1.mlp.c_fc.weight"
    assert not torch.equal(snaps[CONFIG.steps][other], snaps[2][other])
    # The record shows the trainable count and the optimizer state over time.
    counts = [p["trainable_params"] for p in result.curve]
    total = sum(p.numel() for p in loop.module.parameters())
    assert result.total_params == total == result.trainable_params
    assert counts[:3] == [total] * 3 and counts[3:] == [total - param.numel()] * 4
    state_bytes = [p["optimizer_state_bytes"] for p in result.curve]
    assert state_bytes[0] == 0 and state_bytes[2] - state_bytes[3] == before - after
    assert all(p["step_seconds"] > 0 for p in result.curve[1:])
    assert result.peak_memory_bytes > 0


def test_unfrozen_parameter_starts_with_fresh_optimizer_state():
    hook = At(2, freeze=[MATRIX])
    second = At(4, unfreeze=[MATRIX])

    class Both(Hook):
        def on_step_start(self, loop, step):
            hook.on_step_start(loop, step)
            second.on_step_start(loop, step)

        def on_step_end(self, loop, step, loss):
            second.on_step_end(loop, step, loss)

    loop, result = run(Both())
    assert result.status == "ok", result.error
    param = loop.module.get_parameter(MATRIX)
    assert param.requires_grad
    assert int(second.after_step_state[MATRIX]["step"]) == 1  # one step since it came back
    assert int(loop.optimizer.state[param]["step"]) == CONFIG.steps - 3
    other = loop.module.get_parameter("transformer.h.1.mlp.c_fc.weight")
    assert int(loop.optimizer.state[other]["step"]) == CONFIG.steps
    snaps = second.snapshots
    assert not torch.equal(snaps[4][MATRIX], snaps[5][MATRIX])


@pytest.mark.parametrize("checkpointing", [False, True])
def test_frozen_prefix_is_never_reached_by_the_backward_pass(checkpointing):
    """Embeddings and every parameter of block 0 frozen: no gradient, and no autograd graph
    below block 1 (its input does not require grad, so backward stops there) — also with
    gradient checkpointing, whose hook would otherwise make the embeddings' output need grad."""
    model = gpt2(2)
    if checkpointing:
        model.activation_checkpointing_enable()
        assert model._require_grads_hooks
    model.config.tie_word_embeddings = False  # (a tied head would freeze with the embeddings)
    model.lm_head.weight = torch.nn.Parameter(model.transformer.wte.weight.detach().clone())
    needs_grad: dict[str, list[bool]] = {"h0_in": [], "h0_out": [], "h1_out": []}

    def record(key_in: str | None, key_out: str):
        def hook(module, args, kwargs, out):
            if key_in is not None:
                hidden = args[0] if args else kwargs["hidden_states"]
                needs_grad[key_in].append(hidden.requires_grad)
            needs_grad[key_out].append((out[0] if isinstance(out, tuple) else out).requires_grad)

        return hook

    blocks = model.transformer.h
    blocks[0].register_forward_hook(record("h0_in", "h0_out"), with_kwargs=True)
    blocks[1].register_forward_hook(record(None, "h1_out"), with_kwargs=True)
    reached = []

    class Probe(Hook):
        def on_step_start(self, loop, step):
            if step == 1:
                loop.freeze(PREFIX)
            needs_grad["h0_in"].clear()
            needs_grad["h0_out"].clear()
            needs_grad["h1_out"].clear()

        def on_after_backward(self, loop, step):
            named = dict(loop.module.named_parameters())
            reached.append([n for n in PREFIX if named[n].grad is not None])
            assert named["transformer.h.1.mlp.c_fc.weight"].grad is not None

    loop, result = run(Probe(), model=model, config=SFTConfig(steps=2, eval_every=2))
    assert result.status == "ok", result.error
    assert reached == [[], []]
    # The last training forward of step 2 (the lists were cleared at its start; evaluation
    # runs under no_grad, where nothing requires grad either).
    assert needs_grad["h0_in"][0] is False and needs_grad["h0_out"][0] is False
    assert needs_grad["h1_out"][0] is True


def test_lr_scale_zero_holds_a_parameter_still_and_keeps_its_state():
    class Scale(Hook):
        def on_step_start(self, loop, step):
            loop.set_lr_scales({MATRIX: 0.0} if step >= 3 else {})

    snaps = At(99)

    class Both(Scale):
        def on_step_end(self, loop, step, loss):
            snaps.on_step_end(loop, step, loss)

    cfg = SFTConfig(**(CONFIG.to_dict() | {"weight_decay": 0.0}))
    loop, result = run(Both(), config=cfg)
    param = loop.module.get_parameter(MATRIX)
    assert param in loop.optimizer.state
    s = snaps.snapshots
    assert not torch.equal(s[1][MATRIX], s[2][MATRIX])
    assert all(torch.equal(s[k][MATRIX], s[2][MATRIX]) for k in range(3, 7))
    scaled = [g for g in loop.optimizer.param_groups if any(p is param for p in g["params"])]
    assert scaled[0]["lr_scale"] == 0.0 and scaled[0]["lr"] == 0.0


def test_freezing_everything_is_refused():
    class All(Hook):
        def on_step_start(self, loop, step):
            loop.freeze([n for n, _ in loop.module.named_parameters()])

    with pytest.raises(DeadzoneError, match="would freeze every parameter"):
        run(All())
    with pytest.raises(DeadzoneError, match="no parameter named 'nope'"):
        run(At(1, freeze=["nope"]))


DDP_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from conftest import DDP_CONFIG, EVAL, TRAIN, FreezeAtStep, no_dropout_gpt2
from deadzone.training.train import SFTLoop

torch.set_num_threads(1)
loop = SFTLoop(no_dropout_gpt2(), TRAIN, EVAL, DDP_CONFIG, show_progress=False,
               hooks=[FreezeAtStep()])
result = loop.run()
names = [n for n, p in loop.module.named_parameters() if not p.requires_grad]
if torch.distributed.get_rank() == 0:
    json.dump(result.to_dict() | {{"frozen": names}}, open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_freeze_mid_run_like_one_accumulating(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
        "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
    ]  # fmt: skip
    out = tmp_path / "r.json"
    subprocess.run([*launch, str(script), str(out)], check=True, timeout=300)
    ddp = json.loads(out.read_text())
    cfg = SFTConfig(**(DDP_CONFIG.to_dict() | {"grad_accum": 2}))  # on CPU, as the two are
    loop = SFTLoop(no_dropout_gpt2(), TRAIN, EVAL, cfg, show_progress=False, hooks=[FreezeAtStep()])
    one = loop.run()
    assert ddp["status"] == "ok", ddp["error"]
    assert ddp["processes"] == 2 and ddp["frozen"] == BLOCK0
    assert [p["trainable_params"] for p in ddp["curve"]] == [
        p["trainable_params"] for p in one.curve
    ]
    for a, b in zip(ddp["curve"], one.curve, strict=True):
        for key in ("train_loss", "eval_loss"):
            if a[key] is not None:
                assert math.isclose(a[key], b[key], rel_tol=1e-5), (a, b)
