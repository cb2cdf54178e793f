"""Categorical losses: cross-entropy from logits, from log-probabilities, from probabilities."""

from __future__ import annotations

from functools import partial

from ._dispatch import loss
from ._generic import _categorical as generic
from ._generic import _sharded
from ._generic._problems import Classes, prepare_classes
from ._typing import Array
from ._validation import check_eps, check_probabilities, check_unit_interval

__all__ = ["cross_entropy", "cross_entropy_from_probs", "nll_loss"]


@loss("categorical", generic, sharded=_sharded.cross_entropy)
def cross_entropy(
    logits: Array,
    target: Array,
    *,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    sample_weight: Array | None = None,
    process_group: object = None,
) -> tuple[Classes, tuple[float]]:
    r"""Cross-entropy between logits and a target of class indices or class probabilities.

    With class indices :math:`y_n` and class weights :math:`w` (all ones by default), the loss of
    position :math:`n` with smoothing :math:`\varepsilon` over :math:`C` classes is

    .. math::

        \ell_n = (1 - \varepsilon)\, w_{y_n} \left(-\log p_{n, y_n}\right)
                 + \frac{\varepsilon}{C} \sum_c w_c \left(-\log p_{n, c}\right),
        \qquad \log p_{n, c} = x_{n, c} - \operatorname{logsumexp}_k x_{n, k}

    and positions whose target is ``ignore_index`` contribute 0. With class probabilities
    :math:`t_{n, c}`, first smoothed as :math:`(1 - \varepsilon) t + \varepsilon / C`,

    .. math::

        \ell_n = -\sum_c w_c\, t_{n, c} \log p_{n, c}.

    This is ``torch.nn.functional.cross_entropy`` on every backend: its options, its reductions
    and its numbers (see [1]_ for label smoothing). Three options go beyond torch's:
    ``softcap`` first replaces the logits by :math:`c \tanh(x / c)` (Gemma 2's logit
    soft-capping [2]_); ``z_loss`` adds :math:`\lambda\, \omega_n \operatorname{lse}_n^2` to
    each kept position's loss, with :math:`\operatorname{lse}_n` the log-sum-exp of its
    (soft-capped) logits and :math:`\omega_n` its weight (:math:`w_{y_n}` with class indices,
    1 with class probabilities), PaLM's auxiliary loss that keeps the log normaliser near 0
    [3]_; ``sample_weight`` weighs each position.

    %(parameters_logits_classes)s
    %(options_classes)s
    label_smoothing : float in [0, 1], default 0.0
        Mass moved from the target to the uniform distribution over classes.
    softcap : float > 0, optional
        Soft-cap the logits to ``(-softcap, softcap)`` by ``softcap * tanh(logits / softcap)``
        before anything else (Gemma 2 uses 30.0 on its final logits). The gradient goes through
        the cap. ``None`` (the default) leaves the logits as they are.
    z_loss : float >= 0, default 0.0
        The factor of the z-loss, ``z_loss * lse**2`` per kept position, weighted as the
        position and reduced as the rest of the loss (PaLM uses 1e-4).
    %(sample_weight_classes)s
    process_group : torch.distributed.ProcessGroup, optional
        Vocabulary parallelism: the classes are split among the processes of this group, and
        every process calls ``cross_entropy`` with its own slice. Process ``r`` (its rank in
        the group) passes the logits of the ``r``-th contiguous slice of the classes along
        ``axis`` (slices may differ in size); ``target`` (class indices of all ``C`` classes)
        and ``weight`` (all ``C`` weights) are the same on every process. Each gets the loss of
        the whole, the value of the unsharded call on the concatenated logits, and from
        ``loss.backward()`` the gradient of its own slice. Each call runs an ``all_gather`` of
        the slices' sizes, an ``all_reduce`` (``MAX``) of each position's maximum and one
        (``SUM``) of its sum of exponentials, target logit and, with ``label_smoothing``, sum
        of weighted logits; the backward pass runs none. torch tensors and class indices only,
        without ``softcap``, ``z_loss`` or ``sample_weight``.

    %(returns_loss)s

    Raises
    ------
    TypeError
        If an argument is not an array of ``logits``' library, or has the wrong dtype; if
        ``process_group`` is not a ``torch.distributed.ProcessGroup``, comes with arrays other
        than torch tensors or with class probabilities.
    ValueError
        If shapes do not fit, ``reduction`` or ``label_smoothing`` is out of its set, the
        arrays are on two devices, or (eager arrays only) a class index is outside ``[0, C)``
        and is not ``ignore_index``. On lazy arrays (JAX under ``jit``, Dask) such a position
        gives NaN instead.

    %(notes_shape_classes)s
    float16 and bfloat16 are computed in float32 and returned in their own dtype. No one-hot
    matrix is made, and for class indices no full log-softmax either: the loss is the log
    normaliser minus the gathered logit.

    References
    ----------
    .. [1] C. Szegedy, V. Vanhoucke, S. Ioffe, J. Shlens, Z. Wojna, "Rethinking the Inception
       Architecture for Computer Vision", CVPR 2016.
    .. [2] Gemma Team, "Gemma 2: Improving Open Language Models at a Practical Size", 2024.
    .. [3] A. Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways", JMLR 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import cross_entropy
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
    >>> target = np.array([0, 2])
    >>> cross_entropy(logits, target)
    array(0.17545638)
    >>> cross_entropy(logits, target, reduction="none")
    array([0.2413113 , 0.10960146])
    >>> cross_entropy(logits, np.array([0, -100]))  # the second position is ignored
    array(0.2413113)
    >>> cross_entropy(logits, target, sample_weight=np.array([3.0, 1.0]))
    array(0.20838384)
    >>> cross_entropy(logits, target, softcap=1.0, z_loss=1e-4)
    array(0.59949173)
    """
    if process_group is not None:
        group = _sharded.collectives("cross_entropy", process_group)
        sharded_problem = _sharded.prepare_classes(
            logits,
            target,
            group,
            axis=axis,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
        )
        return sharded_problem, (check_unit_interval("label_smoothing", label_smoothing),)
    problem = prepare_classes(
        "logits",
        logits,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        probability_target=True,
        sample_weight=sample_weight,
        softcap=softcap,
        z_loss=z_loss,
    )
    return problem, (check_unit_interval("label_smoothing", label_smoothing),)


