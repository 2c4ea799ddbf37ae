"""Run tasks, the workers that turn them into records, and the executors that run them.

A :class:`RunTask` is everything one run needs, in a form that travels to another process or
machine: the model (its spec and fingerprint), the data (its spec, split and content hash),
the SFT config, the run's plan, seed and rank, and the number of torch threads it runs on.
:func:`run_task` turns a task into a record wherever it is called; it loads the model and
data once per process and reuses them for every task of the same model and data.

Executors are siblings with one method, ``run(tasks, on_record)``, that calls ``on_record``
with each record as it arrives (in the driver's process, in completion order). Each is also a
context manager: an experiment enters it before it loads its model and data, so that workers
start (spawn, import torch and transformers) while the driver loads, and stay up for every
``run`` inside it (a scan's rounds reuse them); ``run`` outside one starts and stops them:

- :class:`InProcess` runs the tasks one after another here (under ``accelerate launch``, every
  process runs every task on its shard of the batches);
- :class:`Pool` runs them on ``workers`` spawned processes;
- :class:`Ray` runs them as Ray tasks on a cluster, or on a local one it starts.

A worker never writes results; the driver does (:func:`execute`). A run whose worker process
dies is retried up to ``retries`` more times, then recorded ``failed`` with the reason. With
the same threads per run, every executor gives bit-identical records (less their timings).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import wait
from pathlib import Path

import torch

from deadzone.errors import DeadzoneError
from deadzone.experiments.runs import ResultsDir, RunInputs, RunSpec, failed_record, run_one
from deadzone.progress import make_progress
from deadzone.training.tracking import NO_TRACKING, Tracking, tracker_hook
from deadzone.training.train import SFTConfig, make_accelerator

log = logging.getLogger(__name__)

RETRIES = 2  # more attempts for a run whose worker died
RAY_EXTRA = "pip install 'deadzone[ray]'"
OnRecord = Callable[[dict], None]


@dataclass(frozen=True)
class ModelRef:
    """A model as a worker finds it: its spec (path, hub id or builtin) and fingerprint.

    ``path`` is where the driver found it; a worker that sees the same directory there (same
    machine, or a shared file system) loads it from there without resolving ``spec`` again
    (which, for a builtin, would rebuild the corpus to find its hash).
    """

    spec: str
    fingerprint: str
    path: str | None = None
    dtype: str = "float32"  # the weights' torch dtype, as in ``torch.float32``


@dataclass(frozen=True)
class DataRef:
    """SFT data as a worker rebuilds it (the arguments of ``load_sft_data``) and its hash."""

    spec: str
    eval_spec: str | None
    eval_fraction: float
    max_length: int
    content_hash: str


@dataclass(frozen=True)
class RunTask:
    """One run, picklable: what it trains, on what, how, and on how many torch threads.

    ``exact_match`` is how many eval examples the finished run scores exact match on (0:
    none). ``tracking`` says where the run reports its curves (``deadzone.training.tracking``);
    it is no part of what the run computes.
    """

    model: ModelRef
    data: DataRef
    sft: SFTConfig
    run: RunSpec
    threads: int
    tracking: Tracking = NO_TRACKING
    exact_match: int = 0

    @property
    def key(self) -> str:
        return self.run.key


# --- the worker side --------------------------------------------------------------------------

_loaded: dict[tuple, RunInputs] = {}  # this process's inputs, for the last model and data
_shipped: dict[DataRef, object] = {}  # the SFT data the driver last sent this process


def load_inputs(config, model, tokenizer, all_sites) -> tuple[RunInputs, ModelRef, DataRef]:
    """What every experiment driver loads once: the SFT data of ``config`` (a config with
    ``model``, ``data``, ``eval_data``, ``eval_fraction``, ``max_length`` and ``sft``) for
    ``model`` and ``tokenizer``, the runs' shared inputs, and the references a run task carries."""
    from deadzone.data.sft import load_sft_data, pad_id_for
    from deadzone.models.checkpoints import context_length, files_fingerprint, resolve

    max_length = min(config.max_length, context_length(model) or config.max_length)
    data = load_sft_data(
        config.data,
        tokenizer,
        max_length=max_length,
        eval_spec=config.eval_data,
        eval_fraction=config.eval_fraction,
    )
    inputs = RunInputs(
        model, {s.name: s for s in all_sites}, data, pad_id_for(tokenizer), config.sft, tokenizer
    )
    path = resolve(config.model)
    dtype = dtype_name(next(model.parameters()).dtype)
    model_ref = ModelRef(config.model, files_fingerprint(path), str(path), dtype)
    data_ref = DataRef(
        config.data, config.eval_data, config.eval_fraction, max_length, data.info["content_hash"]
    )
    return inputs, model_ref, data_ref


