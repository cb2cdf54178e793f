"""torch in float64: the oracle every test compares with.

torch.nn.functional defines what each crossent function computes. Where crossent adds an option
torch lacks (``cross_entropy_from_probs``, ``eps`` in ``binary_cross_entropy``), the oracle
spells it out with torch's own functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def T(x: Any, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A NumPy array (or list) as a float64 CPU tensor; integer arrays as int64."""
    array = np.asarray(x)
    if np.issubdtype(array.dtype, np.integer):
        return torch.as_tensor(array, dtype=torch.int64)
    return torch.as_tensor(array, dtype=dtype)


def cross_entropy_from_probs(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    axis: int = -1,
    eps: float | None = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """The NLL of clipped probabilities, written with torch's functions."""
    if eps is None:
        eps = torch.finfo(probs.dtype).eps
    log_probs = probs.clamp(eps, 1 - eps).log()
    if not target.is_floating_point():
        return nll_loss(
            log_probs,
            target,
            axis=axis,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            sample_weight=sample_weight,
        )
    terms = torch.where(target == 0, 0.0, target * log_probs).movedim(axis, -1)
    if weight is not None:
        terms = terms * weight
    loss = -terms.sum(-1)
    return position_weighted(
        loss,
        target,
        weight=None,
        ignore_index=ignore_index,
        reduction=reduction,
        sample_weight=sample_weight,
    )


def position_weighted(
    losses: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
    sample_weight: torch.Tensor | None,
) -> torch.Tensor:
    """Per-position ``losses`` (0 at ignored positions) times ``sample_weight``, reduced as
    crossent's ``sample_weight`` reduces: ``"mean"`` divides by ``sum s_n w[y_n]`` over kept
    positions (class indices) or ``sum s_n`` (class probabilities)."""
    s = torch.ones_like(losses) if sample_weight is None else sample_weight
    losses = losses * s
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    if target.is_floating_point():
        return losses.sum() / s.sum()
    kept = target != ignore_index
    w = torch.ones_like(losses) if weight is None else weight[torch.where(kept, target, 0)]
    return losses.sum() / torch.where(kept, w * s, 0.0).sum()


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    axis: int = -1,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """torch's cross_entropy of soft-capped logits, plus the z-loss, each position weighted by
    ``sample_weight``: crossent's options beyond torch's, spelled out with torch's functions."""
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    x = class_first(logits, axis)
    t = class_first(target, axis) if target.is_floating_point() else target
    losses = F.cross_entropy(
        x, t, weight, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    )
    if z_loss:
        lse = torch.logsumexp(x, dim=1 if x.ndim > 1 else 0)
        if target.is_floating_point():
            losses = losses + z_loss * lse**2
        else:
            kept = target != ignore_index
            w = torch.ones_like(lse) if weight is None else weight[torch.where(kept, target, 0)]
            losses = losses + torch.where(kept, z_loss * w * lse**2, 0.0)
    return position_weighted(
        losses,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        sample_weight=sample_weight,
    )


def nll_loss(
    log_probs: torch.Tensor,
    target: torch.Tensor,
    *,
    axis: int = -1,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    sample_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """torch's nll_loss, each position weighted by ``sample_weight``."""
    losses = F.nll_loss(
        class_first(log_probs, axis), target, weight, ignore_index=ignore_index, reduction="none"
    )
    return position_weighted(
        losses,
        target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        sample_weight=sample_weight,
    )


def binary_cross_entropy(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    eps: float | None = None,
) -> torch.Tensor:
    if eps is not None:
        probs = probs.clamp(eps, 1 - eps)
    return F.binary_cross_entropy(probs, target, weight=weight, reduction=reduction)


def class_first(x: torch.Tensor, axis: int) -> torch.Tensor:
    """torch wants the class axis at 1 (or 0 for unbatched input)."""
    if x.ndim == 1:
        return x
    return x.movedim(axis, 1).contiguous()  # torch 2.13: nll_loss backward needs it


# --- The losses torch lacks: torchvision's formula, and the variants written out ------------


def torchvision_focal_loss(x, t, *, alpha=0.25, gamma=2.0, reduction="none", sample_weight=None):
    """``torchvision.ops.sigmoid_focal_loss``, with crossent's ``sample_weight``."""
    p = torch.sigmoid(x)
    ce_loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha is not None and alpha >= 0:
        alpha_t = alpha * t + (1 - alpha) * (1 - t)
        loss = alpha_t * loss
    if sample_weight is not None:
        loss = loss * sample_weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if sample_weight is None:
        return loss.mean()
    return loss.sum() / sample_weight.expand(loss.shape).sum()


def torch_multilabel(x, t, *, weight=None, reduction="mean", sample_weight=None):
    """``F.multilabel_soft_margin_loss``, with crossent's ``sample_weight``."""
    if sample_weight is None:
        return F.multilabel_soft_margin_loss(x, t, weight=weight, reduction=reduction)
    loss = F.multilabel_soft_margin_loss(x, t, weight=weight, reduction="none") * sample_weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / sample_weight.expand(loss.shape).sum()


def _reduce(loss, denominator, reduction):
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / denominator


def _index_weights(target, ignore_index, weight, sample_weight, like):
    """Each position's index (0 where ignored), whether it counts, and ``w[y] s``."""
    kept = target != ignore_index
    index = torch.where(kept, target, 0)
    w = torch.ones_like(like) if weight is None else weight[index]
    if sample_weight is not None:
        w = w * sample_weight
    return index, kept, torch.where(kept, w, 0.0)


def _picked(log_p, index):
    return log_p.gather(-1, index[..., None])[..., 0]


def focal_torch(
    logits,
    target,
    *,
    gamma=2.0,
    axis=-1,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    sample_weight=None,
):
    """-w (1 - p)**gamma log p, with 1 - p as -expm1(log p).

    Double wheres keep autograd to the derivative's limits where the literal formula gives
    NaN: ``q**gamma`` at ``q = 0`` (p = 1) has the derivative 0, and at ``p = 0`` (a logit of
    -inf) the term is ``log p``, whose ``q = 1`` has the derivative 0 (the product rule would
    multiply it by -inf); an ignored position reads a safe class."""
    log_p = torch.log_softmax(logits, dim=axis).movedim(axis, -1)

    def focal(lp):
        q = -torch.expm1(lp)
        positive = q > 0
        q_gamma = torch.where(positive, torch.where(positive, q, 1.0) ** gamma, 0.0)
        certain = lp == -torch.inf
        return -torch.where(certain, lp, q_gamma * torch.where(certain, 0.0, lp))

    if target.is_floating_point():
        a = target.movedim(axis, -1)
        a = a if weight is None else a * weight
        loss = (a * focal(log_p)).sum(-1)
        denominator = loss.numel()
        if sample_weight is not None:
            loss, denominator = loss * sample_weight, sample_weight.sum()
        return _reduce(loss, denominator, reduction)
    index, kept, w = _index_weights(target, ignore_index, weight, sample_weight, log_p[..., 0])
    picked = torch.where(kept, _picked(log_p, index), -1.0)
    loss = torch.where(kept, w * focal(picked), 0.0)
    return _reduce(loss, w.sum(), reduction)


def poly1_torch(
    logits,
    target,
    *,
    epsilon=1.0,
    axis=-1,
    weight=None,
    ignore_index=-100,
    reduction="mean",
    label_smoothing=0.0,
    sample_weight=None,
):
    """torch's per-position cross-entropy plus epsilon w (1 - p_t)."""
    classes = logits.shape[axis]
    probability = target.is_floating_point()
    ce = F.cross_entropy(
        class_first(logits, axis),
        class_first(target, axis) if probability else target,
        weight=weight,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    p = torch.softmax(logits, dim=axis).movedim(axis, -1)
    if probability:
        smoothed = (1 - label_smoothing) * target.movedim(axis, -1) + label_smoothing / classes
        a = smoothed if weight is None else smoothed * weight
        loss = ce + epsilon * (a * (1 - p)).sum(-1)
        denominator = loss.numel()
        if sample_weight is not None:
            loss, denominator = loss * sample_weight, sample_weight.sum()
        return _reduce(loss, denominator, reduction)
    index, kept, w = _index_weights(target, ignore_index, weight, sample_weight, p[..., 0])
    p_t = (1 - label_smoothing) * _picked(p, index) + label_smoothing / classes
    if sample_weight is not None:
        ce = ce * sample_weight
    loss = torch.where(kept, ce + epsilon * w * (1 - p_t), 0.0)
    return _reduce(loss, w.sum(), reduction)


def entropy_torch(logits, *, axis=-1, reduction="mean", sample_weight=None):
    """The entropy of ``softmax(logits)`` along ``axis``: the value of
    ``torch.distributions.Categorical(logits=...).entropy()`` (test_entropy checks it), with a
    double where at ``p = 0`` where Categorical clamps ``log p`` to the dtype's lowest number:
    a sample weight above 1 overflows that clamp to ``-inf`` in its backward pass, and turns
    the exact 0 gradient of a ``-inf`` logit into NaN. Sample weights multiply each
    position's entropy, and ``"mean"`` divides by their sum."""
    log_p = torch.log_softmax(logits, dim=axis)
    p = log_p.exp()
    absent = p == 0  # a NaN row stays NaN
    loss = -torch.where(absent, 0.0, p * torch.where(absent, 0.0, log_p)).sum(axis)
    denominator = loss.numel()
    if sample_weight is not None:
        loss, denominator = loss * sample_weight, sample_weight.sum()
    return _reduce(loss, denominator, reduction)
