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
