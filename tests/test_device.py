"""Device, weight dtype and thread count: what each helper chooses, and that it is said."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from deadzone.errors import DeadzoneError
from deadzone.models import device
from deadzone.models.checkpoints import load_model
from deadzone.training.train import SFTConfig, train


def test_requested_threads_win_and_bad_ones_are_refused(monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with caplog.at_level(logging.INFO, logger="deadzone"):
        assert device.choose_threads(5) == 5
    assert "torch threads: 5 (asked for)" in caplog.text
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(DeadzoneError, match="threads must be an integer >= 1"):
            device.choose_threads(bad)


def test_omp_num_threads_is_honoured(monkeypatch, caplog):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with caplog.at_level(logging.INFO, logger="deadzone"):
        assert device.choose_threads() == 3
    assert "(OMP_NUM_THREADS)" in caplog.text


@pytest.mark.parametrize(("runnable", "expected"), [(1, 4), (2, 3), (3, 2), (9, 1)])
def test_auto_threads_leave_the_cores_other_work_holds(monkeypatch, caplog, runnable, expected):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cores", lambda: 4)
    monkeypatch.setattr(device.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(device, "_runnable", lambda: runnable)  # this process counts as one
    with caplog.at_level(logging.INFO, logger="deadzone"):
        assert device.choose_threads() == expected
    assert f"torch threads: {expected} (4 usable cores, {runnable - 1:.1f} busy" in caplog.text


def test_two_cpu_bound_processes_are_seen_busy():
    spin = "import time\nend = time.time() + 20\nwhile time.time() < end: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        busy = device.busy_cores()
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    share = device.usable_cores() / (device.os.cpu_count() or 1)
    assert busy >= 1.5 * share


def test_weight_dtype():
    cpu = torch.device("cpu")
    assert device.weight_dtype("auto", cpu) is torch.float32
    assert device.weight_dtype("bfloat16", cpu) is torch.bfloat16
    assert device.weight_dtype("float32", cpu) is torch.float32
    with pytest.raises(DeadzoneError, match="unknown dtype 'float16'; choose auto, float32"):
        device.weight_dtype("float16", cpu)


def test_a_model_loaded_in_bfloat16_trains_in_bfloat16(gpt2_dir):
    path, _ = gpt2_dir
    model, _ = load_model(str(path), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    before = model.get_parameter("transformer.h.0.mlp.c_fc.weight").detach().clone()
    ids = torch.randint(0, 96, (4, 16), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    result = train(model, [batch], [batch], SFTConfig(steps=3, eval_every=3, lr=1e-2))
    assert result.status == "ok" and result.final_eval_loss < result.step0_eval_loss
    after = model.get_parameter("transformer.h.0.mlp.c_fc.weight")
    assert after.dtype is torch.bfloat16 and not torch.equal(after, before)
