"""crossent's losses as Keras 3 losses: ``keras.losses.Loss`` subclasses with the names of
:mod:`crossent.torch`'s modules.

Made from the declarations (``crossent._dispatch.LOSSES``), for Keras' JAX and torch backends
(array-api-compat does not cover TensorFlow's tensors, so its backend is not supported). Each
class takes the function's options as keywords, and Keras' own ``name``, ``reduction`` and
``dtype``; ``loss(y_true, y_pred, sample_weight=None)`` is Keras' call, predictions second.

- Keras hands labels over in the loss's floating dtype: integer class labels that arrive as
  floats are cast back, exactly (a label that is no integer is refused on eager arrays and
  gives NaN under ``jit``), and labels of shape ``(N, 1)`` are read as ``(N,)``, as Keras'
  ``SparseCategoricalCrossentropy`` reads them. A floating target of the predictions' shape
  holds class probabilities.
- Keras reduces: ``call`` gives the loss of each sample (crossent's ``reduction="none"``),
  and Keras weighs it by ``sample_weight`` and reduces it by ``reduction``
  (``"sum_over_batch_size"`` by default). Positions of ``ignore_index`` are masked, as
  Keras masks its own ``ignore_class``: they count in no mean.
- Elementwise losses give the mean over the last axis per sample, and ``KLDivLoss`` the sum,
  as Keras' ``BinaryCrossentropy`` and ``KLDivergence`` do. ``KLDivLoss`` keeps torch's
  convention: ``y_pred`` holds log-probabilities.

``linear_cross_entropy`` (three inputs) and ``entropy`` (no target) do not fit Keras'
``(y_true, y_pred)`` and have no class here.

>>> import numpy as np
>>> from crossent.keras import CrossEntropyLoss
>>> loss = CrossEntropyLoss(label_smoothing=0.1)
>>> y_true = np.array([[0.0], [2.0]], dtype="float32")  # as Keras gives labels
>>> y_pred = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], dtype="float32")
>>> print(f"{float(loss(y_true, y_pred)):.4f}")
0.3455
"""

from __future__ import annotations

import inspect
from typing import Any

import keras
from array_api_compat import array_namespace, device, is_array_api_obj
from keras.src import backend as _keras_backend  # set_keras_mask, as Keras' own losses

from ._classes import class_name, define_classes
from ._dispatch import LOSSES
from ._generic._arrays import is_eager
from ._validation import shape_str

__all__: list[str] = []  # filled below, a class for each loss that takes (target, predictions)

#: Losses that do not take one target and one prediction.
LEFT_OUT = ("linear_cross_entropy", "entropy")
#: Elementwise losses: Keras' convention is the mean over the last axis per sample.
_MEAN_OVER_LAST = (
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss",
)
_SUM_OVER_LAST = ("kl_div",)
_CLASS_INDICES = (
    "cross_entropy",
    "nll_loss",
    "cross_entropy_from_probs",
    "softmax_focal_loss",
    "poly1_cross_entropy",
)
_KERAS_OPTIONS = ("name", "reduction", "dtype")
_KERAS_DEFAULTS = {"name": None, "reduction": "sum_over_batch_size", "dtype": None}


def class_indices(y_true: Any, y_pred: Any, argument: str = "y_true") -> Any:
    """Integer class indices from Keras' labels: a float label is cast back exactly, a
    trailing axis of 1 is dropped. A label that is no integer is refused on eager arrays, and
    becomes -1 (out of range: the loss is NaN) on lazy ones."""
    xp = array_namespace(y_true, y_pred)
    positions = tuple(y_pred.shape[:-1])
    if tuple(y_true.shape) == (*positions, 1):
        y_true = xp.reshape(y_true, positions)
    if tuple(y_true.shape) != positions:
        raise ValueError(
            f"{argument} has shape {shape_str(y_true.shape)}, expected class labels of shape "
            f"{shape_str(positions)} or {shape_str((*positions, 1))}, for y_pred of shape "
            f"{shape_str(y_pred.shape)}"
        )
    if xp.isdtype(y_true.dtype, "integral"):
        return y_true
    if not xp.isdtype(y_true.dtype, "real floating"):
        raise TypeError(f"{argument} must hold class labels, got dtype {y_true.dtype}")
    whole = y_true == xp.round(y_true)
    if is_eager(y_true) and not bool(xp.all(whole)):
        raise ValueError(f"{argument} holds class labels that are not integers")
    labels = xp.where(whole, y_true, xp.asarray(-1.0, dtype=y_true.dtype))
    info = xp.__array_namespace_info__()
    return xp.astype(labels, info.default_dtypes(device=device(y_true))["indexing"])


