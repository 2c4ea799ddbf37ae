"""Sites -> geometry records: the numbers behind ``deadzone analyze``.

A record is a plain dict, ready for JSON::

    {"site": "L4.attn.c_proj", "layer": 4, "role": "attn_out", "shape": [768, 768],
     "params": 589824, "finite": true, "pr": 84.5, "pc1": 0.224, ..., "amplitude_pr": 1.03}

with one key per name in :data:`deadzone.geometry.spectral.METRICS`.
A metric that is not defined for a
matrix is ``None``; ``finite`` is false when the matrix held NaN or Inf, and then every metric is
``None`` ("not computable").
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import torch
from threadpoolctl import threadpool_limits

from deadzone.errors import DeadzoneError
from deadzone.geometry import spectral
from deadzone.models.device import get_device
from deadzone.models.sites import Site, select
from deadzone.progress import make_progress

log = logging.getLogger(__name__)

# Roles of the attention input projections (GPT-2 ``c_attn``, Llama ``q/k/v_proj``).
ATTN_IN_ROLES = ("attn_qkv", "attn_q", "attn_k", "attn_v")
ATTN_OUT_ROLE = "attn_out"

# Same-shaped matrices are stacked and measured together on an accelerator, up to this many
# bytes and matrices per batch. On the CPU each matrix is measured where it lies (no copy), on
# one core, as many matrices at once as there are worker threads.
BATCH_BYTES = 256 << 20
BATCH_MATRICES = 32


def record(site: Site, geometry: spectral.Geometry) -> dict:
    """The JSON-ready record of one site."""
    metrics = {k: (None if math.isnan(v) else v) for k, v in geometry.as_dict().items()}
    return {
        "site": site.name,
        "layer": site.layer,
        "role": site.role,
        "shape": [site.shape[0], site.shape[1]],
        "params": site.params,
        "finite": geometry.finite,
        **metrics,
    }


def _checked(pairs: Iterable[tuple[Site, torch.Tensor]]) -> Iterator[tuple[Site, torch.Tensor]]:
    for site, matrix in pairs:
        if matrix.ndim != 2:
            raise DeadzoneError(
                f"{site.name} is not a matrix: its tensor has shape {tuple(matrix.shape)}"
            )
        if tuple(matrix.shape) != site.shape:
            raise DeadzoneError(
                f"{site.name}: expected a {site.shape[0]}x{site.shape[1]} matrix (out x in), "
                f"got {matrix.shape[0]}x{matrix.shape[1]}"
            )
        yield site, matrix


def _batches(
    pairs: Iterator[tuple[Site, torch.Tensor]], device: torch.device, stack: bool
) -> Iterator[tuple[list[Site], torch.Tensor]]:
    """Runs of same-shaped matrices as ``(sites, (B, out, in) tensor on device)``.

    Without ``stack`` each matrix is its own batch of one, a view of the tensor given.
    """
    if not stack:
        for site, matrix in pairs:
            yield [site], matrix.to(device).unsqueeze(0)  # a view when already on device
        return
    sites: list[Site] = []
    buf: torch.Tensor | None = None
    for site, matrix in pairs:
        if buf is not None and (
            buf.shape[1:] != matrix.shape or buf.dtype != matrix.dtype or len(sites) == len(buf)
        ):
            yield sites, buf[: len(sites)]
            sites, buf = [], None
        if buf is None:
            size = matrix.numel() * matrix.element_size()
            room = max(1, min(BATCH_MATRICES, BATCH_BYTES // size))
            buf = torch.empty((room, *matrix.shape), dtype=matrix.dtype, device=device)
        buf[len(sites)].copy_(matrix)  # host -> device and out x in layout in one copy
        sites.append(site)
    if sites and buf is not None:
        yield sites, buf[: len(sites)]


@contextmanager
def _one_thread_each() -> Iterator[None]:
    """Torch and the BLAS libraries on one thread while the workers run: each worker keeps a
    core busy with one matrix, which scales better than splitting each matrix's eigensolver."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def _measured(
    batches: Iterator[tuple[list[Site], torch.Tensor]], K: int, workers: int
) -> Iterator[tuple[list[Site], list[spectral.Geometry]]]:
    """Geometry of each batch, in order. On ``workers`` threads, at most ``2 * workers`` batches
    wait or run at once (a stream is read only as fast as it is measured)."""
    if workers <= 1:
        for sites, batch in batches:
            yield sites, spectral.geometry_batch(batch, K)
        return
    pending: deque[tuple[list[Site], Future]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="deadzone-analyse") as pool:
        for sites, batch in batches:
            if len(pending) == 2 * workers:  # a queue, so no worker waits for a slow one
                done_sites, done = pending.popleft()
                yield done_sites, done.result()
            pending.append((sites, pool.submit(spectral.geometry_batch, batch, K)))
        while pending:
            done_sites, done = pending.popleft()
            yield done_sites, done.result()


