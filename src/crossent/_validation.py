"""Argument checks shared by every loss.

Every error names the argument, what was expected and what came. Wrong shapes and values raise
``ValueError``; wrong dtypes, non-arrays and arrays of two libraries raise ``TypeError``.
Checks of array *values* (class indices, probabilities) run only on eager arrays: see
:func:`crossent._generic._arrays.is_eager`. On lazy arrays the same conditions, computed by
:func:`outside_unit_interval` and the categorical losses, give NaN instead of an error.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from array_api_compat import array_namespace, device

from ._typing import Array, DType, Namespace

REDUCTIONS = ("none", "mean", "sum")


def shape_str(shape: Sequence[int | None]) -> str:
    """Format a shape as Python prints a tuple: ``(3,)``, ``(4, 3)``, ``()``."""
    return str(tuple(shape))


def _library(x: object) -> str:
    cls = type(x)
    return f"{cls.__module__}.{cls.__qualname__}"


def get_namespace(predictions: tuple[str, Array], *others: tuple[str, Array | None]) -> Namespace:
    """The ``array_api_compat`` namespace of all the array arguments of one call.

    ``predictions`` is ``(name, array)`` of the first argument; ``others`` are the remaining
    ``(name, array)`` pairs, where ``None`` means the optional argument was not given.
    """
    first_name, first = predictions
    _reject_masked(first_name, first)
    for name, value in others:
        _reject_masked(name, value)
    try:
        xp = array_namespace(first)
    except TypeError:
        raise TypeError(
            f"{first_name} must be an array of an Array API library (NumPy, PyTorch, JAX, "
            f"CuPy, Dask, array-api-strict), got {_library(first)}"
        ) from None
    for name, value in others:
        if value is None:
            continue
        try:
            other_xp = array_namespace(value)
        except TypeError:
            raise TypeError(
                f"{name} must be an array of the same library as {first_name} "
                f"({_library(first)}), got {_library(value)}"
            ) from None
        if other_xp is not xp:
            raise TypeError(
                f"{first_name} and {name} are arrays of two libraries: {_library(first)} and "
                f"{_library(value)}; convert one so that both come from the same library"
            )
    _check_same_device(predictions, others)
    return xp


def _reject_masked(name: str, x: object) -> None:
    # array_api_compat takes a masked array for a NumPy array, and every operation would then
    # drop or misread its mask: refuse it rather than compute on the masked-out values.
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(
            f"{name} must be an array without a mask, got a NumPy masked array: crossent would "
            "ignore its mask; pass numpy.ma.getdata(...) and skip positions with ignore_index "
            "or a zero weight"
        )


def _check_same_device(
    predictions: tuple[str, Array], others: tuple[tuple[str, Array | None], ...]
) -> None:
    first_name, first = predictions
    first_device = device(first)
    if first_device is None:  # a traced JAX array: placement is decided by the compiler
        return
    for name, value in others:
        if value is None:
            continue
        other_device = device(value)
        if other_device is not None and other_device != first_device:
            raise ValueError(
                f"{first_name} and {name} are on two devices: {first_device} and "
                f"{other_device}; move one so that both are on the same device"
            )


def check_reduction(reduction: object, allowed: Sequence[str] = REDUCTIONS) -> str:
    if not isinstance(reduction, str) or reduction not in allowed:
        expected = ", ".join(repr(r) for r in allowed)
        raise ValueError(f"reduction must be one of {expected}, got {reduction!r}")
    return reduction


def check_real_floating(xp: Namespace, name: str, x: Array) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name} must have a real floating dtype, got {x.dtype}")


def check_class_weights(
    xp: Namespace, name: str, weight: Array, num_classes: int, of: Callable[[], str], dtype: DType
) -> Array:
    """One real weight per class, shape ``(num_classes,)``, in the compute ``dtype``; ``of()``
    names what has those classes, for the message (a function: the message is made only on an
    error, so that torch.compile never traces the formatting of a shape)."""
    check_real_floating(xp, name, weight)
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(
            f"{name} has shape {shape_str(weight.shape)}, expected ({num_classes},): one "
            f"weight per class of {of()}"
        )
    return xp.astype(weight, dtype, copy=False)


def check_sample_weight(
    xp: Namespace, x: Array, positions: tuple[int, ...], of: Callable[[], str], dtype: DType
) -> Array:
    """One real weight per position, shape ``positions``, in the compute ``dtype``; ``of()``
    says where those positions come from, for the message."""
    check_real_floating(xp, "sample_weight", x)
    if tuple(x.shape) != tuple(positions):
        raise ValueError(
            f"sample_weight has shape {shape_str(x.shape)}, expected {shape_str(positions)}: one "
            f"weight per position, the shape of {of()}"
        )
    return xp.astype(x, dtype, copy=False)


def check_softcap(value: object) -> float | None:
    """``softcap``: None (off) or a positive, finite float."""
    if value is None:
        return None
    number = float(_python_number("softcap", value, numbers.Real, "positive float or None"))
    if not 0.0 < number < math.inf:  # comparisons, which torch.compile traces; NaN fails
        raise ValueError(f"softcap must be a positive, finite float or None, got {value}")
    return number


def check_z_loss(value: object) -> float:
    """``z_loss``: a finite float >= 0."""
    number = float(_python_number("z_loss", value, numbers.Real, "float >= 0"))
    if not 0.0 <= number < math.inf:  # NaN fails
        raise ValueError(f"z_loss must be a finite float >= 0, got {value}")
    return number


def check_gamma(value: object) -> float:
    """``gamma`` of the focal losses: a finite float >= 0."""
    number = float(_python_number("gamma", value, numbers.Real, "float >= 0"))
    if not 0.0 <= number < math.inf:  # NaN fails
        raise ValueError(f"gamma must be a finite float >= 0, got {value}")
    return number


def check_alpha(value: object) -> float | None:
    """``alpha`` of ``sigmoid_focal_loss``: None or a finite float; None for a negative one
    (no balancing, as torchvision reads ``alpha < 0``)."""
    if value is None:
        return None
    number = float(_python_number("alpha", value, numbers.Real, "float or None"))
    if not -math.inf < number < math.inf:
        raise ValueError(f"alpha must be a finite float or None, got {value}")
    return number if number >= 0.0 else None


def check_epsilon(value: object) -> float:
    """``epsilon`` of the Poly-1 loss: a finite float, of either sign."""
    number = float(_python_number("epsilon", value, numbers.Real, "float"))
    if not -math.inf < number < math.inf:
        raise ValueError(f"epsilon must be a finite float, got {value}")
    return number


def compute_dtype(xp: Namespace, dtype: DType) -> DType:
    """The dtype a loss is computed in: float32 for float16 and bfloat16, else ``dtype``."""
    if dtype == xp.float64 or dtype == xp.float32:
        return dtype
    return xp.float32


def normalize_axis(name: str, x: Array, axis: object) -> int:
    """``axis`` as a non-negative index into ``x.shape``, checked."""
    ndim = len(x.shape)
    axis = check_int("axis", axis)
    if ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, the class axis; got shape ()")
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"axis {axis} is out of range for {name} of shape {shape_str(x.shape)}: "
            f"expected an int in [{-ndim}, {ndim})"
        )
    return axis % ndim


_STATIC_HINT = "; under jax.jit, pass it as a static argument"


def _python_number(name: str, value: object, kind: type, expected: str) -> Any:
    # Options are Python numbers, never arrays: their values steer the computation, and an array
    # may be traced or lazy, where its value cannot be read.
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(
            f"{name} must be a Python {expected}, got {type(value).__name__}{_STATIC_HINT}"
        )
    return value


def check_unit_interval(name: str, value: object) -> float:
    number = float(_python_number(name, value, numbers.Real, "float in [0, 1]"))
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return number


def check_eps(value: object) -> float | None:
    """``eps`` for clipping to ``[eps, 1 - eps]``: ``None`` or a float in [0, 0.5)."""
    if value is None:
        return None
    number = float(_python_number("eps", value, numbers.Real, "float in [0, 0.5) or None"))
    if not 0.0 <= number < 0.5:
        raise ValueError(f"eps must be in [0, 0.5), got {value}")
    return number


def broadcasts_to(xshape: Sequence[int], shape: Sequence[int]) -> bool:
    """Whether an array of shape ``xshape`` broadcasts to ``shape`` without enlarging it."""
    return len(xshape) <= len(shape) and all(
        s in (1, t) for s, t in zip(reversed(xshape), reversed(shape), strict=False)
    )


def check_broadcasts_to(name: str, x: Array, shape: tuple[int, ...], against: str) -> None:
    """``x`` must broadcast to ``shape`` without enlarging it."""
    xshape = tuple(x.shape)
    if not broadcasts_to(xshape, shape):
        raise ValueError(
            f"{name} has shape {shape_str(xshape)}, expected a shape that broadcasts to "
            f"{against} {shape_str(shape)}"
        )


def check_int(name: str, value: object) -> int:
    return int(_python_number(name, value, numbers.Integral, "int"))


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def check_index(name: str, value: object) -> int:
    """An int that class indices (int64) can be compared with."""
    number = check_int(name, value)
    if not INT64_MIN <= number <= INT64_MAX:
        raise ValueError(
            f"{name} must be an int in [-2**63, 2**63), the range of int64 class indices, "
            f"got {number}"
        )
    return number


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a Python bool, got {type(value).__name__}{_STATIC_HINT}")
    return value


def num_elements(shape: Sequence[Any]) -> int:
    # a loop, not math.prod of a generator: torch.compile traces it, and keeps a symbolic
    # size symbolic (int() would specialise it)
    count = 1
    for size in shape:
        count = count * size
    return count


# --- Checks of values: eager arrays only ---------------------------------------------------


def check_class_indices(
    xp: Namespace, target: Array, num_classes: int, ignore_index: int, *, wrapped: bool = False
) -> None:
    """Every class index lies in ``[0, num_classes)`` or is ``ignore_index``.

    ``wrapped``: ``target`` holds unsigned 64-bit indices converted to int64, where each
    negative value is one that did not fit, and is reported as the caller gave it.
    """
    if wrapped:
        bad = target < 0
    else:
        bad = (target != ignore_index) & ((target < 0) | (target >= num_classes))
    if bool(xp.any(bad)):
        found = int(_first(xp, target, bad)) + (2**64 if wrapped else 0)
        raise ValueError(
            f"target holds class index {found}, outside [0, {num_classes}) and not "
            f"ignore_index ({ignore_index})"
        )


def outside_unit_interval(xp: Namespace, probs: Array, axis: int | None) -> Array:
    """Where ``probs`` (reduced along ``axis``) holds a value outside [0, 1]: an error on eager
    arrays (:func:`check_probabilities`), NaN on lazy ones."""
    outside = (probs < 0) | (probs > 1)
    return outside if axis is None else xp.any(outside, axis=axis)


def check_probabilities(xp: Namespace, name: str, x: Array) -> None:
    """Every value of ``x`` lies in [0, 1] (NaN passes, and gives NaN)."""
    outside = outside_unit_interval(xp, x, None)
    if bool(xp.any(outside)):
        found = float(_first(xp, x, outside))
        raise ValueError(f"{name} must hold probabilities in [0, 1], found {found}")


def _first(xp: Namespace, x: Array, where: Array) -> Array:
    """The first entry of ``x`` where ``where`` is true (some entry is)."""
    index = xp.argmax(xp.astype(xp.reshape(where, (-1,)), xp.int8))
    return xp.reshape(x, (-1,))[index]
