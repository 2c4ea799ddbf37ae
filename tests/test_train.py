"""The SFT loop on a tiny GPT-2 with random-token batches."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import EVAL, SEQ, TRAIN, VOCAB, gpt2, no_dropout_gpt2
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import GPT2Config, GPT2LMHeadModel

from deadzone.errors import DeadzoneError
from deadzone.models import sites
from deadzone.training import strategies
from deadzone.training.train import (
    SFTConfig,
    SFTLoop,
    batch_stream,
    computed,
    loss_sum,
    lr_factor,
    train,
)

CONFIG = SFTConfig(steps=8, lr=3e-3, eval_every=4, warmup_steps=2, seed=0)


def run(strategy_plan: dict[str, str] | None = None, config: SFTConfig = CONFIG, rank: int = 1):
    model = gpt2(2)
    named = {s.name: s for s in sites.find_sites(model)}
    plan = {named[k]: v for k, v in (strategy_plan or {}).items()}
    strategies.apply_strategies(model, plan, rank=rank, seed=config.seed)
    start = {name: sites.site_matrix(model, s).clone() for name, s in named.items()}
    loop = SFTLoop(model, TRAIN, EVAL, config, show_progress=False)
    result = loop.run()
    return model, named, start, loop, result


def test_strategy_sites_are_bit_identical_after_sft_while_the_rest_moved():
    plan = {
        "L0.attn.c_proj": "frozen",
        "L0.mlp.c_fc": "crystal",
        "L1.attn.c_attn": "random",
        "L1.mlp.c_fc": "zero",  # (a zero c_proj would also stop the gradient of c_fc)
    }
    model, named, start, loop, result = run(plan)
    assert result.status == "ok", result.error
    for name, site in named.items():
        after = sites.site_matrix(model, site)
        if name in plan:
            assert torch.equal(after, start[name]), name
        else:
            assert not torch.equal(after, start[name]), name
    # Frozen parameters are not in the optimizer and hold no Adam state.
    frozen = {id(sites.get_parameter(model, named[n])) for n in plan}
    in_groups = {id(p) for g in loop.optimizer.param_groups for p in g["params"]}
    with_state = {id(p) for p in loop.optimizer.state}
    assert frozen.isdisjoint(in_groups)
    assert frozen.isdisjoint(with_state)
    assert with_state == in_groups
    total = sum(p.numel() for p in model.parameters())
    assert result.trainable_params == total - sum(named[n].params for n in plan)


def test_record_shape_and_token_weighted_eval():
    _, _, _, loop, result = run()
    assert [p["step"] for p in result.curve] == list(range(CONFIG.steps + 1))
    evals = [p["step"] for p in result.curve if p["eval_loss"] is not None]
    assert evals == [0, 4, 8]
    assert result.curve[0]["train_loss"] is None
    assert result.final_eval_loss == result.curve[-1]["eval_loss"]
    assert result.final_train_loss == result.curve[-1]["train_loss"]  # last 10% of 8 steps = 1
    assert result.tokens_per_second > 0
    assert (result.device, result.precision, result.processes) == ("cpu", "no", 1)
    assert result.train_tokens == sum(int(TRAIN[i % 6]["attention_mask"].sum()) for i in range(8))
    # Token-weighted: one pass over all eval tokens at once gives the same mean.
    with torch.no_grad():
        loop.model.eval()
        ids = torch.cat([b["input_ids"] for b in EVAL])
        labels = torch.cat([b["labels"] for b in EVAL])
        mask = torch.cat([b["attention_mask"] for b in EVAL])
        ref = loop.model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    assert math.isclose(result.final_eval_loss, ref, rel_tol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_training_loss_and_gradients_are_cross_entropys(dtype):
    model = no_dropout_gpt2().to(dtype)
    batch = TRAIN[0] | {"labels": TRAIN[0]["labels"].clone()}
    batch["labels"][0] = -100  # a row without a labelled token
    total, count = loss_sum(model, batch)
    total.mul(0.37).backward()
    ours = {n: p.grad.float().clone() for n, p in model.named_parameters()}
    model.zero_grad()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    labels = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:]
    ref = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, VOCAB).float(), labels.reshape(-1), reduction="sum"
    )
    ref.mul(0.37).backward()
    assert count == (labels != -100).sum()
    assert math.isclose(total.item(), ref.item(), rel_tol=1e-5)
    for name, p in model.named_parameters():
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        torch.testing.assert_close(ours[name], p.grad.float(), rtol=tol, atol=tol, msg=name)
    with torch.no_grad():  # evaluation: the same number
        assert math.isclose(loss_sum(model, batch)[0].item(), ref.item(), rel_tol=1e-5)


class NewTensors(TorchDispatchMode):
    """Shapes of the tensors that aten ops allocate (views and in-place results apart)."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        fresh = isinstance(out, torch.Tensor) and not any(out is a for a in args)
        if fresh and not func.is_view:
            self.shapes.append(tuple(out.shape))
        return out


