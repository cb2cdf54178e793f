"""The targets of categorical losses: class indices or class probabilities, checked, and the
problem made of them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from array_api_compat import device

from .._typing import Array, Namespace
from .._validation import check_class_indices, check_softcap, check_z_loss, shape_str

__all__ = ["as_default_integer", "check_target", "class_problem"]

T = TypeVar("T")


def class_problem(
    cls: Callable[..., T], num_classes: int, softcap: object, z_loss: object, **fields: Any
) -> T:
    """The problem ``cls(**fields)`` of a categorical loss (``Classes``, ``Linear``), with its
    options ``softcap`` and ``z_loss`` checked, and, on eager arrays, its class indices
    checked against ``[0, num_classes)``: ``ignore_index`` aside, an index outside raises."""
    problem: Any = cls(**fields, softcap=check_softcap(softcap), z_loss=check_z_loss(z_loss))
    if problem.eager and problem.index_target:
        check_class_indices(problem.xp, problem.target, num_classes, problem.ignore_index)
    return problem  # type: ignore[no-any-return]


def check_target(
    xp: Namespace,
    target: Array,
    *,
    positions: tuple[int, ...],
    probabilities_shape: tuple[int, ...] | None,
    num_classes: int,
    ignore_index: int,
    eager: bool,
    indices_of: Callable[[], str],
    probabilities_of: Callable[[], str],
) -> tuple[Array, bool]:
    """Check a categorical target: class indices of shape ``positions`` (in the default
    integer dtype, checked against ``[0, num_classes)`` on eager arrays, see
    :func:`as_default_integer`), or, where ``probabilities_shape`` is given, class
    probabilities of that shape. Returns the target and whether it holds indices.
    ``indices_of()`` and ``probabilities_of()`` say in the errors where the shapes come from
    (functions, called on an error alone: torch.compile cannot trace the formatting of a
    shape)."""
    if xp.isdtype(target.dtype, "integral"):
        if tuple(target.shape) != positions:
            raise ValueError(
                f"target has shape {shape_str(target.shape)}, expected {shape_str(positions)}: "
                f"{indices_of()}"
            )
        return as_default_integer(xp, target, num_classes, ignore_index, eager), True
    if probabilities_shape is not None and xp.isdtype(target.dtype, "real floating"):
        if tuple(target.shape) != probabilities_shape:
            raise ValueError(
                f"target of class probabilities has shape {shape_str(target.shape)}, expected "
                f"{shape_str(probabilities_shape)}, {probabilities_of()} (class indices would "
                f"have shape {shape_str(positions)})"
            )
        return target, False
    if probabilities_shape is not None:
        raise TypeError(
            "target must hold class indices (an integer dtype) or class probabilities "
            f"(a real floating dtype), got {target.dtype}"
        )
    raise TypeError(
        f"target must hold class indices, an integer dtype, got {target.dtype}; "
        "for class probabilities use cross_entropy"
    )


def as_default_integer(
    xp: Namespace, target: Array, num_classes: int, ignore_index: int, eager: bool
) -> Array:
    """The target in the namespace's default integer dtype, which every backend gathers with
    (torch's take_along_dim takes int64 alone) and which holds every class and ``ignore_index``.

    An unsigned index too large for that dtype would wrap around, perhaps onto
    ``ignore_index``: on eager arrays it raises, on lazy ones it becomes an index that is no
    class (its loss is NaN).
    """
    default = xp.__array_namespace_info__().default_dtypes(device=device(target))["integral"]
    converted = xp.astype(target, default, copy=False)
    if xp.isdtype(target.dtype, "unsigned integer") and (
        xp.iinfo(target.dtype).bits >= xp.iinfo(default).bits
    ):
        # Compared after the conversion, where they wrapped to negative numbers: torch has no
        # comparisons of uint64.
        too_large = converted < 0
        if eager:
            check_class_indices(
                xp, xp.where(too_large, converted, 0), num_classes, ignore_index, wrapped=True
            )
        else:
            no_class = num_classes if ignore_index != num_classes else num_classes + 1
            converted = xp.where(too_large, no_class, converted)
    return converted
