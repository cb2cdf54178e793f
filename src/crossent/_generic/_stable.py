"""Numerically stable pieces that more than one family of losses is built from."""

from __future__ import annotations

from array_api_compat import device

from .._typing import Array, Namespace
from ._arrays import constant

__all__ = ["at_least", "clip_probs", "mark_bad", "safe_log", "softplus_pair", "stable_max"]


def at_least(xp: Namespace, x: Array, floor: float) -> Array:
    """``maximum(x, floor)``, NaN for NaN. The floor is made an array of ``x``'s dtype first:
    array_api_compat's torch ``maximum`` asks ``torch.result_type`` of a Python number, which
    torch.compile cannot trace."""
    return xp.maximum(x, xp.asarray(floor, dtype=x.dtype, device=device(x)))


def stable_max(xp: Namespace, x: Array, axis: int | tuple[int, ...]) -> Array:
    """The maximum along ``axis`` (kept), the shift that keeps ``exp`` in range.

    A maximum of ``-inf`` (a row of all ``-inf``) is replaced by 0: shifting by it would give
    ``-inf - (-inf) = NaN`` instead of an exact 0 after ``exp``. A NaN maximum stays NaN and a
    ``+inf`` one stays ``+inf``, so that the row's softmax is NaN, as torch's. The shift
    cancels out of every result, so autodiff may treat it as a constant.
    """
    if 0 in x.shape:  # nothing to shift; Dask's max fails on empty chunks
        axes = (axis,) if isinstance(axis, int) else axis
        shape = tuple(
            1 if a in axes or a - len(x.shape) in axes else s for a, s in enumerate(x.shape)
        )
        return xp.zeros(shape, dtype=x.dtype, device=device(x))
    m = constant(xp, xp.max(x, axis=axis, keepdims=True))
    return xp.where(m == -xp.inf, 0.0, m)


def safe_log(xp: Namespace, x: Array) -> Array:
    """``log(x)`` for ``x >= 0`` (a probability, a sum of exponentials): ``-inf`` at 0, with a
    zero gradient there and no warning; NaN stays NaN."""
    zero = x == 0
    return xp.where(zero, -xp.inf, xp.log(xp.where(zero, 1.0, x)))


def softplus_pair(xp: Namespace, x: Array) -> tuple[Array, Array, Array]:
    """``softplus(x)``, ``softplus(-x)`` and ``exp(-|x|)``, for any ``x`` without overflow.

    ``softplus(x) = max(x, 0) + log1p(exp(-|x|))``. Both parts have a kink at 0, and their
    derivatives there must add up to ``sigmoid(0) = 1/2``; frameworks break ties of ``maximum``
    and ``abs`` differently (JAX and torch disagree), so the kinks are written with ``where``,
    whose derivative is the same everywhere: with ``x > 0`` choosing, ``|x|'(0) = -1`` and
    ``max(x, 0)'(0) = 0`` give exactly 1/2.
    """
    positive = x > 0
    decay = xp.exp(-xp.where(positive, x, -x))
    tail = xp.log1p(decay)
    return xp.where(positive, x, 0.0) + tail, xp.where(positive, 0.0, -x) + tail, decay


def clip_probs(xp: Namespace, probs: Array, eps: float) -> tuple[Array, Array]:
    """``clip(probs, eps, 1 - eps)``, and where no clipping happened (bounds included).

    Written as a ``where`` so that autodiff passes the gradient through at the bounds, as
    torch's ``clamp`` does, where JAX's ``clip`` would halve it.
    """
    inside = (probs >= eps) & (probs <= 1.0 - eps)
    return xp.where(inside, probs, xp.clip(probs, eps, 1.0 - eps)), inside


def mark_bad(xp: Namespace, x: Array, bad: Array | None) -> Array:
    """NaN where the input was invalid but could not be checked (lazy arrays).

    A product with a mask of NaN and 1, not a ``where``, so that autodiff's gradient is NaN
    there too, as the analytic gradient is, and exactly the same elsewhere.
    """
    if bad is None:
        return x
    nan = xp.asarray(xp.nan, dtype=x.dtype, device=device(x))
    one = xp.asarray(1.0, dtype=x.dtype, device=device(x))
    return x * xp.where(bad, nan, one)
