"""Hand-written Triton kernels for torch tensors on a GPU, one module per kernel family (as
Liger-Kernel's ``ops/`` has them):

- ``_cross_entropy``: ``cross_entropy`` of class indices, the loss of each row from one read of
  its logits (an online log-sum-exp in float32) and the gradient from one more read and one
  write, as the custom ops ``crossent::cross_entropy_rows`` and its backward;
- ``_binary``: ``binary_cross_entropy_with_logits``, the logits and targets read in their own
  dtypes (``crossent::binary_cross_entropy_with_logits`` and its backward);
- ``_linear`` and ``_linear_backward``: ``linear_cross_entropy`` of class indices, each block
  of logits made and used on chip, never the whole (``crossent::linear_cross_entropy_rows``
  and its backward);
- ``_math``: the float32 functions they share, which compile and interpret alike.

They serve CUDA tensors wherever ``triton`` can be imported (it ships with torch's CUDA
wheels). With ``CROSSENT_TRITON_INTERPRET=1`` in the environment when crossent is imported,
CPU tensors take the same kernels under Triton's interpreter, which is how the tests run them
without a GPU: ``import crossent`` then sets ``TRITON_INTERPRET=1``, which Triton reads as it
is imported, so Triton must not have been imported before crossent.

Where ``triton`` is installed, the kernels' modules are imported with this one (when crossent's
torch kernels load): Triton itself is imported by then, by ``torch._dynamo``. No state is kept
after that, so that ``torch.compile`` traces the same code on every call.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

from ...._generic._linear import Linear, finish_gradients, gradient_factor
from ...._generic._problems import Classes
from ...._typing import Array
from ...._validation import broadcasts_to
from .._common import _transformed, _weighted_positions

__all__ = [
    "INTERPRET",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "linear_cross_entropy",
    "linear_cross_entropy_value_and_grad",
    "serves",
    "serves_linear",
    "serves_tensor",
]

#: Whether CPU tensors take the Triton kernels, under Triton's interpreter.
INTERPRET = os.environ.get("CROSSENT_TRITON_INTERPRET", "") == "1"
_AVAILABLE = importlib.util.find_spec("triton") is not None
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _interpret() -> None:
    """Check that Triton's interpreter is on: Triton turns it on as it is imported (its own
    library functions, ``tl.max`` and the like, are interpreted from then on), where
    ``TRITON_INTERPRET=1`` is in the environment; ``import crossent`` puts it there."""
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(tl.max, InterpretedFunction):
        raise RuntimeError(
            "CROSSENT_TRITON_INTERPRET=1 runs crossent's Triton kernels under Triton's "
            "interpreter, which Triton turns on as it is imported, and triton was imported "
            "before crossent without it: set TRITON_INTERPRET=1 too, or import crossent first"
        )


# The kernels' modules, where triton is installed
CROSS_ENTROPY: ModuleType | None = None
BINARY: ModuleType | None = None
LINEAR: ModuleType | None = None
LINEAR_BACKWARD: ModuleType | None = None  # which registers the forward op's autograd
if _AVAILABLE:
    if INTERPRET:
        _interpret()
    try:
        from . import _binary as BINARY
        from . import _cross_entropy as CROSS_ENTROPY
        from . import _linear as LINEAR
        from . import _linear_backward as LINEAR_BACKWARD
    except ImportError:  # a triton that does not import: torch's own kernels serve
        if INTERPRET:
            raise


def serves_tensor(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x``'s device and dtype: float32 or half precision, on a CUDA
    device (or on the CPU under the interpreter), with at least one element."""
    if x.dtype not in _KERNEL_DTYPES or x.numel() == 0:
        return False
    kind = x.device.type
    return kind == "cuda" or (INTERPRET and kind == "cpu")


def serves(problem: Classes) -> bool:
    """Whether the Triton kernels compute this ``cross_entropy``: class indices of float32 or
    half-precision logits whose classes are contiguous, on a CUDA device (or on the CPU under
    the interpreter), outside ``torch.func`` transforms."""
    if CROSS_ENTROPY is None or type(problem) is not Classes or not problem.index_target:
        return False
    logits = problem.predictions
    if not serves_tensor(logits):
        return False
    if logits.stride(-1) != 1 and logits.shape[-1] != 1:
        return False
    return not _transformed(logits, problem.target, problem.weight, problem.sample_weight)


