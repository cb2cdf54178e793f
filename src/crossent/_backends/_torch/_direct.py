"""Direct calls: CPU tensors straight to torch, before crossent's preparation.

``DIRECT_CALLS`` maps the generic function of a public function to its direct call, which
``crossent._dispatch`` runs on the caller's arguments as given, before anything is checked.
``DEVICE_CALLS`` does the same for tensors on other devices: the Triton kernels that read the
caller's arrays in their own dtypes, which the full path would convert first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..._generic import _binary, _categorical
from ..._typing import Array
from ..._validation import broadcasts_to
from ._functional import _nll_class_last, _reduce_half_nll
from ._half import _blocked_half_bce_with_logits
from ._triton import INTERPRET as _TRITON_INTERPRET
from ._triton import binary_cross_entropy_with_logits as _triton_bce_with_logits

__all__ = [
    "DEVICE_CALLS",
    "DIRECT_CALLS",
    "device_binary_cross_entropy_with_logits",
    "direct_binary_cross_entropy",
    "direct_binary_cross_entropy_with_logits",
    "direct_cross_entropy",
    "direct_nll_loss",
]

# Each takes the public function's arguments, with its defaults (tests/test_backends.py checks
# the signatures are the same). It declines (returns None) where torch's numbers would not be
# crossent's: half precision (crossent computes it in float32), mixed dtypes (torch promotes,
# crossent keeps the predictions' dtype), options that are not plain Python values, and what
# torch accepts but crossent refuses (its reduction alias "elementwise_mean", a target of the
# wrong shape, weights that would enlarge the loss, label smoothing outside [0, 1]). torch
# checks the values itself; where it raises, the full path runs and raises crossent's error,
# so that a call is refused with the same message on every backend (tests/test_validation.py).
# On CUDA a bad class index is a device-side assert, not an exception: CUDA tensors take the
# full path, which checks indices first.

_TORCH_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


_NUMBERS = (int, float)
_REDUCTIONS = ("none", "mean", "sum")


def _plain(x: torch.Tensor, axis: object, reduction: object, *options: object) -> bool:
    """Whether the options are the plain Python values torch and crossent read alike, with
    ``axis`` in range (torch reads no axis of a 1-d input)."""
    if type(axis) is not int or type(reduction) is not str or not -x.ndim <= axis < x.ndim:
        return False
    if reduction not in _REDUCTIONS:
        return False
    for option in options:  # noqa: SIM110 (all() of a generator costs more than the check)
        if type(option) not in _NUMBERS:
            return False
    return True


def _same_dtype(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    dtype = x.dtype
    if dtype is not torch.float32 and dtype is not torch.float64:
        return False
    for other in others:
        if other is not None and (not isinstance(other, torch.Tensor) or other.dtype != dtype):
            return False
    return True


def _torch_layout(x: torch.Tensor, axis: int) -> torch.Tensor:
    if x.ndim < 2 or axis in (1, 1 - x.ndim):
        return x
    return x.movedim(axis, 1)


def direct_cross_entropy(
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
    process_group: object = None,
) -> Array | None:
    if not (
        not _TRITON_INTERPRET  # CPU tensors take the Triton kernels, under the interpreter
        and process_group is None  # classes split among processes: the sharded path
        and softcap is None  # crossent's options beyond torch's: the kernel composes them
        and sample_weight is None
        and type(z_loss) is float
        and z_loss == 0.0
        and isinstance(target, torch.Tensor)
        and _same_dtype(logits, weight, target if target.is_floating_point() else None)
        and _plain(logits, axis, reduction, ignore_index, label_smoothing)
        and type(ignore_index) is int
        and 0.0 <= label_smoothing <= 1.0  # torch takes any value
        and logits.shape[axis] > 0  # torch gives NaN for no classes, crossent refuses
    ):
        return None
    if logits.ndim == 1 and target.ndim != logits.ndim - (not target.is_floating_point()):
        return None  # torch reads a (1,) target of (C,) logits as (); batched shapes it checks
    try:
        if target.is_floating_point():
            target = _torch_layout(target, axis)
        return F.cross_entropy(
            _torch_layout(logits, axis),
            target,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
    except _TORCH_ERRORS:
        return None


def direct_nll_loss(
    log_probs: torch.Tensor,
    target: torch.Tensor,
    *,
    axis: int = -1,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    sample_weight: torch.Tensor | None = None,
) -> Array | None:
    # The loss itself takes microseconds: the checks are written out, and torch is called
    # with positional arguments, to keep crossent's cost within a few percent of it.
    if sample_weight is not None:
        return None
    if (
        weight is None
        and (log_probs.dtype is torch.bfloat16 or log_probs.dtype is torch.float16)
        and log_probs.ndim == 2
        and (axis == 1 or axis == -1)
        and type(axis) is int
        and type(target) is torch.Tensor
        and type(ignore_index) is int
        and type(reduction) is str
        and reduction in _REDUCTIONS
        and log_probs.shape[1] > 0
    ):
        # half precision: torch's exact gather, summed in float32 (as the kernel nll_loss)
        try:
            negated = F.nll_loss(log_probs, target, None, None, ignore_index, None, "none")
        except _TORCH_ERRORS:
            return None
        return _reduce_half_nll(negated, target, ignore_index, reduction)
    if (
        type(target) is not torch.Tensor
        or (weight is not None and type(weight) is not torch.Tensor)
        or not _same_dtype(log_probs, weight)
        or type(axis) is not int
        or type(reduction) is not str
        or type(ignore_index) is not int
        or reduction not in _REDUCTIONS
    ):
        return None
    ndim = log_probs.ndim
    if not -ndim <= axis < ndim or (ndim == 1 and target.ndim != 0):
        return None  # torch checks the target's shape against batched input itself
    if log_probs.shape[axis] == 0:
        return None  # no classes: torch gives NaN, crossent refuses
    try:
        if ndim <= 2:
            if ndim == 2 and axis != 1 and axis != -1:
                log_probs = log_probs.movedim(axis, 1)
            return F.nll_loss(log_probs, target, weight, None, ignore_index, None, reduction)
        if (axis == 1 or axis == 1 - ndim) and log_probs.is_contiguous():
            return F.nll_loss(log_probs, target, weight, None, ignore_index, None, reduction)
        # the class axis elsewhere, or a strided view: class-last rows (see _nll_class_last),
        # whose shape torch cannot check against the target's
        if axis != -1 and axis != ndim - 1:
            log_probs = log_probs.movedim(axis, -1)
        if target.shape != log_probs.shape[:-1]:
            return None
        return _nll_class_last(log_probs, target, weight, ignore_index, reduction)
    except _TORCH_ERRORS:
        return None


def _elementwise(
    call: Callable[..., torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    reduction: str,
    **weights: torch.Tensor | None,
) -> Array | None:
    """torch's elementwise loss ``call(x, target, reduction=reduction, **weights)``, or None
    where crossent's full path must run: dtypes that differ, a weight that does not broadcast
    to ``x`` (torch would broadcast ``x`` to it), or an error of torch's."""
    if not (_same_dtype(x, target, *weights.values()) and _plain(x, -1, reduction)):
        return None
    for extra in weights.values():
        if extra is not None and not broadcasts_to(extra.shape, x.shape):
            return None
    try:
        return call(x, target, reduction=reduction, **weights)
    except _TORCH_ERRORS:
        return None


