"""Cheap scores of each site, to rank sites before (and to test whether they predict) SFT costs.

Every score is a function with the same signature, ``fn(model, sites, data) -> {site: value}``,
that leaves the model as it found it (weights, ``requires_grad``, ``.grad``, train/eval mode).
A value is ``None`` where the score is not defined for a site. Adding a score means adding one
function to :data:`SCORES`.

- ``grad_norm``: Frobenius norm of the gradient of the SFT loss with respect to each site's
  matrix at step 0, the loss being the token-weighted mean over ``data.train`` (a few training
  batches). The model is in eval mode: dropout off, so the score is a function of the weights
  and the batches alone (a step-0 SFT gradient in train mode differs only by dropout noise).
- ``block_influence``: ShortGPT's Block Influence (Men et al. 2024) at sub-layer granularity:
  one minus the cosine similarity between the residual stream before and after each attention
  and each MLP sub-layer, averaged over the tokens of ``data.eval`` (padding excluded). Every
  site of a sub-layer (``attn_*`` roles: the attention's; ``mlp_*``: the MLP's) gets its score;
  other sites get ``None``. Needs a sequential pre-norm block (GPT-2, Llama, Mistral, Qwen2,
  Gemma, OPT): the residual stream before a sub-layer is the input of its norm, and after the
  MLP the block's output. A parallel-residual block (GPT-NeoX, Phi) has no stream between its
  sub-layers and is refused.
- ``attribution``, ``fisher``, ``grad_weight``: read from the records of ``full`` runs made
  anyway (``data.runs``, recorded by :class:`deadzone.training.attribution.AttributionHook`),
  averaged over them: the site's share of the eval-loss decrease its own updates made (Loss
  Change Allocation, :func:`deadzone.geometry.attribution.share_of_decrease`; it says what a
  site's updates did in that run, not what freezing it costs), the mean over steps of the sum of
  its squared training gradient (diagonal Fisher), and the mean over steps of
  ``|grad . weight|``. The model is not read. Named without a record, they are refused; by
  default :func:`compute_scores` computes them only when ``data.runs`` holds records.
- the geometry metrics of ``deadzone analyze``: :func:`geometry_scores`, from its records.

:func:`spearman_permutation` measures how well a score ranks the measured costs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from deadzone.errors import DeadzoneError
from deadzone.geometry.attribution import AttributionRecord, mean_per_step, per_site
from deadzone.geometry.attribution import share_of_decrease as _share
from deadzone.geometry.spectral import METRICS
from deadzone.models.sites import Site, get_parameter
from deadzone.training.train import Batch, loss_sum

# Training batches the gradient norm is taken over, by default.
GRAD_BATCHES = 4


@dataclass
class ScoreData:
    """Batches the scores read: ``train`` for gradients, ``eval`` for activations; ``runs``: the
    attribution records of ``full`` runs, for the scores read from them."""

    train: list[Batch] = field(default_factory=list)
    eval: list[Batch] = field(default_factory=list)
    runs: list[AttributionRecord] = field(default_factory=list)


ScoreFn = Callable[[torch.nn.Module, list[Site], ScoreData], dict[str, float | None]]


@contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def grad_norm(
    model: torch.nn.Module, sites: list[Site], data: ScoreData
) -> dict[str, float | None]:
    """Norm of each site's step-0 gradient of the token-weighted SFT loss over ``data.train``."""
    if not data.train:
        raise DeadzoneError("the gradient norm needs at least one training batch")
    params = [get_parameter(model, site) for site in sites]
    flags = [p.requires_grad for p in params]
    device = params[0].device if params else torch.device("cpu")
    grads = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    tokens = 0
    try:
        for p in params:
            p.requires_grad_(True)
        with _eval_mode(model), torch.enable_grad():
            for batch in data.train:
                batch = {k: v.to(device) for k, v in batch.items()}
                total, count = loss_sum(model, batch)
                tokens += int(count)
                found = torch.autograd.grad(total, params, allow_unused=True)
                for g, d in zip(grads, found, strict=True):
                    if d is not None:  # None: the loss does not depend on it
                        g += d.double()  # summed losses: the gradient of the sum
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    if tokens == 0:
        raise DeadzoneError("the training batches hold no token that carries loss")
    return {s.name: float(g.norm()) / tokens for s, g in zip(sites, grads, strict=True)}


