"""The arguments of an elementwise loss, checked once.

The binary losses and ``kl_div`` compare predictions and targets element by element; they share
this preparation, and their gradients work on the same :class:`Pointwise`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._delegation import as_array, is_eager
from ._typing import Array, DType, Namespace
from ._validation import (
    check_broadcasts_to,
    check_real_floating,
    check_reduction,
    compute_dtype,
    get_namespace,
    num_elements,
    shape_str,
)


@dataclass(frozen=True)
class Pointwise:
    """One call of an elementwise loss, checked."""

    xp: Namespace
    #: The predictions in the compute dtype (float32 for float16 and bfloat16).
    pred: Array
    #: The target, same shape, in the compute dtype.
    target: Array
    #: Optional arrays that broadcast to the predictions' shape, in the compute dtype.
    weight: Array | None
    pos_weight: Array | None
    reduction: str
    #: The dtype of the predictions, and of every result.
    dtype: DType
    #: Whether the values of the arrays can be read now (False under jax.jit, on Dask).
    eager: bool

    def finish(self, out: Array) -> Array:
        """``out`` in the predictions' dtype, as an array (never a scalar)."""
        return as_array(self.xp, self.xp.astype(out, self.dtype, copy=False))

    def reduce(self, loss: Array) -> Array:
        """``"none"``, ``"sum"``, or ``"mean"`` over every element (``"batchmean"``: over the
        first axis, as ``kl_div``)."""
        xp = self.xp
        if self.reduction == "none":
            return self.finish(loss)
        total = xp.sum(loss)
        if self.reduction == "sum":
            return self.finish(total)
        return self.finish(total / self._count())

    def _count(self) -> float:
        """What ``"mean"`` and ``"batchmean"`` divide by; NaN for an empty mean, as torch."""
        shape = self.pred.shape
        if self.reduction == "batchmean":
            count = int(shape[0]) if len(shape) > 0 else 1
        else:
            count = num_elements(shape)
        return count if count else float("nan")

    def reduced_gradient(self, grad: Array) -> Array:
        """The gradient of the reduced loss (``"none"``: of the summed loss), in the
        predictions' dtype."""
        if self.reduction in ("mean", "batchmean"):
            grad = grad / self._count()
        return self.finish(grad)


def prepare_pointwise(
    pred_name: str,
    pred: Array,
    target: Array,
    *,
    reduction: object,
    reductions: tuple[str, ...] = ("none", "mean", "sum"),
    weight: Array | None = None,
    pos_weight: Array | None = None,
    label_target: bool = False,
) -> Pointwise:
    """Check an elementwise loss's arguments.

    ``label_target`` allows an integer or boolean target (0/1 labels) beside a floating one.
    """
    xp = get_namespace(
        (pred_name, pred), ("target", target), ("weight", weight), ("pos_weight", pos_weight)
    )
    check_real_floating(xp, pred_name, pred)
    reduction = check_reduction(reduction, reductions)
    shape = tuple(pred.shape)
    if tuple(target.shape) != shape:
        raise ValueError(
            f"target has shape {shape_str(target.shape)}, expected {shape_str(shape)}, "
            f"the shape of {pred_name}"
        )
    floating = xp.isdtype(target.dtype, "real floating")
    labels = xp.isdtype(target.dtype, ("integral", "bool"))
    if not (floating or (label_target and labels)):
        expected = (
            "a real floating, integer or bool dtype" if label_target else ("a real floating dtype")
        )
        raise TypeError(f"target must have {expected}, got {target.dtype}")
    dtype = compute_dtype(xp, pred.dtype)
    extras = []
    for name, extra in (("weight", weight), ("pos_weight", pos_weight)):
        if extra is not None:
            check_real_floating(xp, name, extra)
            check_broadcasts_to(name, extra, shape, pred_name)
            extra = xp.astype(extra, dtype, copy=False)
        extras.append(extra)
    return Pointwise(
        xp=xp,
        pred=xp.astype(pred, dtype, copy=False),
        target=xp.astype(target, dtype, copy=False),
        weight=extras[0],
        pos_weight=extras[1],
        reduction=reduction,
        dtype=pred.dtype,
        eager=is_eager(pred, target, weight, pos_weight),
    )
