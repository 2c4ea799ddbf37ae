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
- ``snr``: Spectrum's signal-to-noise ratio (Hartford et al. 2024), see :func:`_snr`.

How it is computed: no SVD. With ``G`` the Gram matrix on the smaller side of ``W`` (accumulated
in float64), ``sum lambda = trace(G)`` and ``sum lambda**2 = ||G||_F**2``; the Gram matrix of the
row-centred ``X`` follows from ``G`` algebraically, so one Gram product serves both. The spectrum
of ``W`` (for ``lambda_max`` and the effective rank) comes from a symmetric eigensolver on ``G``;
on the CPU the top eigenvalue of the centred Gram matrix comes from the same reduction to
tridiagonal form (see :func:`_tridiagonal_spectra`), elsewhere from Lanczos (:func:`lam_max`).
Eigenvalues below the rank tolerance ``max(out, in) * eps * lambda_max`` (``eps`` of float64)
are noise of the eigensolver and count as zero, so an exactly rank-1 matrix has effective rank 1.
Deriving the centred Gram matrix from the uncentred one would cancel digits where the mean row
dwarfs the spread of the entries; there (see :data:`CANCELLATION`) it is a second Gram
product, of the centred matrix itself.

Numbers that are not defined come back as NaN: every metric of a matrix holding NaN or Inf, and a
ratio whose denominator is zero (``pr`` and ``pc1`` of a matrix whose rows are all equal, where
the centred Gram matrix is rounding noise; anything but the norms of a zero matrix;
``amplitude_pr`` of a constant matrix; ``snr`` of a matrix with no singular value at or below
its noise threshold but zeros).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy.linalg import lapack

from deadzone.errors import DeadzoneError
from deadzone.geometry import tridiagonal

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
    "snr",
)

F64 = torch.float64
EPS64 = torch.finfo(F64).eps

# Elements (of float64) handled at once when streaming a matrix through a Gram product or the
# amplitude computation: bounds the working memory to tens of MB whatever the matrix size.
CHUNK_ELEMENTS = 1 << 20
# Values handled at once by the amplitude computation: a chunk and its few temporaries stay in
# the core's cache (2^18 float32 was the fastest of 2^13 to 2^20 on an AMD EPYC).
AMPLITUDE_CHUNK_ELEMENTS = 1 << 18
# Accelerators take chunks this many times larger: fewer, bigger kernels.
ACCELERATOR_CHUNK_FACTOR = 16


def _chunk(elements: int, device: torch.device) -> int:
    return elements if device.type == "cpu" else elements * ACCELERATOR_CHUNK_FACTOR


# On the CPU, numpy's BLAS/LAPACK compute ``A.T @ A`` (as ``syrk``) and ``eigvalsh`` about twice
# as fast as torch's (measured on an AMD EPYC). They are used only while torch runs one thread:
# two multi-threaded runtimes (numpy's BLAS and torch's OpenMP) spinning on the same cores slow
# each other down by an order of magnitude. Accelerators use torch.
NUMPY_ON_CPU = True


def _numpy(t: torch.Tensor) -> bool:
    return NUMPY_ON_CPU and t.device.type == "cpu" and torch.get_num_threads() == 1


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
    snr: float

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


class Grams(NamedTuple):
    G: torch.Tensor  # (B, n, n) Gram matrix of W on its smaller side, n = min(out, in)
    Gc: torch.Tensor  # (B, n, n) the same of the row-centred X
    finite: torch.Tensor  # (B,) the matrix held only finite values (else G, Gc are zero)
    entry_sum: torch.Tensor  # (B,) sum of all entries of W
    # (B, n) ``c`` with Gc = G - c c^T (in <= out: c = sqrt(out) mu), or Gc = P G P with
    # P = I - c c^T (out < in: c = 1 / sqrt(out), a unit vector)
    centre: torch.Tensor
    tall: bool  # in <= out
    # (B,) Gc was computed from X itself, its mean row dwarfing its spread (see grams)
    recentred: torch.Tensor


# Centring that leaves less than this share of trace(G) in trace(Gc) is computed from X itself:
# derived from G, Gc would keep only about eps * trace(G) / trace(Gc) of relative accuracy.
CANCELLATION = 1e-6