# (norm before the attention, norm before the MLP) of the block layouts understood, tried in
# order: Gemma's post-attention norm acts on the attention's output, not on the stream.
NORM_LAYOUTS = (
    ("ln_1", "ln_2"),  # GPT-2
    ("input_layernorm", "pre_feedforward_layernorm"),  # Gemma 2 / 3
    ("input_layernorm", "post_attention_layernorm"),  # Llama, Mistral, Qwen2, Gemma
    ("self_attn_layer_norm", "final_layer_norm"),  # OPT
)
_BLOCK_PATH = re.compile(r"^((?:[A-Za-z_]\w*\.)+?\d+)\.")


def _sublayer(site: Site) -> str | None:
    if site.layer is None:
        return None
    if site.role.startswith("attn"):
        return "attn"
    if site.role.startswith("mlp"):
        return "mlp"
    return None


def _norms(model: torch.nn.Module, block: torch.nn.Module, path: str):
    config = getattr(model, "config", None)
    if getattr(config, "use_parallel_residual", False) or getattr(config, "parallel_attn", False):
        raise DeadzoneError(
            "block influence needs sequential sub-layers; this model's blocks are parallel"
        )
    if getattr(config, "do_layer_norm_before", True) is False:
        raise DeadzoneError("block influence needs pre-norm blocks; this model is post-norm")
    for first, second in NORM_LAYOUTS:
        if hasattr(block, first) and hasattr(block, second):
            return getattr(block, first), getattr(block, second)
    raise DeadzoneError(f"block influence does not know the layout of block {path}")


