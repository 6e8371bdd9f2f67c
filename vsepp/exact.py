"""Exact comparison of dot products: which of two keys a query scores higher, with no rounding.

A float64 score made by BLAS is the real dot product plus an error that depends on the
kernel's summation order, and so on the CPU (OpenBLAS picks another kernel with AVX-512) and
even on a row's place in the kernel's tiles: two exact copies of a vector can score an ulp
apart. Wherever two scores are closer than their error bound, the evaluation asks this
module instead, which decides the sign of ``q.a - q.b`` of the real numbers the arrays hold.

Each product ``q_d * a_d`` is split into two float64s whose sum is exact (Dekker's
TwoProduct: Veltkamp's split of each factor into 26-bit halves), and ``math.fsum`` sums the
4D terms of ``q.a - q.b`` correctly rounded (Shewchuk), so the sign of its result is the
sign of the exact value, zero only for an exact tie. That holds while no partial product
underflows and no split overflows: rows with a nonzero entry outside [2^-400, 2^400] are
summed as fractions instead (never for embeddings, which are unit vectors of float32s).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

_SPLITTER = 2.0**27 + 1.0  # Veltkamp's constant for float64's 53-bit significand
_TINY, _HUGE = 2.0**-400, 2.0**400
# Terms held at once: 4 per dimension of each compared pair, 8 bytes each, 32 MB a chunk.
_CHUNK_TERMS = 2**22


def _split(x: FloatArray) -> tuple[FloatArray, FloatArray]:
    """x = hi + lo exactly, each half with at most 26 significant bits."""
    c = _SPLITTER * x
    hi = c - (c - x)
    return hi, x - hi


def _two_product(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(p, e) with p = fl(a * b) and p + e = a * b exactly (no underflow, no overflow)."""
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, e


def _in_range(x: FloatArray) -> npt.NDArray[np.bool_]:
    """Rows whose every entry is zero or of a magnitude TwoProduct handles exactly."""
    magnitude = np.abs(x)
    return np.all((magnitude == 0) | ((magnitude >= _TINY) & (magnitude <= _HUGE)), axis=1)


def _fraction_sign(q: FloatArray, a: FloatArray, b: FloatArray) -> int:
    """sign(q.a - q.b) with every value a Fraction: exact for any finite floats, slow."""
    total = sum(
        (Fraction(x) * (Fraction(y) - Fraction(z)) for x, y, z in zip(q, a, b, strict=True)),
        Fraction(0),
    )
    return (total > 0) - (total < 0)


def difference_signs(q: FloatArray, a: FloatArray, b: FloatArray) -> IntArray:
    """sign(q[i].a[i] - q[i].b[i]) of the exact real values, row by row: -1, 0 or 1.

    ``q``, ``a`` and ``b`` are [P, D] float arrays (float32 rows convert exactly) of finite
    values.
    """
    q, a, b = (np.asarray(x, dtype=np.float64) for x in (q, a, b))
    signs = np.empty(q.shape[0], dtype=np.int64)
    rows = max(1, _CHUNK_TERMS // max(1, 4 * q.shape[1]))
    for start in range(0, q.shape[0], rows):
        stop = min(start + rows, q.shape[0])
        qs, as_, bs = q[start:stop], a[start:stop], b[start:stop]
        pa, ea = _two_product(qs, as_)
        pb, eb = _two_product(qs, bs)
        terms = np.concatenate([pa, ea, -pb, -eb], axis=1)
        safe = _in_range(qs) & _in_range(as_) & _in_range(bs)
        for i, row in enumerate(terms):
            if safe[i]:
                total = math.fsum(row.tolist())
                signs[start + i] = (total > 0) - (total < 0)
            else:
                signs[start + i] = _fraction_sign(qs[i], as_[i], bs[i])
    return signs


def ranked_before(
    queries: np.ndarray, keys: np.ndarray, query: IntArray, key: IntArray, positive: IntArray
) -> npt.NDArray[np.bool_]:
    """Whether ``keys[key]`` ranks before ``keys[positive]`` for ``queries[query]``, per
    triple: a higher exact score, or an equal one and a higher index (the tie rule)."""
    before = np.zeros(query.size, dtype=bool)
    rows = max(1, _CHUNK_TERMS // max(1, 4 * queries.shape[1]))
    for start in range(0, query.size, rows):
        q, k, p = (x[start : start + rows] for x in (query, key, positive))
        signs = difference_signs(queries[q], keys[k], keys[p])
        before[start : start + rows] = (signs > 0) | ((signs == 0) & (k > p))
    return before
