"""Softmax and friends: the numerically stable primitives under every loss."""

from __future__ import annotations

from array_api_compat import device

from ._delegation import as_array, constant, fast_path, public_function
from ._typing import Array, Namespace
from ._validation import check_real_floating, compute_dtype, get_namespace, normalize_axis

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


def stable_max(xp: Namespace, x: Array, axis: int | tuple[int, ...]) -> Array:
    """The maximum along ``axis`` (kept), with non-finite maxima replaced by 0.

    Shifting by the maximum keeps ``exp`` in range; a row of all ``-inf`` would otherwise be
    shifted by ``-inf`` and give ``-inf - (-inf) = NaN`` instead of an exact 0 after ``exp``.
    The shift cancels out of every result, so autodiff may treat it as a constant.
    """
    if 0 in x.shape:  # nothing to shift; Dask's max fails on empty chunks
        axes = (axis,) if isinstance(axis, int) else axis
        shape = tuple(
            1 if a in axes or a - len(x.shape) in axes else s for a, s in enumerate(x.shape)
        )
        return xp.zeros(shape, dtype=x.dtype, device=device(x))
    m = constant(xp, xp.max(x, axis=axis, keepdims=True))
    return xp.where(xp.isfinite(m), m, 0.0)


def log_of_sum(xp: Namespace, total: Array) -> Array:
    """``log(total)`` for a sum of exponentials, ``-inf`` where it is 0 (a row of all ``-inf``),
    with no NaN gradient and no warning there."""
    positive = total > 0
    return xp.where(positive, xp.log(xp.where(positive, total, 1.0)), -xp.inf)


@public_function
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

    Raises
    ------
    TypeError
        If ``x`` is not an array or has no real floating dtype.
    ValueError
        If ``axis`` is out of range.

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
    if any(x.shape[a] == 0 for a in axes):
        shape = tuple(1 if a in axes else s for a, s in enumerate(x.shape))
        out = xp.full(shape, -xp.inf, dtype=xc.dtype, device=device(x))
    else:
        native = fast_path("logsumexp", xp)
        out = native(xc, axes) if native is not None else None
        if out is None:
            m = stable_max(xp, xc, axes)
            out = log_of_sum(xp, xp.sum(xp.exp(xc - m), axis=axes, keepdims=True)) + m
    if not keepdims:
        out = xp.squeeze(out, axis=axes)
    return as_array(xp, xp.astype(out, x.dtype, copy=False))


@public_function
def softmax(x: Array, *, axis: int = -1) -> Array:
    r"""Softmax along ``axis``: exponentials normalised to sum to one.

    .. math::

        \operatorname{softmax}(x)_{ij} = \frac{\exp(x_{ij} - m_i)}{\sum_k \exp(x_{ik} - m_i)},
        \qquad m_i = \max_k x_{ik}

    Parameters
    ----------
    x : array
        Real floating array of any Array API library.
    axis : int, default -1
        The class axis.

    Returns
    -------
    array
        Of ``x``'s library, device, dtype and shape. A slice of all ``-inf`` gives NaN, as
        ``torch.softmax`` does.

    Raises
    ------
    TypeError
        If ``x`` is not an array or has no real floating dtype.
    ValueError
        If ``axis`` is out of range.

    Notes
    -----
    **Shape.** ``x``: any shape, ``(N, C)`` with ``C`` classes along ``axis``; output: the
    same shape. float16 and bfloat16 are computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import softmax
    >>> softmax(np.array([0.0, np.log(3.0)]))
    array([0.25, 0.75])
    """
    xp, xc = _prepare("x", x)
    ax = normalize_axis("x", x, axis)
    native = fast_path("softmax", xp)
    out = native(xc, ax) if native is not None else None
    if out is None:
        e = xp.exp(xc - stable_max(xp, xc, ax))
        out = e / xp.sum(e, axis=ax, keepdims=True)
    return as_array(xp, xp.astype(out, x.dtype, copy=False))


@public_function
def log_softmax(x: Array, *, axis: int = -1) -> Array:
    r"""Logarithm of the softmax along ``axis``, exact for logits of any magnitude.

    .. math::

        \operatorname{log\_softmax}(x)_{ij} = (x_{ij} - m_i) - \log \sum_k \exp(x_{ik} - m_i)

    Parameters
    ----------
    x : array
        Real floating array of any Array API library.
    axis : int, default -1
        The class axis.

    Returns
    -------
    array
        Of ``x``'s library, device, dtype and shape.

    Raises
    ------
    TypeError
        If ``x`` is not an array or has no real floating dtype.
    ValueError
        If ``axis`` is out of range.

    Notes
    -----
    **Shape.** ``x``: any shape, ``(N, C)`` with ``C`` classes along ``axis``; output: the
    same shape. float16 and bfloat16 are computed in float32.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import log_softmax
    >>> log_softmax(np.array([1e4, 0.0]))
    array([     0., -10000.])
    """
    xp, xc = _prepare("x", x)
    ax = normalize_axis("x", x, axis)
    native = fast_path("log_softmax", xp)
    out = native(xc, ax) if native is not None else None
    if out is None:
        shifted = xc - stable_max(xp, xc, ax)
        out = shifted - log_of_sum(xp, xp.sum(xp.exp(shifted), axis=ax, keepdims=True))
    return as_array(xp, xp.astype(out, x.dtype, copy=False))


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


def log_sigmoid_of(xp: Namespace, x: Array) -> Array:
    """``log(sigmoid(x)) = -softplus(-x)``: no overflow, and the true derivative everywhere."""
    return 0.0 - softplus_pair(xp, x)[1]  # 0 - 0 is +0 where -0 would print as "-0."


@public_function
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
    native = fast_path("log_sigmoid", xp)
    out = native(xc) if native is not None else None
    if out is None:
        out = log_sigmoid_of(xp, xc)
    return as_array(xp, xp.astype(out, x.dtype, copy=False))
