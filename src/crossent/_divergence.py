"""Information measures: the Kullback-Leibler divergence of a target from predicted
log-probabilities, and the entropy of the distributions of logits."""

from __future__ import annotations

from functools import partial

from ._dispatch import loss
from ._generic import _divergence as generic
from ._generic._divergence import Distributions
from ._generic._problems import prepare_pointwise
from ._typing import Array
from ._validation import check_bool

__all__ = ["entropy", "kl_div"]

KL_REDUCTIONS = ("none", "mean", "sum", "batchmean")


@loss("divergence", generic, problem=partial(prepare_pointwise, reductions=KL_REDUCTIONS))
def kl_div(
    log_probs: Array, target: Array, *, reduction: str = "mean", log_target: bool = False
) -> tuple[bool]:
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

    %(returns_loss)s

    %(raises_arrays)s

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
    return (check_bool("log_target", log_target),)


@loss("divergence", generic)
def entropy(
    logits: Array,
    *,
    axis: int = -1,
    reduction: str = "mean",
    sample_weight: Array | None = None,
) -> tuple[Distributions, tuple[()]]:
    r"""Entropy of the categorical distributions ``softmax(logits)`` along ``axis``.

    With :math:`p_n = \operatorname{softmax}(x_n)` over :math:`C` classes, the loss of
    position :math:`n` is

    .. math::

        H_n = -\sum_c p_{n, c} \log p_{n, c}, \qquad 0 \le H_n \le \log C,

    with :math:`0 \log 0 = 0`. This is ``torch.distributions.Categorical(logits=x).entropy()``,
    its edges included: a logit of ``-inf`` adds 0; a row of all ``-inf``, or one with ``+inf``
    or NaN, gives NaN. Subtracting ``beta * entropy(logits)`` from a loss is the entropy bonus
    of policy-gradient methods and the confidence penalty of Pereyra et al. [1]_; training
    libraries log it per token as a measure of confidence.

    Parameters
    ----------
    logits : array
        Unnormalised log-probabilities, real floating, with ``C >= 1`` classes along
        ``axis``.
    axis : int, default -1
        The class axis.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` gives one entropy per position; ``"sum"`` their sum; ``"mean"`` their sum
        divided by the number of positions, or by the sum of the sample weights where given.
    sample_weight : array, optional
        One weight per position, the shape of ``logits`` without the class axis: it
        multiplies the position's entropy. There is no target, so no ``ignore_index``: a
        0/1 mask of the positions to count (the tokens that are not padding) goes here, and
        ``"mean"`` then averages over the masked positions. A weight multiplies as torch's
        ``weight * loss`` does: a NaN entropy (a row of all ``-inf``) stays NaN at weight 0,
        and weights that sum to 0 give a NaN mean.

    %(returns_loss)s

    Raises
    ------
    TypeError
        If an argument is not an array of ``logits``' library, or has no real floating dtype.
    ValueError
        If shapes do not fit, ``reduction`` is unknown, ``axis`` is out of range, the class
        axis is empty, or the arrays are on two devices.

    Notes
    -----
    **Shape.** ``logits``: ``(N, C)``, ``(C,)`` or ``(N, C, d1, ..., dK)`` with ``axis=1``;
    ``sample_weight``: the positions, ``logits``' shape without the class axis; output: the
    positions' shape for ``reduction="none"``, ``()`` otherwise.

    float16 and bfloat16 are computed in float32 and returned in their own dtype. The entropy
    is summed from the terms :math:`p_c (\log Z - s_c)` of the shifted logits :math:`s`,
    none of them negative, so that a nearly certain distribution keeps its small entropy
    exact. Its gradient is :math:`\partial H_n / \partial x_{n, c} = -p_{n, c}
    (\log p_{n, c} + H_n)`.

    References
    ----------
    .. [1] G. Pereyra, G. Tucker, J. Chorowski, L. Kaiser, G. Hinton, "Regularizing Neural
       Networks by Penalizing Confident Output Distributions", ICLR 2017 workshop.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import entropy
    >>> logits = np.array([[0.0, 0.0], [0.0, -np.inf], [2.0, 0.0]])
    >>> entropy(logits, reduction="none")
    array([0.69314718, 0.        , 0.36533386])
    >>> entropy(logits, sample_weight=np.array([1.0, 0.0, 1.0]))  # the second is masked out
    array(0.52924052)
    """
    problem = generic.prepare_distributions(
        logits, axis=axis, reduction=reduction, sample_weight=sample_weight
    )
    return problem, ()
