"""Geometry of a weight matrix: pure functions from a tensor to numbers.

``W`` is a site's matrix in ``out x in`` orientation (rows are output units); ``sigma_i`` are
its singular values and ``lambda_i = sigma_i**2``. Definitions (see the design notes, "Geometry
of a matrix"):

- ``pr``: participation ratio ``(sum lambda)**2 / sum lambda**2`` of the row-centred matrix
  ``X = W - mean_over_rows(W)``; ``pc1``: ``lambda_max / sum lambda`` of the same ``X``.
- ``pr_uncentered``, ``pc1_uncentered``: the same of ``W`` itself.
- ``stable_rank``: ``||W||_F**2 / ||W||_2**2`` (equals ``1 / pc1_uncentered``).
- ``effective_rank``: Roy & Vetterli, ``exp(-sum p_i log p_i)`` with ``p_i = sigma_i / sum sigma``.
- ``spectral_norm``, ``frobenius_norm`` of ``W``.
- ``amplitude_pr``: PR of the row-centred ``out x K`` matrix of the rows' Gaussian-basis
  amplitudes (see :func:`amplitudes`).

How it is computed: no SVD. With ``G`` the Gram matrix on the smaller side of ``W`` (accumulated
in float64), ``sum lambda = trace(G)`` and ``sum lambda**2 = ||G||_F**2``; the Gram matrix of the
row-centred ``X`` follows from ``G`` algebraically, so one Gram product serves both. The spectrum
(for ``lambda_max`` and the effective rank) comes from a symmetric eigensolver on ``G``.
Eigenvalues below the rank tolerance ``max(out, in) * eps * lambda_max`` (``eps`` of float64)
are noise of the eigensolver and count as zero, so an exactly rank-1 matrix has effective rank 1.

Numbers that are not defined come back as NaN: every metric of a matrix holding NaN or Inf, and a
ratio whose denominator is zero (``pr`` of a matrix whose rows are all equal, anything but the
norms of a zero matrix, ``amplitude_pr`` of a constant matrix).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from deadzone.errors import DeadzoneError

METRICS = (
    "pr",
    "pc1",
    "pr_uncentered",
    "pc1_uncentered",
    "stable_rank",
    "effective_rank",
    "spectral_norm",
    "frobenius_norm",
    "amplitude_pr",
)

F64 = torch.float64
EPS64 = torch.finfo(F64).eps

# Elements (of float64) handled at once when streaming a matrix through a Gram product or the
# amplitude computation: bounds the working memory to tens of MB whatever the matrix size.
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Geometry:
    """Every metric of one matrix (NaN where not defined, see the module docstring)."""

    pr: float
    pc1: float
    pr_uncentered: float
    pc1_uncentered: float
    stable_rank: float
    effective_rank: float
    spectral_norm: float
    frobenius_norm: float
    amplitude_pr: float

    @property
    def finite(self) -> bool:
        """False when the matrix held NaN or Inf (then every metric is NaN)."""
        return not math.isnan(self.frobenius_norm)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


# --- building blocks (batched: a leading batch dimension B) -----------------------------------


def _as_batch(W: torch.Tensor) -> torch.Tensor:
    if W.ndim == 2:
        return W.unsqueeze(0)
    if W.ndim == 3:
        return W
    raise DeadzoneError(f"not a matrix: expected a 2-D tensor, got shape {tuple(W.shape)}")


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, NaN where ``den`` is zero."""
    return torch.where(den > 0, num / den.where(den > 0, 1.0), torch.nan)


def grams(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gram matrices of ``W`` and of its row-centred ``X`` on the smaller side, in float64.

    ``W``: ``(B, out, in)`` of any float dtype, any strides. Returns ``(G, Gc, finite)``:
    ``G`` and ``Gc`` of shape ``(B, n, n)``, ``n = min(out, in)``; ``finite`` ``(B,)`` says
    which matrices held only finite values (``G`` and ``Gc`` of the others are zero).

    ``W`` is read in float64 chunks along its longer side, never copied whole.
    With ``1`` the all-ones vector and ``mu = W^T 1 / out`` the mean row:

    - ``in <= out``: ``G = W^T W``, ``X^T X = G - out * mu mu^T``;
    - ``out < in``: ``G = W W^T``, ``X X^T = C G C`` with ``C = I - 1 1^T / out``.
    """
    B, out, inn = W.shape
    tall = inn <= out
    n, long = (inn, out) if tall else (out, inn)
    step = max(1, CHUNK_ELEMENTS // (B * n))
    G = torch.zeros(B, n, n, dtype=F64, device=W.device)
    for i in range(0, long, step):
        part = W[:, i : i + step, :] if tall else W[:, :, i : i + step].mT  # (B, chunk, n)
        part = part.to(F64)
        G.baddbmm_(part.mT, part)  # (B, n, n) += (B, n, chunk) @ (B, chunk, n)
    if tall:
        mu = W.sum(1, dtype=F64) / out  # (B, in)
        Gc = G - out * mu[:, :, None] * mu[:, None, :]
    else:
        r = G.mean(2)  # (B, out): row means of G
        s = r.mean(1)  # (B,)
        Gc = G - r[:, :, None] - r[:, None, :] + s[:, None, None]
    # Any NaN or Inf in W reaches the diagonal of G (a sum of squares of a row or column).
    finite = torch.isfinite(torch.diagonal(G, dim1=-2, dim2=-1)).all(-1)  # (B,)
    if not bool(finite.all()):
        keep = finite[:, None, None]
        G, Gc = G.where(keep, 0.0), Gc.where(keep, 0.0)
    return G, Gc, finite


def _pr_pc1(G: torch.Tensor, lam_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Participation ratio and top share from a Gram matrix ``(B, n, n)`` and its top eigenvalue."""
    total = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)  # sum lambda
    sq = G.square().sum((-2, -1))  # sum lambda^2 = ||G||_F^2
    return _ratio(total * total, sq), _ratio(lam_max, total)