def analyze(
    matrices: Iterable[tuple[Site, torch.Tensor]],
    *,
    total: int | None = None,
    device: torch.device | str | None = None,
    K: int = 8,
    progress: bool = True,
    workers: int | None = None,
) -> list[dict]:
    """Geometry records of ``(site, matrix out x in)`` pairs, in the order given.

    ``matrices`` may be a stream (one tensor at a time, as a checkpoint yields them); ``total``
    sizes the progress bar. Runs on ``device`` (default: the CUDA device if there is one; never
    on Apple's MPS, which has no float64). On the CPU, ``workers`` threads (default: torch's
    thread count) each measure one matrix on one core; the numbers do not depend on how many.
    """
    device = get_device(str(device) if device is not None else None)
    if device.type == "mps":  # no float64 there, and the accuracy needs it
        device = torch.device("cpu")
    on_cpu = device.type == "cpu"
    workers = max(1, workers or torch.get_num_threads()) if on_cpu else 1
    records: list[dict] = []
    with (
        make_progress(disable=not progress) as bar,
        _one_thread_each() if on_cpu else nullcontext(),
    ):
        task = bar.add_task("analyse", total=total)
        batches = _batches(_checked(matrices), device, stack=not on_cpu)
        for sites, geometries in _measured(batches, K, workers):
            for site, geo in zip(sites, geometries, strict=True):
                records.append(record(site, geo))
            bar.update(task, advance=len(sites), description=sites[-1].name)
        bar.update(task, description="analyse")
    return records


def analyze_checkpoint(spec: str, pattern: str | None = None, **options) -> list[dict]:
    """Records of the sites of checkpoint ``spec`` matching ``pattern`` (default: all).

    Safetensors checkpoints are streamed one matrix at a time, without building the model.
    Each record also says how the orientation of its stored matrix is known (``orientation``:
    ``"config"``, ``"tensor names"`` or ``"assumed"``, see
    :func:`deadzone.models.sites.orientation`).
    ``options`` go to :func:`analyze`.
    """
    from deadzone.models.checkpoints import absent_sites, open_checkpoint

    checkpoint = open_checkpoint(spec)
    absent = absent_sites(checkpoint)
    if absent:
        shown = ", ".join(absent[:8]) + (f" and {len(absent) - 8} more" if len(absent) > 8 else "")
        log.warning("%s lacks %d matrix(es) of its architecture: %s", spec, len(absent), shown)
    chosen = select(checkpoint.sites, pattern)
    records = analyze(checkpoint.matrices(chosen), total=len(chosen), **options)
    return [{**r, "orientation": checkpoint.orientation} for r in records]


def _per_layer_pr(records: list[dict], roles: tuple[str, ...]) -> dict[int, float]:
    by_layer: dict[int, list[float]] = {}
    for r in records:
        if r["role"] in roles and r["layer"] is not None and r["pr"] is not None:
            by_layer.setdefault(r["layer"], []).append(r["pr"])
    return {layer: statistics.fmean(v) for layer, v in by_layer.items()}


def summarize(records: list[dict]) -> dict:
    """What a reader wants from the records, as data.

    - ``sites``: how many were analysed;
    - ``mean_pr_by_role``: mean ``pr`` of each role (sites with a defined ``pr``);
    - ``attn_out_vs_in``: attention output projections (``c_proj``-type) against input
      projections (``c_attn``-type): mean PR of each, their ratio, and in how many of the layers
      holding both the output projection has the lower PR (``None`` without both kinds);
    - ``highest_pc1``: the site with the largest ``pc1`` and its value (``None`` if none);
    - ``not_computable``: sites whose matrix held NaN or Inf.
    """
    roles: dict[str, list[float]] = {}
    for r in records:
        if r["pr"] is not None:
            roles.setdefault(r["role"], []).append(r["pr"])
    out_pr = _per_layer_pr(records, (ATTN_OUT_ROLE,))
    in_pr = _per_layer_pr(records, ATTN_IN_ROLES)
    both = sorted(set(out_pr) & set(in_pr))
    comparison = None
    if both:
        mean_out = statistics.fmean(out_pr[layer] for layer in both)
        mean_in = statistics.fmean(in_pr[layer] for layer in both)
        comparison = {
            "attn_out_mean_pr": mean_out,
            "attn_in_mean_pr": mean_in,
            "ratio": mean_out / mean_in if mean_in else None,
            "layers_out_lower": sum(out_pr[layer] < in_pr[layer] for layer in both),
            "layers": len(both),
        }
    with_pc1 = [r for r in records if r["pc1"] is not None]
    top = max(with_pc1, key=lambda r: r["pc1"], default=None)
    return {
        "sites": len(records),
        "mean_pr_by_role": {role: statistics.fmean(v) for role, v in roles.items()},
        "attn_out_vs_in": comparison,
        "highest_pc1": None if top is None else {"site": top["site"], "pc1": top["pc1"]},
        "not_computable": [r["site"] for r in records if not r["finite"]],
    }
