"""Put sites into a strategy state before SFT: full, frozen, crystal, random or zero.

Every strategy is a function with the same signature, ``fn(model, site, ctx) -> None``, that
rewrites the site's weight in place (or leaves it) and sets ``requires_grad``. A frozen site has
``requires_grad=False``; the training loop builds its optimizer over trainable parameters only, so
a frozen site holds no optimizer state. Adding a strategy means adding one function to
``STRATEGIES``.

A site is one weight matrix; a bias beside it is not part of the site and stays trainable.
A site whose storage is shared with other parameters (a tied input embedding and output head)
changes them too: :func:`apply_strategies` reports those names in ``shared_with``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from deadzone.errors import DeadzoneError, RunFailed
from deadzone.models.sites import Site, get_parameter


class StrategyFailed(RunFailed):
    """A strategy cannot be applied to a site (its matrix holds NaN, its SVD failed): the run
    that asked for it fails with this reason, and the runs beside it go on."""


@dataclass
class StrategyContext:
    """What a strategy may need beyond the model and the site.

    ``rank`` is used by ``crystal``; ``generator`` seeds the draws of ``random``.
    """

    rank: int = 1
    generator: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))


StrategyFn = Callable[[torch.nn.Module, Site, StrategyContext], None]


def _freeze(model: torch.nn.Module, site: Site) -> None:
    get_parameter(model, site).requires_grad_(False)


@torch.no_grad()
def _overwrite(model: torch.nn.Module, site: Site, value: torch.Tensor) -> None:
    """Copy ``value`` (out x in) into the site's stored tensor, in its dtype and device."""
    param = get_parameter(model, site)
    site.matrix(param.data).copy_(value.to(device=param.device, dtype=param.dtype))


def full(model: torch.nn.Module, site: Site, ctx: StrategyContext) -> None:
    """Trained with everything else."""
    get_parameter(model, site).requires_grad_(True)


def frozen(model: torch.nn.Module, site: Site, ctx: StrategyContext) -> None:
    """Kept at its current (pretrained) values."""
    _freeze(model, site)


def crystal(model: torch.nn.Module, site: Site, ctx: StrategyContext) -> None:
    """Replaced by its best rank-k approximation (truncated SVD, Eckart-Young), then frozen."""
    check_rank(site, ctx.rank)
    w = site.matrix(get_parameter(model, site).detach()).to("cpu", torch.float64)  # (out, in)
    if not torch.isfinite(w).all():
        raise StrategyFailed(f"crystal cannot be applied to {site.name}: it holds NaN or Inf")
    try:
        approx = low_rank(w, ctx.rank)
    except torch.linalg.LinAlgError as e:
        raise StrategyFailed(f"crystal cannot be applied to {site.name}: {e}") from None
    _overwrite(model, site, approx)
    _freeze(model, site)


def random(model: torch.nn.Module, site: Site, ctx: StrategyContext) -> None:
    """Re-drawn as the model's own initialisation would draw it, then frozen."""
    _overwrite(model, site, redraw(model, site, ctx.generator))
    _freeze(model, site)


def zero(model: torch.nn.Module, site: Site, ctx: StrategyContext) -> None:
    """Set to zero, then frozen."""
    param = get_parameter(model, site)
    _overwrite(model, site, torch.zeros(site.shape, dtype=param.dtype))
    _freeze(model, site)


STRATEGIES: dict[str, StrategyFn] = {
    "full": full,
    "frozen": frozen,
    "crystal": crystal,
    "random": random,
    "zero": zero,
}


# --- the math and the initialiser ---------------------------------------------------------------


def low_rank(w: torch.Tensor, rank: int) -> torch.Tensor:
    """Best rank-``rank`` approximation of ``w`` in Frobenius and spectral norm (Eckart-Young)."""
    u, sigma, vh = torch.linalg.svd(w, full_matrices=False)  # (out, r), (r,), (r, in)
    return (u[:, :rank] * sigma[:rank]) @ vh[:rank]  # (out, in)


