"""Loss Change Allocation recorded during SFT of a tiny GPT-2: the terms add up to the measured
eval-loss change, each matches a fine quadrature, and recording changes nothing of the run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import VOCAB, tiny_gpt2

from deadzone.errors import DeadzoneError
from deadzone.geometry import attribution as A
from deadzone.geometry import scores
from deadzone.models.sites import find_sites
from deadzone.training.attribution import AttributionHook, eval_loss_and_grad
from deadzone.training.train import Hook, SFTConfig, computed, loss_sum, train

SEQ = 16


def counting_batches(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Rows that count up by a per-row stride from a random start (learnable in a few steps);
    the first quarter is the prompt (no loss)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(1, VOCAB, (n * 4, 1), generator=g)
    stride = torch.randint(1, 4, (n * 4, 1), generator=g)
    ids = (start + stride * torch.arange(SEQ)) % (VOCAB - 1) + 1  # (4n, SEQ)
    labels = ids.clone()
    labels[:, : SEQ // 4] = -100
    mask = torch.ones_like(ids)
    return [{"input_ids": ids[i : i + 4], "attention_mask": mask[i : i + 4],
             "labels": labels[i : i + 4]} for i in range(0, n * 4, 4)]  # fmt: skip


TRAIN, EVAL = counting_batches(6, seed=1), counting_batches(2, seed=2)


def config(steps: int = 12) -> SFTConfig:
    return SFTConfig(steps=steps, lr=3e-3, eval_every=4, warmup_steps=1, seed=0)


def recorded(steps: int = 12, every: int = 1, hooks=()) -> tuple:
    model = tiny_gpt2()
    hook = AttributionHook(EVAL, every=every)
    result = train(model, TRAIN, EVAL, config(steps), hooks=[hook, *hooks], show_progress=False)
    return model, hook.record, result


def test_terms_sum_to_the_measured_eval_loss_change() -> None:
    model, record, result = recorded()
    # the losses at the ends of the path are the loop's own evaluations (measured, not integrated)
    evaluated = {p["step"]: p["eval_loss"] for p in result.curve if p["eval_loss"] is not None}
    ends = {s.end: s.loss_end for s in record.segments} | {0: record.segments[0].loss_start}
    for step, loss in evaluated.items():
        assert ends[step] == pytest.approx(loss, abs=1e-5)
    assert record.loss_change == pytest.approx(evaluated[12] - evaluated[0], abs=2e-5)
    assert record.loss_change < -0.05  # the run learned
    assert [(s.start, s.end) for s in record.segments] == [(t, t + 1) for t in range(12)]

    allocation = record.allocation()
    res = A.residuals(record)
    assert sum(allocation.values()) + res.total == pytest.approx(record.loss_change, abs=1e-9)
    assert abs(res.total) <= res.absolute < 0.01 * abs(record.loss_change)  # Simpson: < 1%
    errors = {rule: A.residuals(record, rule).absolute for rule in A.RULES}
    assert errors["simpson"] < errors["midpoint"] < errors["trapezoid"]
    # the block matrices are among what moved the loss, and every site has a term
    sites = find_sites(model)
    shares = A.share_of_decrease(record, sites)
    assert all(v is not None for v in shares.values())
    assert sum(shares.values()) > 0


def test_longer_segments_leave_a_larger_measured_error() -> None:
    _, fine, _ = recorded(every=1)
    _, coarse, _ = recorded(every=4)
    assert [(s.start, s.end) for s in coarse.segments] == [(0, 4), (4, 8), (8, 12)]
    assert coarse.loss_change == pytest.approx(fine.loss_change, abs=1e-12)
    assert A.residuals(coarse).absolute > A.residuals(fine).absolute


class Snapshots(Hook):
    """The weights at step 0 and after each step, from outside the hook under test."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_evaluate(self, loop, step, eval_loss) -> None:
        if step == 0:
            self.weights[0] = {n: p.detach().clone() for n, p in loop.module.named_parameters()}

    def on_step_end(self, loop, step, loss) -> None:
        self.weights[step] = {n: p.detach().clone() for n, p in loop.module.named_parameters()}


def test_each_term_matches_a_fine_quadrature_of_its_own_segment() -> None:
    snapshots = Snapshots()
    model, record, _ = recorded(steps=2, every=2, hooks=[snapshots])
    theta_a, theta_b = snapshots.weights[0], snapshots.weights[2]
    reference = tiny_gpt2()
    reference.eval()
    points = 64  # composite midpoint rule: error ~ 1 / points^2
    expected = dict.fromkeys(theta_a, 0.0)
    for k in range(points):
        tau = (k + 0.5) / points
        reference.load_state_dict({n: theta_a[n] + tau * (theta_b[n] - theta_a[n])
                                   for n in theta_a}, strict=False)  # fmt: skip
        reference.zero_grad(set_to_none=True)
        total, tokens = 0.0, 0
        for batch in EVAL:
            s, n = loss_sum(reference, batch)
            total, tokens = total + s, tokens + int(n)
        (total / tokens).backward()
        for name, p in reference.named_parameters():
            step = (theta_b[name] - theta_a[name]).double()
            expected[name] += float((p.grad.double() * step).sum()) / points
    got = record.allocation()
    scale = max(abs(v) for v in expected.values())
    # the reference integrates the same straight line: its terms add up to the change
    assert sum(expected.values()) == pytest.approx(record.loss_change, abs=1e-6)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=2e-3 * scale), name


