"""Geometry of a matrix against a float64 ``numpy.linalg.svd`` reference, on planted matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deadzone.errors import DeadzoneError
from deadzone.geometry import spectral

# Accuracy promised to users: relative error against the float64 SVD reference.
TIGHT = ("pr", "pc1", "pr_uncentered", "pc1_uncentered", "stable_rank", "spectral_norm",
         "frobenius_norm")  # fmt: skip
RTOL_TIGHT = 1e-6
RTOL_LOOSE = 1e-5  # effective_rank, amplitude_pr


def reference(W: np.ndarray, K: int = 8) -> dict[str, float]:
    """Every metric straight from the definitions, with full float64 SVDs."""
    W = np.asarray(W, dtype=np.float64)
    sigma = np.linalg.svd(W, compute_uv=False)
    sigma_c = np.linalg.svd(W - W.mean(axis=0), compute_uv=False)
    lam, lam_c = sigma**2, sigma_c**2
    # Rank tolerance: singular values whose square is below max(out, in) * eps * sigma_max^2.
    above_tol = lam > max(W.shape) * np.finfo(np.float64).eps * lam.max()
    kept = sigma[above_tol]
    p = kept / kept.sum()
    # Gaussian-basis amplitudes, literally: K Gaussians over [-3s, 3s], one E-step, row means.
    s = W.std()
    centres = np.linspace(-3 * s, 3 * s, K)
    width = 6 * s / (K - 1)
    log_pdf = -((W[:, :, None] - centres) ** 2) / (2 * width**2)  # (out, in, K)
    log_pdf -= log_pdf.max(axis=2, keepdims=True)
    resp = np.exp(log_pdf)
    resp /= resp.sum(axis=2, keepdims=True)
    amp = resp.mean(axis=1)  # (out, K)
    amp_lam = np.linalg.svd(amp - amp.mean(axis=0), compute_uv=False) ** 2
    with np.errstate(invalid="ignore"):  # 0/0 where every row has the same amplitudes
        amp_pr = amp_lam.sum() ** 2 / (amp_lam**2).sum()
    return {
        "pr": lam_c.sum() ** 2 / (lam_c**2).sum(),
        "pc1": lam_c.max() / lam_c.sum(),
        "pr_uncentered": lam.sum() ** 2 / (lam**2).sum(),
        "pc1_uncentered": lam.max() / lam.sum(),
        "stable_rank": lam.sum() / lam.max(),
        "effective_rank": float(np.exp(-(p * np.log(p)).sum())),
        "spectral_norm": sigma.max(),
        "frobenius_norm": np.sqrt(lam.sum()),
        "amplitude_pr": amp_pr,
        "snr": spectrum_snr(np.where(above_tol, sigma, 0.0), W.shape),
    }


def spectrum_snr(sv: np.ndarray, shape: tuple[int, ...]) -> float:
    """Spectrum's SNR of the singular values ``sv`` of a matrix of ``shape``, literally (a zero
    sum at or below the threshold: NaN)."""
    out, inn = shape
    sigma = (np.quantile(sv, 0.75) - np.quantile(sv, 0.25)) / 1.349
    threshold = sigma * (1 + np.sqrt(min(out, inn) / max(out, inn)))
    signal, noise = sv[sv > threshold].sum(), sv[sv <= threshold].sum()
    if not (sv <= threshold).any():
        noise = 1.0  # Spectrum's convention when no singular value is at or below it
    return signal / noise / sv.max() if noise > 0 and sv.max() > 0 else math.nan


def snr_rtol(W: np.ndarray) -> float:
    """What the SNR's accuracy can be: eigenvalues of the Gram matrix are accurate to about
    ``delta = n eps lambda_max``, so each singular value ``sv = sqrt(lambda)`` to
    ``min(sqrt(delta), delta / 2S)``; their sum over the noise part, relative to that part."""
    sv = np.linalg.svd(W, compute_uv=False)
    delta = min(W.shape) * np.finfo(np.float64).eps * sv.max() ** 2
    sigma = (np.quantile(sv, 0.75) - np.quantile(sv, 0.25)) / 1.349
    noise = sv[sv <= sigma * (1 + np.sqrt(min(W.shape) / max(W.shape)))]
    if noise.sum() == 0:  # none: the SNR is sum sv / max sv, as accurate as the other metrics
        return RTOL_LOOSE
    with np.errstate(divide="ignore"):
        error = np.minimum(np.sqrt(delta), delta / (2 * noise)).sum()
    return max(RTOL_LOOSE, error / noise.sum())


def assert_matches(W: torch.Tensor, got: dict[str, float]) -> None:
    ref = reference(W.double().numpy())
    for name in spectral.METRICS:
        rtol = RTOL_TIGHT if name in TIGHT else RTOL_LOOSE
        if name == "snr":
            rtol = snr_rtol(W.double().numpy())
        assert got[name] == pytest.approx(ref[name], rel=rtol, nan_ok=True), name


def gaussian(out: int, inn: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, inn, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def rank1_plus_noise(out: int, inn: int, noise: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(out, 1, generator=g, dtype=torch.float64)
    v = torch.randn(1, inn, generator=g, dtype=torch.float64)
    return u @ v + noise * torch.randn(out, inn, generator=g, dtype=torch.float64)


def row_scaled(out: int, inn: int, seed: int = 0) -> torch.Tensor:
    """Gaussian rows with scales from 0.5 to 2: every row has the same *shape* of values."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.5 + 1.5 * torch.rand(out, 1, generator=g, dtype=torch.float64)
    return scale * torch.randn(out, inn, generator=g, dtype=torch.float64)