def check_rank(site: Site, rank: int) -> None:
    """A rank that would compress: at least 1 and below the matrix's smaller dimension."""
    smaller = min(site.shape)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank < smaller:
        raise DeadzoneError(
            f"rank {rank!r} must be >= 1 and < {smaller}, the smaller dimension of "
            f"{site.name} ({site.shape[0]}x{site.shape[1]})"
        )


def _owner_modules(model: torch.nn.Module, site: Site) -> tuple[str, str | None]:
    """Names of the module holding the site's weight and of its parent inside the model.

    The parent is None when it is the model itself or a base model (whose ``_init_weights`` may
    touch far more than this site).
    """
    module_name = site.param_name.removesuffix(".weight")
    parent_name = module_name.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    base = getattr(model, "base_model", model)
    if parent is model or parent is base or not parent_name:
        return module_name, None
    return module_name, parent_name


def redraw(model: torch.nn.Module, site: Site, generator: torch.Generator) -> torch.Tensor:
    """A fresh draw of the site's matrix (out x in) from the model's own initialiser.

    The model's ``_init_weights`` is applied, on a CPU copy, to the module holding the weight and
    then to its parent (where depth scaling such as GPT-2's ``c_proj`` by ``1/sqrt(2 n_layer)``
    lives). The global RNG is untouched: the draw is seeded from ``generator``. A model without
    an initialiser that moves the weight falls back to ``normal(0, initializer_range)``.
    """
    module_name, parent_name = _owner_modules(model, site)
    scratch_name = parent_name or module_name
    scratch = copy.deepcopy(model.get_submodule(scratch_name)).to("cpu", torch.float32)
    for p in scratch.parameters():
        p._is_hf_initialized = False
    weight_path = site.param_name[len(scratch_name) + 1 :]
    before = scratch.get_parameter(weight_path).detach().clone()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    init = getattr(model, "_init_weights", None)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        if callable(init):
            init(
                scratch.get_submodule(module_name[len(scratch_name) + 1 :])
                if parent_name
                else scratch
            )
            if parent_name:
                init(scratch)
        drawn = scratch.get_parameter(weight_path).detach()
        if torch.equal(drawn, before):
            std = float(getattr(model.config, "initializer_range", None) or 0.02)
            drawn = torch.empty_like(before).normal_(0.0, std)
    return site.matrix(drawn).clone()  # (out, in)


# --- applying a plan --------------------------------------------------------------------------


def shared_with(model: torch.nn.Module, site: Site) -> list[str]:
    """Other parameter names backed by the same storage as the site (e.g. a tied output head)."""
    ptr = get_parameter(model, site).data_ptr()
    return [
        name
        for name, p in model.named_parameters(remove_duplicate=False)
        if name != site.param_name and p.data_ptr() == ptr
    ]


def check_strategy(name: str) -> StrategyFn:
    try:
        return STRATEGIES[name]
    except KeyError:
        raise DeadzoneError(
            f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}"
        ) from None


def apply_strategies(
    model: torch.nn.Module,
    plan: Mapping[Site, str],
    *,
    rank: int = 1,
    seed: int = 0,
) -> list[dict]:
    """Apply ``plan`` (site -> strategy name) in place; return one record per site.

    Sites not in the plan are left as they are. Everything is validated before the model is
    touched. ``random`` draws from a generator seeded with ``seed``, in plan order.
    """
    fns = {site: check_strategy(name) for site, name in plan.items()}
    for site, name in plan.items():
        if name == "crystal":
            check_rank(site, rank)
    ctx = StrategyContext(rank=rank, generator=torch.Generator().manual_seed(seed))
    records = []
    for site, fn in fns.items():
        fn(model, site, ctx)
        records.append(
            {
                "site": site.name,
                "strategy": plan[site],
                "trainable": get_parameter(model, site).requires_grad,
                "params": site.params,
                "shared_with": shared_with(model, site),
            }
        )
    return records


def trainable_params(model: torch.nn.Module) -> int:
    """Number of trainable parameter values, shared storage counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
