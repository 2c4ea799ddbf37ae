"""Fingerprints of weights in memory: the same weights give the same fingerprint whatever device
they are on, other weights another. A plan records the fingerprint of the model it was made
for (``deadzone.plans``); a frozen prefix's cached outputs are keyed by its weights'
(``deadzone.training.prefix``). (A model directory's files are fingerprinted by
``deadzone.models.checkpoints.files_fingerprint``.)"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import torch

# Values sampled from each parameter for the fingerprint.
FINGERPRINT_SAMPLES = 16
# The plan's fingerprints of the weights rounded to a dtype they may be loaded in to fine-tune.
ROUNDED = {"fingerprint_bf16": torch.bfloat16, "fingerprint_fp16": torch.float16}


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's type, parameter names, shapes and dtypes, and ``FINGERPRINT_SAMPLES``
    values spread evenly over each parameter: the same weights give the same fingerprint
    whatever device they are on; other weights (another checkpoint, values rewritten), another."""
    return _fingerprint(model, None)


def rounded_fingerprint(model: torch.nn.Module, dtype: torch.dtype) -> str:
    """:func:`weights_fingerprint` without the dtypes and with the sampled values rounded to
    ``dtype``: the same weights in float32 or in ``dtype`` give the same one."""
    return _fingerprint(model, dtype)


def sample_indices(numel: int, count: int = FINGERPRINT_SAMPLES) -> torch.Tensor:
    """``count`` indices spread evenly over ``range(numel)``, first and last included, computed
    in integers: exact for any size (a float32 ``linspace`` rounds ``numel - 1`` up past the
    end for tensors over 2**24 elements)."""
    if numel == 0:
        return torch.zeros(0, dtype=torch.int64)
    steps = torch.arange(count, dtype=torch.int64)
    return steps * (numel - 1) // max(count - 1, 1)


def _fingerprint(model: torch.nn.Module, rounded_to: torch.dtype | None) -> str:
    h = hashlib.sha256(str(getattr(model.config, "model_type", "")).encode())
    _hash_parameters(h, model.named_parameters(), rounded_to)
    return h.hexdigest()


def parameters_fingerprint(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """sha256 of some parameters as :func:`weights_fingerprint` hashes them (names, shapes, dtypes
    and sampled values): a frozen prefix's weights, say."""
    h = hashlib.sha256()
    _hash_parameters(h, named, None)
    return h.hexdigest()


def _hash_parameters(h, named: Iterable[tuple[str, torch.Tensor]], rounded_to) -> None:
    for name, p in named:
        dtype = f"{p.dtype}\0" if rounded_to is None else ""
        h.update(f"\0{name}\0{tuple(p.shape)}\0{dtype}".encode())
        flat = p.detach().reshape(-1)
        index = sample_indices(flat.numel()).to(flat.device)
        sample = flat[index] if rounded_to is None else flat[index].to(rounded_to)
        h.update(sample.to("cpu", torch.float32).numpy().tobytes())


def same_weights(model: torch.nn.Module, made_for: dict) -> bool:
    """Whether ``model`` holds the weights a plan's ``model`` entry was made for: its exact
    fingerprint, or one of the rounded ones the plan records (:data:`ROUNDED`)."""
    if weights_fingerprint(model) == made_for["fingerprint"]:
        return True
    return any(
        made_for.get(key) == rounded_fingerprint(model, dtype)
        for key, dtype in ROUNDED.items()
        if made_for.get(key) is not None
    )
