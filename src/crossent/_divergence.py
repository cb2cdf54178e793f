"""Divergences: the Kullback-Leibler divergence of a target from predicted log-probabilities."""

from __future__ import annotations

from ._dispatch import dispatch, public_function
from ._generic import _divergence as generic
from ._generic._problems import Pointwise, prepare_pointwise
from ._typing import Array
from ._validation import check_bool

__all__ = ["kl_div"]

KL_REDUCTIONS = ("none", "mean", "sum", "batchmean")


@public_function(generic.kl_div)
def kl_div(
    log_probs: Array, target: Array, *, reduction: str = "mean", log_target: bool = False
) -> Array:
    r"""Kullback-Leibler divergence of ``target`` from the distribution of ``log_probs``.

    Elementwise, with :math:`q = \exp(\text{log\_probs})` the prediction and :math:`t` the
    target (given as :math:`\log t` when ``log_target``),

    .. math::

        \ell = t \left(\log t - \log q\right), \qquad \ell = 0 \text{ where } t = 0,

    and summing :math:`\ell` over the class axis gives :math:`D_{\mathrm{KL}}(t \,\|\, q)`.

    This is ``torch.nn.functional.kl_div``, argument order included: predictions first. A target
    of 0 contributes exactly 0, also where ``log_probs`` is ``-inf`` (torch gives NaN there:
    ``0 * inf``).

    Parameters
    ----------
    log_probs : array
        Predicted log-probabilities, real floating, any shape.
    target : array
        Target probabilities (log-probabilities if ``log_target``), shape of ``log_probs``.
    reduction : {"mean", "batchmean", "sum", "none"}, default "mean"
        ``"mean"`` averages over every element, as torch does, which is *not* the divergence;
        ``"batchmean"`` divides the sum by the size of the first axis and gives the mean
        divergence per example: use it.
    log_target : bool, default False
        Whether ``target`` holds log-probabilities.

    Returns
    -------
    array
        Of ``log_probs``' library, device and dtype; 0-d unless ``reduction="none"``.

    Raises
    ------
    TypeError
        If an argument is not an array of ``log_probs``' library, or has the wrong dtype.
    ValueError
        If shapes do not fit, ``reduction`` is unknown, or the arrays are on two devices.

    Notes
    -----
    **Shape.** ``log_probs``: any shape, ``(N, C)`` for ``N`` distributions over ``C`` classes;
    ``target``: the same; output: that shape for ``reduction="none"``, ``()`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import kl_div
    >>> target = np.array([[0.5, 0.5, 0.0]])
    >>> log_probs = np.log(np.array([[0.25, 0.5, 0.25]]))
    >>> kl_div(log_probs, target, reduction="batchmean")
    array(0.34657359)
    """
    p, options = prepare_kl_div(log_probs, target, reduction=reduction, log_target=log_target)
    return dispatch(p.xp, generic.kl_div, p, *options)


def prepare_kl_div(
    log_probs: Array, target: Array, *, reduction: str, log_target: bool
) -> tuple[Pointwise, tuple[bool]]:
    """The checked arguments of :func:`kl_div`."""
    p = prepare_pointwise(
        "log_probs", log_probs, target, reduction=reduction, reductions=KL_REDUCTIONS
    )
    return p, (check_bool("log_target", log_target),)
