"""LAPACK's tridiagonal reduction through ctypes, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import cython_lapack, lapack

from deadzone.geometry import tridiagonal


def psd(n: int, seed: int) -> np.ndarray:
    A = np.random.default_rng(seed).standard_normal((2 * n, n))
    return A.T @ A


@pytest.mark.parametrize("n", [1, 2, 7, 100, 257])
def test_eigenvalues_of_the_reduction_are_numpys(n: int) -> None:
    G = psd(n, seed=n)
    T = tridiagonal.reduce(G)
    lam = tridiagonal.eigenvalues(T.d, T.e)
    expected = np.linalg.eigvalsh(G)
    assert np.all(np.diff(lam) >= 0)
    assert np.allclose(lam, expected, rtol=0, atol=1e-12 * expected[-1])


def test_reflectors_give_q_transpose() -> None:
    """``u = Q^T c`` keeps the norm and ``u^T T u = c^T G c``, since ``T = Q^T G Q``."""
    G = psd(60, seed=1)
    c = np.random.default_rng(2).standard_normal(60)
    T = tridiagonal.reduce(G)
    u = c.copy()
    u[1:] = lapack.dormqr("L", "T", T.reflectors, T.tau, c[1:, None], lwork=1)[0][:, 0]
    Tu = T.d * u
    Tu[:-1] += T.e * u[1:]
    Tu[1:] += T.e * u[:-1]
    assert np.linalg.norm(u) == pytest.approx(np.linalg.norm(c), rel=1e-13)
    assert u @ Tu == pytest.approx(c @ G @ c, rel=1e-12)


def test_overwrite_only_when_asked_and_possible() -> None:
    G = psd(40, seed=3)
    kept = G.copy()
    tridiagonal.reduce(G)
    assert np.array_equal(G, kept)  # a copy was reduced
    tridiagonal.reduce(G.T, overwrite=True)  # column-major view of the same symmetric matrix
    assert not np.array_equal(G, kept)
    F = np.asfortranarray(kept.astype(np.float32))
    tridiagonal.reduce(F, overwrite=True)  # not float64: reduced in a copy
    assert np.array_equal(F, kept.astype(np.float32))


@pytest.fixture
def unbound(monkeypatch):
    """A scipy whose Cython table of LAPACK routines has no ``__pyx_capi__`` to bind."""
    monkeypatch.setattr(tridiagonal, "cython_lapack", object())
    for cached in (tridiagonal.binds, tridiagonal._routine, tridiagonal._sytrd_lwork):
        cached.cache_clear()
    yield
    monkeypatch.undo()
    tridiagonal.binds.cache_clear()
    tridiagonal._sytrd_lwork.cache_clear()


@pytest.mark.parametrize("n", [1, 2, 7, 100])
def test_without_the_table_scipys_wrappers_give_the_same_numbers(n: int, unbound) -> None:
    G = psd(n, seed=n)
    assert not tridiagonal.binds()
    wrapped = tridiagonal.reduce(G)
    lam = tridiagonal.eigenvalues(wrapped.d, wrapped.e)
    tridiagonal.binds.cache_clear()
    tridiagonal.cython_lapack = cython_lapack
    assert tridiagonal.binds()
    bound = tridiagonal.reduce(G)
    for got, want in zip(wrapped, bound, strict=True):
        assert got.shape == want.shape
        assert np.allclose(got, want, rtol=0, atol=1e-12 * max(1.0, np.abs(want).max(initial=0)))
    expected = tridiagonal.eigenvalues(bound.d, bound.e)
    assert np.allclose(lam, expected, rtol=0, atol=1e-12 * expected[-1])
