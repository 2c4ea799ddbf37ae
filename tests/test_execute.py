"""Executors (in-process, process pool, Ray), faults, the output lock, extending an experiment."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import SRC, by_key, config

from deadzone import fileio
from deadzone.cli import main
from deadzone.errors import DeadzoneError
from deadzone.experiments.crystallize import crystallize
from deadzone.experiments.execute import Pool, Ray, RunTask, make_executor, threads_per_run
from deadzone.experiments.runs import writing
from deadzone.locks import file_lock
from deadzone.training import strategies
from deadzone.training.train import RunFailed

FOUR = ("full", "frozen", "crystal", "random")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """Four strategies, one seed, in this process on one thread: the records to match."""
    out = tmp_path_factory.mktemp("reference")
    with pytest.MonkeyPatch.context() as mp:  # one thread, whatever else the machine runs
        mp.setenv("OMP_NUM_THREADS", "1")
        doc = crystallize(config(setup, strategies=FOUR, seeds=1), out, show_progress=False)
    assert all(r["status"] == "ok" and r["threads"] == 1 for r in doc["runs"])
    return by_key(doc)


def test_the_pool_and_a_local_ray_cluster_give_the_records_of_the_in_process_run(
    setup,
    reference,
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = config(setup, strategies=FOUR, seeds=1)
    pooled = crystallize(cfg, tmp_path / "pool", executor=Pool(2))
    assert by_key(pooled) == reference
    on_ray = crystallize(cfg, tmp_path / "ray", executor=Ray(workers=2))
    assert by_key(on_ray) == reference
    saved = fileio.read_json(tmp_path / "ray" / "results.json")
    assert by_key(saved) == reference and saved["summary"] == pooled["summary"]
    assert [r["key"] for r in saved["runs"]] == list(reference)  # the plan's order


def test_a_killed_worker_is_retried_then_its_run_fails_and_the_others_go_on(
    setup,
    reference,
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    starts: list[str] = []

    def kill(task: RunTask, pid: int) -> None:
        starts.append(task.key)
        if task.key == "frozen/seed0" or (
            task.key == "random/seed0" and starts.count(task.key) == 1
        ):
            os.kill(pid, signal.SIGKILL)

    cfg = config(setup, strategies=FOUR, seeds=1)
    doc = crystallize(cfg, tmp_path, executor=Pool(2, on_start=kill))
    assert starts.count("frozen/seed0") == 3 and starts.count("random/seed0") == 2
    runs = by_key(doc)
    frozen = runs.pop("frozen/seed0")
    assert frozen["status"] == "failed" and frozen["crashed"] is True
    assert frozen["error"] == "the worker process was killed by SIGKILL, on 3 attempts"
    assert runs == {k: v for k, v in reference.items() if k != "frozen/seed0"}

    # A rerun tries the run lost to its worker again, and only that one.
    ran: list[dict] = []
    again = crystallize(cfg, tmp_path, show_progress=False, on_record=ran.append)
    assert [r["key"] for r in ran] == ["frozen/seed0"]
    assert by_key(again) == reference


def test_a_pool_entered_once_serves_every_experiment_inside_it_with_the_drivers_data(
    setup,
    reference,
    tmp_path,
    monkeypatch,
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    handed: list[int] = []
    pool = Pool(2, on_start=lambda task, pid: handed.append(pid))
    cfg = config(setup, strategies=("full", "frozen"), seeds=1)
    with pool:
        started = {w.process.pid for w in pool._pool}  # they start here, before any plan
        assert len(started) == 2
        first = crystallize(cfg, tmp_path / "a", executor=pool)
        second = crystallize(cfg, tmp_path / "b", executor=pool)
        assert set(handed) <= started and len(handed) == 4  # no worker started again
        # each worker was sent the driver's tokenized data instead of rebuilding it
        assert {w.data for w in pool._pool if w.data} == {tasks_data(setup, cfg)}
    assert pool._pool == []  # stopped on leaving
    assert by_key(first) == by_key(second) == {k: reference[k] for k in by_key(first)}


def tasks_data(setup, cfg):
    """The DataRef of ``cfg``'s runs, as the driver plans them."""
    from deadzone.experiments.crystallize import plan

    prepared, _ = plan(cfg, 1)
    return prepared.data_ref


