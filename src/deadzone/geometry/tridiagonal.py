"""LAPACK's symmetric tridiagonal reduction and eigenvalues, callable from several threads at once.

``scipy.linalg.lapack``'s wrappers hold Python's global interpreter lock for the whole call, so
two threads reducing two matrices take turns. These functions call the same routines (scipy's
public ``cython_lapack`` table of LAPACK functions) through ``ctypes``, which releases the lock
during a foreign call: each thread keeps its own core busy. Where the table cannot be bound (a
scipy without ``__pyx_capi__``, a Python without ``ctypes.pythonapi``), they call scipy's own
wrappers instead: the same routines and numbers, one thread at a time.
"""

from __future__ import annotations

import ctypes
import functools
from typing import NamedTuple

import numpy as np
from scipy.linalg import cython_lapack, lapack

from deadzone.errors import DeadzoneError

_INT = ctypes.POINTER(ctypes.c_int)
_PTR = ctypes.c_void_p


@functools.cache
def _routine(name: str, *argtypes: type) -> ctypes._CFuncPtr:
    """The LAPACK routine ``name`` from scipy's table, with the given argument types."""
    capsule = cython_lapack.__pyx_capi__[name]
    get_name = ctypes.pythonapi.PyCapsule_GetName
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    address = get_pointer(capsule, get_name(capsule))
    return ctypes.CFUNCTYPE(None, *argtypes)(address)


@functools.cache
def binds() -> bool:
    """Whether scipy's table of LAPACK routines can be called through ctypes here."""
    try:
        _dsytrd()
    except (AttributeError, KeyError, TypeError, ValueError):
        return False
    return True


def _dsytrd() -> ctypes._CFuncPtr:
    return _routine("dsytrd", ctypes.c_char_p, _INT, _PTR, _INT, _PTR, _PTR, _PTR, _PTR, _INT, _INT)


def _int(value: int) -> ctypes.c_int:
    return ctypes.c_int(value)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class Tridiagonal(NamedTuple):
    """``G = Q T Q^T``: ``T`` has diagonal ``d`` ``(n,)`` and off-diagonal ``e`` ``(n-1,)``;
    ``Q = diag(1, Q1)`` where ``Q1`` is the product of ``n - 1`` Householder reflectors stored
    QR-style in ``reflectors`` ``(n-1, n-1)`` (column-major, below its diagonal) and ``tau``."""

    d: np.ndarray
    e: np.ndarray
    reflectors: np.ndarray
    tau: np.ndarray


def reduce(G: np.ndarray, overwrite: bool = False) -> Tridiagonal:
    """LAPACK ``dsytrd`` of a symmetric matrix. With ``overwrite``, a column-major float64 ``G``
    is reduced where it lies (and no longer holds ``G``); else a copy is."""
    n = G.shape[0]
    in_place = overwrite and G.dtype == np.float64 and G.flags.f_contiguous and G.flags.writeable
    a = G if in_place else np.array(G, dtype=np.float64, order="F")
    if not binds():
        return _reduce_wrapped(a)
    d, e, tau = np.empty(n), np.empty(max(n - 1, 1)), np.empty(max(n - 1, 1))
    lwork = _sytrd_lwork(n)
    work, info = np.empty(lwork), _int(0)
    _dsytrd()(
        b"L", _int(n), _ptr(a), _int(n), _ptr(d), _ptr(e), _ptr(tau), _ptr(work), _int(lwork), info
    )
    if info.value:
        raise DeadzoneError(f"LAPACK dsytrd failed on a {n}x{n} matrix (info {info.value})")
    return Tridiagonal(d, e[: n - 1], a[1:, :-1], tau[: n - 1])


def _reduce_wrapped(a: np.ndarray) -> Tridiagonal:
    """:func:`reduce` through scipy's wrapper, in ``a`` (column-major float64) itself."""
    n = a.shape[0]
    if n < 2:  # already tridiagonal; the wrapper refuses an empty off-diagonal
        return Tridiagonal(a.diagonal().copy(), np.empty(0), a[1:, :-1], np.empty(0))
    c, d, e, tau, info = lapack.dsytrd(a, lower=1, lwork=max(1, n * 64), overwrite_a=1)
    if info:
        raise DeadzoneError(f"LAPACK dsytrd failed on a {n}x{n} matrix (info {info})")
    return Tridiagonal(d, e, c[1:, :-1], tau)


@functools.cache
def _sytrd_lwork(n: int) -> int:
    a, out, work, info = np.zeros(1), np.zeros(max(n, 1)), np.zeros(1), _int(0)
    _dsytrd()(b"L", _int(n), _ptr(a), _int(max(n, 1)), _ptr(out), _ptr(out), _ptr(out), _ptr(work),
       _int(-1), info)  # fmt: skip
    return max(1, int(work[0]))


def eigenvalues(d: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Eigenvalues of the symmetric tridiagonal ``(d, e)``, ascending (LAPACK ``dsterf``)."""
    n = d.shape[0]
    lam, off, info = np.array(d, dtype=np.float64), np.array(e, dtype=np.float64), _int(0)
    if not binds():
        if n < 2:
            return lam
        lam, info.value = lapack.dsterf(lam, off, overwrite_d=1, overwrite_e=1)
    else:
        off = off if off.size else np.zeros(1)
        _routine("dsterf", _INT, _PTR, _PTR, _INT)(_int(n), _ptr(lam), _ptr(off), info)
    if info.value:
        raise DeadzoneError(f"LAPACK dsterf did not converge on a {n}x{n} matrix")
    return lam