def _module_class(name: str) -> type:
    function = LOSSES[name].public
    parameters = inspect.signature(function).parameters
    options = [p for p in parameters.values() if p.kind == inspect.Parameter.KEYWORD_ONLY]
    options = [p for p in options if p.name not in ("reduction", "sample_weight")]
    options = [p for p in options if p.name != "process_group"]
    keras_parameters = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=_KERAS_DEFAULTS[n])
        for n in _KERAS_OPTIONS
    ]
    self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    init_signature = inspect.Signature([self_parameter, *options, *keras_parameters])
    indices = name in _CLASS_INDICES
    probabilities = indices and name != "nll_loss"
    ignores = "ignore_index" in parameters

    def __init__(self: Any, **kwargs: Any) -> None:
        bound = init_signature.bind(self, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        del given["self"]
        keras.losses.Loss.__init__(self, **{n: given.pop(n) for n in _KERAS_OPTIONS})
        self.options = given

    def call(self: Any, y_true: Any, y_pred: Any) -> Any:
        xp = array_namespace(y_pred, y_true)
        target = y_true
        labels = indices and not (probabilities and tuple(y_true.shape) == tuple(y_pred.shape))
        if labels:
            target = class_indices(y_true, y_pred)
        elif tuple(y_true.shape) != tuple(y_pred.shape) and _size(y_true) == _size(y_pred):
            target = xp.reshape(y_true, tuple(y_pred.shape))  # (N,) labels of (N, 1)
        options = {
            k: xp.asarray(v, dtype=y_pred.dtype, device=device(y_pred)) if _is_list(v) else v
            for k, v in self.options.items()
        }
        losses = function(y_pred, target, **options, reduction="none")
        if name in _MEAN_OVER_LAST:
            losses = xp.mean(losses, axis=-1)
        elif name in _SUM_OVER_LAST:
            losses = xp.sum(losses, axis=-1)
        if labels and ignores:
            # as Keras' own ignore_class: the ignored positions count in no mean
            _keras_backend.set_keras_mask(losses, mask=target != self.options["ignore_index"])
        return losses

    def get_config(self: Any) -> dict[str, Any]:
        config: dict[str, Any] = keras.losses.Loss.get_config(self)
        for k, v in self.options.items():
            config[k] = _listed(v)
        return config

    cls_name = class_name(name)
    __init__.__signature__ = init_signature  # type: ignore[attr-defined]
    for method in (__init__, call, get_config):
        method.__qualname__ = f"{cls_name}.{method.__name__}"
        method.__module__ = __name__
    doc = (
        f"The Keras loss of :func:`crossent.{name}`: ``{cls_name}(...)(y_true, y_pred)`` "
        f"is ``crossent.{name}(y_pred, y_true, ..., reduction='none')``, reduced by Keras.\n\n"
        "It takes the function's options as keywords (array options as arrays or lists), and "
        f"Keras' ``name``, ``reduction`` and ``dtype``. See :func:`crossent.{name}` for the "
        "loss and its options.\n"
    )
    namespace = {
        "__init__": __init__,
        "call": call,
        "get_config": get_config,
        "__doc__": doc,
        "__module__": __name__,
        "__qualname__": cls_name,
    }
    registered: type = keras.saving.register_keras_serializable("crossent")(
        type(cls_name, (keras.losses.Loss,), namespace)
    )
    return registered


def _size(x: Any) -> int:
    size = 1
    for n in x.shape:
        size *= int(n)
    return size


def _is_list(value: object) -> bool:
    return isinstance(value, (list, tuple))


def _listed(value: object) -> object:
    """A config value: arrays as nested lists."""
    if is_array_api_obj(value):
        import numpy as np

        return np.asarray(value).tolist()
    return value


define_classes(globals(), [name for name in LOSSES if name not in LEFT_OUT], _module_class)


def __getattr__(name: str) -> Any:  # for mypy: the classes are made at import
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
