"""What the torch kernels share: Dynamo's leave to trace ``array_api_compat``'s cached helpers
(given when this module is first imported, which importing the package does), the test for
``torch.func`` transforms, torch's class-first layout, the full-precision dtypes, and the block
sizes of the eager half-precision kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._generic._arrays import torch_transformed
from ..._generic._categorical import Picks
from ..._generic._problems import Classes, Unreduced
from ..._typing import Array

__all__ = ["ACCELERATOR_BLOCK_ELEMENTS", "BLOCK_ELEMENTS"]


def _let_dynamo_trace_array_api_compat() -> None:
    """Tell torch.compile that ``array_api_compat``'s cached helpers may be traced.

    They answer questions about types and namespaces (``is_torch_namespace`` and the like),
    with ``functools.lru_cache``: pure functions, which Dynamo traces correctly, but at each of
    their call sites it would warn that it ignores the cache. torch lets a library vouch for
    such functions (it does so for einops) through a private function: without it the
    warnings show, and nothing else changes. This module is loaded with the package, with the
    first tensor, before crossent calls any of them on it (``crossent._dispatch.entry``).
    """
    from array_api_compat.common import _helpers

    try:
        from torch._dynamo.utils import allow_lru_cache_wrapper_trace_without_warning as allow
    except ImportError:  # pragma: no cover (a torch without it)
        return
    for value in vars(_helpers).values():
        if hasattr(value, "cache_info"):
            allow(value)


_let_dynamo_trace_array_api_compat()


def _transformed(*tensors: torch.Tensor | None) -> bool:
    """Whether any of ``tensors`` is seen through a ``torch.func`` transform: the blocked and
    linear ``autograd.Function``s and their in-place buffers are for plain tensors only."""
    return any(x is not None and torch_transformed(x) for x in tensors)


def _class_first(x: torch.Tensor) -> torch.Tensor:
    """torch's layout: classes at dimension 1, or 0 for one unbatched example."""
    return x if x.ndim < 2 else x.movedim(-1, 1)


_FLOATS = (torch.float32, torch.float64)


#: Elements per block of half-precision input read as float32: 1 MiB, which a core's cache
#: holds (of 256 KiB to 16 MiB blocks, it measured best on the benchmark shapes).
BLOCK_ELEMENTS = 2**18
#: The same on a GPU: 256 MiB of float32. Blocks of the CPU's size made thousands of small
#: kernel launches, 60 to 80 times slower than torch's cross_entropy on an H100.
ACCELERATOR_BLOCK_ELEMENTS = 2**26


def _block_elements(x: torch.Tensor) -> int:
    return BLOCK_ELEMENTS if x.device.type == "cpu" else ACCELERATOR_BLOCK_ELEMENTS


def _torch_cross_entropy(
    inputs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    options: tuple[int, float, str],
    *,
    log_probs: bool,
) -> torch.Tensor:
    """torch's cross-entropy of ``inputs`` (class axis 1) with ``options`` ``(ignore_index,
    label_smoothing, reduction)``. Of log-probabilities (``log_probs``) against class indices
    with no smoothing it is ``nll_loss``, the same loss (their log normaliser is 0) without
    a second log-softmax."""
    ignore_index, smoothing, reduction = options
    if log_probs and smoothing == 0.0 and not torch.is_floating_point(target):
        return F.nll_loss(inputs, target, weight, None, ignore_index, None, reduction)
    return F.cross_entropy(
        inputs, target, weight, None, ignore_index, None, reduction, label_smoothing=smoothing
    )


def _weighted_positions(problem: Classes, losses: torch.Tensor, picks: Picks | None) -> Array:
    """Per-position ``losses`` of a call with sample weights (0 at ignored positions), each
    times its sample weight, reduced: ``"mean"`` divides by ``sum s_n w[y_n]`` (class
    indices, ``picks``) or ``sum s_n`` (class probabilities)."""
    s = problem.sample_weight
    if picks is not None:
        if s is not None:
            losses = losses * picks.kept_weight  # s_n where kept, 0 where ignored
        return problem.reduce(Unreduced(losses, torch.sum(picks.weight)))
    if s is None:
        return problem.reduce(Unreduced(losses))
    return problem.reduce(Unreduced(losses * s, torch.sum(s)))
