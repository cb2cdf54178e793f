"""crossent's losses as ``torch.nn`` modules: one class for each public loss.

Made from the declarations (``crossent._dispatch.LOSSES``), not written by hand: a loss that
``torch.nn`` has keeps torch's class name, defaults and argument order (``CrossEntropyLoss``,
``NLLLoss``, ``BCELoss``, ``BCEWithLogitsLoss``, ``KLDivLoss``,
``MultiLabelSoftMarginLoss``), with crossent's own options after them, keyword-only; crossent's
other losses are named the same way (``SoftmaxFocalLoss``, ``Poly1CrossEntropyLoss``,
``LinearCrossEntropyLoss``, ...) and take keyword options alone.

- ``forward`` takes the function's positional arguments (``forward(input, target)``;
  ``LinearCrossEntropyLoss.forward(hidden, weight, target, bias=None)``) and, where the loss
  has one, ``sample_weight``, which belongs to a batch.
- The other array options (``weight``, ``pos_weight``, ``class_weight``) are buffers, as in
  ``torch.nn``: they move with ``.to()`` and ``state_dict`` holds them.
- ``reduction`` and the other settings (``ignore_index``, ``label_smoothing``, ``z_loss``,
  ...) are attributes, as in ``torch.nn``, read by each call (``loss.label_smoothing = 0.0``
  changes the next one); torch's deprecated ``size_average`` and ``reduce`` are read as torch
  reads them.

>>> import torch
>>> from crossent.torch import CrossEntropyLoss
>>> loss = CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4)
>>> logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], requires_grad=True)
>>> value = loss(logits, torch.tensor([0, 2]))
>>> value.backward()
>>> print(f"{value.item():.4f}", logits.grad.shape)
0.3462 torch.Size([2, 3])
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.modules.loss import _Loss

from . import _dispatch
from ._classes import TORCH_NAMES, class_name, define_classes
from ._dispatch import LOSSES

__all__: list[str] = []  # filled below, a class for each declared loss

#: Array options given with each batch; the others are the module's buffers.
PER_CALL = ("sample_weight",)
_LEGACY = ("size_average", "reduce")
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def _is_array(parameter: inspect.Parameter) -> bool:
    return "Array" in str(parameter.annotation)


def _module_class(name: str, declared: _dispatch.Loss) -> type[_Loss]:
    """The ``nn.Module`` class of one declared loss."""
    function = declared.public
    parameters = inspect.signature(function).parameters
    inputs = [p for p in parameters.values() if p.kind in _POSITIONAL]
    options = [p for p in parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY]
    per_call = [p for p in options if p.name in PER_CALL]
    buffers = tuple(p.name for p in options if _is_array(p) and p.name not in PER_CALL)
    settings = tuple(p.name for p in options if not _is_array(p) and p.name != "reduction")

    # __init__: torch's arguments in torch's order, then crossent's own, keyword-only
    torch_order = TORCH_NAMES.get(name, ("", ()))[1]
    legacy = [
        inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
        for n in _LEGACY
        if n in torch_order
    ]
    by_name = {p.name: p for p in options if p not in per_call} | {p.name: p for p in legacy}
    leading = [
        by_name[n].replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in torch_order
    ]
    trailing = [p for n, p in by_name.items() if n not in torch_order]
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    init_signature = inspect.Signature(
        [self_parameter, *leading, *trailing], return_annotation=None
    )
    forward_signature = inspect.Signature(
        [self_parameter, *inputs, *per_call], return_annotation="torch.Tensor"
    )

    def __init__(self: _Loss, *args: Any, **kwargs: Any) -> None:
        bound = init_signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        del given["self"]
        _Loss.__init__(
            self,
            given.pop("size_average", None),
            given.pop("reduce", None),
            given.pop("reduction"),
        )
        for buffer in buffers:
            self.register_buffer(buffer, given.pop(buffer))
        for setting, value in given.items():  # the other settings, attributes as torch.nn's
            setattr(self, setting, value)

    def forward(self: _Loss, *args: Any, **kwargs: Any) -> torch.Tensor:
        options = {n: getattr(self, n) for n in buffers + settings}
        out: torch.Tensor = function(*args, **kwargs, **options, reduction=self.reduction)
        return out

    def extra_repr(self: _Loss) -> str:
        changed = [
            f"{n}={getattr(self, n)!r}"
            for n in settings
            if getattr(self, n) != parameters[n].default
        ]
        if self.reduction != "mean":
            changed.append(f"reduction={self.reduction!r}")
        return ", ".join(changed)

    __init__.__signature__ = init_signature  # type: ignore[attr-defined]
    forward.__signature__ = forward_signature  # type: ignore[attr-defined]
    cls_name = class_name(name)
    for method in (__init__, forward, extra_repr):
        method.__qualname__ = f"{cls_name}.{method.__name__}"
        method.__module__ = __name__
    call = ", ".join(p.name for p in inputs[:2])
    doc = (
        f"The ``torch.nn`` module of :func:`crossent.{name}`: ``{cls_name}(...)({call}, ...)``"
        f" is ``crossent.{name}({call}, ...)``.\n\n"
        f"``__init__`` takes the function's options{_order_note(name)}; the array options "
        f"({_listed(buffers)}) are buffers. ``forward`` takes "
        f"{_listed(tuple(p.name for p in inputs + per_call))}. See :func:`crossent.{name}` "
        "for the loss, its options and its errors.\n"
    )
    namespace: dict[str, Callable[..., Any] | str | tuple[str, ...]] = {
        "__init__": __init__,
        "forward": forward,
        "extra_repr": extra_repr,
        "__doc__": doc,
        "__module__": __name__,
        "__qualname__": cls_name,
        "function": staticmethod(function),
    }
    return type(cls_name, (_Loss,), namespace)


def _order_note(name: str) -> str:
    if name not in TORCH_NAMES:
        return ", keyword-only"
    torch_name = TORCH_NAMES[name][0]
    return (
        f": first those of ``torch.nn.{torch_name}``, in its order and with its defaults, "
        "then crossent's own, keyword-only"
    )


def _listed(names: tuple[str, ...]) -> str:
    return ", ".join(f"``{n}``" for n in names) if names else "none"


define_classes(globals(), LOSSES, lambda name: _module_class(name, LOSSES[name]))


def __getattr__(name: str) -> Any:  # for mypy: the classes are made at import
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