def test_training_loss_allocates_one_vocabulary_sized_buffer_besides_the_logits():
    vocab = 211  # no other tensor of the model is this wide
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=vocab, n_positions=SEQ)
    )
    batch = TRAIN[0]
    with NewTensors() as new:
        total, _ = loss_sum(model, batch)
        total.backward()
    assert all(p.grad is not None for p in model.parameters())
    # the logits and one buffer; F.cross_entropy allocates its log-softmax, and its backward
    # two more (the loss's gradient, zeros but at the labels, and the logits')
    n = batch["input_ids"].numel()
    assert [s for s in new.shapes if s == (n, vocab)] == [(n, vocab)] * 2


def test_final_train_loss_is_the_mean_over_the_last_tenth_of_steps():
    cfg = SFTConfig(steps=20, lr=3e-3, eval_every=20, warmup_steps=2, seed=0)
    result = train(gpt2(2), TRAIN, EVAL, cfg, show_progress=False)
    last_two = [p["train_loss"] for p in result.curve[-2:]]
    assert last_two[0] != last_two[1]
    assert result.final_train_loss == sum(last_two) / 2


def untimed(result) -> dict:
    """A run's record without the clocks and the memory peak, which vary from run to run."""
    return computed(result.to_dict())


def test_full_and_frozen_share_step0_and_same_seed_repeats_exactly():
    *_, full_a = run()
    *_, full_b = run()
    *_, frozen = run({"L0.attn.c_proj": "frozen"})
    assert untimed(full_a) == untimed(full_b)
    assert frozen.step0_eval_loss == full_a.step0_eval_loss
    assert frozen.final_eval_loss != full_a.final_eval_loss
    *_, other_seed = run(config=SFTConfig(**(CONFIG.to_dict() | {"seed": 1})))
    assert other_seed.curve[1]["train_loss"] != full_a.curve[1]["train_loss"]  # dropout differs


def test_gradient_accumulation_matches_one_big_batch_without_dropout():
    def loss_after(train_data, grad_accum):
        model = no_dropout_gpt2()
        cfg = SFTConfig(steps=3, lr=1e-3, grad_accum=grad_accum, eval_every=3, seed=0)
        return train(model, train_data, EVAL, cfg, show_progress=False)

    halves = [{k: v[:2] for k, v in TRAIN[0].items()}, {k: v[2:] for k, v in TRAIN[0].items()}]
    split = loss_after(halves, grad_accum=2)
    whole = loss_after([TRAIN[0]], grad_accum=1)
    for a, b in zip(split.curve, whole.curve, strict=True):
        for key in ("train_loss", "eval_loss"):
            if a[key] is not None:
                assert math.isclose(a[key], b[key], rel_tol=1e-5), (a, b)