def direct_binary_cross_entropy(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    eps: float | None = None,
) -> Array | None:
    # With eps, crossent checks the probabilities before clipping them: the full path.
    if eps is not None:
        return None
    return _elementwise(F.binary_cross_entropy, probs, target, reduction, weight=weight)


def direct_binary_cross_entropy_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> Array | None:
    if _TRITON_INTERPRET:  # CPU tensors take the Triton kernel, under the interpreter
        out = _triton_bce_with_logits(logits, target, weight, pos_weight, reduction)
        if out is not None:
            return out
    if weight is None and pos_weight is None and _plain(logits, -1, reduction):
        blocked = _blocked_half_bce_with_logits(logits, target, reduction)
        if blocked is not None:
            return blocked
    return _elementwise(
        F.binary_cross_entropy_with_logits,
        logits,
        target,
        reduction,
        weight=weight,
        pos_weight=pos_weight,
    )


def device_binary_cross_entropy_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> Array | None:
    return _triton_bce_with_logits(logits, target, weight, pos_weight, reduction)


#: The public function whose generic function is the key -> its direct call.
DIRECT_CALLS: dict[Callable[..., Any], Callable[..., Any]] = {
    _categorical.cross_entropy: direct_cross_entropy,
    _categorical.nll_loss: direct_nll_loss,
    _binary.binary_cross_entropy: direct_binary_cross_entropy,
    _binary.binary_cross_entropy_with_logits: direct_binary_cross_entropy_with_logits,
}

#: The same for tensors on a GPU.
DEVICE_CALLS: dict[Callable[..., Any], Callable[..., Any]] = {
    _binary.binary_cross_entropy_with_logits: device_binary_cross_entropy_with_logits,
}
