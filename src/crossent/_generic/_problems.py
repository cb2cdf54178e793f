"""A call's arguments, checked once and put in one canonical form, and its reduction.

Every loss and its gradient work on a *problem*: :class:`Classes` for the categorical losses
(``cross_entropy``, ``nll_loss``, ``cross_entropy_from_probs`` and their variants),
:class:`Pointwise` for the elementwise ones (the binary losses, ``kl_div``; ``_binary``'s
``MultiLabel`` for one loss per row of labels), ``_divergence.Distributions`` for ``entropy``.
Each reduces an :class:`Unreduced` loss the same way (:meth:`Problem.reduce`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .._typing import Array, DType, Namespace
from .._validation import (
    check_broadcasts_to,
    check_class_weights,
    check_index,
    check_real_floating,
    check_reduction,
    check_sample_weight,
    compute_dtype,
    get_namespace,
    normalize_axis,
    num_elements,
    shape_str,
)
from ._arrays import as_array, is_eager
from ._targets import check_target, class_problem

__all__ = [
    "ClassAxisLast",
    "Classes",
    "Pointwise",
    "Problem",
    "Unreduced",
    "prepare_classes",
    "prepare_pointwise",
]


@dataclass(frozen=True)
class Unreduced:
    """A loss before its reduction: the loss of each position, what ``"mean"`` divides by,
    and, where asked, the gradient of their sum."""

    #: The loss of each position (each element, for an elementwise loss).
    loss: Array
    #: What ``"mean"`` divides the sum by, where it is not the problem's own count: the kept
    #: positions' total weight of a categorical loss with class indices. None otherwise.
    denominator: Array | None = None
    #: The gradient of the summed loss with respect to the predictions, in canonical layout
    #: and the compute dtype, if asked.
    gradient: Array | None = None
    #: The positions that count toward ``"mean"`` (class indices: not ``ignore_index``), or
    #: None for all. The others keep a gradient of exactly 0, even where none counts.
    kept: Array | None = None
    #: Where the gradient can be nonzero (the target class, for a loss that reads only that
    #: entry), or None for everywhere: elsewhere it stays 0 even where the mean is NaN.
    support: Array | None = None


@dataclass(frozen=True)
class Problem:
    """What every checked call has: its namespace, reduction, result dtype and eagerness."""

    xp: Namespace
    reduction: str
    #: The dtype of the predictions, and of every result.
    dtype: DType
    #: Whether the values of the arrays can be read now (False under jax.jit, on Dask).
    eager: bool

    @property
    def compute_dtype(self) -> DType:
        """float32 for float16 and bfloat16, else the predictions' dtype."""
        return compute_dtype(self.xp, self.dtype)

    def finish(self, out: Array) -> Array:
        """``out`` in the predictions' dtype, as an array (never a scalar)."""
        return as_array(self.xp, self.xp.astype(out, self.dtype, copy=False))

    def count(self) -> int:
        """What ``"mean"`` divides by unless an :class:`Unreduced` says otherwise."""
        raise NotImplementedError

    def to_caller_layout(self, x: Array) -> Array:
        """An array of the canonical predictions' shape, in the layout the caller gave."""
        return x

    # What a backend's autodiff rule needs of a problem (``_backends._jax``): the predictions
    # as the caller gave them, the same problem with others in their place, and the other
    # floating arrays that a derivative may reach.

    #: The names of the floating arrays, besides the predictions, that autodiff may reach.
    others: ClassVar[tuple[str, ...]] = ()

    def caller_predictions(self) -> Array:
        """The predictions in the caller's layout."""
        raise NotImplementedError

    def with_predictions(self, x: Array, **changes: Any) -> Problem:
        """This problem with the predictions ``x`` (in the caller's layout) and ``changes``."""
        raise NotImplementedError

    def contract(self, gradient: Array, tangent: Array) -> Array:
        """The loss's tangent from the gradient of the summed loss and the predictions'
        tangent, both in the caller's layout: per position for ``"none"``, else a scalar."""
        product = gradient * tangent
        if self.reduction != "none":
            return self.xp.sum(product)
        axes = self.loss_axes()
        return self.xp.sum(product, axis=axes) if axes else product

    def loss_axes(self) -> tuple[int, ...]:
        """The axes of the caller's predictions that one position's loss sums over."""
        return ()

    def _denominator(self, result: Unreduced) -> Array | float:
        if result.denominator is not None:
            return result.denominator
        count = self.count()
        return count if count else float("nan")  # an empty mean is NaN, as torch's

    def reduce(self, result: Unreduced) -> Array:
        """The reduced loss: ``"none"`` keeps every position, ``"sum"`` adds them up, ``"mean"``
        (and ``kl_div``'s ``"batchmean"``) divides that sum by the result's denominator or the
        problem's count. An empty mean is NaN, as torch's."""
        xp = self.xp
        if self.reduction == "none":
            return self.finish(result.loss)
        total = xp.sum(result.loss)
        if self.reduction == "sum":
            return self.finish(total)
        mean = total / self._denominator(result)
        if result.denominator is not None:
            # No weight at all: NaN, as torch's, where smoothing would make it x / 0 = inf. Added,
            # not chosen by a where, so that autodiff still sees the division, and gives torch's
            # gradient: 0 at ignored positions, NaN at kept ones.
            mean = mean + xp.where(result.denominator == 0, xp.nan, xp.zeros_like(mean))
        return self.finish(mean)

    def reduced_gradient(self, result: Unreduced) -> Array:
        """The gradient of the reduced loss (``"none"``: of the summed loss), in the caller's
        layout and the predictions' dtype."""
        assert result.gradient is not None
        grad = result.gradient
        if self.reduction in ("mean", "batchmean"):
            if result.kept is None or result.denominator is None:
                grad = grad / self._denominator(result)
            else:
                # torch's: 0 at ignored positions, even where every position is ignored (where
                # the mean is 0 / 0); NaN at kept ones whose total weight is 0.
                xp = self.xp
                empty = result.denominator == 0
                inverse = xp.where(empty, xp.nan, 1.0 / xp.where(empty, 1.0, result.denominator))
                grad = grad * xp.where(result.kept, inverse, 0.0)[..., None]
        if result.support is not None:
            grad = self.xp.where(result.support, grad, 0.0)
        return self.finish(self.to_caller_layout(grad))

    def value_and_grad(self, result: Unreduced) -> tuple[Array, Array]:
        """The reduced loss and its gradient, from one pass that computed both."""
        return self.reduce(result), self.reduced_gradient(result)