def cross_entropy(problem: Classes, smoothing: float) -> Array:
    """``cross_entropy`` of a problem that :func:`serves` accepts: each position's loss from
    the kernel (float32, 0 where ignored, NaN at an index that is no class), then weighted by
    the sample weights and reduced by torch's operations, whose gradient reaches the kernel's
    backward as each row's factor."""
    from ...._generic._categorical import picks_of

    logits = problem.predictions
    classes = logits.shape[-1]
    rows = logits.reshape(-1, classes)
    softcap = problem.softcap
    assert CROSS_ENTROPY is not None
    losses, _ = CROSS_ENTROPY.cross_entropy_rows(
        rows,
        problem.target.reshape(-1),
        problem.weight,
        problem.ignore_index,
        float(smoothing),
        None if softcap is None else float(softcap),
        float(problem.z_loss),
    )
    return _weighted_positions(problem, losses.reshape(problem.target.shape), picks_of(problem))


_REDUCTIONS = ("none", "mean", "sum")


def binary_cross_entropy_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    reduction: str,
) -> Array | None:
    """``binary_cross_entropy_with_logits`` of the caller's arguments, as given, where the
    kernel serves them, else None: logits that :func:`serves_tensor` takes; a target of their
    shape (floating, integer or bool), weights that broadcast to it (floating), all on their
    device and none differentiated (the kernel differentiates the logits alone); a reduction
    of torch's; no ``torch.func`` transform. What it declines, the full path computes, or
    refuses with crossent's errors."""
    if BINARY is None or not isinstance(logits, torch.Tensor) or not serves_tensor(logits):
        return None
    if type(reduction) is not str or reduction not in _REDUCTIONS:
        return None
    if not isinstance(target, torch.Tensor) or target.shape != logits.shape or target.is_complex():
        return None
    device = logits.device
    for x, floating in ((target, False), (weight, True), (pos_weight, True)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor) or x.device != device or x.requires_grad:
            return None
        if not (x.is_floating_point() or (not floating and not x.is_complex())):
            return None
        if not broadcasts_to(x.shape, logits.shape):
            return None
    if _transformed(logits, target, weight, pos_weight):
        return None
    out: torch.Tensor = BINARY.binary_cross_entropy_with_logits(
        logits, target, weight, pos_weight, reduction
    )
    return out


def serves_linear(problem: Linear) -> bool:
    """Whether the Triton kernels compute this ``linear_cross_entropy``: class indices, hidden
    states that :func:`serves_tensor` takes, at least one class, outside ``torch.func``
    transforms (``weight`` and ``bias`` have ``hidden``'s dtype and device: crossent checked)."""
    if LINEAR is None or not problem.index_target or problem.num_classes == 0:
        return False
    if not serves_tensor(problem.hidden):
        return False
    return not _transformed(
        problem.hidden,
        problem.weight,
        problem.bias,
        problem.target,
        problem.class_weight,
        problem.sample_weight,
    )


def _linear_rows(problem: Linear, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    softcap = problem.softcap
    assert LINEAR is not None
    out: tuple[torch.Tensor, torch.Tensor] = LINEAR.linear_cross_entropy_rows(
        problem.hidden,
        problem.weight,
        problem.bias,
        problem.target,
        problem.class_weight,
        problem.ignore_index,
        float(smoothing),
        None if softcap is None else float(softcap),
        float(problem.z_loss),
    )
    return out


def linear_cross_entropy(problem: Linear, smoothing: float) -> Array:
    """``linear_cross_entropy`` of a problem that :func:`serves_linear` accepts: each
    position's loss from the kernels (float32), weighted and reduced by torch's operations,
    whose gradient reaches the kernels' backward as each row's factor."""
    return problem.reduce_losses(_linear_rows(problem, smoothing)[0])


def linear_cross_entropy_value_and_grad(
    problem: Linear, smoothing: float, wanted: tuple[bool, bool, bool]
) -> tuple[Array, tuple[Array | None, ...]]:
    """The reduced loss and the gradients ``wanted``, from the forward op and then the
    backward op with each row's factor of the reduction (no autograd graph)."""
    assert LINEAR_BACKWARD is not None
    with torch.no_grad():
        losses, stats = _linear_rows(problem, smoothing)
        value = problem.reduce_losses(losses)
        factor = gradient_factor(problem)  # None (1), or a tensor of one or N elements
        rows = torch.ones_like(losses) if factor is None else factor * torch.ones_like(losses)
        softcap = problem.softcap
        grads = LINEAR_BACKWARD.linear_cross_entropy_rows_backward(
            problem.hidden,
            problem.weight,
            problem.bias,
            problem.target,
            problem.class_weight,
            stats,
            rows,
            problem.ignore_index,
            float(smoothing),
            None if softcap is None else float(softcap),
            float(problem.z_loss),
            list(wanted),
        )
        kept = [g if want else None for g, want in zip(grads, wanted, strict=True)]
        return value, finish_gradients(problem, wanted, *kept)
