"""Variants of cross-entropy from logits: the softmax focal loss and the Poly-1 loss."""

from __future__ import annotations

from functools import partial

from ._dispatch import loss
from ._generic import _categorical_variants as generic
from ._generic._problems import prepare_classes
from ._typing import Array
from ._validation import check_epsilon, check_gamma, check_unit_interval

__all__ = ["poly1_cross_entropy", "softmax_focal_loss"]

#: Both take logits and a target of class indices or class probabilities.
_CLASSES = partial(prepare_classes, probability_target=True)

# --- softmax_focal_loss -----------------------------------------------------------------------


@loss("categorical", generic, problem=_CLASSES)
def softmax_focal_loss(
    logits: Array,
    target: Array,
    *,
    gamma: float = 2.0,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    sample_weight: Array | None = None,
) -> tuple[float]:
    r"""Focal loss of a softmax: cross-entropy whose well-classified positions count less.

    With class indices :math:`y_n`, class weights :math:`w` (all ones by default; the focal
    loss's :math:`\alpha`) and sample weights :math:`s` (all ones by default), the loss of
    position :math:`n` is [1]_

    .. math::

        \ell_n = -s_n\, w_{y_n} \left(1 - p_{n, y_n}\right)^{\gamma} \log p_{n, y_n},
        \qquad \log p_{n, c} = x_{n, c} - \operatorname{logsumexp}_k x_{n, k}

    and positions whose target is ``ignore_index`` contribute 0. With class probabilities
    :math:`t_{n, c}`,

    .. math::

        \ell_n = -s_n \sum_c w_c\, t_{n, c} \left(1 - p_{n, c}\right)^{\gamma} \log p_{n, c}.

    ``gamma=0`` is :func:`cross_entropy`, computed by the same code. With class probabilities
    and ``weight`` the vector of Keras' ``alpha`` (``alpha * ones(C)`` for a number), this is
    ``keras.losses.CategoricalFocalCrossentropy(from_logits=True, alpha=alpha, gamma=gamma)``
    with ``reduction="none"``, but that Keras clips the probabilities to
    :math:`[10^{-7}, 1 - 10^{-7}]` first; Keras' default reduction (``"sum_over_batch_size"``)
    divides the weighted sum by the number of positions, not by the total sample weight.

    %(parameters_logits_classes)s
    gamma : float >= 0, finite, default 2.0
        The focusing exponent: each position's cross-entropy is multiplied by
        :math:`(1 - p)^\gamma`.
    %(options_classes)s
    %(sample_weight_variants)s

    %(returns_loss)s

    %(raises_classes)s

    %(notes_shape_classes)s
    float16 and bfloat16 are computed in float32 and returned in their own dtype.
    :math:`1 - p` is computed as :math:`-\operatorname{expm1}(\log p)`, exact for :math:`p`
    near 1, and the gradient (:func:`value_and_grad`) is finite for every ``gamma`` where
    :math:`p` is exactly 0 or 1, even for ``gamma < 1``, where :math:`(1 - p)^{\gamma - 1}`
    is not: its product with :math:`\log p` is taken at its limit.

    References
    ----------
    .. [1] T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollar, "Focal Loss for Dense Object
       Detection", ICCV 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import softmax_focal_loss
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> target = np.array([0, 2])
    >>> softmax_focal_loss(logits, target)
    array(0.00613692)
    >>> softmax_focal_loss(logits, target, gamma=0.0)  # cross_entropy
    array(0.17545638)
    >>> softmax_focal_loss(logits, target, reduction="none")
    array([0.01109275, 0.00118109])
    """
    return (check_gamma(gamma),)


# --- poly1_cross_entropy ----------------------------------------------------------------------


@loss("categorical", generic, problem=_CLASSES)
def poly1_cross_entropy(
    logits: Array,
    target: Array,
    *,
    epsilon: float = 1.0,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    sample_weight: Array | None = None,
) -> tuple[float, float]:
    r"""Poly-1 loss: cross-entropy plus ``epsilon`` times the first term of its expansion.

    :math:`-\log p = \sum_{j \ge 1} (1 - p)^j / j`; Poly-1 [1]_ moves the coefficient of the
    first term from 1 to :math:`1 + \varepsilon`. With class indices :math:`y_n`, the loss of
    position :math:`n` is

    .. math::

        \ell_n = \mathrm{ce}_n + \varepsilon\, s_n w_{y_n} \left(1 - p_{t, n}\right),
        \qquad p_{t, n} = (1 - \lambda)\, p_{n, y_n} + \frac{\lambda}{C}

    where :math:`\mathrm{ce}_n` is :func:`cross_entropy`'s loss of the position (with
    ``weight``, ``label_smoothing`` :math:`\lambda` and ``sample_weight`` :math:`s`),
    :math:`p_{t, n}` the probability of the smoothed target, and ignored positions contribute
    0. With class probabilities :math:`t`, smoothed as
    :math:`\bar t = (1 - \lambda) t + \lambda / C`, each class's :math:`-\log p_c` gains its
    own first term:

    .. math::

        \ell_n = \mathrm{ce}_n + \varepsilon\, s_n \sum_c w_c\, \bar t_{n, c}
                 \left(1 - p_{n, c}\right).

    Without ``weight`` and ``sample_weight`` this is
    ``optax.poly_loss_cross_entropy(logits, labels, epsilon)`` for class probabilities (or
    one-hot labels), whose poly term is :math:`\sum_c t_c (1 - p_c)`, that is
    :math:`1 - p_t` for a target that sums to 1. ``epsilon=0`` is :func:`cross_entropy`,
    computed by the same code.

    %(parameters_logits_classes)s
    epsilon : float, finite, default 1.0
        The change of the first polynomial coefficient, of either sign: [1]_ recommends 2 for
        ImageNet classification and -1 for detection.
    %(options_classes)s
    label_smoothing : float in [0, 1], default 0.0
        Mass moved from the target to the uniform distribution over classes, in both terms.
    %(sample_weight_variants)s

    %(returns_loss)s

    %(raises_classes)s

    %(notes_shape_classes)s
    float16 and bfloat16 are computed in float32 and returned in their own dtype.
    :math:`1 - p` is computed as :math:`-\operatorname{expm1}(\log p)`, exact for :math:`p`
    near 1. With class indices the gradient (:func:`value_and_grad`) is cross-entropy's plus
    :math:`\varepsilon (1 - \lambda) s_n w_{y_n} p_{n, y_n}
    (\operatorname{softmax}(x_n) - \operatorname{onehot}(y_n))`.

    References
    ----------
    .. [1] Z. Leng, M. Tan, C. Liu, E. D. Cubuk, X. Shi, S. Cheng, D. Anguelov, "PolyLoss: A
       Polynomial Expansion Perspective of Classification Loss Functions", ICLR 2022.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import poly1_cross_entropy
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> target = np.array([0, 2])
    >>> poly1_cross_entropy(logits, target)
    array(0.33456225)
    >>> poly1_cross_entropy(logits, target, epsilon=0.0)  # cross_entropy
    array(0.17545638)
    >>> poly1_cross_entropy(logits, target, epsilon=-1.0, reduction="none")
    array([0.02690833, 0.00579269])
    """
    return check_epsilon(epsilon), check_unit_interval("label_smoothing", label_smoothing)
