"""Peak memory of a run: CUDA's allocator counter, or the resident set of the process on CPU.

On CUDA the counter is reset at the start of the run. On CPU, Linux lets a process reset its
resident-set peak ("5" written to ``/proc/self/clear_refs``) and read it back (``VmHWM`` in
``/proc/self/status``): the peak is then the run's. Elsewhere only the peak over the life of the
process is known (``ru_maxrss``), which includes whatever ran in it before, earlier runs too; it
is read all the same and labelled ``"process"`` instead of ``"run"``.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch

RUN, PROCESS = "run", "process"  # what a peak covers


class PeakMemory:
    """Started at the beginning of a run on ``device``; :meth:`read` at its end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.scope = RUN
        else:
            self.scope = RUN if _reset_rss_peak() else PROCESS

    def read(self) -> tuple[int, str]:
        """(peak bytes, ``"run"`` or ``"process"``)."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device), RUN
        hwm = _vm_hwm() if self.scope == RUN else None
        if hwm is not None:
            return hwm, RUN
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB, macOS: bytes
        return int(peak if sys.platform == "darwin" else peak * 1024), PROCESS


def _reset_rss_peak() -> bool:
    """Reset this process's resident-set peak to its current resident set; False if not
    possible here."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _vm_hwm() is not None


def _vm_hwm() -> int | None:
    """``VmHWM`` of ``/proc/self/status`` (the kernel's resident-set peak) in bytes, or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # "VmHWM:     1234 kB"
    except (OSError, ValueError, IndexError):
        pass
    return None