def grams(W: torch.Tensor) -> Grams:
    """Gram matrices of ``W`` and of its row-centred ``X`` on the smaller side, in float64.

    ``W``: ``(B, out, in)`` of any float dtype, any strides.

    ``W`` is read in float64 chunks along its longer side, in the order it is stored (a
    transposed view is read along its rows too), never copied whole.
    With ``1`` the all-ones vector and ``mu = W^T 1 / out`` the mean row:

    - ``in <= out``: ``G = W^T W``, ``X^T X = G - out * mu mu^T``;
    - ``out < in``: ``G = W W^T``, ``X X^T = C G C`` with ``C = I - 1 1^T / out``.

    Where that leaves less than ``CANCELLATION`` of ``trace(G)`` (a mean row some thousand
    times the spread of the entries), digits cancel: ``Gc`` is then a second Gram product, of
    ``X`` itself.
    """
    B, out, inn = W.shape
    tall = inn <= out
    n = inn if tall else out
    V = W if tall else W.mT  # (B, long, n): G = V^T V
    G, sums = _gram(V)  # sums: column sums (tall) or row sums of W
    if tall:
        mu = sums / out  # (B, in)
        Gc = G - out * mu[:, :, None] * mu[:, None, :]
        centre = math.sqrt(out) * mu
    else:
        centre = G.new_full((B, n), 1.0 / math.sqrt(out))
        r = G.mean(2)  # (B, out): row means of G
        s = r.mean(1)  # (B,)
        Gc = G - r[:, :, None] - r[:, None, :] + s[:, None, None]
    trace = torch.diagonal(G, dim1=-2, dim2=-1)
    recentred = torch.diagonal(Gc, dim1=-2, dim2=-1).sum(-1) < CANCELLATION * trace.sum(-1)
    if bool(recentred.any()):
        exact, _ = _gram(V, minus=mu) if tall else _gram(V, own_mean=True)
        Gc = torch.where(recentred[:, None, None], exact, Gc)
    # Rows all equal: what is left of Gc is rounding noise (derived from G, ~eps * trace(G);
    # from the centred entries, whose noise is ~eps times the entries, ~eps^2 * trace(G)), so it
    # is zero, and the centred ratios come out undefined.
    eps = torch.where(recentred, (n * EPS64) ** 2, n * EPS64)
    noise = torch.diagonal(Gc, dim1=-2, dim2=-1).sum(-1) <= eps * trace.sum(-1)
    # Any NaN or Inf in W reaches the diagonal of G (a sum of squares of a row or column).
    finite = torch.isfinite(trace).all(-1)  # (B,)
    if bool(noise.any()) or not bool(finite.all()):
        G = G.where(finite[:, None, None], 0.0)
        Gc = Gc.where((finite & ~noise)[:, None, None], 0.0)
    return Grams(G, Gc, finite, sums.sum(-1), centre, tall, recentred & finite)


