"""Binary losses: cross-entropy of one probability, or one logit, per element."""

from __future__ import annotations

import dataclasses
from functools import partial

from ._dispatch import loss
from ._generic import _binary as generic
from ._generic._arrays import is_eager
from ._generic._problems import Pointwise, prepare_pointwise
from ._typing import Array
from ._validation import (
    broadcasts_to,
    check_alpha,
    check_broadcasts_to,
    check_eps,
    check_gamma,
    check_probabilities,
    check_real_floating,
    get_namespace,
    shape_str,
)

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "multilabel_soft_margin_loss",
    "sigmoid_focal_loss",
]


@loss("binary", generic)
def binary_cross_entropy(
    probs: Array,
    target: Array,
    *,
    weight: Array | None = None,
    reduction: str = "mean",
    eps: float | None = None,
) -> tuple[Pointwise, tuple[float | None]]:
    r"""Binary cross-entropy between probabilities and targets, elementwise.

    .. math::

        \ell = -w \left[ t \max(\log p, -100) + (1 - t) \max(\log(1 - p), -100) \right]

    The clamp at -100 is torch's: a probability of exactly 0 or 1 gives a loss of 100, not
    infinity. With ``eps``, probabilities are first clipped to ``[eps, 1 - eps]``, the Keras
    convention (``eps=1e-7``) and that of most from-scratch code.

    This is ``torch.nn.functional.binary_cross_entropy``. Prefer
    :func:`binary_cross_entropy_with_logits` where you have logits: it is exact where the
    sigmoid rounds to 0 or 1.

    Parameters
    ----------
    probs : array
        Probabilities in [0, 1], real floating, any shape.
    target : array
        Targets in [0, 1], shape of ``probs``: floating, or integer or bool labels.
    weight : array, optional
        Weights that broadcast to the shape of ``probs``.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` averages over every element.
    eps : float in [0, 0.5), optional
        Clip probabilities to ``[eps, 1 - eps]`` first; by default they are not clipped.

    %(returns_loss)s

    %(raises_probabilities)s

    Notes
    -----
    **Shape.** ``probs``: any shape; ``target``: the same; ``weight``: broadcastable to it;
    output: that shape for ``reduction="none"``, ``()`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import binary_cross_entropy
    >>> probs = np.array([0.9, 0.2, 0.0])
    >>> target = np.array([1.0, 0.0, 1.0])
    >>> binary_cross_entropy(probs, target, reduction="none")
    array([  0.10536052,   0.22314355, 100.        ])
    >>> binary_cross_entropy(probs, target, reduction="none", eps=1e-7)
    array([ 0.10536052,  0.22314355, 16.11809565])
    """
    problem = prepare_pointwise(
        "probs", probs, target, reduction=reduction, weight=weight, label_target=True
    )
    clip = check_eps(eps)
    if problem.eager:
        check_probabilities(problem.xp, "probs", problem.pred)
        check_probabilities(problem.xp, "target", problem.target)
    return problem, (clip,)


@loss("binary", generic, problem=partial(prepare_pointwise, label_target=True))
def binary_cross_entropy_with_logits(
    logits: Array,
    target: Array,
    *,
    weight: Array | None = None,
    pos_weight: Array | None = None,
    reduction: str = "mean",
) -> tuple[()]:
    r"""Binary cross-entropy of the sigmoid of logits, computed stably from the logits.

    With positive-class weight :math:`q` (``pos_weight``, 1 by default),

    .. math::

        \ell = w \left[ q\, t \operatorname{softplus}(-x) + (1 - t) \operatorname{softplus}(x)
               \right],
        \qquad \operatorname{softplus}(x) = \max(x, 0) + \log\left(1 + e^{-|x|}\right)

    which equals :math:`-w [q\, t \log \sigma(x) + (1 - t) \log(1 - \sigma(x))]` and never
    overflows. Both terms are non-negative for targets in [0, 1], so no cancellation occurs.

    This is ``torch.nn.functional.binary_cross_entropy_with_logits`` (the same function, summed
    in a form that keeps small losses exact: where torch gives 0 for ``x = -40, t = 0``, this
    gives ``4.25e-18``).

    Parameters
    ----------
    logits : array
        Real floating, any shape.
    target : array
        Targets in [0, 1], shape of ``logits``: floating, or integer or bool labels.
    weight : array, optional
        Weights that broadcast to the shape of ``logits``.
    pos_weight : array, optional
        Weight of the positive term, broadcast along the last axis: shape ``(C,)`` for ``C``
        labels per example, or any shape that broadcasts to ``logits``.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` averages over every element.

    %(returns_loss)s

    %(raises_arrays)s

    Notes
    -----
    **Shape.** ``logits``: any shape, ``(N, C)`` for ``C`` labels per example; ``target``: the
    same; ``weight`` and ``pos_weight``: broadcastable to it; output: that shape for
    ``reduction="none"``, ``()`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import binary_cross_entropy_with_logits
    >>> logits = np.array([3.0, -1.0, 1e4])
    >>> target = np.array([1.0, 0.0, 0.0])
    >>> binary_cross_entropy_with_logits(logits, target, reduction="none")
    array([4.85873516e-02, 3.13261688e-01, 1.00000000e+04])
    """
    return ()


