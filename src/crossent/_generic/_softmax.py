"""The generic softmax family, on arrays already in the compute dtype.

Each function here is what :mod:`crossent._softmax`'s public function of the same name
computes, once its argument is checked and its axes resolved; a backend kernel registered for
it takes the same arguments.
"""

from __future__ import annotations

from .._typing import Array, Namespace
from ._stable import safe_log, softplus_pair, stable_max

__all__ = ["log_sigmoid", "log_softmax", "logsumexp", "softmax"]


def logsumexp(xp: Namespace, x: Array, axes: tuple[int, ...]) -> Array:
    """The log-sum-exp over ``axes`` (kept, of length 1), none of them empty.

    A ``+inf`` entry gives ``+inf``, as torch's and SciPy's: its shift is 0, not ``+inf``.
    """
    m = stable_max(xp, x, axes)
    m = xp.where(m == xp.inf, 0.0, m)
    return safe_log(xp, xp.sum(xp.exp(x - m), axis=axes, keepdims=True)) + m


def softmax(xp: Namespace, x: Array, axis: int) -> Array:
    e = xp.exp(x - stable_max(xp, x, axis))
    return e / xp.sum(e, axis=axis, keepdims=True)


def log_softmax(xp: Namespace, x: Array, axis: int) -> Array:
    shifted = x - stable_max(xp, x, axis)
    return shifted - safe_log(xp, xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log_sigmoid(xp: Namespace, x: Array) -> Array:
    """``log(sigmoid(x)) = -softplus(-x)``: no overflow, and the true derivative everywhere."""
    return 0.0 - softplus_pair(xp, x)[1]  # 0 - 0 is +0 where -0 would print as "-0."