@loss("categorical", generic, problem=partial(prepare_classes, probability_target=False))
def nll_loss(
    log_probs: Array,
    target: Array,
    *,
    axis: int = -1,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    sample_weight: Array | None = None,
) -> tuple[()]:
    r"""Negative log-likelihood of class indices under given log-probabilities.

    .. math::

        \ell_n = -w_{y_n} \log p_{n, y_n}

    with positions whose target is ``ignore_index`` contributing 0. This is
    ``torch.nn.functional.nll_loss``; ``nll_loss(log_softmax(x), y) == cross_entropy(x, y)``.

    Parameters
    ----------
    log_probs : array
        Log-probabilities, real floating, for example from :func:`log_softmax`.
    target : array
        Class indices (integer dtype), shape of ``log_probs`` without the class axis.
    axis : int, default -1
        The class axis of ``log_probs``.
    weight : array, optional
        One non-negative weight per class, shape ``(C,)``.
    ignore_index : int, default -100
        A class index whose positions contribute nothing.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides the sum by the total weight of the kept positions; every position
        ignored gives NaN.
    %(sample_weight_indices)s

    %(returns_loss)s

    Raises
    ------
    TypeError
        If an argument is not an array of ``log_probs``' library, or ``target`` is not integer.
    ValueError
        If shapes do not fit, ``reduction`` is unknown, the arrays are on two devices, or
        (eager arrays only) a class index is outside ``[0, C)`` and is not ``ignore_index``; on
        lazy arrays such a position gives NaN.

    %(notes_shape_classes)s
    Examples
    --------
    >>> import numpy as np
    >>> from crossent import nll_loss
    >>> log_probs = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]))
    >>> nll_loss(log_probs, np.array([0, 2]), reduction="none")
    array([0.69314718, 0.22314355])
    """
    return ()


@loss("categorical", generic)
def cross_entropy_from_probs(
    probs: Array,
    target: Array,
    *,
    axis: int = -1,
    eps: float | None = None,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    sample_weight: Array | None = None,
) -> tuple[Classes, tuple[float]]:
    r"""Cross-entropy of probabilities, clipped away from 0 and 1 as scikit-learn does.

    .. math::

        \ell_n = -w_{y_n} \log \operatorname{clip}(p_{n, y_n}, \epsilon, 1 - \epsilon)

    for class indices, and :math:`-\sum_c w_c\, t_{n, c} \log \operatorname{clip}(p_{n, c})`
    for class probabilities (a zero target contributes 0). With the default ``eps`` and
    ``reduction="mean"`` this equals ``sklearn.metrics.log_loss`` on the same inputs, its
    ``sample_weight`` included.

    Prefer :func:`cross_entropy` on logits where you have them: clipping biases the loss and
    zeroes its gradient for probabilities below ``eps``.

    Parameters
    ----------
    probs : array
        Probabilities in [0, 1], real floating.
    target : array
        Class indices (integer dtype), shape of ``probs`` without the class axis; or class
        probabilities (floating dtype), shape of ``probs``.
    axis : int, default -1
        The class axis of ``probs``.
    eps : float in [0, 0.5), optional
        Clip probabilities to ``[eps, 1 - eps]``; ``None`` means the machine epsilon of
        ``probs``' dtype (``2.2e-16`` for float64, ``1.2e-7`` for float32).
    weight : array, optional
        One non-negative weight per class, shape ``(C,)``.
    ignore_index : int, default -100
        A class index whose positions contribute nothing. Not used with class probabilities.
    reduction : {"mean", "sum", "none"}, default "mean"
        As in :func:`cross_entropy`.
    %(sample_weight_classes)s

    %(returns_loss)s

    %(raises_probabilities_classes)s

    %(notes_shape_classes)s
    Examples
    --------
    >>> import numpy as np
    >>> from crossent import cross_entropy_from_probs
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    >>> cross_entropy_from_probs(probs, np.array([0, 1, 1]), reduction="none")
    array([ 0.10536052,  0.22314355, 36.04365339])
    """
    problem = prepare_classes(
        "probs",
        probs,
        target,
        axis=axis,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        probability_target=True,
        sample_weight=sample_weight,
    )
    clip = check_eps(eps)
    if clip is None:
        clip = float(problem.xp.finfo(problem.dtype).eps)
    if problem.eager:
        check_probabilities(problem.xp, "probs", problem.predictions)
    return problem, (clip,)