def test_recording_does_not_change_what_the_run_computes() -> None:
    def run(hooks) -> tuple[dict, dict]:
        model = tiny_gpt2()
        model.transformer.h[0].attn.c_proj.weight.requires_grad_(False)
        result = train(model, TRAIN, EVAL, config(6), hooks=hooks, show_progress=False)
        assert not model.transformer.h[0].attn.c_proj.weight.requires_grad
        assert model.training
        return computed(result.to_dict()), model.state_dict()

    hook = AttributionHook(EVAL, every=2)
    plain, with_hook = run([]), run([hook])
    assert plain[0] == with_hook[0]  # the same losses, curve and counts
    for name, tensor in plain[1].items():
        assert torch.equal(tensor, with_hook[1][name]), name
    assert "transformer.h.0.attn.c_proj.weight" not in hook.record.grad_steps  # it never trained
    assert hook.record.dots["transformer.h.0.attn.c_proj.weight"] == [0.0, 0.0, 0.0]


class Gradients(Hook):
    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def on_after_backward(self, loop, step) -> None:
        self.seen.append({n: p.grad.clone() for n, p in loop.module.named_parameters()})


def test_gradient_statistics_are_those_of_the_steps_gradients() -> None:
    grads = Gradients()
    model, record, _ = recorded(steps=3, hooks=[grads])
    name = "transformer.h.1.mlp.c_fc.weight"
    assert record.grad_steps[name] == 3
    expected = sum(float(g[name].double().square().sum()) for g in grads.seen)
    assert record.grad_sq[name] == pytest.approx(expected, rel=1e-9)
    assert record.grad_weight[name] > 0


def test_scores_read_from_the_records() -> None:
    records = [recorded(steps=6)[1], recorded(steps=6, every=2)[1]]
    records = [A.AttributionRecord.from_dict(json.loads(json.dumps(r.to_dict()))) for r in records]
    model = tiny_gpt2()
    sites = [s for s in find_sites(model) if s.layer is not None]
    data = scores.ScoreData(eval=EVAL, runs=records)
    got = scores.compute_scores(model, sites, data, ("attribution", "fisher", "grad_weight"))
    shares = [A.share_of_decrease(r, sites) for r in records]
    for s in sites:
        assert got["attribution"][s.name] == pytest.approx(
            (shares[0][s.name] + shares[1][s.name]) / 2
        )
        assert got["fisher"][s.name] > 0 and got["grad_weight"][s.name] > 0
    # without records: left out by default, refused when named
    assert set(scores.compute_scores(model, sites, scores.ScoreData(train=TRAIN, eval=EVAL))) == {
        "grad_norm", "block_influence"
    }  # fmt: skip
    with pytest.raises(DeadzoneError, match="attribution record"):
        scores.compute_scores(model, sites, scores.ScoreData(eval=EVAL), ("fisher",))


def test_eval_loss_and_grad_leaves_the_model_as_it_was() -> None:
    model = tiny_gpt2()
    model.train()
    frozen = model.transformer.h[1].mlp.c_proj.weight
    frozen.requires_grad_(False)
    loss, grads = eval_loss_and_grad(model, EVAL)
    assert model.training and not frozen.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert grads["transformer.h.1.mlp.c_proj.weight"].abs().sum() > 0  # taken all the same
    assert loss == pytest.approx(float(_plain_eval_loss(model)), rel=1e-6)


def _plain_eval_loss(model) -> float:
    model.eval()
    with torch.no_grad():
        pairs = [loss_sum(model, b) for b in EVAL]
    return sum(float(s) for s, _ in pairs) / sum(int(n) for _, n in pairs)


def test_bad_input() -> None:
    with pytest.raises(DeadzoneError, match="evaluation batches"):
        AttributionHook([])
    with pytest.raises(DeadzoneError, match="every"):
        AttributionHook(EVAL, every=0)
    with pytest.raises(DeadzoneError, match="unknown quadrature rule"):
        AttributionHook(EVAL, rule="rk4")
    with pytest.raises(DeadzoneError, match="no segment"):
        _ = A.AttributionRecord().loss_change
    record = A.AttributionRecord(segments=[A.Segment(0, 1, 1.0, 1.5, [0.5, 0.5, 0.5])])
    with pytest.raises(DeadzoneError, match="did not lower"):
        A.share_of_decrease(record, [])
