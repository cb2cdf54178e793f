"""Hand-written Triton kernels for torch tensors on a GPU, one module per kernel family (as
Liger-Kernel's ``ops/`` has them):

- ``_cross_entropy``: ``cross_entropy`` of class indices, the loss of each row from one read of
  its logits (an online log-sum-exp in float32) and the gradient from one more read and one
  write, as the custom ops ``crossent::cross_entropy_rows`` and its backward.

They serve CUDA tensors wherever ``triton`` can be imported (it ships with torch's CUDA
wheels). With ``CROSSENT_TRITON_INTERPRET=1`` in the environment when crossent is imported,
CPU tensors take the same kernels under Triton's interpreter, which is how the tests run them
without a GPU: ``import crossent`` then sets ``TRITON_INTERPRET=1``, which Triton reads as it
is imported, so Triton must not have been imported before crossent.

Where ``triton`` is installed, the kernels' module is imported with this one (when crossent's
torch kernels load): Triton itself is imported by then, by ``torch._dynamo``. No state is kept
after that, so that ``torch.compile`` traces the same code on every call.
"""

from __future__ import annotations

import importlib.util
import os
from types import ModuleType

import torch

from ...._generic._problems import Classes
from ...._typing import Array
from .._common import _transformed, _weighted_positions

__all__ = ["INTERPRET", "cross_entropy", "serves"]

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


KERNELS: ModuleType | None = None  # the kernels' module, where triton is installed
if _AVAILABLE:
    if INTERPRET:
        _interpret()
    try:
        from . import _cross_entropy as KERNELS
    except ImportError:  # a triton that does not import: torch's own kernels serve
        if INTERPRET:
            raise


def serves(problem: Classes) -> bool:
    """Whether the Triton kernels compute this ``cross_entropy``: class indices of float32 or
    half-precision logits whose classes are contiguous, on a CUDA device (or on the CPU under
    the interpreter), outside ``torch.func`` transforms."""
    if KERNELS is None or type(problem) is not Classes or not problem.index_target:
        return False
    logits = problem.predictions
    if logits.dtype not in _KERNEL_DTYPES or logits.numel() == 0:
        return False
    kind = logits.device.type
    if not (kind == "cuda" or (INTERPRET and kind == "cpu")):
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
    assert KERNELS is not None
    losses, _ = KERNELS.cross_entropy_rows(
        rows,
        problem.target.reshape(-1),
        problem.weight,
        problem.ignore_index,
        float(smoothing),
        None if softcap is None else float(softcap),
        float(problem.z_loss),
    )
    return _weighted_positions(problem, losses.reshape(problem.target.shape), picks_of(problem))