def ill_conditioned(out: int, inn: int, decades: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    n = min(out, inn)
    U, _ = torch.linalg.qr(torch.randn(out, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(inn, n, generator=g, dtype=torch.float64))
    sigma = torch.logspace(0, -decades, n, dtype=torch.float64)
    return (U * sigma) @ V.T + 0.3  # an offset, so centring matters


PLANTED = {
    "gaussian tall": lambda: gaussian(300, 120),
    "gaussian wide": lambda: gaussian(96, 257, seed=1),
    "gaussian square": lambda: gaussian(128, 128, seed=2),
    "gaussian offset": lambda: gaussian(200, 64, seed=3) + 5.0,
    "gaussian offset wide": lambda: gaussian(64, 300, seed=25) - 3.0,
    # centring leaves ~1e-6 (then 1e-12) of the energy: Gc from the centred entries themselves
    "mean row 1e3 x the spread": lambda: gaussian(300, 60, seed=30) + 1e3,
    "mean row 1e6 x the spread, wide": lambda: gaussian(60, 300, seed=31) - 1e6,
    "rank-1 plus noise": lambda: rank1_plus_noise(256, 100, noise=0.05),
    "rank-1 plus noise wide": lambda: rank1_plus_noise(80, 300, noise=0.01, seed=4),
    "row-scaled gaussian": lambda: row_scaled(200, 160),
    "ill-conditioned 1e6": lambda: ill_conditioned(150, 90, decades=6),
    "ill-conditioned 1e12 wide": lambda: ill_conditioned(70, 160, decades=12, seed=5),
    "heavy tails": lambda: torch.distributions.StudentT(2.0).sample((120, 140)).double(),
    "one column": lambda: gaussian(50, 1, seed=6),
    "one row plus": lambda: gaussian(2, 40, seed=7),
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_geometry_matches_float64_svd(name: str) -> None:
    torch.manual_seed(0)
    W = PLANTED[name]()
    assert_matches(W, spectral.geometry(W).as_dict())


@pytest.mark.parametrize("name", ["gaussian tall", "gaussian wide", "rank-1 plus noise"])
def test_single_metric_functions_agree(name: str) -> None:
    W = PLANTED[name]()
    ref = reference(W.numpy())
    for metric in spectral.METRICS:
        got = getattr(spectral, metric)(W)
        rtol = RTOL_TIGHT if metric in TIGHT else RTOL_LOOSE
        assert got == pytest.approx(ref[metric], rel=rtol), metric


def test_float32_and_bfloat16_inputs_are_measured_as_stored() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        W = gaussian(192, 64, seed=8).to(dtype)
        assert_matches(W, spectral.geometry(W).as_dict())


def test_transposed_view_is_the_matrix_it_shows() -> None:
    stored = gaussian(64, 160, seed=9).float()  # Conv1D-style storage: in x out
    W = stored.T  # (out, in), non-contiguous
    assert not W.is_contiguous()
    assert_matches(W, spectral.geometry(W).as_dict())


def test_batch_equals_one_at_a_time() -> None:
    Ws = torch.stack([gaussian(90, 40, seed=s) for s in range(4)])
    Ws[2] = rank1_plus_noise(90, 40, noise=0.1)
    batch = spectral.geometry_batch(Ws)
    for W, g in zip(Ws, batch, strict=True):
        single = spectral.geometry(W)
        for metric in spectral.METRICS:
            assert getattr(g, metric) == pytest.approx(getattr(single, metric), rel=1e-12)


def test_torch_path_equals_numpy_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Accelerators compute with torch (Lanczos on the dense centred Gram matrix), the CPU with
    numpy's BLAS and LAPACK (Lanczos on its tridiagonal form): the numbers must agree; ``pc1``
    to twice the Lanczos bound, as each path is within it of the exact value."""
    Ws = [PLANTED[name]() for name in ("gaussian tall", "gaussian wide", "ill-conditioned 1e6")]
    numpy_path = [spectral.geometry(W) for W in Ws]
    monkeypatch.setattr(spectral, "NUMPY_ON_CPU", False)
    for W, expected in zip(Ws, numpy_path, strict=True):
        got = spectral.geometry(W)
        for metric in spectral.METRICS:
            rtol = 2 * spectral.LANCZOS_RTOL if metric == "pc1" else 1e-9
            if metric == "snr":  # each path within the bound of its eigensolver's accuracy
                rtol = 2 * snr_rtol(W.numpy())
            assert getattr(got, metric) == pytest.approx(getattr(expected, metric), rel=rtol)


def test_small_chunks_give_the_same_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    transposed = gaussian(64, 300, seed=12).T  # a Conv1D-style view, walked column by column
    for W in (gaussian(300, 50, seed=10), gaussian(40, 300, seed=11) - 1.0, transposed):
        whole = spectral.geometry(W)
        monkeypatch.setattr(spectral, "CHUNK_ELEMENTS", 100)
        monkeypatch.setattr(spectral, "AMPLITUDE_CHUNK_ELEMENTS", 1000)
        chunked = spectral.geometry(W)
        monkeypatch.undo()
        for metric in spectral.METRICS:
            assert getattr(chunked, metric) == pytest.approx(getattr(whole, metric), rel=1e-12)
    assert_matches(transposed, spectral.geometry(transposed).as_dict())


def test_lanczos_top_eigenvalue_matches_the_eigensolver() -> None:
    for W in (gaussian(400, 150, seed=19), row_scaled(120, 200, seed=20), torch.eye(80)):
        X = W.double() - W.double().mean(0)
        G = (X.T @ X)[None]
        exact = torch.linalg.eigvalsh(G)[:, -1]
        assert spectral.lam_max(G) == pytest.approx(float(exact), rel=spectral.LANCZOS_RTOL)


def test_lanczos_with_the_interlacing_bound_matches_the_eigensolver() -> None:
    """The centred top eigenvalue, stopped early by Kato-Temple with the uncentred second
    eigenvalue as the bound, including a nearly degenerate top pair (gap 1e-7 relative)."""
    g = torch.Generator().manual_seed(21)
    U, _ = torch.linalg.qr(torch.randn(300, 100, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(100, 100, generator=g, dtype=torch.float64))
    sigma = torch.linspace(1.0, 0.1, 100, dtype=torch.float64)
    sigma[1] = 1.0 - 1e-7
    close = (U * sigma) @ V.T
    for W in (gaussian(400, 150, seed=19), gaussian(90, 310, seed=22), close, close.T + 0.1):
        g = spectral.grams(W[None])
        G, Gc = g.G, g.Gc
        lam = torch.linalg.eigvalsh(G)
        second = lam[:, -2] + 4 * lam.shape[1] * spectral.EPS64 * lam[:, -1]
        exact = torch.linalg.eigvalsh(Gc)[:, -1]
        got = spectral.lam_max(Gc, second)
        assert float(got) == pytest.approx(float(exact), rel=spectral.LANCZOS_RTOL)


def test_conv1d_views_of_both_orientations_read_in_storage_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Transposed views, tall and wide, chunked along their stored rows: same numbers."""
    monkeypatch.setattr(spectral, "CHUNK_ELEMENTS", 500)
    for stored in (gaussian(70, 260, seed=23), gaussian(260, 70, seed=24) + 0.5):
        W = stored.float().T
        assert not W.is_contiguous()
        got = spectral.geometry(W)
        assert_matches(W, got.as_dict())
        contiguous = spectral.geometry(W.contiguous())
        for metric in spectral.METRICS:
            # amplitudes are summed in float32 within a chunk, in the order values are stored
            rtol = 1e-6 if metric == "amplitude_pr" else 1e-12
            assert getattr(got, metric) == pytest.approx(getattr(contiguous, metric), rel=rtol)


def test_exact_rank1_has_effective_rank_one() -> None:
    g = torch.Generator().manual_seed(12)
    u, v = torch.randn(384, 1, generator=g), torch.randn(1, 128, generator=g)
    for W in (u.double() @ v.double(), u @ v):  # float64, and stored in float32 as a crystal is
        geo = spectral.geometry(W)
        assert geo.effective_rank == pytest.approx(1.0, abs=1e-9)
        assert geo.stable_rank == pytest.approx(1.0, rel=1e-6)
        assert geo.pr_uncentered == pytest.approx(1.0, rel=1e-6)
        assert geo.pr == pytest.approx(1.0, rel=1e-6)  # centring keeps a rank-1 matrix rank-1
        assert_matches(W, geo.as_dict())


def test_rank_deficient_effective_rank_counts_the_rank() -> None:
    g = torch.Generator().manual_seed(13)
    W = torch.randn(200, 5, generator=g, dtype=torch.float64) @ torch.randn(
        5, 90, generator=g, dtype=torch.float64
    )
    geo = spectral.geometry(W)
    assert 1.0 < geo.effective_rank <= 5.0
    assert_matches(W, geo.as_dict())


def test_stable_rank_is_inverse_pc1_uncentered() -> None:
    for W in (torch.eye(64), gaussian(100, 30, seed=14), rank1_plus_noise(60, 80, noise=0.3)):
        geo = spectral.geometry(W)
        assert geo.stable_rank == pytest.approx(1.0 / geo.pc1_uncentered, rel=1e-12)
    identity = spectral.geometry(torch.eye(64, dtype=torch.float64))
    assert identity.stable_rank == pytest.approx(64.0, rel=1e-12)
    assert identity.pr_uncentered == pytest.approx(64.0, rel=1e-12)
    assert identity.effective_rank == pytest.approx(64.0, rel=1e-12)
    assert identity.spectral_norm == pytest.approx(1.0, rel=1e-12)


def test_row_scaled_gaussian_is_high_pr_but_one_amplitude_shape() -> None:
    """The study's signature: values spread over many directions, row shapes stereotyped."""
    geo = spectral.geometry(row_scaled(256, 512, seed=15))
    assert geo.pr > 100  # values spread over many directions (at most 256)
    assert geo.amplitude_pr < 1.2  # one amplitude shape, varying only with the row's scale
    noise = spectral.geometry(gaussian(256, 512, seed=16))
    assert noise.amplitude_pr > 2.0  # i.i.d. rows differ only by sampling noise, in every direction


def test_rank1_plus_noise_is_dominated_by_its_first_component() -> None:
    geo = spectral.geometry(rank1_plus_noise(256, 128, noise=0.05))
    assert geo.pc1_uncentered > 0.9
    assert geo.pr_uncentered < 1.5


def test_non_finite_matrix_is_not_computable() -> None:
    W = gaussian(50, 30, seed=17)
    for bad in (math.nan, math.inf, -math.inf):
        X = W.clone()
        X[3, 7] = bad
        geo = spectral.geometry(X)
        assert not geo.finite
        assert all(math.isnan(v) for v in geo.as_dict().values())
        assert math.isnan(spectral.pr(X))
        assert math.isnan(spectral.frobenius_norm(X))
        assert math.isnan(spectral.amplitude_pr(X))


def test_non_finite_member_of_a_batch_leaves_the_others_alone() -> None:
    Ws = torch.stack([gaussian(40, 20, seed=s) for s in range(3)])
    clean = spectral.geometry_batch(Ws)
    Ws[1, 0, 0] = math.nan
    mixed = spectral.geometry_batch(Ws)
    assert not mixed[1].finite
    assert mixed[0] == clean[0] and mixed[2] == clean[2]


def test_undefined_ratios_are_nan_not_errors() -> None:
    zero = spectral.geometry(torch.zeros(20, 10))
    assert zero.finite and zero.frobenius_norm == 0.0 and zero.spectral_norm == 0.0
    assert math.isnan(zero.pr) and math.isnan(zero.effective_rank) and math.isnan(zero.amplitude_pr)
    for out, inn, offset in ((20, 10, 0), (100, 300, 0), (300, 100, 0), (300, 100, 1e5)):
        same_rows = torch.ones(out, 1) @ (torch.randn(1, inn) + offset)  # centred: rounding noise
        geo = spectral.geometry(same_rows)
        assert math.isnan(geo.pr) and math.isnan(geo.pc1)
        assert math.isnan(spectral.pr(same_rows)) and math.isnan(spectral.pc1(same_rows))
        assert geo.pr_uncentered == pytest.approx(1.0)


def test_not_a_matrix_is_a_one_line_error() -> None:
    with pytest.raises(DeadzoneError, match="not a matrix"):
        spectral.geometry(torch.ones(10))
    with pytest.raises(DeadzoneError, match="not a matrix"):
        spectral.pr(torch.ones(2, 3, 4))


def test_amplitudes_are_distributions_and_robust_to_outliers() -> None:
    W = gaussian(30, 50, seed=18)
    W[0, 0] = 1e6  # far outside every Gaussian: must not overflow or divide by zero
    A = spectral.amplitudes(W)
    assert A.shape == (1, 30, 8)
    assert torch.isfinite(A).all()
    assert torch.allclose(A.sum(-1), torch.ones(1, 30, dtype=torch.float64))
    with pytest.raises(DeadzoneError, match="K=1"):
        spectral.amplitudes(W, K=1)


def test_centred_top_by_bisection_equals_lanczos_on_the_dense_matrix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CPU's secular-equation bisection, and the Lanczos fallback it hands a matrix to when
    a tridiagonal solve meets a singular matrix, agree with each other and the reference."""
    Ws = [
        PLANTED[name]() for name in ("gaussian tall", "gaussian offset wide", "rank-1 plus noise")
    ]
    bisected = [spectral.geometry(W) for W in Ws]
    monkeypatch.setattr(spectral, "_secular_top", lambda *args: None)
    for W, expected in zip(Ws, bisected, strict=True):
        got = spectral.geometry(W)
        assert_matches(W, got.as_dict())
        assert got.pc1 == pytest.approx(expected.pc1, rel=2 * spectral.LANCZOS_RTOL)


@pytest.mark.parametrize("K", [2, 3, 8, 12])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_power_sums_equal_the_softmax(
    K: int, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Amplitudes from one exponential per value equal the K-exponential softmax."""
    W = gaussian(60, 90, seed=26).to(dtype)
    fast = spectral.amplitudes(W, K)
    monkeypatch.setattr(spectral, "_power_range", lambda K, dtype: None)  # softmax everywhere
    slow = spectral.amplitudes(W, K)
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert torch.allclose(fast, slow, rtol=0, atol=tol)


def test_values_beyond_the_power_range_take_the_softmax_exactly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A value just inside and one just outside the float32 range of the power sums (about
    9.5 s for K = 8): both matrices match the float64 reference, and in a batch each matrix
    gets the numbers it gets alone."""
    K = 8
    inside, outside = gaussian(100, 80, seed=27).float(), gaussian(100, 80, seed=28).float()
    bound = spectral._power_range(K, torch.float32) * 6 / (K - 1)  # in units of s
    inside[3, 4] = 0.9 * bound * inside.double().std(correction=0)
    outside[5, 6] = 1.5 * bound * outside.double().std(correction=0)
    power_sums, calls = spectral._power_sums, []
    monkeypatch.setattr(spectral, "_power_sums", lambda *a: calls.append(1) or power_sums(*a))
    for W, fast in ((inside, True), (outside, False)):
        calls.clear()
        assert_matches(W, spectral.geometry(W).as_dict())
        assert bool(calls) == fast  # each is one chunk
    batch = spectral.geometry_batch(torch.stack([inside, outside]))
    for W, got in zip((inside, outside), batch, strict=True):
        alone = spectral.geometry(W)
        assert got.amplitude_pr == pytest.approx(alone.amplitude_pr, rel=1e-12)


def test_secular_bisection_finds_the_centred_top_of_the_tridiagonal_form() -> None:
    """The root of ``a - u^T (T - s)^{-1} u`` between the two top eigenvalues of ``T`` is the top
    eigenvalue of ``T - u u^T`` (a = 1) or of ``T`` compressed to ``u``'s complement (a = 0):
    also when ``u`` misses the top eigenvector, when ``u`` is zero, and for a zero root."""
    rng = np.random.default_rng(29)
    n = 40
    d, e = rng.uniform(1.0, 2.0, n), rng.uniform(0.1, 0.5, n - 1)
    T = np.diag(d) + np.diag(e, 1) + np.diag(e, -1)
    lam, vecs = np.linalg.eigh(T)
    random_u = rng.standard_normal(n)
    misses_top = vecs[:, :-1] @ rng.standard_normal(n - 1)  # orthogonal to the top eigenvector
    for u in (random_u, misses_top, 0.3 * random_u, np.zeros(n)):
        tall = np.linalg.eigvalsh(T - np.outer(u, u))[-1]
        got = spectral._secular_top(d, e, u, 1.0, lam[-2], lam[-1])
        assert got == pytest.approx(tall, rel=10 * spectral.CENTRED_RTOL)
    for u in (random_u, misses_top):
        unit = u / np.linalg.norm(u)
        P = np.eye(n) - np.outer(unit, unit)
        wide = np.linalg.eigvalsh(P @ T @ P)[-1]
        got = spectral._secular_top(d, e, unit, 0.0, lam[-2], lam[-1])
        assert got == pytest.approx(wide, rel=10 * spectral.CENTRED_RTOL)
    top = vecs[:, -1] * np.sqrt(lam[-1])  # removes the top eigenvalue entirely
    assert spectral._secular_top(d, e, top, 1.0, lam[-2], lam[-1]) == pytest.approx(lam[-2])
    assert spectral._secular_top(d, e, random_u, 1.0, 0.0, 0.0) == 0.0  # an empty bracket


def planted(S: list[float], out: int, inn: int, seed: int = 0) -> torch.Tensor:
    """``U diag(S) V^T`` with random orthonormal ``U`` ``(out, n)`` and ``V`` ``(in, n)``."""
    g = torch.Generator().manual_seed(seed)
    n = len(S)
    U, _ = torch.linalg.qr(torch.randn(out, n, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(inn, n, generator=g, dtype=torch.float64))
    return (U * torch.tensor(S, dtype=torch.float64)) @ V.T


def test_snr_of_planted_spectra_follows_spectrum_definition() -> None:
    """A few strong directions over a Marchenko-Pastur-like bulk, tall and wide: the singular
    values planted are the ones the definition sees, and a numpy SVD of the matrix agrees."""
    g = np.random.default_rng(0)
    for out, inn in ((200, 80), (80, 200), (120, 120)):
        n = min(out, inn)
        S = np.sort(np.concatenate([[40.0, 25.0, 12.0], g.uniform(0.2, 1.0, n - 3)]))[::-1]
        W = planted(S.tolist(), out, inn, seed=out)
        expected = spectrum_snr(S, (out, inn))
        assert 0 < expected < math.inf
        assert spectral.geometry(W).snr == pytest.approx(expected, rel=1e-9)
        assert spectral.snr(W) == pytest.approx(expected, rel=1e-9)
        sigma = np.linalg.svd(W.numpy(), compute_uv=False)
        assert spectral.snr(W) == pytest.approx(spectrum_snr(sigma, (out, inn)), rel=1e-9)


def test_snr_by_hand() -> None:
    # S = 10, 1, 1, 1 of a square matrix: quartiles 1 and 3.25, threshold 2.25 / 1.349 * 2
    # = 3.336; signal 10, noise 3: SNR = 10 / 3 / 10.
    W = planted([10.0, 1.0, 1.0, 1.0], 4, 4)
    assert spectral.snr(W) == pytest.approx(1 / 3, rel=1e-12)
    assert spectral.snr(W * 2) == pytest.approx(1 / 6, rel=1e-12)  # scales as 1 / |W|


def test_snr_edge_cases() -> None:
    # Nothing above the threshold: half the spectrum at c, half at 0 (IQR c, threshold 1.48 c).
    nothing_above = planted([3.0, 3.0], 4, 4)
    assert spectral.geometry(nothing_above).snr == 0.0
    # Nothing at or below it: an orthogonal matrix (IQR 0, threshold 0), a Gaussian one (its
    # singular values spread less than the threshold): Spectrum's noise sum of 1, sum S / max S.
    assert spectral.snr(torch.eye(50, dtype=torch.float64)) == pytest.approx(50.0, rel=1e-12)
    W = gaussian(300, 50)
    S = np.linalg.svd(W.numpy(), compute_uv=False)
    assert spectral.geometry(W).snr == pytest.approx(S.sum() / S.max(), rel=1e-9)
    # Only zeros at or below it: an exactly low-rank matrix with an even spectrum; and the zero
    # matrix.
    for W in (planted([5.0] * 9, 40, 12), torch.zeros(8, 6)):
        assert math.isnan(spectral.geometry(W).snr) and math.isnan(spectral.snr(W))
    nan = torch.ones(5, 5)
    nan[0, 0] = math.nan
    assert math.isnan(spectral.geometry(nan).snr)
