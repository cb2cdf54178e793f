"""Gradients: analytic ``value_and_grad`` and ``grad`` of every loss, on every backend.

The gradient of each loss is written out with Array API operations next to the loss itself (the
``*_pass`` functions of ``crossent._generic``), so that NumPy, CuPy, Dask and array-api-strict get
exact gradients with no autodiff framework, and the loss and its gradient come from one pass.
"""

from __future__ import annotations

import functools
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from ._dispatch import FAMILIES, LOSSES, Loss, declaration, dispatch, entry
from ._docstrings import fill
from ._typing import Array

__all__ = ["grad", "value_and_grad"]


def _declared(fn: object, caller: str) -> Loss:
    found = declaration(fn)
    if found is None:
        supported = ", ".join(LOSSES)
        name = getattr(fn, "__qualname__", type(fn).__name__)
        raise TypeError(f"{caller} differentiates crossent's losses ({supported}), got {name}")
    return found


def _argument_names(
    fn: Callable[..., Array],
    signature: inspect.Signature,
    declared: Loss,
    argnums: object,
) -> tuple[str, ...]:
    """The names of the arguments that ``argnums`` picks, checked."""
    numbers = argnums if isinstance(argnums, tuple) else (argnums,)
    if not numbers or not all(isinstance(i, int) and not isinstance(i, bool) for i in numbers):
        raise TypeError(f"argnums must be an int or a non-empty tuple of ints, got {argnums!r}")
    positional = [
        parameter.name
        for parameter in signature.parameters.values()
        if parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
    ]
    allowed = declared.arguments or (positional[0],)
    described = ", ".join(f"{n} ({positional.index(n)})" for n in allowed)
    names = []
    for i in numbers:
        if not -len(positional) <= i < len(positional):
            raise ValueError(
                f"argnums holds {i}, but {fn.__name__} takes {len(positional)} positional "
                f"arguments; it is differentiated in {described}"
            )
        n = positional[i]
        if n not in allowed:
            raise ValueError(
                f"argnums holds {i}, the argument {n}, but {fn.__name__} is differentiated in "
                f"{described} only"
            )
        names.append(n)
    return tuple(names)


def _listed() -> str:
    """Every declared loss, family by family, wrapped as the docstring's line is."""
    names = [name for family in FAMILIES for name, d in LOSSES.items() if d.family == family]
    text = ", ".join(f"``{name}``" for name in names)
    return textwrap.fill(text, width=92, initial_indent=" " * 34, subsequent_indent=" " * 8)[34:]


@fill(losses=_listed())
def value_and_grad(
    fn: Callable[..., Array], argnums: int | tuple[int, ...] = 0
) -> Callable[..., tuple[Array, Any]]:
    r"""Make a function that returns a loss and its gradient, computed analytically.

    ``value_and_grad(crossent.cross_entropy)(logits, target, **options)`` returns
    ``(loss, gradient)``: ``loss`` is ``crossent.cross_entropy(logits, target, **options)``
    and ``gradient`` its gradient with respect to the first argument (the predictions), written
    out with Array API operations, so that it needs no autodiff framework. ``argnums`` picks
    the arguments to differentiate in, as ``jax.value_and_grad``'s does:
    ``value_and_grad(linear_cross_entropy, argnums=(0, 1, 3))`` gives the gradients of
    ``hidden``, ``weight`` and ``bias``. For
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
        One of crossent's losses: %(losses)s.
    argnums : int or tuple of int, default 0
        The positional arguments of ``fn`` to differentiate in: the predictions (0) for every
        loss; for ``linear_cross_entropy`` also ``weight`` (1) and ``bias`` (3). An int gives
        one gradient, a tuple a tuple of them, in its order.

    Returns
    -------
    callable
        Takes the arguments of ``fn`` and returns ``(loss, gradient)``. Each gradient has its
        argument's library, shape, dtype and device; with ``reduction="none"`` it is the
        gradient of the summed loss.

    Raises
    ------
    TypeError
        If ``fn`` is not one of crossent's losses, or ``argnums`` is not an int or a tuple of
        them.
    ValueError
        If ``argnums`` names an argument that ``fn`` is not differentiated in (a target, a
        class weight), or one out of range. The returned function raises what ``fn`` raises
        for bad arguments, and ``ValueError`` where ``argnums`` asks for the gradient of a
        ``bias`` that was not given.

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
    declared = _declared(fn, "value_and_grad")
    signature = inspect.signature(fn)
    name = fn.__name__
    chosen = _argument_names(fn, signature, declared, argnums)
    several = declared.arguments[1:] != ()
    wanted = tuple(n in chosen for n in declared.arguments)
    generic = declared.value_and_grad

    @entry(generic)
    def loss_and_gradient(*args: Any, **kwargs: Any) -> tuple[Array, Any]:
        problem, options = declared.prepare(*args, **kwargs)
        if not several:
            value, gradient = dispatch(problem.xp, generic, problem, *options)
            return value, gradient if isinstance(argnums, int) else (gradient,)
        value, gradients = dispatch(problem.xp, generic, problem, *options, wanted)
        found = dict(zip(declared.arguments, gradients, strict=True))
        for n in chosen:
            if found[n] is None:
                raise ValueError(
                    f"argnums asks for the gradient of {n}, which is None: pass {n}, or leave "
                    f"its position out of argnums"
                )
        chosen_gradients = tuple(found[n] for n in chosen)
        return value, chosen_gradients[0] if isinstance(argnums, int) else chosen_gradients

    loss_and_gradient.__name__ = f"value_and_grad_{name}"
    loss_and_gradient.__qualname__ = loss_and_gradient.__name__
    loss_and_gradient.__doc__ = f"``({name}(...), gradient)``: see crossent.value_and_grad."
    loss_and_gradient.__signature__ = signature  # type: ignore[attr-defined]
    return loss_and_gradient


def grad(fn: Callable[..., Array], argnums: int | tuple[int, ...] = 0) -> Callable[..., Any]:
    """Make a function that returns the gradient of a loss, computed analytically.

    ``grad(fn, argnums)(*args, **kwargs)`` is ``value_and_grad(fn, argnums)(*args,
    **kwargs)[1]``: by default the gradient with respect to the first argument (the
    predictions), with its library, shape, dtype and device; with ``reduction="none"``, the
    gradient of the summed loss.

    Parameters
    ----------
    fn : callable
        One of crossent's losses, as for :func:`value_and_grad`.
    argnums : int or tuple of int, default 0
        As for :func:`value_and_grad`.

    Returns
    -------
    callable
        Takes the arguments of ``fn`` and returns the gradient (a tuple of them for a tuple
        ``argnums``).

    Raises
    ------
    TypeError, ValueError
        As :func:`value_and_grad`.

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
    loss_and_gradient = value_and_grad(fn, argnums)

    @functools.wraps(loss_and_gradient)
    def gradient(*args: Any, **kwargs: Any) -> Any:
        return loss_and_gradient(*args, **kwargs)[1]

    gradient.__name__ = f"grad_{fn.__name__}"
    gradient.__qualname__ = gradient.__name__
    gradient.__doc__ = f"The gradient of {fn.__name__}: see crossent.grad."
    return gradient