def dtype_name(dtype: torch.dtype) -> str:
    """``float32`` for ``torch.float32``: how records and identities name a dtype."""
    return str(dtype).removeprefix("torch.")


def model_info(model, model_ref: ModelRef) -> dict:
    """The model's part of a results identity: its type, parameter count and fingerprint."""
    return {
        "model_type": getattr(model.config, "model_type", None),
        "params": sum(p.numel() for p in model.parameters()),
        "fingerprint": model_ref.fingerprint,
    }


def prime(task: RunTask, inputs: RunInputs) -> None:
    """Let tasks like ``task`` reuse ``inputs`` already built in this process (the driver's)."""
    _loaded.clear()
    _loaded[_inputs_key(task)] = inputs


def driver_data(task: RunTask):
    """The SFT data this process loaded for ``task`` (the driver's, after :func:`prime`), or
    None: a worker sent it builds its inputs without rebuilding and tokenizing the data."""
    inputs = _loaded.get(_inputs_key(task))
    return inputs.data if inputs is not None else None


def receive(ref: DataRef, data) -> None:
    """Keep ``data``, the driver's SFT data of ``ref``, for the next task that needs it here."""
    _shipped.clear()
    _shipped[ref] = data


def _inputs_key(task: RunTask) -> tuple:
    sft = task.sft.to_dict()
    sft.pop("seed")
    return task.model, task.data, tuple(sorted((k, str(v)) for k, v in sft.items()))


def inputs_for(task: RunTask) -> RunInputs:
    """The model, sites and data of ``task``, loaded once per process and checked."""
    key = _inputs_key(task)
    if key not in _loaded:
        _loaded.clear()  # one experiment at a time: never hold two models
        _loaded[key] = _load(task)
    return _loaded[key]


def _load(task: RunTask) -> RunInputs:
    from deadzone.data.sft import load_sft_data, pad_id_for
    from deadzone.models import sites
    from deadzone.models.checkpoints import files_fingerprint, load_model, resolve

    spec, d = task.model.spec, task.data
    here = task.model.path
    path = Path(here) if here and Path(here).is_dir() else resolve(spec)
    if files_fingerprint(path) != task.model.fingerprint:
        raise DeadzoneError(
            f"{spec} on {socket.gethostname()} is not the model the experiment was planned on "
            "(another fingerprint)"
        )
    model, tokenizer = load_model(str(path), dtype=getattr(torch, task.model.dtype))
    if tokenizer is None:
        raise DeadzoneError(f"{spec} has no tokenizer; SFT needs one")
    data = _shipped.get(d) or load_sft_data(
        d.spec,
        tokenizer,
        max_length=d.max_length,
        eval_spec=d.eval_spec,
        eval_fraction=d.eval_fraction,
    )
    if data.info["content_hash"] != d.content_hash:
        raise DeadzoneError(
            f"the data {d.spec} on {socket.gethostname()} is not the data the experiment was "
            "planned on (another content hash)"
        )
    all_sites = {s.name: s for s in sites.find_sites(model)}
    return RunInputs(model, all_sites, data, pad_id_for(tokenizer), task.sft, tokenizer)


def run_task(task: RunTask, *, accelerator=None, show_progress: bool = False) -> dict:
    """Train ``task``'s run on ``task.threads`` torch threads and return its record."""
    torch.set_num_threads(task.threads)
    inputs = inputs_for(task)
    main_process = accelerator is None or accelerator.is_main_process
    hook = tracker_hook(task.tracking, task.key, tracked_config(task), main_process)
    try:
        record = run_one(
            inputs,
            task.run,
            accelerator=accelerator,
            show_progress=show_progress,
            hooks=[hook] if hook else [],
            exact_match=task.exact_match,
        )
    finally:
        if hook:
            hook.close()
    return {**record, "threads": task.threads}