@loss("binary", generic)
def sigmoid_focal_loss(
    logits: Array,
    target: Array,
    *,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
    sample_weight: Array | None = None,
) -> tuple[Pointwise, tuple[float | None, float]]:
    r"""Focal loss of the sigmoid of logits: well-classified elements count less.

    With :math:`\sigma(x)` the sigmoid and :math:`\operatorname{ce}(x, t)` the elementwise
    :func:`binary_cross_entropy_with_logits`,

    .. math::

        \ell = s\, a_t\, (1 - p_t)^{\gamma} \operatorname{ce}(x, t), \qquad
        p_t = t\, \sigma(x) + (1 - t)\, \sigma(-x), \qquad
        a_t = \alpha t + (1 - \alpha)(1 - t),

    from T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, "Focal Loss for Dense Object
    Detection", ICCV 2017. :math:`a_t = 1` where ``alpha`` is None or negative, and
    :math:`s = 1` without ``sample_weight``.

    This is ``torchvision.ops.sigmoid_focal_loss``, but for its default reduction, which is
    ``"none"`` there. Every term is computed from the logits, never as a difference with 1:
    :math:`1 - p_t = t\, \sigma(-x) + (1 - t)\, \sigma(x)`, exact where :math:`\sigma(x)`
    rounds to 1, and the loss and its gradient are finite (0) where the prediction is exactly
    right, for any :math:`\gamma \ge 0`.

    Parameters
    ----------
    logits : array
        Real floating, any shape.
    target : array
        Targets in [0, 1], shape of ``logits``: floating, or integer or bool labels.
    alpha : float, finite, or None, default 0.25
        Weight of the positive term, ``1 - alpha`` that of the negative one; None or a negative
        number weighs both by 1 (torchvision's ``alpha=-1``).
    gamma : float >= 0, finite, default 2.0
        The focusing exponent; ``gamma=0`` with ``alpha=None`` is the binary
        cross-entropy with logits.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` averages over every element, weighted by ``sample_weight`` where given: the
        weighted sum divided by the sum of the (broadcast) sample weights.
    sample_weight : array, optional
        Weights that broadcast to the shape of ``logits``; each element's loss is multiplied
        by its weight.

    %(returns_loss)s

    %(raises_options)s

    Notes
    -----
    **Shape.** ``logits``: any shape, ``(N, C)`` for ``C`` labels per example; ``target``: the
    same; ``sample_weight``: broadcastable to it; output: that shape for ``reduction="none"``,
    ``()`` otherwise.

    A target outside [0, 1] is no probability: where it makes :math:`1 - p_t` negative, the
    loss is NaN for ``gamma > 0``.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import sigmoid_focal_loss
    >>> logits = np.array([3.0, -1.0, 1e4, -1e4])
    >>> target = np.array([1.0, 0.0, 1.0, 1.0])
    >>> sigmoid_focal_loss(logits, target, reduction="none")
    array([2.73208311e-05, 1.69935431e-02, 0.00000000e+00, 2.50000000e+03])
    >>> sigmoid_focal_loss(logits, target, alpha=None, gamma=0.0, reduction="none")
    array([4.85873516e-02, 3.13261688e-01, 0.00000000e+00, 1.00000000e+04])
    """
    get_namespace(("logits", logits), ("target", target), ("sample_weight", sample_weight))
    problem = prepare_pointwise("logits", logits, target, reduction=reduction, label_target=True)
    options = (check_alpha(alpha), check_gamma(gamma))
    if sample_weight is not None:
        check_real_floating(problem.xp, "sample_weight", sample_weight)
        check_broadcasts_to("sample_weight", sample_weight, tuple(logits.shape), "logits")
        problem = dataclasses.replace(
            problem,
            weight=problem.xp.astype(sample_weight, problem.compute_dtype, copy=False),
            eager=problem.eager and is_eager(sample_weight),
        )
    return problem, options