@torch.no_grad()
def block_influence(
    model: torch.nn.Module, sites: list[Site], data: ScoreData
) -> dict[str, float | None]:
    """1 - cos(residual stream before, after) of each site's sub-layer, mean over eval tokens."""
    if not data.eval:
        raise DeadzoneError("block influence needs at least one evaluation batch")
    blocks: dict[int, str] = {}
    for site in sites:
        if _sublayer(site) is not None:
            blocks[site.layer] = _BLOCK_PATH.match(site.param_name)[1]
    totals = {(layer, part): 0.0 for layer in blocks for part in ("attn", "mlp")}
    state: dict = {}

    def distance(a: torch.Tensor, b: torch.Tensor) -> float:  # (B, T, d) each
        cos = F.cosine_similarity(a.float(), b.float(), dim=-1)  # (B, T)
        return float(((1.0 - cos) * state["mask"]).double().sum())

    def hooks(layer: int):
        def before_attn(module, args):
            state[layer, "x0"] = args[0]

        def before_mlp(module, args):
            state[layer, "x1"] = args[0]
            totals[layer, "attn"] += distance(state.pop((layer, "x0")), args[0])

        def after(module, args, output):
            x2 = output[0] if isinstance(output, tuple) else output
            totals[layer, "mlp"] += distance(state.pop((layer, "x1")), x2)

        return before_attn, before_mlp, after

    handles = []
    tokens = 0
    try:
        for layer, path in blocks.items():
            block = model.get_submodule(path)
            first, second = _norms(model, block, path)
            before_attn, before_mlp, after = hooks(layer)
            handles += [
                first.register_forward_pre_hook(before_attn),
                second.register_forward_pre_hook(before_mlp),
                block.register_forward_hook(after),
            ]
        device = next(model.parameters()).device
        with _eval_mode(model):
            for batch in data.eval:
                inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                mask = inputs.get("attention_mask")
                state["mask"] = torch.ones_like(inputs["input_ids"]) if mask is None else mask
                tokens += int(state["mask"].sum())
                model(**inputs, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if tokens == 0:
        raise DeadzoneError("the evaluation batches hold no token")
    return {
        s.name: None if (part := _sublayer(s)) is None else totals[s.layer, part] / tokens
        for s in sites
    }


def _mean_over_runs(
    data: ScoreData, sites: list[Site], read: Callable[[AttributionRecord], dict], what: str
) -> dict[str, float | None]:
    if not data.runs:
        raise DeadzoneError(
            f"{what} is read from the attribution record of a full run, and none was given"
        )
    values = [read(record) for record in data.runs]
    out = {}
    for s in sites:
        found = [v[s.name] for v in values if v[s.name] is not None]
        out[s.name] = sum(found) / len(found) if found else None
    return out


def attribution(
    model: torch.nn.Module, sites: list[Site], data: ScoreData
) -> dict[str, float | None]:
    """Each site's share of the eval-loss decrease of the runs in ``data.runs``, their mean."""
    return _mean_over_runs(data, sites, lambda r: _share(r, sites), "attribution")


def fisher(model: torch.nn.Module, sites: list[Site], data: ScoreData) -> dict[str, float | None]:
    """Mean over training steps of the sum of each site's squared gradient, mean over runs."""
    return _mean_over_runs(
        data, sites, lambda r: per_site(mean_per_step(r.grad_sq, r.grad_steps), sites), "fisher"
    )


def grad_weight(
    model: torch.nn.Module, sites: list[Site], data: ScoreData
) -> dict[str, float | None]:
    """Mean over training steps of ``|grad . weight|`` of each site, mean over runs."""
    return _mean_over_runs(
        data,
        sites,
        lambda r: per_site(mean_per_step(r.grad_weight, r.grad_steps), sites),
        "grad_weight",
    )


SCORES: dict[str, ScoreFn] = {
    "grad_norm": grad_norm,
    "block_influence": block_influence,
    "attribution": attribution,
    "fisher": fisher,
    "grad_weight": grad_weight,
}
RUN_SCORES = ("attribution", "fisher", "grad_weight")  # read from ``data.runs``


def compute_scores(
    model: torch.nn.Module, sites: list[Site], data: ScoreData, names: tuple[str, ...] = ()
) -> dict[str, dict[str, float | None]]:
    """``{score: {site: value}}`` of the scores named (default: every one in :data:`SCORES`, less
    those of :data:`RUN_SCORES` when ``data.runs`` is empty)."""
    unknown = [n for n in names if n not in SCORES]
    if unknown:
        raise DeadzoneError(f"unknown score {unknown[0]!r}; known: {', '.join(SCORES)}")
    if not names:
        names = tuple(n for n in SCORES if data.runs or n not in RUN_SCORES)
    return {name: SCORES[name](model, sites, data) for name in names}


def geometry_scores(
    records: list[dict], metrics: tuple[str, ...] = METRICS
) -> dict[str, dict[str, float | None]]:
    """``{metric: {site: value}}`` from ``deadzone analyze`` records (``None``: undefined)."""
    return {m: {r["site"]: r.get(m) for r in records} for m in metrics}


def spearman_permutation(
    x: list[float | None], y: list[float | None], n_perm: int = 9999, seed: int = 0
) -> tuple[float | None, float | None]:
    """Spearman's rho of paired values and its two-sided permutation p-value.

    Pairs where either value is ``None`` or NaN are left out. ``rho`` is
    ``scipy.stats.spearmanr``'s; the p-value is ``(1 + #{|rho_perm| >= |rho|}) / (1 + n_perm)``
    over ``n_perm`` permutations of ``y`` drawn from ``seed`` (never zero, exact in
    expectation). ``(None, None)`` with fewer than 3 pairs or a side whose values are all equal.
    """
    if len(x) != len(y):
        raise DeadzoneError(f"spearman needs paired values, got {len(x)} and {len(y)}")
    if n_perm < 1:
        raise DeadzoneError(f"n_perm must be at least 1, got {n_perm}")
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if _number(a) and _number(b)]
    if len(pairs) < 3:
        return None, None
    a, b = (np.array(v, dtype=np.float64) for v in zip(*pairs, strict=True))
    if np.all(a == a[0]) or np.all(b == b[0]):
        return None, None
    rho = float(stats.spearmanr(a, b).statistic)
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    ra, rb = ra / np.linalg.norm(ra), rb / np.linalg.norm(rb)
    rng = np.random.default_rng(seed)
    permuted = rng.permuted(np.broadcast_to(rb, (n_perm, len(rb))), axis=1)  # (n_perm, n)
    rho_perm = permuted @ ra  # Pearson of the ranks: Spearman's rho of each permutation
    extreme = int(np.sum(np.abs(rho_perm) >= abs(rho) - 1e-12))
    return rho, (1 + extreme) / (1 + n_perm)


def _number(v: object) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))