def tracked_config(task: RunTask) -> dict:
    """What a tracker records of a run: its key, labels, targets, model, data and SFT config."""
    run = task.run
    return {
        "key": run.key,
        **run.labels,
        "targets": sorted(run.plan),
        "plan": {site: strategy for site, strategy in sorted(run.plan.items())},
        "model": task.model.spec,
        "fingerprint": task.model.fingerprint,
        "data": task.data.spec,
        "data_hash": task.data.content_hash,
        "sft": {**task.sft.to_dict(), "seed": run.seed},
    }


def work(task: RunTask) -> tuple[str, object]:
    """``run_task`` for another process: ``("ok", record)`` or ``("error", one-line message)``.

    A :class:`DeadzoneError` (the model or data differ there) travels back as a message, for
    the driver to stop the experiment with; a crash is the executor's to notice.
    """
    import transformers

    transformers.logging.set_verbosity_error()  # as the CLI does in the driver
    transformers.logging.disable_progress_bar()
    try:
        return "ok", run_task(task)
    except DeadzoneError as e:
        return "error", str(e)


# --- executors --------------------------------------------------------------------------------


def threads_per_run(workers: int = 1, requested: int | None = None) -> int:
    """Torch threads of each run, ``workers`` runs at once: the one place every executor asks.

    ``requested`` (``--threads``), else ``OMP_NUM_THREADS``, else the cores other work leaves
    idle divided among the runs (:func:`deadzone.models.device.thread_choice`). The choice is
    said once, in one line, when the executor first runs tasks (:func:`execute`).
    """
    from deadzone.models.device import thread_choice

    threads, why = thread_choice(requested, runs=check_workers(workers))
    _said_threads[threads] = why
    return threads


_said_threads: dict[int, str] = {}  # why each thread count was chosen, until execute says it


def check_workers(workers: int) -> int:
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise DeadzoneError(f"workers must be an integer >= 1, got {workers!r}")
    return workers


class InProcess:
    """Every task here, one after another, with one ``Accelerator`` (today's behaviour).

    Under ``accelerate launch`` every process runs every task on its shard of the batches.
    """

    name = "inprocess"

    def __init__(self, *, threads: int | None = None, show_progress: bool = True) -> None:
        self.threads = threads_per_run(1, threads)
        self.show_progress = show_progress

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def run(self, tasks: list[RunTask], on_record: OnRecord) -> None:
        if not tasks:
            return
        accelerator = make_accelerator(tasks[0].sft)
        for task in tasks:
            record = run_task(task, accelerator=accelerator, show_progress=self.show_progress)
            accelerator.free_memory()  # drop its references to this run's model and optimizer
            on_record(record)


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: object
    task: RunTask | None = None
    data: DataRef | None = None  # the data sent to it


def warm() -> None:
    """Import what a run needs, so that a worker started early does it while the driver loads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401 (lazy modules)

    import deadzone.data.sft
    import deadzone.models.checkpoints
    import deadzone.models.sites  # noqa: F401


def _worker_main(conn, threads: int) -> None:
    """A pool worker: take tasks from ``conn`` until ``None``, send back ``work``'s answer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides what Ctrl-C ends
    _no_process_locks()
    torch.set_num_threads(threads)
    warm()
    while (message := conn.recv()) is not None:
        if isinstance(message, _Data):
            receive(message.ref, message.data)
        else:
            conn.send(work(message))


@dataclass(frozen=True)
class _Data:
    """The driver's SFT data, sent to a worker once before its first task on that data."""

    ref: DataRef
    data: object


