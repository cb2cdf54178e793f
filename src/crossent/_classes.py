"""The names of the front doors' classes (:mod:`crossent.torch`, :mod:`crossent.keras`): one
name for each loss, in every framework. Imports no framework."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["TORCH_NAMES", "class_name", "define_classes"]

#: The losses torch.nn has: its class name and the arguments of its ``__init__``, in order.
TORCH_NAMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "cross_entropy": (
        "CrossEntropyLoss",
        ("weight", "size_average", "ignore_index", "reduce", "reduction", "label_smoothing"),
    ),
    "nll_loss": ("NLLLoss", ("weight", "size_average", "ignore_index", "reduce", "reduction")),
    "binary_cross_entropy": ("BCELoss", ("weight", "size_average", "reduce", "reduction")),
    "binary_cross_entropy_with_logits": (
        "BCEWithLogitsLoss",
        ("weight", "size_average", "reduce", "reduction", "pos_weight"),
    ),
    "kl_div": ("KLDivLoss", ("size_average", "reduce", "reduction", "log_target")),
    "multilabel_soft_margin_loss": (
        "MultiLabelSoftMarginLoss",
        ("weight", "size_average", "reduce", "reduction"),
    ),
}


def class_name(name: str) -> str:
    """The class's name for the loss ``name``: torch.nn's where it has the loss, else the
    function's name in CamelCase, ending in ``Loss``."""
    if name in TORCH_NAMES:
        return TORCH_NAMES[name][0]
    words = name.removesuffix("_loss").split("_")
    return "".join(word[:1].upper() + word[1:] for word in words) + "Loss"


def define_classes(
    namespace: dict[str, Any], names: Iterable[str], make: Callable[[str], type]
) -> None:
    """Put the class ``make(name)`` of each loss in ``names`` in a front door's module
    ``namespace`` (its ``globals()``), under the class's name, and in its ``__all__``, sorted."""
    exported = namespace["__all__"]
    for name in names:
        cls = make(name)
        namespace[cls.__name__] = cls
        exported.append(cls.__name__)
    exported.sort()
