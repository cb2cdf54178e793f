"""Kernels for torch tensors whose classes are split among the processes of a
``torch.distributed`` group: the ``process_group`` of ``cross_entropy`` and
``linear_cross_entropy``.

The math is ``crossent._generic._sharded``'s; this module gives it ``torch.distributed``'s
collectives (:class:`TorchCollectives`) and torch's autograd: ``cross_entropy`` is a
``torch.autograd.Function`` whose forward pass computes the loss and its gradient together, and
whose backward pass scales that gradient by the upstream one (no collective);
``linear_cross_entropy`` is ``_torch``'s own Function, run over the sharded chunks. The
dispatcher reaches this module through ``_dispatch._sharded_call``, for a loss declared with
``sharded=``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch

from .._generic import _sharded
from .._generic._arrays import torch_transformed
from .._generic._sharded import ShardedClasses, ShardedLinear
from .._typing import Array
from . import _torch

__all__ = ["KERNELS", "TorchCollectives", "sharded"]


class TorchCollectives(_sharded.Collectives):
    """:class:`~crossent._generic._sharded.Collectives` over a ``torch.distributed`` process
    group: ``all_gather`` of the class counts, ``all_reduce`` with ``MAX`` and ``SUM``."""

    def __init__(self, group: Any, device: torch.device) -> None:
        self.group = group
        self.device = device

    @classmethod
    def of(cls, process_group: object, device: torch.device) -> TorchCollectives:
        """The collectives of ``process_group``, checked, for tensors on ``device``."""
        distributed = torch.distributed
        if not distributed.is_available():
            raise TypeError(
                "process_group needs torch.distributed, which this build of torch does not have"
            )
        if not isinstance(process_group, distributed.ProcessGroup):
            kind = type(process_group)
            raise TypeError(
                "process_group must be a torch.distributed ProcessGroup (such as "
                "torch.distributed.group.WORLD or one made by torch.distributed.new_group), "
                f"got {kind.__module__}.{kind.__qualname__}"
            )
        return cls(process_group, device)

    def classes(self, local: int) -> tuple[int, int]:
        count = torch.tensor([local], dtype=torch.int64, device=self.device)
        counts = [torch.empty_like(count) for _ in range(self.group.size())]
        torch.distributed.all_gather(counts, count, group=self.group)
        sizes = [int(c) for c in torch.cat(counts).tolist()]
        return sum(sizes[: self.group.rank()]), sum(sizes)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(x, torch.distributed.ReduceOp.MAX)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(x, torch.distributed.ReduceOp.SUM)

    def _all_reduce(self, x: torch.Tensor, op: Any) -> torch.Tensor:
        x = x.contiguous()
        torch.distributed.all_reduce(x, op=op, group=self.group)
        return x


# --- cross_entropy ----------------------------------------------------------------------------


class _ShardedCrossEntropy(torch.autograd.Function):  # type: ignore[misc]
    """The sharded cross-entropy of this process's logits (class axis last): the loss of the
    whole from the forward pass's two all-reduces, and its gradient with respect to these
    logits, made in the same pass and scaled by the upstream gradient in the backward pass."""

    @staticmethod
    def forward(
        ctx: Any,
        predictions: torch.Tensor,
        problem: ShardedClasses,
        smoothing: float,
        group: TorchCollectives,
    ) -> torch.Tensor:
        result = _sharded.cross_entropy_pass(problem, smoothing, group, gradient=True)
        # in the layout of ``predictions`` (class axis last) and the compute dtype: rounded to
        # the input dtype only once the upstream gradient (a loss scale) is in it
        layout = dataclasses.replace(
            problem, dtype=problem.compute_dtype, axis=len(problem.predictions.shape) - 1
        )
        ctx.gradient = layout.reduced_gradient(result)
        ctx.kept = result.kept if problem.reduction == "none" else None
        ctx.dtype = problem.dtype
        out: torch.Tensor = problem.reduce(result)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad: torch.Tensor = ctx.gradient
        scale = upstream.to(grad.dtype)
        if ctx.kept is not None:  # one upstream gradient per position; none at ignored ones
            scale = torch.where(ctx.kept, scale, 0.0)[..., None]
        return (grad * scale).to(ctx.dtype), None, None, None


def cross_entropy(problem: ShardedClasses, smoothing: float, group: TorchCollectives) -> Array:
    if problem.weight is not None and problem.weight.requires_grad:
        raise TypeError(
            "cross_entropy with process_group is differentiated in logits only, not in its "
            "weight; pass weight.detach()"
        )
    if not torch.is_grad_enabled() or not problem.predictions.requires_grad:
        with torch.no_grad():
            return _sharded.cross_entropy(problem, smoothing, group)
    out: torch.Tensor = _ShardedCrossEntropy.apply(problem.predictions, problem, smoothing, group)
    return out


# --- linear_cross_entropy ---------------------------------------------------------------------


def _linear_pass(
    group: TorchCollectives,
    problem: ShardedLinear,
    smoothing: float,
    wanted: tuple[bool, bool, bool],
    factor: Any,
) -> tuple[Any, Any, Any, Any]:
    return _sharded.linear_pass(problem, smoothing, group, wanted, factor)


def linear_cross_entropy(
    problem: ShardedLinear, smoothing: float, group: TorchCollectives
) -> Array:
    """torch's ``linear_cross_entropy`` Function (gradients in the forward pass for a scalar
    reduction, scaled in the backward pass; the chunks made again for ``"none"`` and half
    precision), each chunk the sharded one: its two all-reduces, and ``hidden``'s gradient
    summed over the group."""
    return _torch.linear_autograd(problem, smoothing, functools.partial(_linear_pass, group))


#: The generic sharded function -> its kernel here, with the same arguments.
KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    _sharded.cross_entropy: cross_entropy,
    _sharded.linear_cross_entropy: linear_cross_entropy,
}


def sharded(
    generic: Callable[..., Any],
    process_group: object,
    prepare: Callable[..., tuple[Any, tuple[Any, ...]]],
    /,
    *args: Any,
    **kwargs: Any,
) -> Array:
    """``generic`` over ``process_group``: ``prepare(*args, process_group=collectives,
    **kwargs)`` checks the public function's arguments into a problem and its options, and the
    kernel of ``generic`` computes it. ``args[0]`` is a torch tensor. Not inside a
    ``torch.func`` transform: the collectives and the autograd Functions take plain tensors."""
    tensors = [*args, *kwargs.values()]
    if any(isinstance(x, torch.Tensor) and torch_transformed(x) for x in tensors):
        raise TypeError(
            "process_group splits plain tensors among processes, got tensors inside a "
            "torch.func transform (vmap, grad, ...): call the loss outside the transform, or "
            "pass process_group=None"
        )
    group = TorchCollectives.of(process_group, args[0].device)
    problem, options = prepare(*args, process_group=group, **kwargs)
    return KERNELS[generic](problem, *options, group)
