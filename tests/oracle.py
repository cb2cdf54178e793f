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
) -> torch.Tensor:
    """The NLL of clipped probabilities, written with torch's functions."""
    if eps is None:
        eps = torch.finfo(probs.dtype).eps
    log_probs = probs.clamp(eps, 1 - eps).log()
    if not target.is_floating_point():
        return F.nll_loss(
            class_first(log_probs, axis),
            target,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
        )
    terms = torch.where(target == 0, 0.0, target * log_probs).movedim(axis, -1)
    if weight is not None:
        terms = terms * weight
    loss = -terms.sum(-1)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


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
