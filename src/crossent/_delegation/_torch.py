"""Fast paths for PyTorch tensors: torch's own kernels, through ``torch.nn.functional``.

Autograd through these is torch's own backward, so that ``crossent.cross_entropy`` on tensors
trains exactly as ``F.cross_entropy`` does, at its speed. The arguments arrive prepared (see
``_classes.Classes`` and ``_pointwise.Pointwise``): class axis last, half precision already in
float32, values checked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._classes import Classes
from .._pointwise import Pointwise
from .._typing import Array


def _class_first(x: torch.Tensor) -> torch.Tensor:
    """torch's layout: classes at dimension 1, or 0 for one unbatched example."""
    return x if x.ndim < 2 else x.movedim(-1, 1)


def logsumexp(x: torch.Tensor, axes: tuple[int, ...]) -> Array:
    return torch.logsumexp(x, dim=axes, keepdim=True)


def softmax(x: torch.Tensor, axis: int) -> Array:
    return torch.softmax(x, dim=axis)


def log_softmax(x: torch.Tensor, axis: int) -> Array:
    return torch.log_softmax(x, dim=axis)


def log_sigmoid(x: torch.Tensor) -> Array:
    return F.logsigmoid(x)


def cross_entropy(p: Classes, smoothing: float) -> Array:
    target = p.target if p.index_target else _class_first(p.target)
    out = F.cross_entropy(
        _class_first(p.scores),
        target,
        weight=p.weight,
        ignore_index=p.ignore_index,
        reduction=p.reduction,
        label_smoothing=smoothing,
    )
    return p.finish(out)


def nll_loss(p: Classes) -> Array:
    out = F.nll_loss(
        _class_first(p.scores),
        p.target,
        weight=p.weight,
        ignore_index=p.ignore_index,
        reduction=p.reduction,
    )
    return p.finish(out)


def binary_cross_entropy(p: Pointwise, eps: float | None) -> Array:
    probs = p.pred if eps is None else torch.clamp(p.pred, eps, 1.0 - eps)
    out = F.binary_cross_entropy(probs, p.target, weight=p.weight, reduction=p.reduction)
    return p.finish(out)


def binary_cross_entropy_with_logits(p: Pointwise) -> Array:
    # torch sums (1 - t) x - log_sigmoid(x): where the loss is below 1e-16 of |x| it cancels to
    # 0, where the generic path keeps the tiny loss; both are exact to the rounding of x.
    out = F.binary_cross_entropy_with_logits(
        p.pred, p.target, weight=p.weight, pos_weight=p.pos_weight, reduction=p.reduction
    )
    return p.finish(out)