def _effective_rank(lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli effective rank from eigenvalues ``(B, n)``; those ``<= tol`` count as zero."""
    sigma = lam.where(lam > tol[:, None], 0.0).sqrt()  # (B, n)
    total = sigma.sum(-1, keepdim=True)
    p = sigma / total.where(total > 0, 1.0)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    return torch.where(total[:, 0] > 0, entropy.exp(), torch.nan)


def _lam_max(G: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(G)[:, -1].clamp_min(0.0)


def amplitudes(W: torch.Tensor, K: int = 8) -> torch.Tensor:
    """Gaussian-basis amplitude of every row: ``(B, out, in) -> (B, out, K)``, float64.

    ``K`` Gaussians shared by the whole matrix: centres ``c_k`` evenly spaced over ``[-3s, 3s]``
    (``s`` the population standard deviation of all entries), standard deviation
    ``h = 6s / (K - 1)`` each. A value's responsibilities are one E-step from equal priors;
    a row's amplitude vector is their mean over the row's values. A constant matrix
    (``s = 0``) gets NaN amplitudes.

    The responsibilities of value ``x`` are ``softmax_k(-(x - c_k)^2 / (2 h^2))``, which is
    ``softmax_k(x c_k / h^2 - c_k^2 / (2 h^2))`` (the ``x^2`` term is the same for every ``k``):
    one fused multiply-add and a softmax per value, exact for outliers too. Values stored in
    32 bits or fewer are evaluated in float32 (error ~1e-9 on an amplitude), means in float64.
    """
    if K < 2:
        raise DeadzoneError(f"amplitude PR needs at least 2 Gaussians, got K={K}")
    W = _as_batch(W)
    B, out, inn = W.shape
    dt = F64 if W.dtype == F64 else torch.float32
    N = out * inn
    mean = W.sum((1, 2), dtype=F64) / N  # (B,)
    var = torch.zeros(B, dtype=F64, device=W.device)
    step = max(1, CHUNK_ELEMENTS // (B * inn * K))
    for i in range(0, out, step):
        var += (W[:, i : i + step].to(F64) - mean[:, None, None]).square().sum((1, 2))
    h = 6.0 * (var / N).sqrt() / (K - 1)  # (B,) width of each Gaussian
    h_safe = h.where(h > 0, 1.0)
    m = torch.linspace(-3.0, 3.0, K, dtype=F64, device=W.device) * (K - 1) / 6.0  # c_k / h
    slope = (m[:, None] / h_safe).to(dt)[:, :, None, None]  # (K, B, 1, 1): c_k / h^2
    bias = (-0.5 * m * m).to(dt)[:, None, None, None]  # (K, 1, 1, 1): -c_k^2 / (2 h^2)
    A = torch.empty(B, out, K, dtype=F64, device=W.device)
    for i in range(0, out, step):
        x = W[:, i : i + step].to(dt)  # (B, r, in)
        logits = torch.addcmul(bias, x, slope)  # (K, B, r, in)
        resp = torch.softmax(logits, dim=0)  # responsibilities, summing to 1 over K
        A[:, i : i + step] = resp.mean(-1, dtype=F64).permute(1, 2, 0)  # (B, r, K)
    return A.where((h > 0)[:, None, None], torch.nan)


def _amplitude_pr(W: torch.Tensor, K: int) -> torch.Tensor:
    A = amplitudes(W, K)  # (B, out, K)
    Ac = A - A.mean(1, keepdim=True)  # row-centred
    Gk = Ac.mT @ Ac  # (B, K, K)
    total = torch.diagonal(Gk, dim1=-2, dim2=-1).sum(-1)
    return _ratio(total * total, Gk.square().sum((-2, -1)))


# --- all metrics at once ----------------------------------------------------------------------


def geometry_batch(W: torch.Tensor, K: int = 8) -> list[Geometry]:
    """Every metric of each of ``B`` same-shaped matrices ``(B, out, in)``, one Gram product each.

    Runs on ``W``'s device; accumulates in float64.
    """
    W = _as_batch(W)
    B, out, inn = W.shape
    G, Gc, finite = grams(W)
    lam = torch.linalg.eigvalsh(G).clamp_min(0.0)  # (B, n) ascending
    lam_max = lam[:, -1]
    lam_max_c = _lam_max(Gc)
    pr_u, pc1_u = _pr_pc1(G, lam_max)
    pr_c, pc1_c = _pr_pc1(Gc, lam_max_c)
    total = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)  # ||W||_F^2
    tol = max(out, inn) * EPS64 * lam_max
    amp = _amplitude_pr(W, K)
    cols = torch.stack(
        [
            pr_c,
            pc1_c,
            pr_u,
            pc1_u,
            _ratio(total, lam_max),  # stable rank
            _effective_rank(lam, tol),
            lam_max.sqrt(),
            total.sqrt(),
            amp,
        ],
        dim=1,
    )  # (B, len(METRICS))
    cols = cols.where(finite[:, None], torch.nan).cpu().tolist()
    return [Geometry(*row) for row in cols]


def geometry(W: torch.Tensor, K: int = 8) -> Geometry:
    """Every metric of one matrix ``W`` ``(out, in)``, from a single Gram product."""
    if W.ndim != 2:
        raise DeadzoneError(f"not a matrix: expected a 2-D tensor, got shape {tuple(W.shape)}")
    return geometry_batch(W.unsqueeze(0), K)[0]


# --- one metric at a time ---------------------------------------------------------------------


def _matrix(W: torch.Tensor) -> torch.Tensor:
    if W.ndim != 2:
        raise DeadzoneError(f"not a matrix: expected a 2-D tensor, got shape {tuple(W.shape)}")
    return W.unsqueeze(0)


def _scalar(x: torch.Tensor, finite: torch.Tensor) -> float:
    return float(x[0]) if bool(finite[0]) else math.nan


def pr(W: torch.Tensor) -> float:
    """Participation ratio of the row-centred matrix, between 1 and ``min(out, in)``."""
    _, Gc, finite = grams(_matrix(W))
    return _scalar(_pr_pc1(Gc, _lam_max(Gc))[0], finite)


def pc1(W: torch.Tensor) -> float:
    """Share of variance on the first principal component of the row-centred matrix."""
    _, Gc, finite = grams(_matrix(W))
    return _scalar(_pr_pc1(Gc, _lam_max(Gc))[1], finite)


def pr_uncentered(W: torch.Tensor) -> float:
    """Participation ratio of ``W`` itself."""
    G, _, finite = grams(_matrix(W))
    return _scalar(_pr_pc1(G, _lam_max(G))[0], finite)


def pc1_uncentered(W: torch.Tensor) -> float:
    """``lambda_max / sum lambda`` of ``W`` itself."""
    G, _, finite = grams(_matrix(W))
    return _scalar(_pr_pc1(G, _lam_max(G))[1], finite)


def stable_rank(W: torch.Tensor) -> float:
    """``||W||_F^2 / ||W||_2^2``."""
    G, _, finite = grams(_matrix(W))
    total = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
    return _scalar(_ratio(total, _lam_max(G)), finite)


def effective_rank(W: torch.Tensor) -> float:
    """Roy & Vetterli effective rank of ``W`` (rank-tolerance noise counted as zero)."""
    M = _matrix(W)
    G, _, finite = grams(M)
    lam = torch.linalg.eigvalsh(G).clamp_min(0.0)
    tol = max(M.shape[1:]) * EPS64 * lam[:, -1]
    return _scalar(_effective_rank(lam, tol), finite)


def spectral_norm(W: torch.Tensor) -> float:
    """Largest singular value of ``W``."""
    G, _, finite = grams(_matrix(W))
    return _scalar(_lam_max(G).sqrt(), finite)


def frobenius_norm(W: torch.Tensor) -> float:
    """``sqrt(sum W_ij^2)``, accumulated in float64."""
    M = _matrix(W)
    value = float(torch.linalg.vector_norm(M, dtype=F64))
    return value if math.isfinite(value) and bool(torch.isfinite(M).all()) else math.nan


def amplitude_pr(W: torch.Tensor, K: int = 8) -> float:
    """PR of the row-centred ``out x K`` Gaussian-basis amplitudes (see :func:`amplitudes`)."""
    M = _matrix(W)
    if not bool(torch.isfinite(M).all()):
        return math.nan
    return float(_amplitude_pr(M, K)[0])