@loss("binary", generic)
def multilabel_soft_margin_loss(
    logits: Array,
    target: Array,
    *,
    weight: Array | None = None,
    reduction: str = "mean",
    sample_weight: Array | None = None,
) -> tuple[generic.MultiLabel, tuple[()]]:
    r"""Multi-label one-versus-all loss: each label's cross-entropy, averaged per position.

    For an example of :math:`C` labels,

    .. math::

        \ell_n = -\frac{s_n}{C} \sum_{c=1}^{C} w_c \left[ t_{n,c} \log \sigma(x_{n,c})
            + (1 - t_{n,c}) \log \sigma(-x_{n,c}) \right],

    computed as :math:`\frac{s_n}{C} \sum_c w_c [t \operatorname{softplus}(-x)
    + (1 - t) \operatorname{softplus}(x)]`, which never overflows; :math:`s_n = 1` without
    ``sample_weight``.

    This is ``torch.nn.functional.multilabel_soft_margin_loss`` (see torch's documentation of
    ``MultiLabelSoftMarginLoss``), with ``sample_weight`` added.

    Parameters
    ----------
    logits : array
        Real floating, shape ``(N, C)`` or ``(C,)``: the labels on the last axis.
    target : array
        Targets in [0, 1], shape of ``logits``: floating, or integer or bool labels.
    weight : array, optional
        Weights of the labels, shape ``(C,)``, or any shape that broadcasts to ``logits``.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` averages over the examples (not the labels): the sum divided by ``N``, or
        by the sum of the (broadcast) sample weights where given.
    sample_weight : array, optional
        One weight per example, shape ``(N,)`` (``()`` for ``(C,)`` logits), or any shape that
        broadcasts to it.

    Returns
    -------
    array
        Of ``logits``' library, device and dtype; shape ``(N,)`` (``()`` for ``(C,)`` logits)
        for ``reduction="none"``, 0-d otherwise.

    Raises
    ------
    TypeError
        If an argument is not an array of ``logits``' library, or has the wrong dtype.
    ValueError
        If ``logits`` is 0-d, shapes do not fit, ``reduction`` is unknown, or the arrays are on
        two devices.

    Notes
    -----
    **Shape.** ``logits``: ``(N, C)`` or ``(C,)`` (more leading axes are positions too, as in
    torch); ``target``: the same; ``weight``: broadcastable to it, ``(C,)`` most often;
    ``sample_weight``: broadcastable to ``(N,)``; output: ``(N,)`` (``()`` for ``(C,)``
    logits) for ``reduction="none"``, ``()`` otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import multilabel_soft_margin_loss
    >>> logits = np.array([[3.0, -1.0, 0.5], [1e4, -2.0, 0.0]])
    >>> target = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    >>> multilabel_soft_margin_loss(logits, target, reduction="none")
    array([0.27864201, 0.2733584 ])
    >>> multilabel_soft_margin_loss(logits, target, weight=np.array([1.0, 2.0, 0.5]))
    array(0.25209647)
    """
    xp = get_namespace(
        ("logits", logits),
        ("target", target),
        ("weight", weight),
        ("sample_weight", sample_weight),
    )
    check_real_floating(xp, "logits", logits)
    shape = tuple(logits.shape)
    if not shape:
        raise ValueError(
            "logits must have at least one dimension, the labels (shape (N, C) or (C,)); "
            "got shape ()"
        )
    problem = prepare_pointwise(
        "logits", logits, target, reduction=reduction, weight=weight, label_target=True
    )
    if sample_weight is not None:
        check_real_floating(xp, "sample_weight", sample_weight)
        positions = shape[:-1]
        if not broadcasts_to(tuple(sample_weight.shape), positions):
            raise ValueError(
                f"sample_weight has shape {shape_str(sample_weight.shape)}, expected one weight "
                f"per example: a shape that broadcasts to {shape_str(positions)}, that of "
                f"logits {shape_str(shape)} without its last axis, the labels"
            )
        sample_weight = xp.astype(sample_weight, problem.compute_dtype, copy=False)
    fields = {f.name: getattr(problem, f.name) for f in dataclasses.fields(problem)}
    fields["eager"] = problem.eager and is_eager(sample_weight)
    return generic.MultiLabel(**fields, sample_weight=sample_weight), ()