class Pool:
    """``workers`` spawned processes, each running one task at a time on ``threads`` threads.

    Inside ``with pool:`` the workers start at once and serve every ``run``; a worker that
    died is replaced. ``on_start(task, pid)`` (if given) is called as each task is handed out.
    """

    name = "pool"

    def __init__(
        self, workers: int, *, threads: int | None = None, retries: int = RETRIES, on_start=None
    ) -> None:
        self.workers = check_workers(workers)
        self.retries = retries
        self.on_start = on_start
        self.threads = threads_per_run(workers, threads)
        self._pool: list[_Worker] = []
        self._depth = 0

    def __enter__(self) -> Pool:
        if self._depth == 0:
            self._pool = [self._spawn() for _ in range(self.workers)]
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for w in self._pool:
                _stop(w)
            self._pool = []

    def _spawn(self) -> _Worker:
        ctx = multiprocessing.get_context("spawn")
        here, there = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(there, self.threads), daemon=True)
        process.start()
        there.close()
        return _Worker(process, here)

    def run(self, tasks: list[RunTask], on_record: OnRecord) -> None:
        queue, attempts = deque(tasks), dict.fromkeys((t.key for t in tasks), 0)
        with self:
            try:
                while queue or any(w.task for w in self._pool):
                    while queue and len(self._pool) < self.workers:  # replace the dead
                        self._pool.append(self._spawn())
                    for w in self._pool:  # hand out work
                        if w.task is None and queue:
                            self._assign(w, queue.popleft(), attempts)
                    busy = [w for w in self._pool if w.task]
                    wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
                    for w in busy:
                        self._collect(w, queue, attempts, on_record)
            except BaseException:  # Ctrl-C, an error: the runs in flight are abandoned
                for w in [w for w in self._pool if w.task]:
                    _stop(w)
                    self._pool.remove(w)
                raise

    def _assign(self, w: _Worker, task: RunTask, attempts: dict) -> None:
        w.task = task
        attempts[task.key] += 1
        try:
            if w.data != task.data and (data := driver_data(task)) is not None:
                w.conn.send(_Data(task.data, data))
                w.data = task.data
            w.conn.send(task)
        except OSError:  # it died between two tasks: _collect sees it and retries the task
            return
        if self.on_start is not None:
            self.on_start(task, w.process.pid)

    def _collect(self, w, queue, attempts, on_record) -> None:
        """Take ``w``'s answer if it has one; drop ``w`` if it died, its task retried."""
        task = w.task
        try:
            answer = w.conn.recv() if w.conn.poll() else None
        except (EOFError, OSError):
            answer = None
        if answer is not None:
            w.task = None
            status, payload = answer
            if status == "error":
                raise DeadzoneError(payload)
            on_record(payload)
            return
        if w.process.is_alive():
            return  # still working
        _stop(w)
        self._pool.remove(w)
        how = _death(w.process.exitcode)
        if attempts[task.key] <= self.retries:
            log.warning("%s: the worker process %s; running it again", task.key, how)
            queue.appendleft(task)
        else:
            reason = f"the worker process {how}, on {attempts[task.key]} attempts"
            on_record(failed_record(task.run, reason, threads=task.threads, crashed=True))


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"was killed by signal {-exitcode}"
    return f"exited with status {exitcode}"


def _no_process_locks() -> None:
    """tqdm (behind transformers' bars) guards its bars with a multiprocessing lock, a named
    semaphore that a worker killed mid-run would leave behind (and the driver warn about at
    exit); a worker's bars are off, and a thread lock does."""
    import threading

    import tqdm

    tqdm.tqdm.set_lock(threading.RLock())


def _stop(w: _Worker) -> None:
    """End ``w``: an idle worker is told to stop, a busy one (Ctrl-C, an error) is killed."""
    try:
        if w.task is None:
            w.conn.send(None)
            w.process.join(timeout=10)
    except OSError:
        pass
    if w.process.is_alive():
        w.process.kill()
        w.process.join(timeout=10)
    w.conn.close()


