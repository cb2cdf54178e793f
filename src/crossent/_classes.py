"""The arguments of a categorical loss, checked once and put in one canonical form.

Every categorical loss (``cross_entropy``, ``nll_loss``, ``cross_entropy_from_probs``) and its
gradient work on a :class:`Classes`: the predictions with the class axis moved last (and, on
first use, in the compute dtype), the target as class indices or as class probabilities, and
the options.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from array_api_compat import device

from ._delegation import as_array, is_eager
from ._typing import Array, DType, Namespace
from ._validation import (
    check_int,
    check_real_floating,
    check_reduction,
    compute_dtype,
    get_namespace,
    normalize_axis,
    shape_str,
)


@dataclass(frozen=True)
class Classes:
    """One call of a categorical loss, checked."""

    xp: Namespace
    #: The predictions (logits, log-probabilities or probabilities), class axis last, in the
    #: caller's dtype. ``scores`` has them in the compute dtype.
    predictions: Array
    #: Class indices, shape ``predictions.shape[:-1]``, in the default integer dtype; or class
    #: probabilities, shape ``predictions.shape``, class axis last, in the compute dtype.
    target: Array
    #: One weight per class, shape ``(C,)``, in the compute dtype; or None.
    weight: Array | None
    ignore_index: int
    reduction: str
    #: The caller's class axis, non-negative.
    axis: int
    #: The dtype of the predictions, and of every result.
    dtype: DType
    #: Whether the values of the arrays can be read now (False under jax.jit, on Dask).
    eager: bool

    @property
    def index_target(self) -> bool:
        return bool(self.xp.isdtype(self.target.dtype, "integral"))

    @functools.cached_property
    def scores(self) -> Array:
        """The predictions in the compute dtype (float32 for float16 and bfloat16), made on
        first use: a path that reads only the target's entries converts only those."""
        return self.xp.astype(self.predictions, self.compute_dtype, copy=False)

    @property
    def compute_dtype(self) -> DType:
        return compute_dtype(self.xp, self.dtype)

    @property
    def num_classes(self) -> int:
        return int(self.predictions.shape[-1])

    @property
    def num_positions(self) -> int:
        count = 1
        for s in self.predictions.shape[:-1]:
            count *= int(s)
        return count

    def finish(self, out: Array) -> Array:
        """``out`` in the predictions' dtype, as an array (never a scalar)."""
        return as_array(self.xp, self.xp.astype(out, self.dtype, copy=False))

    def restore_axis(self, x: Array) -> Array:
        """An array of the predictions' shape in canonical form, back in the caller's layout."""
        return self.xp.moveaxis(x, -1, self.axis)


def prepare_classes(
    pred_name: str,
    predictions: Array,
    target: Array,
    *,
    axis: object,
    weight: Array | None,
    ignore_index: object,
    reduction: object,
    probability_target: bool,
) -> Classes:
    """Check the arguments of a categorical loss and put them in canonical form.

    ``probability_target`` says whether a floating ``target`` of class probabilities is allowed
    beside class indices.
    """
    xp = get_namespace((pred_name, predictions), ("target", target), ("weight", weight))
    check_real_floating(xp, pred_name, predictions)
    ax = normalize_axis(pred_name, predictions, axis)
    reduction = check_reduction(reduction)
    ignore_index = check_int("ignore_index", ignore_index)
    shape = tuple(predictions.shape)
    num_classes = shape[ax]
    if num_classes == 0:
        raise ValueError(
            f"{pred_name} of shape {shape_str(shape)} has no classes along axis {axis}"
        )
    dtype = compute_dtype(xp, predictions.dtype)
    moved = xp.moveaxis(predictions, ax, -1)
    positions = shape[:ax] + shape[ax + 1 :]

    if xp.isdtype(target.dtype, "integral"):
        if tuple(target.shape) != positions:
            raise ValueError(
                f"target has shape {shape_str(target.shape)}, expected {shape_str(positions)}: "
                f"{pred_name} {shape_str(shape)} without class axis {axis}"
            )
        target = _as_default_integer(xp, target)
    elif probability_target and xp.isdtype(target.dtype, "real floating"):
        if tuple(target.shape) != shape:
            raise ValueError(
                f"target of class probabilities has shape {shape_str(target.shape)}, expected "
                f"{shape_str(shape)}, the shape of {pred_name} (class indices would have shape "
                f"{shape_str(positions)})"
            )
        target = xp.moveaxis(xp.astype(target, dtype, copy=False), ax, -1)
    elif probability_target:
        raise TypeError(
            "target must hold class indices (an integer dtype) or class probabilities "
            f"(a real floating dtype), got {target.dtype}"
        )
    else:
        raise TypeError(
            f"target must hold class indices, an integer dtype, got {target.dtype}; "
            "for class probabilities use cross_entropy"
        )

    if weight is not None:
        check_real_floating(xp, "weight", weight)
        if tuple(weight.shape) != (num_classes,):
            raise ValueError(
                f"weight has shape {shape_str(weight.shape)}, expected ({num_classes},): one "
                f"weight per class of {pred_name} {shape_str(shape)} along axis {axis}"
            )
        weight = xp.astype(weight, dtype, copy=False)

    problem = Classes(
        xp=xp,
        predictions=moved,
        target=target,
        weight=weight,
        ignore_index=ignore_index,
        reduction=reduction,
        axis=ax,
        dtype=predictions.dtype,
        eager=is_eager(predictions, target, weight),
    )
    if problem.eager and problem.index_target:
        _check_class_indices(problem)
    return problem