def _gram(
    V: torch.Tensor, minus: torch.Tensor | None = None, own_mean: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``V^T V`` ``(B, n, n)`` and the column sums of ``V`` ``(B, n)``, for ``V`` ``(B, long, n)``
    read in float64 chunks of its rows, in the order it is stored (never copied whole).

    Centred first, if asked: ``minus`` ``(B, n)`` is subtracted from every row (a tall ``W``'s
    mean row), or with ``own_mean`` each row less its own mean (``V = W^T`` of a wide ``W``).
    """
    B, long, n = V.shape
    by_row = V.stride(-1) <= V.stride(-2)  # V's rows lie contiguous: chunks of rows
    step = max(1, _chunk(CHUNK_ELEMENTS, V.device) // (B * n))
    G = torch.zeros(B, n, n, dtype=F64, device=V.device)
    sums = torch.zeros(B, n, dtype=F64, device=V.device)
    along = 2 if by_row else 1  # the dimension of a chunk along which a row of V runs
    for i in range(0, long, step):
        # (B, chunk, n) or, read along the stored rows, its transpose (B, n, chunk)
        part = V[:, i : i + step, :] if by_row else V.mT[:, :, i : i + step]
        part = part.to(F64, memory_format=torch.contiguous_format)
        if minus is not None:
            part = part - minus.unsqueeze(3 - along)
        if own_mean:
            part = part - part.mean(along, keepdim=True)
        _add_gram(G, part, by_row)
        sums += part.sum(3 - along)
    return G, sums


def _add_gram(G: torch.Tensor, part: torch.Tensor, by_row: bool = True) -> None:
    """``G += P^T P`` for ``P`` ``(B, chunk, n)`` float64, given as ``part = P`` if ``by_row``,
    else as ``part = P^T`` ``(B, n, chunk)``.

    Through numpy where :data:`NUMPY_ON_CPU` allows: its ``A.T @ A`` and ``A @ A.T`` are
    symmetric rank-k updates (BLAS ``syrk``, half the work of a general product); else a
    batched torch product.
    """
    if not _numpy(G):
        if by_row:
            G.baddbmm_(part.mT, part)  # (B, n, n) += (B, n, chunk) @ (B, chunk, n)
        else:
            G.baddbmm_(part, part.mT)
        return
    for g, p in zip(G, part.numpy(), strict=True):
        g += torch.from_numpy(p.T @ p if by_row else p @ p.T)


def eigvalsh(G: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of symmetric ``G`` ``(B, n, n)``, ascending (see :data:`NUMPY_ON_CPU`)."""
    if _numpy(G):
        return torch.from_numpy(np.linalg.eigvalsh(G.numpy()))
    return torch.linalg.eigvalsh(G)


def _pr_pc1(G: torch.Tensor, lam_max: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Participation ratio and top share from a Gram matrix ``(B, n, n)`` and its top eigenvalue."""
    return _ratios(*_moments(G), lam_max)


def _moments(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum lambda = trace(G)`` and ``sum lambda^2 = ||G||_F^2`` of each ``(n, n)`` matrix."""
    return torch.diagonal(G, dim1=-2, dim2=-1).sum(-1), G.square().sum((-2, -1))


def _ratios(
    total: torch.Tensor, sq: torch.Tensor, lam_max: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return _ratio(total * total, sq), _ratio(lam_max, total)


def _effective_rank(lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli effective rank from eigenvalues ``(B, n)``; those ``<= tol`` count as zero."""
    sigma = _singular_values(lam, tol)  # (B, n)
    total = sigma.sum(-1, keepdim=True)
    p = sigma / total.where(total > 0, 1.0)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    return torch.where(total[:, 0] > 0, entropy.exp(), torch.nan)


def _singular_values(lam: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """``sigma = sqrt(lambda)`` ``(B, n)``, eigenvalues ``<= tol`` ``(B,)`` counted as zero."""
    return lam.where(lam > tol[:, None], 0.0).sqrt()


# Spectrum's robust noise scale: the IQR of a normal distribution is 1.349 standard deviations.
IQR_PER_SIGMA = 1.349


def _snr(lam: torch.Tensor, tol: torch.Tensor, out: int, inn: int) -> torch.Tensor:
    """Spectrum's SNR of each matrix ``(B,)`` from its eigenvalues ``lambda`` ``(B, n)``, ascending.

    As Spectrum (``spectrum.py``, ``calculate_snr_for_layer``) computes it from the singular
    values ``S``: ``sigma = IQR(S) / 1.349`` (quartiles by linear interpolation), the
    Marchenko-Pastur edge ``sigma (1 + sqrt(beta))`` with ``beta = min(out, in) / max(out, in)``
    as the threshold, and ``SNR = (sum of S above it) / (sum of S at or below it) / max S``.
    Like Spectrum's, the number scales as ``1 / |W|``. ``S`` are the square roots of the Gram
    eigenvalues, those under the rank tolerance counted as zero (Spectrum takes a float32 SVD).

    Accuracy: the Gram eigenvalues are accurate to about ``n eps lambda_max``, so a singular
    value near zero only to about ``sqrt(n eps) max S``; the SNR is as accurate as the other
    metrics unless the part at or below the threshold is many orders of magnitude below
    ``max S`` (0.1% relative on a matrix of condition number 1e12).

    Nothing above the threshold: 0 (no signal), as Spectrum. Nothing at or below it (as for a
    Gaussian matrix, whose singular values spread less than their IQR-based threshold, or an
    orthogonal one): Spectrum takes the noise sum as 1, so ``SNR = sum S / max S``; so does
    this, for the numbers to rank matrices as Spectrum's do. Only zeros at or below it (an
    exactly low-rank matrix with an even spectrum): NaN, undefined (Spectrum's float32 SVD
    gives rounding noise there, or infinity), and so is the SNR of a zero matrix.
    """
    sv = _singular_values(lam, tol)  # (B, n) ascending
    q = torch.tensor([0.25, 0.75], dtype=sv.dtype, device=sv.device)
    q25, q75 = torch.quantile(sv, q, dim=-1)  # (B,) each; linear interpolation
    threshold = (q75 - q25) / IQR_PER_SIGMA * (1.0 + math.sqrt(min(out, inn) / max(out, inn)))
    above = sv > threshold[:, None]
    signal = sv.where(above, 0.0).sum(-1)
    noise = sv.where(~above, 0.0).sum(-1)  # at or below the threshold
    noise = torch.where(above.all(-1), 1.0, noise)  # none there: Spectrum's convention
    top = sv[:, -1]
    return _ratio(signal, noise * top)


# Lanczos for the top eigenvalue: Krylov dimension cap, and how often convergence is checked.
LANCZOS_STEPS = 200
LANCZOS_CHECK = 8
LANCZOS_RTOL = 1e-8


def lam_max(G: torch.Tensor, second: torch.Tensor | None = None) -> torch.Tensor:
    """Largest eigenvalue of each symmetric PSD ``G`` ``(B, n, n)``, to ``LANCZOS_RTOL`` relative.

    Lanczos with full reorthogonalisation from a fixed random start. It stops when the residual
    ``r = beta_j |y_j|`` of the top Ritz pair, a bound on the distance from the Ritz value
    ``theta`` to an eigenvalue, is below ``LANCZOS_RTOL`` times that value; without convergence
    in ``LANCZOS_STEPS`` steps (or for small ``n``) the symmetric eigensolver answers instead.

    ``second`` ``(B,)``, if given, is an upper bound on each ``G``'s second-largest eigenvalue.
    Then the Kato-Temple bound ``lambda_max - theta <= r^2 / (theta - second)`` (for
    ``theta > second``; ``theta <= lambda_max`` always) stops it much earlier: the error of the
    Ritz value is quadratic in the residual.
    """
    B, n, _ = G.shape
    if n <= 4 * LANCZOS_CHECK:
        return eigvalsh(G)[:, -1].clamp_min(0.0)
    m = min(n, LANCZOS_STEPS)
    Q = G.new_zeros(B, m + 1, n)  # Lanczos vectors
    # The same start for every matrix, and each matrix's value taken at the first check where it
    # converged: a matrix gets the same number alone and in any batch.
    start = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=F64)
    Q[:, 0] = (start / start.norm()).to(G.device)
    result = G.new_zeros(B)
    converged = torch.zeros(B, dtype=torch.bool, device=G.device)
    alpha, beta = G.new_zeros(B, m), G.new_zeros(B, m)
    for j in range(m):
        w = torch.bmm(G, Q[:, j, :, None])[..., 0]  # (B, n)
        alpha[:, j] = (w * Q[:, j]).sum(-1)
        basis = Q[:, : j + 1]  # (B, j+1, n)
        for _ in range(2):  # twice is enough
            w -= torch.bmm(basis.mT, torch.bmm(basis, w[..., None]))[..., 0]
        beta[:, j] = w.norm(dim=-1)
        if (j + 1) % LANCZOS_CHECK == 0 or j + 1 == m:
            k = j + 1
            T = alpha[:, :k].diag_embed() + beta[:, : k - 1].diag_embed(1)
            theta, Y = torch.linalg.eigh(T + beta[:, : k - 1].diag_embed(-1))  # (B, k)
            top = theta[:, -1].clamp_min(0.0)
            r = beta[:, j] * Y[:, -1, -1].abs()
            done = r <= LANCZOS_RTOL * top
            if second is not None:
                gap = top - second
                done |= (gap > 0) & (r * r <= LANCZOS_RTOL * top * gap)
            result = torch.where(done & ~converged, top, result)
            converged |= done
            if bool(converged.all()):
                return result
        Q[:, j + 1] = w / beta[:, j, None].clamp_min(torch.finfo(F64).tiny)
    return torch.where(converged, result, eigvalsh(G)[:, -1].clamp_min(0.0))


def _tridiagonal_spectra(g: Grams) -> tuple[torch.Tensor, torch.Tensor]:
    """CPU: the spectrum of ``G`` (ascending) and the top eigenvalue of ``Gc``, ``(B, n), (B,)``.
    Overwrites ``g.G``.

    One LAPACK reduction ``G = Q T Q^T`` (``sytrd``, ``T`` tridiagonal; see
    :mod:`deadzone.geometry.tridiagonal`) serves both.
    ``T``'s eigenvalues (``sterf``) are ``G``'s: this
    *is* what ``eigvalsh`` does. With ``u = Q^T c`` (``c`` the centring vector of
    :class:`Grams`, one pass of ``Q``'s reflectors), ``Q^T Gc Q`` is ``T - u u^T`` (tall) or
    ``T`` compressed to ``u``'s orthogonal complement (wide). Either
    way its top eigenvalue interlaces, ``lambda_{n-1}(G) <= lambda_max(Gc) <= lambda_n(G)``, and
    is the one root there of ``f(s) = a - u^T (T - s I)^{-1} u`` (``a`` = 1 tall, 0 wide), which
    decreases from ``+inf`` to ``-inf`` between those poles: bisection on the sign of ``f``,
    ``O(n)`` per step (a tridiagonal solve, ``gtsv``), until the bracket is within
    ``CENTRED_RTOL`` of its upper end. (A solve that meets an exactly singular ``T - s I``
    hands that matrix to Lanczos on the dense ``Gc``.)
    """
    lams, tops = [], []
    for G, c, recentred in zip(g.G.numpy(), g.centre.numpy(), g.recentred, strict=True):
        T = tridiagonal.reduce(G.T, overwrite=True)  # G.T: the same matrix, column-major
        lam = tridiagonal.eigenvalues(T.d, T.e)
        lams.append(lam)
        if recentred:  # Gc is not G less the centring term: Lanczos answers, below
            tops.append(None)
            continue
        u = c.copy()  # u = Q^T c: Q = diag(1, Q1)
        u[1:] = lapack.dormqr("L", "T", T.reflectors, T.tau, c[1:, None], lwork=1)[0][:, 0]
        tops.append(_secular_top(T.d, T.e, u, 1.0 if g.tall else 0.0, max(lam[-2], 0.0), lam[-1]))
    lam = torch.from_numpy(np.stack(lams)).clamp_min(0.0)
    top = torch.tensor([math.nan if t is None else t for t in tops], dtype=F64)
    # Where centring removes almost everything, ``T - u u^T`` cancels digits: Lanczos on the
    # dense ``Gc`` (computed from the centred matrix itself, see grams) instead.
    stuck = torch.isnan(top) | (top < SECULAR_FLOOR * lam[:, -1])
    if bool(stuck.any()):
        top[stuck] = lam_max(g.Gc[stuck], _second_bound(lam[stuck]))
    return lam, top


# Bisection for the centred top eigenvalue stops when its bracket is this narrow, relative; a
# root below SECULAR_FLOOR times the uncentred top eigenvalue is left to Lanczos.
CENTRED_RTOL = 1e-9
SECULAR_FLOOR = 1e-6


def _secular_top(
    d: np.ndarray, e: np.ndarray, u: np.ndarray, a: float, lo: float, hi: float
) -> float | None:
    """The root of ``a - u^T (T - s I)^{-1} u`` in ``[lo, hi]`` (see :func:`_tridiagonal_spectra`),
    ``T`` with diagonal ``d`` and off-diagonal ``e``; None if a solve met a singular matrix."""
    for _ in range(200):  # each step halves the bracket; 200 reach any root, even 0
        if hi - lo <= CENTRED_RTOL * hi:
            break
        mid = 0.5 * (lo + hi)
        x, info = lapack.dgtsv(e, d - mid, e, u)[3:]
        if info:
            return None
        if a - u @ x > 0:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _second_bound(lam: torch.Tensor) -> torch.Tensor | None:
    """An upper bound on the centred second eigenvalue from the uncentred spectrum (ascending).

    The centred spectrum interlaces with the uncentred one (``Gc`` is ``G`` less a PSD rank-one
    term, or ``G`` compressed to a subspace of codimension one), so ``G``'s second-largest
    eigenvalue bounds ``Gc``'s; the margin covers the eigensolver's error.
    """
    n = lam.shape[1]
    return lam[:, -2] + 4 * n * EPS64 * lam[:, -1] if n > 1 else None


def amplitudes(W: torch.Tensor, K: int = 8, std: torch.Tensor | None = None) -> torch.Tensor:
    """Gaussian-basis amplitude of every row: ``(B, out, in) -> (B, out, K)``, float64.

    ``K`` Gaussians shared by the whole matrix: centres ``c_k`` evenly spaced over ``[-3s, 3s]``
    (``s`` the population standard deviation of all entries; ``std`` if given, ``(B,)``),
    standard deviation ``h = 6s / (K - 1)`` each. A value's responsibilities are one E-step
    from equal priors; a row's amplitude vector is their mean over the row's values. A constant
    matrix (``s = 0``) gets NaN amplitudes.

    The centres are ``h`` apart, ``c_k = (k - (K - 1) / 2) h``, so with ``u = x / h`` the
    responsibilities ``softmax_k(-(x - c_k)^2 / (2 h^2))`` are ``a_k t^k / P(t)`` with
    ``t = exp(u)``, ``a_k = exp(-(k - (K - 1) / 2)^2 / 2)`` and ``P(t) = sum_k a_k t^k``: one
    exponential per value instead of ``K``, and a row's ``K`` sums are the power sums
    ``sum_x t^k / P(t)``. A chunk holding a value too far out for ``t^(K-1)`` to stay finite
    (beyond about ``9.5 s`` for ``K = 8`` in float32) takes the softmax instead, which is exact
    for any value. Values stored in 32 bits or fewer are evaluated in float32 and summed in
    float32 within a chunk (torch's cascade summation), chunks in float64: ~1e-9 on an
    amplitude, ~1e-7 on ``amplitude_pr``. The matrix is walked in the order it is stored (a
    transposed view column by column).
    """
    if K < 2:
        raise DeadzoneError(f"amplitude PR needs at least 2 Gaussians, got K={K}")
    W = _as_batch(W)
    B, out, inn = W.shape
    dt = F64 if W.dtype == F64 else torch.float32
    # Walk rows of the stored layout: X is (B, a, b) with contiguous rows.
    by_column = W.stride(-1) > W.stride(-2)
    X = W.mT if by_column else W
    step = max(1, _chunk(AMPLITUDE_CHUNK_ELEMENTS, W.device) // (B * X.shape[2]))
    if std is None:
        std = _population_std(X, step)
    h = 6.0 * std / (K - 1)  # (B,) width of each Gaussian, and the distance between centres
    inv_h = (1.0 / h.where(h > 0, 1.0)).to(dt)[:, None, None]  # (B, 1, 1)
    m = torch.arange(K, dtype=F64, device=W.device) - (K - 1) / 2  # c_k / h
    a = torch.exp(-0.5 * m * m)  # (K,)
    u_max = _power_range(K, dt)
    sums = torch.zeros(K, B, out, dtype=F64, device=W.device)  # sum over each row of W
    for i in range(0, X.shape[1], step):
        u = X[:, i : i + step].to(dt) * inv_h  # (B, r, b)
        rows = slice(None) if by_column else slice(i, i + step)  # rows of W the chunk adds to
        dim = 1 if by_column else 2  # the chunk's values of one row of W lie along this dim
        # Per matrix: its chunk takes the power sums if every value is within range.
        fits = torch.zeros(B, dtype=torch.bool, device=W.device)
        if u_max is not None:
            fits = (u.amax((1, 2)) <= u_max) & (u.amin((1, 2)) >= -u_max)  # False for NaN
        if bool(fits.all()):
            sums[:, :, rows] += _power_sums(u, a, dim)
            continue
        logits = torch.addcmul(
            (-0.5 * m * m).to(dt)[:, None, None, None], u, m.to(dt)[:, None, None, None]
        )  # (K, B, r, b): log of the Gaussians' densities up to a term common to every k
        part = torch.softmax(logits, dim=0).sum(dim + 1)  # (K, B, r)
        if bool(fits.any()):
            part = torch.where(fits[:, None], _power_sums(u, a, dim), part)
        sums[:, :, rows] += part
    A = (sums / inn).permute(1, 2, 0)  # (B, out, K)
    return A.where((h > 0)[:, None, None], torch.nan)


def _power_range(K: int, dtype: torch.dtype) -> float | None:
    """Largest ``|u|`` for which the power sums stay finite in ``dtype`` (None: never use them).

    ``P(t) <= K t^(K-1)`` for ``t >= 1`` must stay below ``exp(L)``, ``L`` a margin under the
    largest finite exponent; ``t^k / P(t) <= 1 / a_k <= exp((K-1)^2 / 8)``, and its sum over a
    chunk (up to ``AMPLITUDE_CHUNK_ELEMENTS``, ``exp(12.5)``, values) must too: hence ``L / 2``.
    """
    L = 80.0 if dtype != F64 else 700.0
    if (K - 1) ** 2 / 8 > L / 2:
        return None
    return (L - math.log(K)) / (K - 1)


def _power_sums(u: torch.Tensor, a: torch.Tensor, dim: int) -> torch.Tensor:
    """``sum over dim of a_k t^k / P(t)``, ``t = exp(u)``, for each ``k``: ``(K, B, r)``.

    Overwrites ``u``.
    """
    t = u.exp_()
    coef = a.tolist()
    P = torch.full_like(t, coef[-1])
    for c in reversed(coef[:-1]):  # Horner: P(t) = sum_k a_k t^k
        P.mul_(t).add_(c)
    v = P.reciprocal_()  # t^k / P(t), k = 0, 1, ...
    out = []
    for k in range(len(coef)):
        out.append(v.sum(dim, dtype=F64) if v.dtype == F64 else v.sum(dim).to(F64))
        if k + 1 < len(coef):
            v.mul_(t)
    return torch.stack(out) * a[:, None, None]


def _population_std(X: torch.Tensor, step: int) -> torch.Tensor:
    """Population standard deviation of all entries of each ``(a, b)`` matrix, two-pass float64."""
    N = X.shape[1] * X.shape[2]
    total = torch.zeros(X.shape[0], dtype=F64, device=X.device)
    for i in range(0, X.shape[1], step):  # chunks: sum(dtype=) would copy X whole to float64
        total += X[:, i : i + step].sum((1, 2), dtype=F64)
    mean = total / N  # (B,)
    var = torch.zeros_like(mean)
    for i in range(0, X.shape[1], step):
        var += (X[:, i : i + step].to(F64) - mean[:, None, None]).square().sum((1, 2))
    return (var / N).sqrt()


def _amplitude_pr(W: torch.Tensor, K: int, std: torch.Tensor | None = None) -> torch.Tensor:
    A = amplitudes(W, K, std)  # (B, out, K)
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
    g = grams(W)
    n = g.G.shape[-1]
    total, sq = _moments(g.G)  # total = ||W||_F^2, the sum of squared entries
    if _numpy(g.G) and n > 4 * LANCZOS_CHECK:
        lam, top_c = _tridiagonal_spectra(g)  # overwrites g.G
    else:
        lam = eigvalsh(g.G).clamp_min(0.0)  # (B, n) ascending: the spectrum of W
        top_c = lam_max(g.Gc, _second_bound(lam))
    top = lam[:, -1]
    pr_u, pc1_u = _ratios(total, sq, top)
    pr_c, pc1_c = _pr_pc1(g.Gc, top_c)
    tol = max(out, inn) * EPS64 * top
    amp = _amplitude_pr(W, K, _std_from_gram(out * inn, g.entry_sum, total))
    cols = torch.stack(
        [
            pr_c,
            pc1_c,
            pr_u,
            pc1_u,
            _ratio(total, top),  # stable rank
            _effective_rank(lam, tol),
            top.sqrt(),
            total.sqrt(),
            amp,
            _snr(lam, tol, out, inn),
        ],
        dim=1,
    )  # (B, len(METRICS))
    cols = cols.where(g.finite[:, None], torch.nan).cpu().tolist()
    return [Geometry(*row) for row in cols]


def _std_from_gram(N: int, entry_sum: torch.Tensor, sum_sq: torch.Tensor) -> torch.Tensor | None:
    """Population std of ``N`` entries from their sum and sum of squares (the Gram trace).

    None where the mean dominates so much (``mean^2 > 1e6 var``) that the one-pass formula
    would lose digits; the caller then takes two passes. (Non-finite matrices give NaN.)
    """
    mean = entry_sum / N
    var = sum_sq / N - mean * mean
    if not bool(((mean * mean <= 1e6 * var) | ~torch.isfinite(var)).all()):
        return None
    return var.sqrt()


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
    Gc, finite = (g := grams(_matrix(W))).Gc, g.finite
    return _scalar(_pr_pc1(Gc, lam_max(Gc))[0], finite)


def pc1(W: torch.Tensor) -> float:
    """Share of variance on the first principal component of the row-centred matrix."""
    Gc, finite = (g := grams(_matrix(W))).Gc, g.finite
    return _scalar(_pr_pc1(Gc, lam_max(Gc))[1], finite)


def pr_uncentered(W: torch.Tensor) -> float:
    """Participation ratio of ``W`` itself."""
    G, finite = (g := grams(_matrix(W))).G, g.finite
    return _scalar(_pr_pc1(G, lam_max(G))[0], finite)


def pc1_uncentered(W: torch.Tensor) -> float:
    """``lambda_max / sum lambda`` of ``W`` itself."""
    G, finite = (g := grams(_matrix(W))).G, g.finite
    return _scalar(_pr_pc1(G, lam_max(G))[1], finite)


def stable_rank(W: torch.Tensor) -> float:
    """``||W||_F^2 / ||W||_2^2``."""
    G, finite = (g := grams(_matrix(W))).G, g.finite
    total = torch.diagonal(G, dim1=-2, dim2=-1).sum(-1)
    return _scalar(_ratio(total, lam_max(G)), finite)


def effective_rank(W: torch.Tensor) -> float:
    """Roy & Vetterli effective rank of ``W`` (rank-tolerance noise counted as zero)."""
    M = _matrix(W)
    G, finite = (g := grams(M)).G, g.finite
    lam = eigvalsh(G).clamp_min(0.0)
    tol = max(M.shape[1:]) * EPS64 * lam[:, -1]
    return _scalar(_effective_rank(lam, tol), finite)


def snr(W: torch.Tensor) -> float:
    """Spectrum's signal-to-noise ratio of ``W`` (see :func:`_snr`)."""
    M = _matrix(W)
    G, finite = (g := grams(M)).G, g.finite
    lam = eigvalsh(G).clamp_min(0.0)
    tol = max(M.shape[1:]) * EPS64 * lam[:, -1]
    return _scalar(_snr(lam, tol, *M.shape[1:]), finite)


def spectral_norm(W: torch.Tensor) -> float:
    """Largest singular value of ``W``."""
    G, finite = (g := grams(_matrix(W))).G, g.finite
    return _scalar(lam_max(G).sqrt(), finite)


def frobenius_norm(W: torch.Tensor) -> float:
    """``sqrt(sum W_ij^2)``, accumulated in float64."""
    M = _matrix(W)
    step = max(1, _chunk(CHUNK_ELEMENTS, M.device) // M.shape[2])
    chunks = (M[:, i : i + step] for i in range(0, M.shape[1], step))
    sum_sq = sum(float(c.to(F64).square().sum()) for c in chunks)
    return math.sqrt(sum_sq) if math.isfinite(sum_sq) else math.nan


def amplitude_pr(W: torch.Tensor, K: int = 8) -> float:
    """PR of the row-centred ``out x K`` Gaussian-basis amplitudes (see :func:`amplitudes`)."""
    M = _matrix(W)
    if not bool(torch.isfinite(M).all()):
        return math.nan
    return float(_amplitude_pr(M, K)[0])