def test_a_worker_builds_its_inputs_from_the_data_the_driver_sent(setup):
    from dataclasses import replace

    from deadzone.experiments import execute
    from deadzone.experiments.crystallize import plan

    prepared, design = plan(config(setup, strategies=("full",), seeds=1), 1)
    tasks, inputs = [prepared.task(s) for s in design.specs], prepared.inputs
    execute._loaded.clear()
    execute.receive(tasks[0].data, inputs.data)
    assert execute.inputs_for(tasks[0]).data is inputs.data
    # data whose content is not the planned data is refused, as rebuilt data would be
    execute._loaded.clear()
    other = replace(inputs.data, info={**inputs.data.info, "content_hash": "0" * 64})
    execute.receive(tasks[0].data, other)
    with pytest.raises(DeadzoneError, match="not the data the experiment was planned on"):
        execute.inputs_for(tasks[0])
    execute._loaded.clear()


KILLED_DRIVER = """
import sys, time
from conftest import config
from deadzone.experiments.crystallize import crystallize
model, data, out = sys.argv[1:4]
cfg = config((model, data), strategies=("full", "frozen", "crystal", "random"), seeds=1)
crystallize(cfg, out, show_progress=False, on_record=lambda r: time.sleep(0.5))
"""


def test_a_killed_driver_resumes_losing_and_repeating_nothing(
    setup,
    reference,
    tmp_path,
    monkeypatch,
):
    model, data = setup
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the resumed runs on the reference's one thread
    out = tmp_path / "out"
    script = [sys.executable, "-c", KILLED_DRIVER, model, data, str(out)]
    tests = str(Path(__file__).parent)
    driver = subprocess.Popen(script, env=env() | {"PYTHONPATH": f"{SRC}:{tests}"}, cwd=tests)
    seen, deadline = 0, time.monotonic() + 120
    while seen < 2 and time.monotonic() < deadline and driver.poll() is None:
        if (out / "results.json").exists():  # valid JSON whenever it is read
            seen = len(fileio.read_json(out / "results.json")["runs"])
        time.sleep(0.01)
    time.sleep(0.6)  # into the next run
    driver.kill()
    driver.wait()
    assert driver.returncode == -signal.SIGKILL, "the driver finished before it was killed"
    kept = by_key(fileio.read_json(out / "results.json"))
    assert 2 <= len(kept) < 4

    ran: list[dict] = []
    resumed = crystallize(config(setup, strategies=FOUR, seeds=1), out, on_record=ran.append)
    assert {r["key"] for r in ran}.isdisjoint(kept)
    assert len(ran) + len(kept) == 4
    assert by_key(resumed) == reference


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["inprocess", "pool"])
def test_ctrl_c_keeps_finished_runs_and_exits_130_with_one_line(setup, tmp_path, workers):
    model, data = setup
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "deadzone.cli", "crystallize", model, "--target",
            "L1.attn.c_proj", "--steps", "60", "--seeds", "2", "--data", data, "--batch-size",
            "4", *workers, "--out", str(out)]  # fmt: skip
    # The driver gets SIGINT's default action whatever this process inherited or was given by
    # earlier tests (Python turns SIGINT into KeyboardInterrupt only when it starts at default).
    default_sigint = partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    driver = subprocess.Popen(
        argv, env=env(), stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None:
        if (out / "results.json").exists() and fileio.read_json(out / "results.json")["runs"]:
            break
        time.sleep(0.01)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err
    assert err.splitlines()[-1] == "deadzone: interrupted; finished runs are kept", err
    assert "Traceback" not in err
    runs = fileio.read_json(out / "results.json")["runs"]
    assert 1 <= len(runs) < 8 and all(r["status"] == "ok" for r in runs)
    with writing(out):  # the lock was let go
        pass


HOLD_LOCK = """
import sys, time
from deadzone.locks import file_lock
with file_lock(sys.argv[1], wait=False):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_live_writer_locks_the_output_directory_and_a_dead_one_does_not(
    setup,
    tmp_path,
    capsys,
):
    model, data = setup
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out / ".deadzone.lock"), "--tag"],
        env=env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    argv = ["crystallize", model, "--target", "L1.attn.c_proj", "--data", data, "--steps", "1",
            "--out", str(out)]  # fmt: skip
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deadzone: error: output directory")
    assert f"in use by pid {holder.pid} on " in err and "--tag" in err
    assert not (out / "results.json").exists()

    holder.kill()  # SIGKILL: no clean-up, and still the lock is free
    holder.wait()
    with file_lock(out / ".deadzone.lock", wait=False):
        pass


def test_more_seeds_and_another_strategy_reuse_the_finished_runs(setup, tmp_path):
    first = crystallize(config(setup, strategies=("full", "zero"), seeds=1), tmp_path)
    ran: list[dict] = []
    more = config(setup, strategies=("full", "frozen", "zero"), seeds=2)
    doc = crystallize(more, tmp_path, show_progress=False, on_record=ran.append)
    assert sorted(r["key"] for r in ran) == [
        "frozen/seed0", "frozen/seed1", "full/seed1", "zero/seed1",
    ]  # fmt: skip
    assert by_key(doc)["full/seed0"] == by_key(first)["full/seed0"]
    assert doc["seeds"] == [0, 1] and doc["strategies"] == ["full", "zero", "frozen"]
    # A smaller plan afterwards runs nothing and forgets nothing.
    again = crystallize(
        config(setup, strategies=("full",), seeds=1), tmp_path, on_record=ran.append
    )
    assert len(ran) == 4 and len(again["runs"]) == 6 and again["seeds"] == [0, 1]


def unappliable(model, site, ctx):
    raise RunFailed(f"{site.name} cannot be crystallized: its matrix holds NaN")


def test_a_strategy_that_cannot_be_applied_fails_its_run_only(setup, tmp_path, monkeypatch):
    monkeypatch.setitem(strategies.STRATEGIES, "zero", unappliable)
    doc = crystallize(config(setup, strategies=("full", "zero"), seeds=1), tmp_path)
    runs = {r["key"]: r for r in doc["runs"]}
    assert runs["full/seed0"]["status"] == "ok"
    assert runs["zero/seed0"]["status"] == "failed"
    assert (
        runs["zero/seed0"]["error"] == "L1.attn.c_proj cannot be crystallized: its matrix holds NaN"
    )


def test_threads_per_run_honours_threads_then_omp_then_idle_cores(monkeypatch):
    from deadzone.models import device

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cores", lambda: 16)
    monkeypatch.setattr(device, "busy_cores", lambda: 0.0)
    assert threads_per_run(2) == 8 and threads_per_run(3) == 5
    monkeypatch.setattr(device, "busy_cores", lambda: 14.0)
    assert threads_per_run(3) == 1 and threads_per_run(3, 4) == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_run(2) == 3 and threads_per_run(2, 5) == 5
    assert Pool(2, threads=2).threads == 2 and make_executor(threads=1).threads == 1


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "workers must be an integer >= 1, got 0"),
        (["--workers", "-2"], "workers must be an integer >= 1, got -2"),
        (["--backend", "dask"], "argument --backend: invalid choice: 'dask'"),
        (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --backend ray"),
        (["--backend", "ray", "--ray-address", "127.0.0.1:1"], "no Ray cluster answers at "),
        (["--backend", "ray", "--ray-address", "nowhere"], "is not HOST:PORT"),
    ],
)
def test_bad_execution_options_are_one_line_and_exit_2(setup, tmp_path, capsys, args, message):
    model, data = setup
    argv = ["crystallize", model, "--target", "L1.attn.c_proj", "--data", data, *args,
            "--out", str(tmp_path / "o")]  # fmt: skip
    start = time.monotonic()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    assert rc == 2 and time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert err.startswith("deadzone: error: ") and err.count("\n") == 1
    assert message in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_ray_missing_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(DeadzoneError, match=r"needs Ray.*pip install 'deadzone\[ray\]'"):
        make_executor("ray")


def test_a_checkpoint_missing_a_weight_is_refused(setup, tmp_path, capsys):
    model, data = setup
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in Path(model).iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    weights = safetensors.torch.load_file(broken / "model.safetensors")
    del weights["transformer.h.1.mlp.c_fc.weight"]
    weights["transformer.h.1.mlp.extra.weight"] = torch.zeros(3)
    safetensors.torch.save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    argv = ["crystallize", str(broken), "--target", "L1.attn.c_proj", "--data", data,
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "missing weight(s) transformer.h.1.mlp.c_fc.weight" in err
    assert "unexpected weight(s) transformer.h.1.mlp.extra.weight" in err
    assert not (tmp_path / "o" / "results.json").exists()


def test_lock_file_records_its_holder(tmp_path):
    lock = tmp_path / "x.lock"
    with file_lock(lock, wait=False):
        info = json.loads(lock.read_text())
        assert info["pid"] == os.getpid() and info["command"]
        refused = pytest.raises(DeadzoneError, match=f"it is in use by pid {os.getpid()}")
        with refused, file_lock(lock, wait=False, what="it"):
            pass
