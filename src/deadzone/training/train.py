"""The SFT loop: AdamW over trainable parameters, warmup then cosine decay, evaluation, determinism.

The same code runs on CPU, on one GPU, and on several GPUs under ``accelerate launch``. Training
batches come from the caller (dicts of ``input_ids``, ``attention_mask`` and ``labels`` LongTensors,
labels ``-100`` where no loss is taken); under several processes, micro-batch ``i`` of the stream
goes to process ``i mod world_size``. Losses are token-weighted: the mean over every label that is
not ``-100`` in the step (all micro-batches, all processes), never a mean of batch means.

A run that meets a non-finite loss or gradient stops and comes back with ``status="failed"`` and
a reason; it does not raise, so the runs beside it go on.

The trainable set may change during a run: :class:`Hook` objects are called at the start and end
of every step, after the backward pass and after each evaluation, and may call
:meth:`SFTLoop.freeze`, :meth:`SFTLoop.unfreeze` and :meth:`SFTLoop.set_lr_scales` (a schedule
does; see ``deadzone.training.schedules``).
A frozen prefix (every parameter below some block frozen) runs without autograd, its outputs
kept across epochs with ``cache_prefix`` (``deadzone.training.prefix``).
A frozen parameter leaves the optimizer with its state; under
several processes the model is wrapped in a fresh ``DistributedDataParallel`` before the next
forward pass, since DDP's reducer expects a gradient for exactly the parameters that required one
when it was built.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed

# SFTConfig is declared torch-free in deadzone.config (the CLI is built from it); re-exported
from deadzone.config import MIXED_PRECISION, SFTConfig, check_int  # noqa: F401
from deadzone.errors import DeadzoneError, RunFailed  # noqa: F401 (RunFailed re-exported)
from deadzone.models.device import autocast_dtype, get_device
from deadzone.progress import make_progress
from deadzone.training.freezing import LR_SCALE, Freezer, optimizer_state_bytes
from deadzone.training.memory import PeakMemory
from deadzone.training.prefix import FrozenPrefix, check_same_every_epoch

Batch = dict[str, torch.Tensor]
# Training data: a re-iterable of batches, or a function of the epoch number returning one.
TrainData = Iterable[Batch] | Callable[[int], Iterable[Batch]]

IGNORE_INDEX = -100


@dataclass
class RunResult:
    """What one SFT run produced. Losses are token-weighted means; None where not measured.

    ``trainable_params`` is the count at the start, of ``total_params``; each point of ``curve``
    also holds the count during that step (``trainable_params``), the optimizer-state bytes
    after it (``optimizer_state_bytes``) and its wall time (``step_seconds``; 0 at step 0).
    ``cpu_seconds`` is this process's CPU time over the run (the fair clock on a shared
    machine).
    ``peak_memory_bytes`` is the peak of ``torch.cuda.max_memory_allocated`` on CUDA, else the
    peak resident set; ``peak_memory_scope`` says what that peak covers
    (``deadzone.training.memory``):
    ``"run"`` (CUDA's counter, or on Linux the resident-set peak reset at the start of the run)
    or ``"process"`` (the resident-set peak over the life of the process, where it cannot be
    reset: it includes whatever ran in the process before, earlier runs too).
    """

    status: str = "ok"
    error: str | None = None
    trainable_params: int = 0
    total_params: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    step0_eval_loss: float | None = None
    final_train_loss: float | None = None
    final_eval_loss: float | None = None
    curve: list[dict] = field(default_factory=list)
    steps_done: int = 0
    train_tokens: int = 0
    tokens_per_second: float = 0.0
    device: str = ""
    precision: str = ""
    processes: int = 1
    peak_memory_bytes: int = 0
    peak_memory_scope: str = "run"

    def to_dict(self) -> dict:
        return asdict(self)


# What a run record measures of the machine rather than computes: they differ from run to run.
MEASURED = (
    "seconds", "cpu_seconds", "tokens_per_second", "peak_memory_bytes", "peak_memory_scope",
)  # fmt: skip
MEASURED_PER_STEP = ("step_seconds",)


def computed(record: dict) -> dict:
    """A run record (``RunResult.to_dict`` and beyond) less its clocks and memory peaks: what
    must be identical when the same run is computed again, anywhere, on as many threads."""
    curve = [{k: v for k, v in p.items() if k not in MEASURED_PER_STEP} for p in record["curve"]]
    return {k: v for k, v in record.items() if k not in MEASURED} | {"curve": curve}


# --- building blocks --------------------------------------------------------------------------


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters with ``requires_grad``, shared storage once, in model order."""
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(model: torch.nn.Module, config: SFTConfig) -> torch.optim.AdamW:
    """AdamW over trainable parameters only; no weight decay on biases and norms (1-D)."""
    params = trainable_parameters(model)
    if not params:
        raise DeadzoneError("nothing to train: every parameter is frozen")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def enable_checkpointing(model: torch.nn.Module) -> None:
    """Hugging Face's activation checkpointing of ``model``'s blocks, non-reentrant (frozen
    inputs, a frozen prefix run without autograd and a trainable set that changes mid-run all
    work with it); a one-line DeadzoneError for a model that does not support it. The model's
    forward passes already ask for no key/value cache (:func:`loss_sum`)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
        raise DeadzoneError(f"gradient_checkpointing: this model ({kind}) does not support it")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.x on
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def lr_factor(step: int, config: SFTConfig) -> float:
    """Multiplier of ``lr`` for optimizer step ``step`` (0-based): linear warmup, cosine decay."""
    return warmup_factor(step, config) * decay_factor(step, config)


def warmup_factor(step: int, config: SFTConfig) -> float:
    """The warmup part of :func:`lr_factor`: rising linearly during warmup, then 1."""
    warmup = config.warmup
    return (step + 1) / (warmup + 1) if step < warmup else 1.0


def decay_factor(step: int, config: SFTConfig) -> float:
    """The decay part of :func:`lr_factor`: 1 during warmup, then a cosine to ``min_lr_ratio``."""
    warmup = config.warmup
    if step < warmup:
        return 1.0
    span = max(1, config.steps - warmup)
    progress = min(1.0, (step - warmup) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def make_accelerator(config: SFTConfig) -> Accelerator:
    """An ``Accelerator`` with bf16 where the device supports it (``mixed_precision="auto"``)."""
    precision = config.mixed_precision
    if precision == "auto":
        device = torch.device("cpu") if config.cpu else get_device()
        precision = "bf16" if autocast_dtype(device) == torch.bfloat16 else "no"
    return Accelerator(mixed_precision=precision, cpu=config.cpu)


class _CrossEntropySum(torch.autograd.Function):
    """Sum of cross-entropy over rows of ``logits`` (N, V) whose label is not -100, with the
    gradient of the logits taken in the forward pass into one (N, V) float32 buffer.

    ``F.cross_entropy`` keeps the log-softmax (N, V) for its backward pass, which then allocates
    two more: the loss's gradient, zeros but for the labels, and the logits' gradient. Here the
    softmax minus the one-hot labels is kept instead, and the backward pass scales it in place:
    one vocabulary-sized buffer besides the logits instead of three, which took 8% off an SFT
    step of the builtin model's shape on CPU (``docs/benchmarks.md``, "Freeze"). The graph can
    be run backward once (``retain_graph`` is not supported).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            x = logits.float()
            unlabelled = (labels == IGNORE_INDEX)[:, None]  # (N, 1)
            target = labels[:, None].masked_fill(unlabelled, 0)
            top, picked = x.amax(dim=1, keepdim=True), x.gather(1, target)  # (N, 1) each
            # becomes softmax(x) - one_hot(label); in place where x is a float32 copy already
            grad = (torch.sub(x, top) if x is logits else x.sub_(top)).exp_()
            norm = grad.sum(dim=1, keepdim=True)
            nll = top + norm.log() - picked  # (N, 1): logsumexp - logit of the label
            total = nll.masked_fill(unlabelled, 0.0).sum()
            # an unlabelled row is divided by infinity to zeros, and gets no one-hot subtracted
            one_hot = unlabelled.to(grad.dtype) - 1.0
            grad.div_(norm.masked_fill(unlabelled, math.inf)).scatter_add_(1, target, one_hot)
        ctx.save_for_backward(grad)
        ctx.dtype = logits.dtype
        return total

    @staticmethod
    def backward(ctx, grad_total: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_total).to(ctx.dtype), None


def loss_sum(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropy over labels != -100, number of such labels).

    The labels are shifted rather than the logits, so the (B, T, V) logits are never copied.
    Where a gradient is wanted the loss is :class:`_CrossEntropySum`, else ``F.cross_entropy``.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits  # (B, T, V)
    labels = F.pad(batch["labels"], (0, 1), value=IGNORE_INDEX)[:, 1:]  # (B, T): next tokens
    logits, flat = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    if torch.is_grad_enabled() and logits.requires_grad:
        total = _CrossEntropySum.apply(logits, flat)
    else:
        total = F.cross_entropy(logits.float(), flat, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (labels != IGNORE_INDEX).sum()


def count_tokens(batch: Batch) -> int:
    mask = batch.get("attention_mask")
    return int(mask.sum()) if mask is not None else batch["input_ids"].numel()


def batch_stream(data: TrainData, rank: int = 0, world: int = 1) -> Iterator[Batch]:
    """Endless micro-batches for process ``rank``: epoch after epoch of ``data``."""
    epoch = 0
    while True:
        source = data(epoch) if callable(data) else data
        seen = 0
        for i, batch in enumerate(source):
            seen += 1
            if i % world == rank:
                yield batch
        if seen == 0:
            raise DeadzoneError("the training data yielded no batches")
        epoch += 1


def steps_for_epochs(data: TrainData, epochs: int, grad_accum: int = 1, processes: int = 1) -> int:
    """Optimizer steps that take ``epochs`` passes over ``data`` (epoch 0's length; a step takes
    ``grad_accum`` micro-batches on each of ``processes``): the ``steps`` of a multi-epoch run.
    A last partial step is dropped (it would start the next epoch)."""
    check_int("epochs", epochs, 1)
    batches = sum(1 for _ in (data(0) if callable(data) else data))
    steps = epochs * batches // (grad_accum * processes)
    if steps == 0:
        raise DeadzoneError(
            f"{epochs} epoch(s) of {batches} batch(es) make no step of {grad_accum * processes}"
        )
    return steps


@contextmanager
def deterministic(enabled: bool) -> Iterator[None]:
    """Deterministic torch kernels inside the block (warn where none exists); restored after.

    Uninitialised memory is not filled (a debugging aid that costs bandwidth on every
    allocation and does not change the results of correct kernels).
    """
    fill = torch.utils.deterministic
    was = torch.are_deterministic_algorithms_enabled()
    was_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    was_fill = fill.fill_uninitialized_memory
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
        fill.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=was_warn)
        fill.fill_uninitialized_memory = was_fill


# --- the loop ---------------------------------------------------------------------------------


class Hook:
    """Called by :class:`SFTLoop` during a run; override what you need. ``step`` is 1-based.

    ``on_step_start`` runs before the step's first micro-batch (freeze here: the step then
    computes no gradient for what was frozen); ``on_after_backward`` once the gradients of the
    step are complete and averaged over processes, before clipping and the optimizer step;
    ``on_step_end`` after the optimizer step; ``on_evaluate`` after each evaluation (step 0 too).
    """

    def on_step_start(self, loop: SFTLoop, step: int) -> None:
        pass

    def on_after_backward(self, loop: SFTLoop, step: int) -> None:
        pass

    def on_step_end(self, loop: SFTLoop, step: int, loss: float) -> None:
        pass

    def on_evaluate(self, loop: SFTLoop, step: int, eval_loss: float) -> None:
        pass


class SFTLoop:
    """One SFT run of ``model`` (modified in place). ``run()`` returns a :class:`RunResult`.

    The optimizer, accelerator and freezer stay reachable as attributes, for callers that
    inspect them (tests); hooks change the trainable set through :meth:`freeze`,
    :meth:`unfreeze` and :meth:`set_lr_scales`, by parameter name (``named_parameters()`` of
    the unwrapped model).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        train_data: TrainData,
        eval_batches: list[Batch],
        config: SFTConfig,
        *,
        accelerator: Accelerator | None = None,
        description: str = "sft",
        show_progress: bool = True,
        hooks: Sequence[Hook] = (),
    ) -> None:
        if not eval_batches:
            raise DeadzoneError("no evaluation batches")
        self.config = config
        self.accelerator = accelerator or make_accelerator(config)
        acc = self.accelerator
        if config.gradient_checkpointing:
            enable_checkpointing(model)
        self.trainable_params = sum(p.numel() for p in trainable_parameters(model))
        optimizer = build_optimizer(model, config)
        self.model, self.optimizer = acc.prepare(model, optimizer)
        self.freezer = Freezer(acc.unwrap_model(self.model), self.optimizer)
        self._wrapped_version = self.freezer.version
        self.prefix = FrozenPrefix(self.module, cache=config.cache_prefix)
        if config.cache_prefix and (callable(train_data) or isinstance(train_data, Sized)):
            # epochs that can be compared are; an endless stream (an experiment's batches of a
            # fixed example list) is not read ahead: a changed example only misses the cache,
            # whose keys are the examples' tokens
            check_same_every_epoch(train_data)
        self.hooks = list(hooks)
        self._set_lr(0)
        self.train_data = train_data
        self.eval_batches = eval_batches[acc.process_index :: acc.num_processes]
        self.description = description
        self.show_progress = show_progress and acc.is_main_process

    # --- the trainable set, changed by hooks ---

    @property
    def module(self) -> torch.nn.Module:
        """The model itself, unwrapped from DDP."""
        return self.accelerator.unwrap_model(self.model)

    def freeze(self, names: Iterable[str]) -> list[str]:
        """Freeze parameters by name from the next forward pass on; returns those newly frozen."""
        return self.freezer.freeze(names)

    def unfreeze(self, names: Iterable[str]) -> list[str]:
        """Train parameters again (fresh optimizer state); returns those newly unfrozen."""
        return self.freezer.unfreeze(names)

    def set_lr_scales(self, scales: dict[str, float]) -> None:
        """Multiply the scheduled learning rate of each named parameter (others: 1.0)."""
        self.freezer.set_lr_scales(scales)

    def trainable_count(self) -> int:
        return sum(p.numel() for p in trainable_parameters(self.module))

    def _set_lr(self, step: int) -> None:
        """Learning rate of optimizer step ``step`` (0-based) in every group, times its scale."""
        lr = self.config.lr * lr_factor(step, self.config)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get(LR_SCALE, 1.0)

    def _rewrap_if_changed(self) -> None:
        """Under DDP, a fresh wrapper (and reducer) for the current trainable set."""
        acc = self.accelerator
        if self.freezer.version == self._wrapped_version:
            return
        self._wrapped_version = self.freezer.version
        self.prefix.refresh()
        if acc.num_processes == 1 or self.model is self.module:
            return
        module, optimizer = self.module, self.optimizer.optimizer
        self.model = self.optimizer = None
        # accelerate forgets what it prepared (the old wrapper, and with it the old reducer's
        # autograd hooks), then prepares the module and the same optimizer again
        acc.free_memory()
        self.model, self.optimizer = acc.prepare(module, optimizer)
        self.freezer.optimizer = self.optimizer

    def _call(self, event: str, *args) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self, *args)

    # --- training ---

    def _to_device(self, batch: Batch) -> Batch:
        return {k: v.to(self.accelerator.device) for k, v in batch.items()}

    def _global_sum(self, value: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(value, dtype=torch.float64, device=self.accelerator.device)
        return (
            self.accelerator.reduce(t, reduction="sum") if self.accelerator.num_processes > 1 else t
        )

    @torch.no_grad()
    def evaluate(self) -> float:
        """Token-weighted mean loss over the eval batches (all processes)."""
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.accelerator.device)
        count = torch.zeros((), dtype=torch.float64, device=self.accelerator.device)
        for batch in self.eval_batches:
            s, n = loss_sum(self.model, self._to_device(batch))
            total += s.double()
            count += n
        self.model.train()
        total, count = self._global_sum(total), self._global_sum(count)
        if count == 0:
            raise DeadzoneError("the evaluation batches hold no labelled token")
        loss = float(total / count)
        if not math.isfinite(loss):
            raise RunFailed(f"non-finite eval loss ({loss})")
        return loss

    def train_step(self, stream: Iterator[Batch], step: int) -> tuple[float, int]:
        """One optimizer step over ``grad_accum`` micro-batches: (train loss, tokens seen)."""
        acc = self.accelerator
        self._rewrap_if_changed()
        self._set_lr(step - 1)  # after the hooks, which may regroup (lr_factor is 0-based)
        micro = [self._to_device(next(stream)) for _ in range(self.config.grad_accum)]
        labelled = self._global_sum(
            sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
        )
        if labelled == 0:
            raise RunFailed(f"step {step} holds no labelled token")
        scale = acc.num_processes / float(labelled)  # DDP averages gradients over processes
        total = torch.zeros((), dtype=torch.float64, device=acc.device)
        for i, batch in enumerate(micro):
            sync = nullcontext() if i == len(micro) - 1 else acc.no_sync(self.model)
            with sync:
                s, _ = loss_sum(self.model, batch)
                acc.backward(s * scale)
            total += s.detach().double()
        loss = float(self._global_sum(total) / labelled)
        if not math.isfinite(loss):
            raise RunFailed(f"non-finite train loss ({loss}) at step {step}")
        self._call("on_after_backward", step)
        self._clip_and_step(step)
        tokens = int(self._global_sum(sum(count_tokens(b) for b in micro)))
        return loss, tokens

    def _clip_and_step(self, step: int) -> None:
        if self.config.max_grad_norm is not None:
            params = [p for p in self.model.parameters() if p.requires_grad]
            norm = self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm)
            if not math.isfinite(float(norm)):
                raise RunFailed(f"non-finite gradient norm ({float(norm)}) at step {step}")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def run(self) -> RunResult:
        """Train for ``config.steps`` optimizer steps; evaluate at 0, every ``eval_every``, end."""
        acc = self.accelerator
        result = RunResult(
            trainable_params=self.trainable_params,
            total_params=sum(p.numel() for p in self.module.parameters()),
            device=str(acc.device),
            precision=str(acc.mixed_precision),
            processes=acc.num_processes,
        )
        peak = PeakMemory(acc.device)
        start, cpu_start = time.perf_counter(), time.process_time()
        with deterministic(self.config.deterministic):
            set_seed(self.config.seed)
            try:
                self._loop(result)
            except RunFailed as e:
                result.status, result.error = "failed", str(e)
                result.final_train_loss = result.final_eval_loss = None
            finally:
                self.prefix.remove()
        result.seconds = time.perf_counter() - start
        result.cpu_seconds = time.process_time() - cpu_start
        result.peak_memory_bytes, result.peak_memory_scope = peak.read()
        return result

    def _measures(self, seconds: float, trainable: int | None = None) -> dict:
        return {
            "trainable_params": self.trainable_count() if trainable is None else trainable,
            "optimizer_state_bytes": optimizer_state_bytes(self.optimizer),
            "step_seconds": seconds,
        }

    def _loop(self, result: RunResult) -> None:
        cfg = self.config
        result.step0_eval_loss = self.evaluate()
        self._call("on_evaluate", 0, result.step0_eval_loss)
        result.curve.append(
            {"step": 0, "train_loss": None, "eval_loss": result.step0_eval_loss}
            | self._measures(0.0)
        )
        stream = batch_stream(
            self.train_data, self.accelerator.process_index, self.accelerator.num_processes
        )
        self.model.train()
        train_seconds, losses = 0.0, []
        with make_progress(
            "loss {task.fields[loss]:.4f}",
            "{task.fields[tps]:,.0f} tok/s",
            disable=not self.show_progress,
        ) as bar:
            task = bar.add_task(self.description, total=cfg.steps, loss=float("nan"), tps=0.0)
            for step in range(1, cfg.steps + 1):
                t0 = time.perf_counter()
                self._call("on_step_start", step)
                trainable = self.trainable_count()
                loss, tokens = self.train_step(stream, step)
                self._call("on_step_end", step, loss)
                seconds = time.perf_counter() - t0
                train_seconds += seconds
                losses.append(loss)
                result.steps_done, result.train_tokens = step, result.train_tokens + tokens
                result.tokens_per_second = result.train_tokens / max(train_seconds, 1e-9)
                eval_loss = None
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    eval_loss = self.evaluate()
                    self._call("on_evaluate", step, eval_loss)
                result.curve.append(
                    {"step": step, "train_loss": loss, "eval_loss": eval_loss}
                    | self._measures(seconds, trainable)
                )
                bar.update(task, advance=1, loss=loss, tps=result.tokens_per_second)
        tail = max(1, math.ceil(0.1 * cfg.steps))
        result.final_train_loss = sum(losses[-tail:]) / tail
        result.final_eval_loss = result.curve[-1]["eval_loss"]


def train(
    model: torch.nn.Module,
    train_data: TrainData,
    eval_batches: list[Batch],
    config: SFTConfig,
    **kwargs,
) -> RunResult:
    """Fine-tune ``model`` in place; see :class:`SFTLoop` for the keyword arguments."""
    return SFTLoop(model, train_data, eval_batches, config, **kwargs).run()