def resident_bytes() -> int:
    """This process's resident set now (Linux)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


@pytest.mark.skipif(sys.platform != "linux", reason="a run's own RSS peak is Linux's")
def test_a_runs_peak_memory_on_cpu_is_its_own_not_the_processs():
    cfg = SFTConfig(**(CONFIG.to_dict() | {"steps": 2, "eval_every": 2, "cpu": True}))
    first = train(gpt2(2), TRAIN, EVAL, cfg, show_progress=False)
    before = resident_bytes()
    big = torch.ones(256 * 2**20 // 4)  # 256 MiB, touched, then given back between the runs
    del big
    second = train(gpt2(2), TRAIN, EVAL, cfg, show_progress=False)
    assert 0 < second.peak_memory_bytes < before + 128 * 2**20  # the 256 MiB are not in it
    assert first.peak_memory_scope == second.peak_memory_scope == "run"


def test_nan_loss_fails_the_run_with_a_reason():
    model = gpt2(2)
    model.lm_head.register_forward_hook(lambda m, i, out: out * float("nan") if m.training else out)
    result = train(model, TRAIN, EVAL, CONFIG, show_progress=False)
    assert result.status == "failed"
    assert "non-finite train loss" in result.error and "step 1" in result.error
    assert result.final_train_loss is None and result.final_eval_loss is None
    assert result.step0_eval_loss is not None


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = SFTConfig(steps=20, warmup_steps=4, min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(20)]
    assert factors[:4] == sorted(factors[:4]) and factors[3] < 1.0
    assert factors[4] == 1.0
    assert all(a >= b for a, b in zip(factors[4:], factors[5:], strict=False))
    assert factors[-1] > 0.1
    assert SFTConfig(steps=50).warmup == 5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 0}, "steps must be an integer >= 1, got 0"),
        ({"lr": 0.0}, "lr must be in"),
        ({"lr": float("nan")}, "lr must be in"),
        ({"batch_size": 0}, "batch_size"),
        ({"grad_accum": 1.5}, "grad_accum"),
        ({"warmup_steps": 60}, "warmup_steps 60 exceeds steps 50"),
        ({"warmup_fraction": 1.5}, "warmup_fraction"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"eval_every": 0}, "eval_every"),
        ({"mixed_precision": "fp8"}, "mixed_precision 'fp8'"),
    ],
)
def test_bad_config_names_the_value(kwargs, match):
    with pytest.raises(DeadzoneError, match=match):
        SFTConfig(**kwargs)


def test_data_errors():
    with pytest.raises(DeadzoneError, match="no batches"):
        next(batch_stream([]))
    stream = batch_stream(lambda epoch: [{"epoch": epoch}])
    assert [next(stream)["epoch"] for _ in range(3)] == [0, 1, 2]
    model = gpt2(2)
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(DeadzoneError, match="every parameter is frozen"):
        train(model, TRAIN, EVAL, CONFIG, show_progress=False)


DDP_SCRIPT = """
import json, sys, torch
sys.path.insert(0, {tests!r})
from conftest import EVAL, TRAIN, no_dropout_gpt2
from deadzone.training.train import SFTConfig, train

torch.set_num_threads(1)
cfg = SFTConfig(steps=3, lr=3e-3, eval_every=3, warmup_steps=1, seed=0, cpu=True)
result = train(no_dropout_gpt2(), TRAIN, EVAL, cfg, show_progress=False)
if torch.distributed.get_rank() == 0:
    json.dump(result.to_dict(), open(sys.argv[1], "w"))
"""


@pytest.mark.slow
def test_two_processes_equal_one_process_accumulating_two_micro_batches(tmp_path):
    """Under DDP, micro-batch i goes to process i mod 2 and losses are token-weighted over
    both, so two processes match one process with ``grad_accum=2``."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run([*launch, str(script), str(tmp_path / "r.json")], check=True, timeout=300)
    ddp = json.loads((tmp_path / "r.json").read_text())
    cfg = SFTConfig(steps=3, lr=3e-3, eval_every=3, warmup_steps=1, seed=0, grad_accum=2, cpu=True)
    one = train(no_dropout_gpt2(), TRAIN, EVAL, cfg, show_progress=False)
    assert ddp["status"] == "ok" and ddp["train_tokens"] == one.train_tokens
    for a, b in zip(ddp["curve"], one.curve, strict=True):
        for key in ("train_loss", "eval_loss"):
            if a[key] is not None:
                assert math.isclose(a[key], b[key], rel_tol=1e-5), (a, b)
