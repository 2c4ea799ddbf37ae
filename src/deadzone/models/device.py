"""The one helper that picks device, dtype and torch's thread count."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from deadzone.errors import DeadzoneError

log = logging.getLogger(__name__)

# Weight dtypes a model may be loaded in for training (float16 has too little range for the
# AdamW state and updates without loss scaling, which the training loop does not do).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def get_device(name: str | None = None) -> torch.device:
    """``name`` if given, else CUDA when available, else MPS, else CPU."""
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 where the device computes it natively, else None (full precision)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def weight_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """The dtype to load weights in: ``float32``, ``bfloat16``, or ``auto`` (bfloat16 where
    ``device`` computes it natively, else float32).

    bfloat16 weights halve the memory of weights, gradients and optimizer state; their updates
    are rounded to 8 bits of mantissa, so small learning rates train less than in float32.
    """
    device = device or get_device()
    if name == "auto":
        return autocast_dtype(device) or torch.float32
    if name not in DTYPES:
        raise DeadzoneError(f"unknown dtype {name!r}; choose auto, {', '.join(DTYPES)}")
    if name == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise DeadzoneError(f"dtype bfloat16 is not supported by {torch.cuda.get_device_name()}")
    return DTYPES[name]


# --- threads ---------------------------------------------------------------------------------


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_cores(samples: int = 10, interval: float = 0.02) -> float:
    """How many cores other work keeps busy now, as seen by this process.

    On Linux, the mean over ``samples`` of the number of runnable tasks in ``/proc/loadavg``
    (this process's own thread excluded), scaled to the share of the machine's cores this
    process may use; elsewhere the one-minute load average, scaled the same way.
    """
    share = usable_cores() / (os.cpu_count() or 1)
    counts = []
    for i in range(samples):
        running = _runnable()
        if running is None:
            break
        counts.append(max(0, running - 1))
        if i < samples - 1:
            time.sleep(interval)
    if counts:
        return share * sum(counts) / len(counts)
    try:
        return share * os.getloadavg()[0]
    except OSError:
        return 0.0


def _runnable() -> int | None:
    """Runnable tasks of the whole machine now (``/proc/loadavg``'s ``running/total``)."""
    try:
        return int(Path("/proc/loadavg").read_text().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def choose_threads(requested: int | None = None, runs: int = 1) -> int:
    """Torch threads for each of ``runs`` runs at once (:func:`thread_choice`); logs what it
    chose and why.

    On a busy machine torch's default (every core) is the worst choice: its threads wait for
    each other at every operation while the other work holds the cores they wait for.
    """
    threads, why = thread_choice(requested, runs)
    log.info("torch threads: %s", why)
    return threads


def thread_choice(requested: int | None = None, runs: int = 1) -> tuple[int, str]:
    """``(threads, the line saying why)``: ``requested``, else ``OMP_NUM_THREADS``, else the
    usable cores that other work leaves idle, divided among the ``runs`` (at least 1)."""
    each = "" if runs == 1 else f" per run, {runs} runs at once"
    if requested is not None:
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
            raise DeadzoneError(f"threads must be an integer >= 1, got {requested!r}")
        return requested, f"{requested}{each} (asked for)"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), f"{env}{each} (OMP_NUM_THREADS)"
    cores, busy = usable_cores(), busy_cores()
    threads = max(1, min(cores, round(cores - busy)) // max(1, runs))
    return threads, f"{threads}{each} ({cores} usable cores, {busy:.1f} busy with other work)"


def use_threads(requested: int | None = None) -> int:
    """Set torch's thread count to :func:`choose_threads` ``(requested)``; return it."""
    threads = choose_threads(requested)
    torch.set_num_threads(threads)
    return threads