# --- Categorical losses -----------------------------------------------------------------------


class ClassAxisLast:
    """The layout of a problem whose ``predictions`` hold the class axis last, where the
    caller's was ``axis``: :class:`Classes`, and ``_divergence.Distributions``."""

    xp: Namespace
    predictions: Array
    axis: int

    def to_caller_layout(self, x: Array) -> Array:
        return self.xp.moveaxis(x, -1, self.axis)

    def caller_predictions(self) -> Array:
        return self.to_caller_layout(self.predictions)

    def with_predictions(self, x: Array, **changes: Any) -> Any:
        return dataclasses.replace(  # type: ignore[type-var]
            self, predictions=self.xp.moveaxis(x, self.axis, -1), **changes
        )

    def loss_axes(self) -> tuple[int, ...]:
        return (self.axis,)


@dataclass(frozen=True)
class Classes(ClassAxisLast, Problem):
    """One call of a categorical loss, checked, with the class axis last."""

    #: The predictions (logits, log-probabilities or probabilities), class axis last, in the
    #: caller's dtype. ``scores()`` gives them in the compute dtype.
    predictions: Array
    #: Class indices, shape ``predictions.shape[:-1]``, in the default integer dtype; or class
    #: probabilities, shape ``predictions.shape``, class axis last, in the compute dtype.
    target: Array
    #: One weight per class, shape ``(C,)``, in the compute dtype; or None.
    weight: Array | None
    ignore_index: int
    #: The caller's class axis, non-negative.
    axis: int
    #: One weight per position, shape ``predictions.shape[:-1]``, in the compute dtype; or None.
    sample_weight: Array | None = field(default=None, kw_only=True)
    #: Logit soft-capping: the logits are ``softcap * tanh(x / softcap)``; or None.
    softcap: float | None = field(default=None, kw_only=True)
    #: The z-loss's factor: each kept position's loss gains ``z_loss * lse**2``.
    z_loss: float = field(default=0.0, kw_only=True)

    @property
    def plain(self) -> bool:
        """No sample weights, soft-capping or z-loss: torch's own options alone."""
        return self.sample_weight is None and self.softcap is None and self.z_loss == 0.0

    @property
    def index_target(self) -> bool:
        return bool(self.xp.isdtype(self.target.dtype, "integral"))

    def scores(self) -> Array:
        """The predictions in the compute dtype (float32 for float16 and bfloat16): a copy for
        those, made on each call, so that a path that reads only the target's entries converts
        only those. (Not a cached property: torch.compile cannot trace its lock.) With
        ``softcap``, the soft-capped logits."""
        scores = self.xp.astype(self.predictions, self.compute_dtype, copy=False)
        if self.softcap is not None:
            scores = self.softcap * self.xp.tanh(scores / self.softcap)
        return scores

    def softcap_derivative(self) -> Array | None:
        """``d softcap(x) / dx = 1 - tanh(x / softcap)**2``; None without soft-capping."""
        if self.softcap is None:
            return None
        xp = self.xp
        t = xp.tanh(xp.astype(self.predictions, self.compute_dtype, copy=False) / self.softcap)
        return 1.0 - t * t

    @property
    def num_classes(self) -> int:
        """The classes of the loss: those of the predictions, but for a slice of them
        (``_sharded``), the whole's."""
        return int(self.predictions.shape[-1])

    @property
    def local_classes(self) -> int:
        """The classes the predictions hold."""
        return int(self.predictions.shape[-1])

    @property
    def class_offset(self) -> object:
        """The class of the predictions' first: 0, but for a slice of the classes split among
        processes (``_sharded``), where it is an int or a 0-d integer array."""
        return 0

    def local_weight(self) -> Array | None:
        """The class weights of the classes the predictions hold (all of ``weight`` here)."""
        return self.weight

    @property
    def num_positions(self) -> int:
        return num_elements(self.predictions.shape[:-1])

    def count(self) -> int:
        return self.num_positions

    others: ClassVar[tuple[str, ...]] = ("target", "weight", "sample_weight")


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
    sample_weight: Array | None = None,
    softcap: object = None,
    z_loss: object = 0.0,
) -> Classes:
    """Check the arguments of a categorical loss and put them in canonical form.

    ``probability_target`` says whether a floating ``target`` of class probabilities is allowed
    beside class indices.
    """
    xp = get_namespace(
        (pred_name, predictions),
        ("target", target),
        ("weight", weight),
        ("sample_weight", sample_weight),
    )
    check_real_floating(xp, pred_name, predictions)
    ax = normalize_axis(pred_name, predictions, axis)
    reduction = check_reduction(reduction)
    ignore_index = check_index("ignore_index", ignore_index)
    shape = tuple(predictions.shape)
    num_classes = shape[ax]
    if num_classes == 0:
        raise ValueError(
            f"{pred_name} of shape {shape_str(shape)} has no classes along axis {axis}"
        )
    dtype = compute_dtype(xp, predictions.dtype)
    moved = xp.moveaxis(predictions, ax, -1)
    positions = shape[:ax] + shape[ax + 1 :]

    eager = is_eager(predictions, target, weight)
    target, indices = check_target(
        xp,
        target,
        positions=positions,
        probabilities_shape=shape if probability_target else None,
        num_classes=num_classes,
        ignore_index=ignore_index,
        eager=eager,
        indices_of=lambda: f"{pred_name} {shape_str(shape)} without class axis {axis}",
        probabilities_of=lambda: f"the shape of {pred_name}",
    )
    if not indices:
        target = xp.moveaxis(xp.astype(target, dtype, copy=False), ax, -1)

    if weight is not None:
        weight = check_class_weights(
            xp,
            "weight",
            weight,
            num_classes,
            lambda: f"{pred_name} {shape_str(shape)} along axis {axis}",
            dtype,
        )
    if sample_weight is not None:
        sample_weight = check_sample_weight(
            xp,
            sample_weight,
            positions,
            lambda: f"{pred_name} {shape_str(shape)} without its axis {axis}",
            dtype,
        )

    return class_problem(
        Classes,
        num_classes,
        softcap,
        z_loss,
        xp=xp,
        reduction=reduction,
        dtype=predictions.dtype,
        eager=eager,
        predictions=moved,
        target=target,
        weight=weight,
        ignore_index=ignore_index,
        axis=ax,
        sample_weight=sample_weight,
    )


# --- Elementwise losses -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pointwise(Problem):
    """One call of an elementwise loss, checked."""

    #: The predictions in the compute dtype (float32 for float16 and bfloat16).
    pred: Array
    #: The target, same shape, in the compute dtype.
    target: Array
    #: Optional arrays that broadcast to the predictions' shape, in the compute dtype.
    weight: Array | None
    pos_weight: Array | None

    def count(self) -> int:
        """Every element for ``"mean"``; the first axis for ``kl_div``'s ``"batchmean"``."""
        shape = self.pred.shape
        if self.reduction == "batchmean":
            return int(shape[0]) if len(shape) > 0 else 1
        return num_elements(shape)

    others: ClassVar[tuple[str, ...]] = ("target", "weight", "pos_weight")

    def caller_predictions(self) -> Array:
        return self.pred

    def with_predictions(self, x: Array, **changes: Any) -> Pointwise:
        return dataclasses.replace(self, pred=x, **changes)


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
        reduction=reduction,
        dtype=pred.dtype,
        eager=is_eager(pred, target, weight, pos_weight),
        pred=xp.astype(pred, dtype, copy=False),
        target=xp.astype(target, dtype, copy=False),
        weight=extras[0],
        pos_weight=extras[1],
    )
