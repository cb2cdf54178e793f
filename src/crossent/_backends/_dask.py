"""Kernels for Dask arrays: the log-sum-exp of each row as one reduction over its blocks.

Written with the standard alone, a row's log-sum-exp is two reductions, the second waiting
for the first: the maximum, then the sum of ``exp(x - max)``; the target's logit is a third.
On Dask each is a tree of tasks over the blocks of the class axis, and every block of a row
must stay in memory (or be made again) until the row's maximum is known: for logits larger
than memory, workers die.

Here each block of logits gives its statistics in one task, and a tree of combine steps
merges them: the block's maximum ``m_i`` and ``s_i = sum exp(x - m_i)`` merge as
``m = max(m_i)``, ``s = sum s_i exp(m_i - m)``; the target's logit is read in the same task
(it is in exactly one block), and so is the smoothing or soft-target sum
``sum_c a_c (x_c - m_i)``, moved to the new shift as ``+ (m_i - m) sum_c a_c``. Each block of
logits is read once and freed; what the tree carries is a few numbers per row and block. The
per-position arithmetic that follows, and the gradient, are the generic path's own
(:func:`crossent._generic._categorical.cross_entropy_pass`), fed these statistics.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np

from .._generic import _categorical, _softmax
from .._generic._categorical import RowStatistics, cross_entropy_pass
from .._generic._problems import Classes
from .._generic._stable import safe_log
from .._typing import Array, Namespace

__all__ = ["KERNELS"]

#: The statistics of one row of a block, in the order a block's task writes them.
_FIELDS = ("max", "total", "target_logit", "shifted_sum", "mass")


def _statistics_dtype(dtype: Any) -> np.dtype[Any]:
    """A record of every field in ``dtype``: one array flows through the tree, as Dask's own
    ``argmin`` carries its value and index."""
    return np.dtype([(name, dtype) for name in _FIELDS])


def _shift(top: np.ndarray, limit_infinite: bool) -> np.ndarray:
    """The shift of a row (or block) whose maximum is ``top``: ``top``, but 0 where it is
    ``-inf`` (:func:`crossent._generic._stable.stable_max`), and where it is ``+inf`` too for
    the log-sum-exp, whose value there is ``+inf``, not NaN (as the generic ``logsumexp``)."""
    infinite = np.isinf(top) if limit_infinite else top == -np.inf
    return np.where(infinite, 0.0, top)


def _block_statistics(
    x: np.ndarray,
    classes: np.ndarray | None = None,
    index: np.ndarray | None = None,
    coefficients: np.ndarray | None = None,
    *,
    axis: tuple[int, ...] = (-1,),
    keepdims: bool = True,
    scalar: float | None = None,
    limit_infinite: bool = False,
) -> np.ndarray:
    """The statistics of one block of logits over ``axis`` (kept, of length 1).

    ``classes`` are the block's class numbers and ``index`` each row's target class (the
    target logit is the target's where the block holds it, else 0); ``coefficients`` are the
    ``a`` of the shifted sum, of the block's shape or one per class, or ``scalar`` for every
    class; with neither the shifted sum is not made. Dask's reduction calls it with ``axis``
    and ``keepdims``, which is always True.
    """
    keep = tuple(1 if a in axis or a - x.ndim in axis else s for a, s in enumerate(x.shape))
    out = np.zeros(keep, dtype=_statistics_dtype(x.dtype))
    if x.size == 0:  # Dask's probe of the output type, with an empty block
        return out
    with np.errstate(all="ignore"):
        top = np.max(x, axis=axis, keepdims=True)
        shifted = x - _shift(top, limit_infinite)
        out["max"] = top
        out["total"] = np.sum(np.exp(shifted), axis=axis, keepdims=True)
        if index is not None:
            assert classes is not None
            local = index[..., None] - classes[0]
            inside = (local >= 0) & (local < x.shape[-1])
            taken = np.take_along_axis(x, np.where(inside, local, 0), axis=-1)
            out["target_logit"] = np.where(inside, taken, 0.0)
        if coefficients is not None or scalar is not None:
            a = scalar if coefficients is None else coefficients
            out["shifted_sum"] = np.sum(shifted * a, axis=axis, keepdims=True)
            if coefficients is None:
                out["mass"] = scalar * x.shape[-1]
            elif coefficients.ndim == x.ndim:
                out["mass"] = np.sum(coefficients, axis=axis, keepdims=True)
            else:
                out["mass"] = np.sum(coefficients)
    return out


def _identity(stats: np.ndarray, axis: Any = None, keepdims: bool = True) -> np.ndarray:
    return stats


def _merge(
    stats: np.ndarray, axis: tuple[int, ...], keepdims: bool = True, *, limit_infinite: bool
) -> np.ndarray:
    """Merge statistics along ``axis`` into one (kept, of length 1), each block's sums moved
    from its own shift to the merged one."""
    top = np.max(stats["max"], axis=axis, keepdims=True)
    out = np.zeros(top.shape, dtype=stats.dtype)
    if stats.size == 0:
        return out
    with np.errstate(all="ignore"):
        move = _shift(stats["max"], limit_infinite) - _shift(top, limit_infinite)
        total = stats["total"]
        # A block of all -inf logits adds exactly 0 (as it does to the whole row's sum), even
        # where its factor overflows; a NaN total stays NaN.
        moved = np.where(total == 0, 0.0, total * np.exp(move))
        mass = stats["mass"]
        shifted_sum = np.where(mass == 0, stats["shifted_sum"], stats["shifted_sum"] + move * mass)
        out["max"] = top
        out["total"] = np.sum(moved, axis=axis, keepdims=True)
        out["target_logit"] = np.sum(stats["target_logit"], axis=axis, keepdims=True)
        out["shifted_sum"] = np.sum(shifted_sum, axis=axis, keepdims=True)
        out["mass"] = np.sum(mass, axis=axis, keepdims=True)
    return out


def _reduce(
    blocks: Array, axis: tuple[int, ...], *, limit_infinite: bool, chunk: Callable[..., Any]
) -> Array:
    """One Dask reduction of ``blocks`` along ``axis``, kept, by ``chunk`` and the merge."""
    merge = functools.partial(_merge, limit_infinite=limit_infinite)
    dtype = _statistics_dtype(blocks.dtype if blocks.dtype.names is None else blocks.dtype[0])
    return da.reduction(
        blocks,
        chunk=chunk,
        combine=merge,
        aggregate=merge,
        axis=axis,
        keepdims=True,
        dtype=dtype,
        concatenate=True,
        meta=np.empty((0,) * blocks.ndim, dtype=dtype),
    )


# --- cross_entropy ----------------------------------------------------------------------------


def _row_statistics(
    problem: Classes, index: Array | None, coefficients: Array | float | None
) -> RowStatistics:
    """:func:`crossent._generic._categorical.row_statistics` in one pass over the blocks."""
    x = problem.scores()
    letters = string.ascii_letters[: x.ndim]
    rows, cls = letters[:-1], letters[-1]
    classes = da.arange(x.shape[-1], chunks=(x.chunks[-1],), dtype=np.int64)
    arguments: list[Any] = [x, letters, classes, cls]
    if index is not None:
        arguments += [index.rechunk(x.chunks[:-1]), rows]
    scalar = None
    if isinstance(coefficients, float):
        scalar = coefficients
    elif coefficients is not None:
        chunks = x.chunks if coefficients.ndim == x.ndim else x.chunks[-1:]
        arguments += [coefficients.rechunk(chunks), letters[-coefficients.ndim :]]
    dtype = _statistics_dtype(x.dtype)
    if index is None:  # the blocks' function takes its arrays by position
        arguments[4:4] = [None, None]
    blocks = da.blockwise(
        functools.partial(_block_statistics, scalar=scalar),
        letters,
        *arguments,
        adjust_chunks={cls: 1},
        dtype=dtype,
        meta=np.empty((0,) * x.ndim, dtype=dtype),
    )
    stats = _reduce(blocks, (x.ndim - 1,), limit_infinite=False, chunk=_identity)
    top = stats["max"]
    shift = da.where(top == -np.inf, 0.0, top)
    row_shift = shift[..., 0]
    return RowStatistics(
        shift=shift,
        total=stats["total"][..., 0],
        shifted_target=None if index is None else stats["target_logit"][..., 0] - row_shift,
        shifted_sum=None if coefficients is None else stats["shifted_sum"][..., 0],
        mass=stats["mass"][..., 0],
    )


def cross_entropy(problem: Classes, smoothing: float) -> Array | None:
    if 0 in problem.predictions.shape:
        return None
    return problem.reduce(
        cross_entropy_pass(problem, smoothing, gradient=False, statistics=_row_statistics)
    )


def cross_entropy_value_and_grad(problem: Classes, smoothing: float) -> tuple[Array, Array] | None:
    if 0 in problem.predictions.shape:
        return None
    return problem.value_and_grad(
        cross_entropy_pass(problem, smoothing, gradient=True, statistics=_row_statistics)
    )


# --- The softmax family -----------------------------------------------------------------------


def _shift_and_total(x: Array, axes: tuple[int, ...], limit_infinite: bool) -> tuple[Array, Array]:
    chunk = functools.partial(_block_statistics, limit_infinite=limit_infinite)
    stats = _reduce(x, axes, limit_infinite=limit_infinite, chunk=chunk)
    top = stats["max"]
    infinite = da.isinf(top) if limit_infinite else top == -np.inf
    return da.where(infinite, 0.0, top), stats["total"]


def logsumexp(xp: Namespace, x: Array, axes: tuple[int, ...]) -> Array | None:
    if 0 in x.shape:
        return None
    shift, total = _shift_and_total(x, axes, limit_infinite=True)
    return safe_log(xp, total) + shift


def log_softmax(xp: Namespace, x: Array, axis: int) -> Array | None:
    if 0 in x.shape:
        return None
    shift, total = _shift_and_total(x, (axis % x.ndim,), limit_infinite=False)
    return (x - shift) - safe_log(xp, total)


def softmax(xp: Namespace, x: Array, axis: int) -> Array | None:
    if 0 in x.shape:
        return None
    shift, total = _shift_and_total(x, (axis % x.ndim,), limit_infinite=False)
    return xp.exp(x - shift) / total


KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    _categorical.cross_entropy: cross_entropy,
    _categorical.cross_entropy_value_and_grad: cross_entropy_value_and_grad,
    _softmax.logsumexp: logsumexp,
    _softmax.log_softmax: log_softmax,
    _softmax.softmax: softmax,
}