def _as_default_integer(xp: Namespace, target: Array) -> Array:
    """The target in the namespace's default integer dtype, which every backend gathers with
    (torch's take_along_dim takes int64 alone) and which holds every class and ``ignore_index``.
    """
    default = xp.__array_namespace_info__().default_dtypes(device=device(target))["integral"]
    return xp.astype(target, default, copy=False)


def _check_class_indices(p: Classes) -> None:
    xp, t = p.xp, p.target
    bad = (t != p.ignore_index) & ((t < 0) | (t >= p.num_classes))
    if bool(xp.any(bad)):
        flat_bad = xp.reshape(bad, (-1,))
        first = xp.argmax(xp.astype(flat_bad, xp.int8))
        found = int(xp.reshape(t, (-1,))[first])
        raise ValueError(
            f"target holds class index {found}, outside [0, {p.num_classes}) and not "
            f"ignore_index ({p.ignore_index})"
        )


def check_probabilities(xp: Namespace, name: str, x: Array) -> None:
    """On eager arrays: every value of ``x`` lies in [0, 1] (NaN passes, and gives NaN)."""
    outside = (x < 0) | (x > 1)
    if bool(xp.any(outside)):
        flat = xp.reshape(outside, (-1,))
        found = float(xp.reshape(x, (-1,))[xp.argmax(xp.astype(flat, xp.int8))])
        raise ValueError(f"{name} must hold probabilities in [0, 1], found {found}")


@dataclass(frozen=True)
class Picks:
    """What an index target picks at each position."""

    #: The target with ignored and out-of-range entries replaced by class 0: safe to gather.
    index: Array
    #: Whether the position counts: its target is not ``ignore_index``.
    kept: Array
    #: The weight of each position's class, 0 where ignored (1 where there is no ``weight``).
    weight: Array
    #: Positions whose index is neither a class nor ``ignore_index``; None on eager arrays,
    #: where such an index raised. Their loss is NaN.
    bad: Array | None


def picks(p: Classes) -> Picks:
    xp, t = p.xp, p.target
    dtype = p.compute_dtype
    kept = t != p.ignore_index
    in_range = (t >= 0) & (t < p.num_classes)
    # Clamped before gathering: torch's take_along_axis rejects -100, JAX's clips silently.
    index = xp.where(in_range, t, 0)
    if p.weight is None:
        weight = xp.astype(kept, dtype)
    else:
        gathered = xp.take(p.weight, xp.reshape(index, (-1,)), axis=0)
        weight = xp.where(kept, xp.reshape(gathered, tuple(t.shape)), 0.0)
    bad = None if p.eager else kept & ~in_range
    return Picks(index=index, kept=kept, weight=weight, bad=bad)


def take_class(xp: Namespace, x: Array, index: Array) -> Array:
    """``x[..., index[...]]``: the entry of each position's class, class axis last."""
    if hasattr(xp, "take_along_axis"):
        return xp.take_along_axis(x, index[..., None], axis=-1)[..., 0]
    # Dask has no take_along_axis: select by comparing with the class numbers, chunk by chunk.
    classes = xp.arange(x.shape[-1], dtype=index.dtype, device=device(x))
    return xp.sum(xp.where(index[..., None] == classes, x, 0.0), axis=-1)


def is_target_class(p: Classes, pick: Picks) -> Array:
    """A boolean of the predictions' shape: whether each class is its position's target.

    A comparison that broadcasts, not a one-hot matrix of floats: JAX fuses it away, and
    elsewhere it is one byte per entry for the length of one expression.
    """
    xp = p.xp
    classes = xp.arange(p.num_classes, dtype=pick.index.dtype, device=device(pick.index))
    return pick.index[..., None] == classes


def bad_rows(pick: Picks) -> Array | None:
    """``pick.bad`` broadcast over the class axis."""
    return None if pick.bad is None else pick.bad[..., None]


def mark_bad(xp: Namespace, x: Array, bad: Array | None) -> Array:
    """NaN where the input was invalid but could not be checked (lazy arrays)."""
    if bad is None:
        return x
    return xp.where(bad, xp.nan, x)


@dataclass(frozen=True)
class Pass:
    """One evaluation of a categorical loss, before its reduction."""

    #: The loss of each position.
    loss: Array
    #: What ``"mean"`` divides the sum by: the kept positions' total weight; None for the
    #: number of positions.
    denominator: Array | None
    #: The gradient of the summed loss with respect to ``scores`` (class axis last), if asked.
    gradient: Array | None


def reduce(p: Classes, result: Pass) -> Array:
    """Apply the reduction to the per-position losses: ``"mean"`` divides by the total weight
    of the kept positions for index targets (as torch), by their number for probabilities."""
    xp, loss = p.xp, result.loss
    if p.reduction == "none":
        return p.finish(loss)
    total = xp.sum(loss)
    if p.reduction == "sum":
        return p.finish(total)
    return p.finish(total / _denominator(p, result))


def _denominator(p: Classes, result: Pass) -> Array | float:
    if result.denominator is not None:
        return result.denominator
    return p.num_positions if p.num_positions else p.xp.nan


def reduced_gradient(p: Classes, result: Pass) -> Array:
    """The gradient of the reduced loss in the caller's layout and dtype (``"none"``: of the
    summed loss)."""
    assert result.gradient is not None
    grad = result.gradient
    if p.reduction == "mean":
        grad = grad / _denominator(p, result)
    return p.finish(p.restore_axis(grad))
