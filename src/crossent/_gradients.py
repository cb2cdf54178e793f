"""Gradients: analytic ``value_and_grad`` and ``grad`` of every loss, on every backend.

The gradient of each loss is written out with Array API operations next to the loss itself (the
``*_pass`` functions of ``crossent._generic``), so that NumPy, CuPy, Dask and array-api-strict get
exact gradients with no autodiff framework, and the loss and its gradient come from one pass.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._binary import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    prepare_binary_cross_entropy,
    prepare_binary_cross_entropy_with_logits,
)
from ._categorical import (
    cross_entropy,
    cross_entropy_from_probs,
    nll_loss,
    prepare_cross_entropy,
    prepare_cross_entropy_from_probs,
    prepare_nll_loss,
)
from ._dispatch import dispatch, entry
from ._divergence import kl_div, prepare_kl_div
from ._generic import _binary, _categorical, _divergence
from ._typing import Array

__all__ = ["grad", "value_and_grad"]


@dataclass(frozen=True)
class _Analytic:
    """How to differentiate one public loss."""

    #: Checks the loss's arguments, given by name, and returns ``(problem, options)``.
    prepare: Callable[..., tuple[Any, tuple[Any, ...]]]
    #: The generic ``(loss, gradient)`` of a prepared problem; backends may register kernels
    #: for it.
    value_and_grad: Callable[..., tuple[Array, Array]]


ANALYTIC: dict[Callable[..., Array], _Analytic] = {
    cross_entropy: _Analytic(prepare_cross_entropy, _categorical.cross_entropy_value_and_grad),
    nll_loss: _Analytic(prepare_nll_loss, _categorical.nll_loss_value_and_grad),
    cross_entropy_from_probs: _Analytic(
        prepare_cross_entropy_from_probs, _categorical.cross_entropy_from_probs_value_and_grad
    ),
    binary_cross_entropy: _Analytic(
        prepare_binary_cross_entropy, _binary.binary_cross_entropy_value_and_grad
    ),
    binary_cross_entropy_with_logits: _Analytic(
        prepare_binary_cross_entropy_with_logits,
        _binary.binary_cross_entropy_with_logits_value_and_grad,
    ),
    kl_div: _Analytic(prepare_kl_div, _divergence.kl_div_value_and_grad),
}


def _analytic(fn: object, caller: str) -> _Analytic:
    try:
        return ANALYTIC[fn]  # type: ignore[index]
    except (KeyError, TypeError):
        supported = ", ".join(f.__name__ for f in ANALYTIC)
        name = getattr(fn, "__qualname__", type(fn).__name__)
        raise TypeError(
            f"{caller} differentiates crossent's losses ({supported}), got {name}"
        ) from None


def value_and_grad(fn: Callable[..., Array]) -> Callable[..., tuple[Array, Array]]:
    r"""Make a function that returns a loss and its gradient, computed analytically.

    ``value_and_grad(crossent.cross_entropy)(logits, target, **options)`` returns
    ``(loss, gradient)``: ``loss`` is ``crossent.cross_entropy(logits, target, **options)``
    and ``gradient`` its gradient with respect to the first argument (the predictions), written
    out with Array API operations, so that it needs no autodiff framework. For
    ``cross_entropy`` with class indices, both come from one pass over the logits:

    .. math::

        \frac{\partial \ell_n}{\partial x_{n, c}} = s_n \operatorname{softmax}(x_n)_c
            - (1 - \varepsilon)\, w_{y_n} [c = y_n] - \frac{\varepsilon}{C} w_c,
        \qquad s_n = (1 - \varepsilon) w_{y_n} + \frac{\varepsilon}{C} \sum_k w_k

    for a kept position (0 for an ignored one), scaled by the reduction. The gradients are
    those of torch's autograd on torch's own functions, edges included (for
    ``binary_cross_entropy``, torch divides by ``max(p (1 - p), 1e-12)``).

    Parameters
    ----------
    fn : callable
        One of crossent's losses: ``cross_entropy``, ``nll_loss``, ``cross_entropy_from_probs``,
        ``binary_cross_entropy``, ``binary_cross_entropy_with_logits``, ``kl_div``.

    Returns
    -------
    callable
        Takes the arguments of ``fn`` and returns ``(loss, gradient)``. The gradient has the
        predictions' library, shape, dtype and device; with ``reduction="none"`` it is the
        gradient of the summed loss.

    Raises
    ------
    TypeError
        If ``fn`` is not one of crossent's losses. The returned function raises what ``fn``
        raises for bad arguments.

    See Also
    --------
    grad : The gradient alone.

    Notes
    -----
    **Shape.** The loss has the shape ``fn`` gives it; the gradient has the shape of the
    predictions, the first argument.

    On JAX and PyTorch, autodiff through crossent's losses gives the same gradients; this
    function is for backends without autodiff, and is one pass where autodiff takes two.

    Examples
    --------
    A training step of multinomial logistic regression in NumPy:

    >>> import numpy as np
    >>> import crossent
    >>> rng = np.random.default_rng(0)
    >>> features = rng.standard_normal((64, 5))
    >>> labels = np.argmax(features[:, :3], axis=1)
    >>> weights = np.zeros((5, 3))
    >>> step = crossent.value_and_grad(crossent.cross_entropy)
    >>> for _ in range(100):
    ...     loss, d_logits = step(features @ weights, labels)
    ...     weights -= 0.5 * features.T @ d_logits
    >>> bool(loss < 0.2), loss.shape
    (True, ())
    """
    analytic = _analytic(fn, "value_and_grad")
    signature = inspect.signature(fn)
    name = fn.__name__

    @entry(analytic.value_and_grad)
    def loss_and_gradient(*args: Any, **kwargs: Any) -> tuple[Array, Array]:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        problem, options = analytic.prepare(*bound.args, **bound.kwargs)
        result: tuple[Array, Array] = dispatch(
            problem.xp, analytic.value_and_grad, problem, *options
        )
        return result

    loss_and_gradient.__name__ = f"value_and_grad_{name}"
    loss_and_gradient.__qualname__ = loss_and_gradient.__name__
    loss_and_gradient.__doc__ = f"``({name}(...), gradient)``: see crossent.value_and_grad."
    loss_and_gradient.__signature__ = signature  # type: ignore[attr-defined]
    return loss_and_gradient


def grad(fn: Callable[..., Array]) -> Callable[..., Array]:
    """Make a function that returns the gradient of a loss, computed analytically.

    ``grad(fn)(*args, **kwargs)`` is ``value_and_grad(fn)(*args, **kwargs)[1]``: the gradient
    with respect to the first argument (the predictions), with its library, shape, dtype and
    device; with ``reduction="none"``, the gradient of the summed loss.

    Parameters
    ----------
    fn : callable
        One of crossent's losses: ``cross_entropy``, ``nll_loss``, ``cross_entropy_from_probs``,
        ``binary_cross_entropy``, ``binary_cross_entropy_with_logits``, ``kl_div``.

    Returns
    -------
    callable
        Takes the arguments of ``fn`` and returns the gradient.

    Raises
    ------
    TypeError
        If ``fn`` is not one of crossent's losses.

    See Also
    --------
    value_and_grad : The loss and its gradient, in one pass.

    Notes
    -----
    **Shape.** The gradient has the shape of the predictions, the first argument.

    Examples
    --------
    A training step of logistic regression in NumPy, with the gradient alone:

    >>> import numpy as np
    >>> import crossent
    >>> rng = np.random.default_rng(0)
    >>> features = rng.standard_normal((100, 3))
    >>> labels = (features @ np.array([2.0, -1.0, 0.5]) > 0).astype(float)
    >>> coefficients = np.zeros(3)
    >>> gradient = crossent.grad(crossent.binary_cross_entropy_with_logits)
    >>> for _ in range(200):
    ...     coefficients -= 1.0 * features.T @ gradient(features @ coefficients, labels)
    >>> loss = crossent.binary_cross_entropy_with_logits(features @ coefficients, labels)
    >>> bool(loss < 0.1)
    True
    """
    loss_and_gradient = value_and_grad(fn)

    @functools.wraps(loss_and_gradient)
    def gradient(*args: Any, **kwargs: Any) -> Array:
        return loss_and_gradient(*args, **kwargs)[1]

    gradient.__name__ = f"grad_{fn.__name__}"
    gradient.__qualname__ = gradient.__name__
    gradient.__doc__ = f"The gradient of {fn.__name__}: see crossent.grad."
    return gradient
