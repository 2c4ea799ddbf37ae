"""The one helper that picks device and dtype."""

from __future__ import annotations

import torch


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
