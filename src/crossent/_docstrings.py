"""Docstring paragraphs that several public functions share, each written once.

In the spirit of SciPy's ``_lib/doccer.py``: a docstring names a shared paragraph on a line of
its own, ``%(name)s``, and :func:`fill` puts the paragraph there, indented as that line is.
Within a line (and within the paragraphs), ``%(name)s`` is a value that :func:`fill` is given.
A name that has neither raises ``KeyError`` at import, so no placeholder reaches a reader.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from typing import TypeVar

__all__ = ["PARAGRAPHS", "fill", "fill_text"]

F = TypeVar("F", bound=Callable[..., object])

#: The start of the Raises section of a loss of arrays alone.
_RAISES_ARRAYS = """\
Raises
------
TypeError
    If an argument is not an array of ``%(first)s``' library, or has the wrong dtype."""

#: The start of the Raises section of a loss with options that are numbers.
_RAISES_OPTIONS = """\
Raises
------
TypeError
    If an argument is not an array of ``%(first)s``' library or has the wrong dtype, or an
    option that is a number is not a Python number."""

#: The shared paragraphs. ``%(first)s`` in them is the name of the function's first
#: argument, the predictions, which the decorators of ``_dispatch`` fill in.
PARAGRAPHS = {
    "sample_weight_classes": """\
sample_weight : array, optional
    One weight per position, the shape of the positions (``target``'s for class indices):
    position ``n`` counts ``s_n`` times. Its loss is multiplied by ``s_n``, and ``"mean"``
    divides by the kept positions' total ``sum_n s_n w_{y_n}`` (``sum_n s_n`` for class
    probabilities), as scikit-learn's and Keras' ``sample_weight``. Not checked for sign,
    as class weights are not.""",
    "sample_weight_indices": """\
sample_weight : array, optional
    One weight per position, the shape of ``target``: position ``n`` counts ``s_n`` times.
    Its loss is multiplied by ``s_n``, and ``"mean"`` divides by the kept positions' total
    ``sum_n s_n w_{y_n}``, as scikit-learn's and Keras' ``sample_weight``. Not checked for
    sign, as class weights are not.""",
    "sample_weight_variants": """\
sample_weight : array, optional
    One weight per position, real floating, the shape of ``logits`` without the class
    axis: it multiplies the position's loss.""",
    "parameters_logits_classes": """\
Parameters
----------
logits : array
    Unnormalised log-probabilities, real floating.
target : array
    Class indices (integer dtype), shape of ``logits`` without the class axis; or class
    probabilities (floating dtype), shape of ``logits``.""",
    "options_classes": """\
axis : int, default -1
    The class axis of ``%(first)s``; ``axis=1`` is torch's ``(N, C, d1, ..., dK)`` layout.
weight : array, optional
    One non-negative weight per class, shape ``(C,)``.
ignore_index : int, default -100
    A class index whose positions contribute nothing, to the loss or to the ``"mean"``
    denominator. Not used with class probabilities.
reduction : {"mean", "sum", "none"}, default "mean"
    ``"none"`` gives one loss per position; ``"sum"`` their sum; ``"mean"`` their sum
    divided by the total weight of the kept positions, :math:`\\sum_n s_n w_{y_n}` (for class
    probabilities :math:`\\sum_n s_n`, the number of positions without ``sample_weight``).
    Every position ignored gives NaN, as torch does.""",
    "returns_loss": """\
Returns
-------
array
    Of the library, device and dtype of ``%(first)s``; 0-d unless ``reduction="none"``.""",
    "raises_arrays": _RAISES_ARRAYS
    + """
ValueError
    If shapes do not fit, ``reduction`` is unknown, or the arrays are on two devices.""",
    "raises_probabilities": _RAISES_ARRAYS
    + """
ValueError
    If shapes do not fit, an option is out of its set, the arrays are on two devices, or
    (eager arrays only) a probability or a target lies outside [0, 1]; on lazy arrays such
    an element gives NaN. A NaN probability or target gives NaN.""",
    "raises_probabilities_classes": _RAISES_ARRAYS
    + """
ValueError
    If shapes do not fit, an option is out of its set, the arrays are on two devices, or
    (eager arrays only) a probability lies outside [0, 1] or a class index outside
    ``[0, C)``; on lazy arrays such a position gives NaN.""",
    "raises_options": _RAISES_OPTIONS
    + """
ValueError
    If shapes do not fit, ``reduction`` is unknown, an option is outside the range its
    parameter gives, or the arrays are on two devices.""",
    "raises_classes": _RAISES_OPTIONS
    + """
ValueError
    If shapes do not fit, ``reduction`` is unknown, an option is outside the range its
    parameter gives, the arrays are on two devices, or (eager arrays only) a class index is
    outside ``[0, C)`` and is not ``ignore_index``. On lazy arrays (JAX under ``jit``, Dask)
    such a position gives NaN instead.""",
    "parameters_softmax": """\
Parameters
----------
x : array
    Real floating array of any Array API library.
axis : int, default -1
    The class axis.""",
    "raises_softmax": """\
Raises
------
TypeError
    If ``x`` is not an array or has no real floating dtype.
ValueError
    If ``axis`` is out of range.""",
    "notes_shape_classes": """\
Notes
-----
**Shape.** With ``C`` classes along ``axis``, the *positions* are the shape of
``%(first)s`` without the class axis:

- ``%(first)s``: ``(N, C)``, ``(C,)``, or ``(N, C, d1, ..., dK)`` with ``axis=1`` (torch's
  layout); the class axis may be anywhere.
- target of class indices: the positions, ``(N,)``, ``()`` or ``(N, d1, ..., dK)``.
- target of class probabilities, where the loss takes them: the shape of ``%(first)s``.
- sample_weight: the positions.
- output: the positions' shape for ``reduction="none"``; ``()`` otherwise.
""",
    "notes_shape_softmax": """\
Notes
-----
**Shape.** ``x``: any shape, ``(N, C)`` with ``C`` classes along ``axis``; output: the
same shape. float16 and bfloat16 are computed in float32.""",
}
_PARAGRAPH = re.compile(r"^( *)%\((\w+)\)s$", flags=re.M)
_VALUE = re.compile(r"%\((\w+)\)s")


def fill_text(doc: str, **values: str) -> str:
    """``doc`` with each placeholder line replaced by its paragraph of :data:`PARAGRAPHS`
    (or of ``values``), then each placeholder within a line by its value of ``values``."""

    def paragraph(match: re.Match[str]) -> str:
        indent, name = match.groups()
        text = values[name] if name in values else PARAGRAPHS[name]
        return textwrap.indent(text, indent, lambda line: bool(line.strip()))

    return _VALUE.sub(lambda match: values[match.group(1)], _PARAGRAPH.sub(paragraph, doc))


def fill(**values: str) -> Callable[[F], F]:
    """Decorate a function: its docstring's placeholders filled (:func:`fill_text`)."""

    def decorate(func: F) -> F:
        if func.__doc__:
            func.__doc__ = fill_text(func.__doc__, **values)
        return func

    return decorate
