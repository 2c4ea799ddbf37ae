"""What a run trains: a copy read back from the checkpoint (one copy of the weights in memory),
and the step-0 evaluation of the pristine model reused by runs that start from it."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_gpt2

from deadzone.data.sft import Example, SFTData
from deadzone.experiments.runs import RunInputs, RunSpec, run_one
from deadzone.models.checkpoints import _reread, load_model, pristine_copy
from deadzone.models.sites import find_sites
from deadzone.training.train import SFTConfig, SFTLoop, computed


def _inputs(model) -> RunInputs:
    g = torch.Generator().manual_seed(0)

    def example() -> Example:
        ids = torch.randint(1, 96, (12,), generator=g).tolist()
        return Example(ids, ids)

    data = SFTData([example() for _ in range(8)], [example() for _ in range(4)], {})
    config = SFTConfig(steps=3, batch_size=4, eval_every=3, lr=1e-3)
    return RunInputs(model, {s.name: s for s in find_sites(model)}, data, 0, config)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_loaded_model_is_copied_from_its_files_and_left_unread(gpt2_dir):
    path, _ = gpt2_dir
    model, _ = load_model(str(path))
    model.get_parameter("transformer.h.0.attn.c_proj.weight").requires_grad_(False)
    assert _reread(model) is not None  # read back from the files, not deep-copied
    run = pristine_copy(model)
    assert run is not model and _same_weights(run, model)
    assert all(
        p.data_ptr() != q.data_ptr()
        for p, q in zip(run.parameters(), model.parameters(), strict=True)
    )
    assert [p.requires_grad for p in run.parameters()] == [
        p.requires_grad for p in model.parameters()
    ]
    with torch.no_grad():
        next(run.parameters()).add_(1.0)  # training the copy leaves the model as it was
    reloaded, _ = load_model(str(path))
    assert _same_weights(model, reloaded)


def test_a_model_changed_since_it_was_loaded_is_deep_copied(gpt2_dir):
    path, _ = gpt2_dir
    model, _ = load_model(str(path))
    with torch.no_grad():
        model.get_parameter("transformer.h.1.mlp.c_fc.weight").view(-1)[-1] += 1.0
    assert _reread(model) is None
    assert _same_weights(pristine_copy(model), model)  # not the files' weights
    built = tiny_gpt2()  # never saved: nothing to read back
    assert _same_weights(pristine_copy(built), built)


@pytest.mark.parametrize("strategy", ["frozen", "crystal"])
def test_runs_from_the_pristine_model_reuse_the_step0_eval(monkeypatch, gpt2_dir, strategy):
    path, _ = gpt2_dir
    model, _ = load_model(str(path))
    calls = []
    evaluate = SFTLoop.evaluate
    monkeypatch.setattr(SFTLoop, "evaluate", lambda loop: calls.append(1) or evaluate(loop))
    inputs = _inputs(model)
    full = run_one(inputs, RunSpec("full", {}, seed=1))
    assert len(calls) == 2 and set(inputs.step0) == {1}  # step 0 and the end
    spec = RunSpec("other", {"L0.attn.c_proj": strategy}, seed=1)
    reused = run_one(inputs, spec)
    assert len(calls) == (3 if strategy == "frozen" else 4)  # crystal changes the model at 0
    fresh = run_one(_inputs(copy.deepcopy(model)), spec)  # evaluated at step 0 again
    assert computed(reused) == computed(fresh)
    assert reused["step0_eval_loss"] == fresh["step0_eval_loss"]
    other_seed = run_one(inputs, RunSpec("seed2", {}, seed=2))
    assert other_seed["step0_eval_loss"] == full["step0_eval_loss"]  # evaluated, not reused
    assert set(inputs.step0) == {1, 2}
