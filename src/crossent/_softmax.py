"""Softmax and friends: the numerically stable primitives under every loss."""

from __future__ import annotations

from array_api_compat import device

from ._dispatch import dispatch, public_function
from ._generic import _softmax as generic
from ._generic._arrays import as_array
from ._typing import Array, Namespace
from ._validation import (
    check_bool,
    check_real_floating,
    compute_dtype,
    get_namespace,
    normalize_axis,
)

__all__ = ["log_sigmoid", "log_softmax", "logsumexp", "softmax"]


def _prepare(name: str, x: Array) -> tuple[Namespace, Array]:
    xp = get_namespace((name, x))
    check_real_floating(xp, name, x)
    return xp, xp.astype(x, compute_dtype(xp, x.dtype), copy=False)


def _axes(x: Array, axis: int | tuple[int, ...] | None) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(len(x.shape)))
    if isinstance(axis, tuple):
        axes = tuple(normalize_axis("x", x, a) for a in axis)
        if len(set(axes)) != len(axes):
            raise ValueError(f"axis {axis} names one axis twice")
        return axes
    return (normalize_axis("x", x, axis),)


@public_function(generic.logsumexp)
def logsumexp(
    x: Array, *, axis: int | tuple[int, ...] | None = -1, keepdims: bool = False
) -> Array:
    r"""Logarithm of the sum of exponentials, computed without overflow.

    .. math::

        \operatorname{logsumexp}(x)_i = m_i + \log \sum_j \exp(x_{ij} - m_i),
        \qquad m_i = \max_j x_{ij}

    Parameters
    ----------
    x : array
        Real floating array of any Array API library.
    axis : int, tuple of int or None, default -1
        Axis or axes to reduce; ``None`` reduces all of them.
    keepdims : bool, default False
        Keep the reduced axes with length 1.

    Returns
    -------
    array
        Of ``x``'s library, device and dtype. A slice of all ``-inf`` gives ``-inf``, not NaN; an
        empty slice gives ``-inf``.

    %(raises_softmax)s

    Notes
    -----
    **Shape.** ``x``: any shape; output: ``x``'s shape without the reduced axes (or with
    them of length 1 if ``keepdims``). float16 and bfloat16 are computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import logsumexp
    >>> logsumexp(np.array([1000.0, 1000.0]))
    array(1000.69314718)
    >>> logsumexp(np.array([-np.inf, -np.inf]))
    array(-inf)
    """
    xp, xc = _prepare("x", x)
    axes = _axes(x, axis)
    check_bool("keepdims", keepdims)
    if not axes:  # no axis to reduce: each element alone (torch would read dim=() as all)
        return as_array(xp, xp.astype(xc, x.dtype, copy=True))
    if any(x.shape[a] == 0 for a in axes):
        shape = tuple(1 if a in axes else s for a, s in enumerate(x.shape))
        out = xp.full(shape, -xp.inf, dtype=xc.dtype, device=device(x))
    else:
        out = dispatch(xp, generic.logsumexp, xp, xc, axes)
    if not keepdims:
        out = xp.squeeze(out, axis=axes)
    return as_array(xp, xp.astype(out, x.dtype, copy=False))


@public_function(generic.softmax)
def softmax(x: Array, *, axis: int = -1) -> Array:
    r"""Softmax along ``axis``: exponentials normalised to sum to one.

    .. math::

        \operatorname{softmax}(x)_{ij} = \frac{\exp(x_{ij} - m_i)}{\sum_k \exp(x_{ik} - m_i)},
        \qquad m_i = \max_k x_{ik}

    %(parameters_softmax)s

    Returns
    -------
    array
        Of ``x``'s library, device, dtype and shape. A slice of all ``-inf`` gives NaN, as
        ``torch.softmax`` does.

    %(raises_softmax)s

    %(notes_shape_softmax)s

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import softmax
    >>> softmax(np.array([0.0, np.log(3.0)]))
    array([0.25, 0.75])
    """
    xp, xc = _prepare("x", x)
    ax = normalize_axis("x", x, axis)
    out = dispatch(xp, generic.softmax, xp, xc, ax)
    return as_array(xp, xp.astype(out, x.dtype, copy=False))


@public_function(generic.log_softmax)
def log_softmax(x: Array, *, axis: int = -1) -> Array:
    r"""Logarithm of the softmax along ``axis``, exact for logits of any magnitude.

    .. math::

        \operatorname{log\_softmax}(x)_{ij} = (x_{ij} - m_i) - \log \sum_k \exp(x_{ik} - m_i)

    %(parameters_softmax)s

    Returns
    -------
    array
        Of ``x``'s library, device, dtype and shape.

    %(raises_softmax)s

    %(notes_shape_softmax)s

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import log_softmax
    >>> log_softmax(np.array([1e4, 0.0]))
    array([     0., -10000.])
    """
    xp, xc = _prepare("x", x)
    ax = normalize_axis("x", x, axis)
    out = dispatch(xp, generic.log_softmax, xp, xc, ax)
    return as_array(xp, xp.astype(out, x.dtype, copy=False))


@public_function(generic.log_sigmoid)
def log_sigmoid(x: Array) -> Array:
    r"""Logarithm of the logistic sigmoid, elementwise, without overflow.

    .. math::

        \log \sigma(x) = -\log(1 + e^{-x}) = \min(x, 0) - \log\left(1 + e^{-|x|}\right)

    Parameters
    ----------
    x : array
        Real floating array of any Array API library.

    Returns
    -------
    array
        Of ``x``'s library, device, dtype and shape.

    Raises
    ------
    TypeError
        If ``x`` is not an array or has no real floating dtype.

    Notes
    -----
    **Shape.** ``x``: any shape; output: the same shape, elementwise. float16 and bfloat16
    are computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import log_sigmoid
    >>> log_sigmoid(np.array([-1e4, 0.0, 1e4]))
    array([-1.00000000e+04, -6.93147181e-01,  0.00000000e+00])
    """
    xp, xc = _prepare("x", x)
    out = dispatch(xp, generic.log_sigmoid, xp, xc)
    return as_array(xp, xp.astype(out, x.dtype, copy=False))
