"""Cross-entropy over classes split among processes: each holds a contiguous slice of the class
axis, and the losses are those of the whole.

Member ``r`` of a group holds the logits of classes ``[offset_r, offset_r + C_r)``; the target
(class indices of the whole, ``[0, C)``) and the class weights (all ``C``) are the same on every
member. Each row's log normaliser and target logit are sums over the members, made with two
all-reduces (as Megatron-LM's vocabulary-parallel cross-entropy):

1. ``MAX`` of each row's maximum: the shift ``m``, the same on every member;
2. ``SUM`` of three numbers per row, stacked: ``sum_c exp(x_c - m)``, the target's shifted logit
   ``x_y - m`` (0 on the members that do not hold ``y``) and, with label smoothing,
   ``sum_c w_c (x_c - m)``.

Every member then has the whole row's statistics, hence the loss of the whole, and the gradient
with respect to its own logits, which needs nothing from the others. The math is
:mod:`._categorical`'s (:class:`~._categorical.IndexTerms`,
:func:`~._categorical.picks_of_indices`) and, for ``linear_cross_entropy``, :mod:`._linear`'s
chunks; only the row statistics are summed over the group, by a :class:`Collectives` the
backend gives (``torch.distributed``'s in ``crossent._backends._torch_distributed``; JAX's
``shard_map`` would give ``lax.pmax`` and ``lax.psum``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from array_api_compat import device

from .._typing import Array, Namespace
from .._validation import (
    check_class_indices,
    check_class_weights,
    check_index,
    check_real_floating,
    check_reduction,
    compute_dtype,
    get_namespace,
    normalize_axis,
    shape_str,
)
from . import _categorical
from ._arrays import constant, is_eager
from ._categorical import RowStatistics, take_class
from ._linear import (
    NO_GRADIENTS,
    GradientSums,
    Linear,
    Wanted,
    chunk_gradients,
    finish_gradients,
    gradient_factor,
    rows_of,
    times_factor,
)
from ._problems import Classes, Unreduced
from ._targets import as_default_integer

__all__ = [
    "Collectives",
    "ShardedClasses",
    "ShardedLinear",
    "check_index_target",
    "chunk_pass",
    "collectives",
    "cross_entropy",
    "cross_entropy_pass",
    "cross_entropy_value_and_grad",
    "linear_cross_entropy",
    "linear_cross_entropy_value_and_grad",
    "linear_pass",
    "prepare_classes",
    "refuse_options",
    "row_statistics",
]


@runtime_checkable
class Collectives(Protocol):
    """The operations over a group of processes that the sharded losses need.

    Every member calls each of them, in the same order, with arrays of the same shape.
    """

    def classes(self, local: int) -> tuple[Any, int]:
        """``(offset, total)``: the first class of this member's slice of ``local`` classes,
        and the number of classes of the whole (the members' slices, in rank order)."""
        ...

    def max(self, x: Array) -> Array:
        """The elementwise maximum of ``x`` over the members (``x`` may be overwritten)."""
        ...

    def sum(self, x: Array) -> Array:
        """The elementwise sum of ``x`` over the members (``x`` may be overwritten)."""
        ...


def collectives(loss: str, process_group: object) -> Collectives:
    """``process_group`` as the dispatcher passes it to a loss's preparation: the
    group's :class:`Collectives`. Anything else comes from a caller of ``value_and_grad`` or
    ``grad``, which do not split classes."""
    if not isinstance(process_group, Collectives):
        raise TypeError(
            "crossent.value_and_grad and crossent.grad do not take process_group: "
            f"differentiate {loss}(..., process_group=...) with torch's autograd "
            "(loss.backward())"
        )
    return process_group


def check_index_target(xp: Namespace, target: Array) -> None:
    """A sharded loss takes class indices only."""
    if not xp.isdtype(target.dtype, "integral"):
        raise TypeError(
            f"target must hold class indices, an integer dtype, with process_group, got "
            f"{target.dtype}: class probabilities are not split among processes"
        )


@dataclass(frozen=True)
class ShardedClasses(Classes):
    """A :class:`~._problems.Classes` whose predictions are one member's slice of the classes:
    ``num_classes`` is the whole's; ``target`` and ``weight`` are the whole's."""

    #: The first class of this member's slice (an int, or a 0-d integer array under tracing).
    offset: Any
    #: The classes of the whole.
    total_classes: int

    @property
    def num_classes(self) -> int:
        return self.total_classes

    @property
    def class_offset(self) -> Any:
        return self.offset

    def local_weight(self) -> Array | None:
        if self.weight is None:
            return None
        xp = self.xp
        classes = xp.arange(
            self.local_classes, dtype=self.target.dtype, device=device(self.target)
        )
        return xp.take(self.weight, classes + self.offset, axis=0)


def prepare_classes(
    logits: Array,
    target: Array,
    group: Collectives,
    *,
    axis: object,
    weight: Array | None,
    ignore_index: object,
    reduction: object,
) -> ShardedClasses:
    """Check the arguments of a sharded ``cross_entropy`` (class indices only) and put them in
    canonical form; ``group.classes`` (a collective) gives the slice's place in the whole."""
    xp = get_namespace(("logits", logits), ("target", target), ("weight", weight))
    check_real_floating(xp, "logits", logits)
    ax = normalize_axis("logits", logits, axis)
    reduction = check_reduction(reduction)
    ignore_index = check_index("ignore_index", ignore_index)
    shape = tuple(logits.shape)
    positions = shape[:ax] + shape[ax + 1 :]
    check_index_target(xp, target)
    if tuple(target.shape) != positions:
        raise ValueError(
            f"target has shape {shape_str(target.shape)}, expected {shape_str(positions)}: "
            f"logits {shape_str(shape)} without class axis {axis}"
        )
    offset, total = group.classes(int(shape[ax]))
    if total == 0:
        raise ValueError(
            f"logits of shape {shape_str(shape)} has no classes along axis {axis} on any process "
            "of process_group"
        )
    eager = is_eager(logits, target, weight)
    dtype = compute_dtype(xp, logits.dtype)
    target = as_default_integer(xp, target, total, ignore_index, eager)
    if weight is not None:
        weight = check_class_weights(
            xp,
            "weight",
            weight,
            total,
            lambda: f"the {total} classes of logits along axis {axis}, over process_group",
            dtype,
        )
    if eager:
        check_class_indices(xp, target, total, ignore_index)
    return ShardedClasses(
        xp=xp,
        reduction=reduction,
        dtype=logits.dtype,
        eager=eager,
        predictions=xp.moveaxis(logits, ax, -1),
        target=target,
        weight=weight,
        ignore_index=ignore_index,
        axis=ax,
        offset=offset,
        total_classes=total,
    )


# --- cross_entropy ----------------------------------------------------------------------------


def row_statistics(
    group: Collectives, problem: Classes, index: Array | None, coefficients: Array | float | None
) -> RowStatistics:
    """:func:`._categorical.row_statistics` of the whole rows, from this member's slice of
    them: the maximum over ``group`` (one ``max``), then the sum of exponentials, the target's
    shifted logit (0 on the members that do not hold the target) and the weighted sum, summed
    over ``group`` (one ``sum`` of the three, stacked)."""
    xp = problem.xp
    scores = problem.scores()
    local = problem.local_classes
    on = device(scores)
    positions = tuple(scores.shape[:-1])
    if local:
        row_max = xp.max(scores, axis=-1)
    else:  # a member may hold no class
        row_max = xp.full(positions, -xp.inf, dtype=scores.dtype, device=on)
    row_max = group.max(row_max)
    # a row of all -inf: shifted by 0, so that exp gives 0, not NaN (as stable_max)
    shift = constant(xp, xp.where(row_max == -xp.inf, 0.0, row_max))[..., None]
    shifted = scores - shift
    exp_shifted = xp.exp(shifted)
    statistics = [xp.sum(exp_shifted, axis=-1)]
    if index is not None:
        local_index = index - problem.class_offset
        here = (local_index >= 0) & (local_index < local)
        if local:
            shifted_target = take_class(xp, shifted, xp.where(here, local_index, 0))
            statistics.append(xp.where(here, shifted_target, 0.0))
        else:
            statistics.append(xp.zeros(positions, dtype=scores.dtype, device=on))
    if coefficients is not None:
        statistics.append(xp.sum(shifted * coefficients, axis=-1))
    summed = group.sum(xp.stack(statistics, axis=0))
    shifted_target = summed[1, ...] if index is not None else None
    shifted_sum = summed[-1, ...] if coefficients is not None else None
    return RowStatistics(shift, summed[0, ...], shifted_target, shifted_sum, None, exp_shifted)


def cross_entropy_pass(
    problem: ShardedClasses, smoothing: float, group: Collectives, *, gradient: bool
) -> Unreduced:
    """Per-position cross-entropy of the whole, and with ``gradient`` the gradient of its sum
    with respect to this member's logits: :func:`._categorical.cross_entropy_pass`, whose row
    statistics are summed over ``group``."""
    statistics = functools.partial(row_statistics, group)
    return _categorical.cross_entropy_pass(
        problem, smoothing, gradient=gradient, statistics=statistics
    )


def cross_entropy(problem: ShardedClasses, smoothing: float, group: Collectives) -> Array:
    return problem.reduce(cross_entropy_pass(problem, smoothing, group, gradient=False))


def cross_entropy_value_and_grad(
    problem: ShardedClasses, smoothing: float, group: Collectives
) -> tuple[Array, Array]:
    """The reduced loss of the whole, and its gradient with respect to this member's logits."""
    return problem.value_and_grad(cross_entropy_pass(problem, smoothing, group, gradient=True))


# --- linear_cross_entropy ---------------------------------------------------------------------


@dataclass(frozen=True)
class ShardedLinear(Linear):
    """A :class:`~._linear.Linear` whose ``weight`` and ``bias`` are one member's slice of the
    classes: ``num_classes`` is the whole's; ``target`` and ``class_weight`` are the whole's;
    ``hidden`` is the same on every member."""

    #: The first class of this member's slice.
    offset: Any
    #: The classes of the whole.
    total_classes: int

    @property
    def num_classes(self) -> int:
        return self.total_classes

    def chunk(self, logits: Array, target: Array) -> ShardedClasses:
        """:meth:`~._linear.Linear.chunk`'s problem of one chunk, its logits this member's
        classes."""
        whole = super().chunk(logits, target)
        fields = {f.name: getattr(whole, f.name) for f in dataclasses.fields(whole)}
        return ShardedClasses(**fields, offset=self.offset, total_classes=self.total_classes)


def chunk_pass(
    problem: ShardedLinear,
    smoothing: float,
    group: Collectives,
    hidden: Array,
    target: Array,
    factor: Array | float | None,
    *,
    gradient: bool,
) -> tuple[Array, Array | None]:
    """:func:`._linear.chunk_pass` of a slice of the classes: the losses of one chunk of
    positions (of the whole), and with ``gradient`` the gradient of their sum with respect to
    this member's logits of the chunk, each row times its ``factor``."""
    chunk = problem.chunk(problem.logits(hidden), target)
    result = cross_entropy_pass(chunk, smoothing, group, gradient=gradient)
    return result.loss, times_factor(problem, result.gradient, factor)


def linear_pass(
    problem: ShardedLinear,
    smoothing: float,
    group: Collectives,
    wanted: Wanted,
    factor: Array | float | None,
) -> tuple[Array, Array | None, Array | None, Array | None]:
    """Every chunk: the positions' losses, and the gradients ``wanted`` of their sum (each row
    times its ``factor``): of ``hidden`` summed over ``group`` (each member's classes add their
    share), of this member's ``weight`` and ``bias``. Unfinished: flat, compute dtype."""
    xp = problem.xp
    gradient = any(wanted)
    losses, sums = [], GradientSums()
    for start, stop in problem.spans():
        hidden, target = problem.hidden[start:stop, ...], problem.target[start:stop, ...]
        rows = rows_of(factor, start, stop)
        loss, g = chunk_pass(problem, smoothing, group, hidden, target, rows, gradient=gradient)
        losses.append(loss)
        if g is not None:
            sums.add(*chunk_gradients(problem, g, hidden, wanted))
    on = device(problem.hidden)
    if not losses:  # no positions: no collective either, on any member
        return xp.zeros((0,), dtype=problem.compute_dtype, device=on), None, sums.weight, sums.bias
    summed = None
    if sums.hidden:
        rows_of_hidden = sums.hidden
        summed = group.sum(
            rows_of_hidden[0] if len(rows_of_hidden) == 1 else xp.concat(rows_of_hidden, axis=0)
        )
    joined = losses[0] if len(losses) == 1 else xp.concat(losses, axis=0)
    return joined, summed, sums.weight, sums.bias


def linear_cross_entropy(problem: ShardedLinear, smoothing: float, group: Collectives) -> Array:
    losses = linear_pass(problem, smoothing, group, NO_GRADIENTS, None)[0]
    return problem.reduce_losses(losses)


def linear_cross_entropy_value_and_grad(
    problem: ShardedLinear, smoothing: float, group: Collectives, wanted: Wanted
) -> tuple[Array, tuple[Array | None, Array | None, Array | None]]:
    """The reduced loss of the whole and the gradients ``wanted``: of ``hidden`` (the whole's,
    the same on every member), of this member's ``weight`` and ``bias``."""
    losses, *gradients = linear_pass(problem, smoothing, group, wanted, gradient_factor(problem))
    value = problem.reduce_losses(losses)
    return value, finish_gradients(problem, wanted, gradients[0], gradients[1], gradients[2])


#: The options of the losses that a sharded call does not take (yet).
UNSHARDED_OPTIONS = ("softcap", "z_loss", "sample_weight")


def refuse_options(name: str, options: Mapping[str, object]) -> None:
    """Refuse the options of :data:`UNSHARDED_OPTIONS` that ``options`` (a public function's
    keyword arguments) gives, other than None, 0 or 0.0."""
    given = [
        k
        for k in UNSHARDED_OPTIONS
        if (v := options.get(k)) is not None and not (isinstance(v, (int, float)) and v == 0)
    ]
    if given:
        raise TypeError(
            f"{name} with process_group does not take {', '.join(given)} (yet): pass "
            "process_group=None, or leave them out"
        )