class Ray:
    """Ray Core tasks on the cluster at ``address``, or on a local one started here.

    Each task asks for ``threads`` CPUs and is retried ``retries`` times if its worker dies.
    A local cluster gets ``workers * threads`` CPUs (all cores when ``workers`` is None).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        workers: int | None = None,
        *,
        threads: int | None = None,
        retries: int = RETRIES,
    ) -> None:
        self.ray = import_ray()
        self.address = address
        self.workers = None if workers is None else check_workers(workers)
        self.retries = retries
        self.threads = threads_per_run(self.workers or _cores(), threads)
        self._depth, self._started = 0, False
        if address:
            _probe(address)

    def __enter__(self) -> Ray:
        """Connect (or start a local cluster) and warm one worker per run slot."""
        if self._depth == 0:
            self._started = self._connect()
            cpus = int(self.ray.cluster_resources().get("CPU", 1))
            slots = self.workers or max(1, cpus // self.threads)
            warming = self.ray.remote(warm).options(num_cpus=self.threads)
            for _ in range(slots):
                warming.remote()  # not waited for: a task runs without its result being kept
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0 and self._started:
            self.ray.shutdown()

    def _connect(self) -> bool:
        """Connect (or start a local cluster); True when this executor started it."""
        ray = self.ray
        if ray.is_initialized():
            return False
        options = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if self.address:
            ray.init(address=self.address, **options)
        else:
            cpus = (self.workers or _cores()) * self.threads
            ray.init(num_cpus=cpus, **options)
        return True

    def run(self, tasks: list[RunTask], on_record: OnRecord) -> None:
        if not tasks:
            return
        ray = self.ray
        with self:
            remote = ray.remote(_ray_work)
            data = driver_data(tasks[0])
            box = [(tasks[0].data, ray.put(data))] if data is not None else []
            refs = {}
            try:
                for task in tasks:
                    options = dict(num_cpus=task.threads, max_retries=self.retries)
                    refs[remote.options(**options).remote(task, box)] = task
                pending = list(refs)
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    self._collect(done[0], refs[done[0]], on_record)
            except BaseException:
                for ref in refs:
                    ray.cancel(ref, force=True)
                raise

    def _collect(self, ref, task: RunTask, on_record: OnRecord) -> None:
        ray = self.ray
        try:
            status, payload = ray.get(ref)
        except ray.exceptions.RayError as e:
            reason = f"the Ray task failed on {self.retries + 1} attempts: {_first_line(e)}"
            on_record(failed_record(task.run, reason, threads=task.threads, crashed=True))
            return
        if status == "error":
            raise DeadzoneError(payload)
        on_record(payload)


def _ray_work(task: RunTask, box: list) -> tuple[str, object]:
    """``work`` on a Ray worker; ``box`` holds the driver's SFT data as ``(DataRef, object
    reference)``, fetched only by a worker that has not loaded the task's inputs yet."""
    if box and box[0][0] == task.data and _inputs_key(task) not in _loaded:
        import ray

        receive(task.data, ray.get(box[0][1]))
    return work(task)


def import_ray():
    try:
        import ray
    except ImportError:
        raise DeadzoneError(f"--backend ray needs Ray, not installed here: {RAY_EXTRA}") from None
    return ray


def _cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail in one line, within ``timeout`` seconds, when nothing answers at ``address``."""
    if address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise DeadzoneError(f"--ray-address {address!r} is not HOST:PORT (or ray://HOST:PORT)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise DeadzoneError(f"no Ray cluster answers at {address}: {reason}") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


Executor = InProcess | Pool | Ray


def executor_for(execution, show_progress: bool = True) -> Executor:
    """The executor a ``deadzone.config.ExecutionConfig`` describes."""
    return make_executor(
        execution.backend,
        execution.workers,
        execution.ray_address,
        threads=execution.threads,
        show_progress=show_progress,
    )


def make_executor(
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    *,
    threads: int | None = None,
    show_progress: bool = True,
) -> Executor:
    """``local``: in this process, or a :class:`Pool` of ``workers``; ``ray``: :class:`Ray`.
    Each run gets ``threads`` torch threads (default: :func:`threads_per_run` chooses)."""
    if workers is not None:
        check_workers(workers)
    if backend == "ray":
        return Ray(ray_address, workers, threads=threads)
    if backend != "local":
        raise DeadzoneError(f"unknown backend {backend!r}; choose local or ray")
    if ray_address:
        raise DeadzoneError("--ray-address needs --backend ray")
    if workers is None:
        return InProcess(threads=threads, show_progress=show_progress)
    return Pool(workers, threads=threads)


# --- the driver -------------------------------------------------------------------------------


def execute(
    tasks: Iterable[RunTask],
    results: ResultsDir,
    executor: Executor,
    *,
    on_record: OnRecord | None = None,
    show_progress: bool = True,
) -> None:
    """Run every task not already finished in ``results``; the driver saves after each one.

    Runs elsewhere (a pool, Ray) show one bar here, advanced as each record arrives; runs in
    this process show their own.
    """
    tasks = list(tasks)
    results.order_by([t.key for t in tasks])
    pending = [t for t in tasks if not results.finished(t.key)]
    quiet = not show_progress or isinstance(executor, InProcess) or not pending
    if pending and executor.threads in _said_threads:
        log.info("torch threads: %s", _said_threads.pop(executor.threads))
    with make_progress(disable=quiet) as bar:
        runs = bar.add_task(f"runs ({executor.name})", total=len(pending))

        def finished(record: dict) -> None:
            results.add(record)  # every process keeps it; only the writer saves it
            bar.update(runs, advance=1)
            if on_record is not None:
                on_record(record)

        executor.run(pending, finished)
