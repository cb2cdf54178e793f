"""Eager half-precision kernels: ``autograd.Function``s that read float16 and bfloat16 input
in float32 one cache-sized block at a time, so that no float32 copy of the whole input is ever
made. Under torch.compile, and inside ``torch.func`` transforms, they decline: the compiler
fuses the conversion into its kernels by itself, and transforms see only torch's operations."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..._generic._problems import Classes, Unreduced
from ..._typing import Array
from ._common import _block_elements, _torch_cross_entropy, _transformed

__all__: list[str] = []


class _BlockedHalfCrossEntropy(torch.autograd.Function):  # type: ignore[misc]
    """The float32 cross-entropy of each row of half-precision logits ``(N, C)``, block by
    block: no float32 copy of the logits is ever whole. The backward pass recomputes each
    block's softmax in float32, makes torch's gradient of it there (written out below), and
    rounds it once, into the logits' dtype."""

    @staticmethod
    def forward(
        ctx: Any,
        rows: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int,
        smoothing: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(rows, target, weight)
        ctx.options = (ignore_index, smoothing)
        step = max(1, _block_elements(rows) // rows.shape[1])
        with torch.no_grad():
            losses = [
                _torch_cross_entropy(
                    # converted to float32 in one pass while the block is in the cache
                    torch.log_softmax(rows[i : i + step], dim=1, dtype=torch.float32),
                    target[i : i + step],
                    weight,
                    (ignore_index, smoothing, "none"),
                    log_probs=True,
                )
                for i in range(0, rows.shape[0], step)
            ]
        return torch.cat(losses) if losses else rows.new_zeros((0,), dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, target, weight = ctx.saved_tensors
        ignore_index, smoothing = ctx.options
        num_classes = rows.shape[1]
        # torch's gradient of the loss of row n, written out (as crossent.value_and_grad's):
        # g_n [s_n softmax(x_n) - (1 - eps) w_{y_n} onehot(y_n) - (eps / C) w], with
        # s_n = (1 - eps) w_{y_n} + (eps / C) sum(w), and 0 where y_n is ignored
        kept = target != ignore_index
        index = torch.where(kept, target, 0)
        target_weight = torch.ones_like(upstream) if weight is None else weight[index]
        scale = torch.where(kept, upstream, 0.0)
        at_target = scale * ((1.0 - smoothing) * target_weight)
        total = num_classes if weight is None else torch.sum(weight)
        spread = scale * (smoothing / num_classes)
        softmax_scale = at_target + spread * total
        grad = torch.empty_like(rows)  # ours to write into
        step = max(1, _block_elements(rows) // num_classes)
        for i in range(0, rows.shape[0], step):
            j = i + step
            block = torch.softmax(rows[i:j], dim=1, dtype=torch.float32)
            block.mul_(softmax_scale[i:j, None])
            block.scatter_add_(1, index[i:j, None], -at_target[i:j, None])
            if smoothing != 0.0:
                block.sub_(spread[i:j, None] * (1.0 if weight is None else weight))
            grad[i:j] = block
        return grad, None, None, None, None


def _blocked_half_cross_entropy(problem: Classes, smoothing: float) -> Array | None:
    """Index targets of eager half-precision logits whose class axis is last and contiguous:
    :class:`_BlockedHalfCrossEntropy`, reduced in float32. (torch.compile fuses the conversion
    into the kernels by itself, and takes the route below.)"""
    logits = problem.predictions
    if not problem.index_target or torch.compiler.is_compiling() or not logits.is_contiguous():
        return None
    if _transformed(logits, problem.target, problem.weight):
        return None
    rows = logits.reshape(-1, logits.shape[-1])
    losses = _BlockedHalfCrossEntropy.apply(
        rows, problem.target.reshape(-1), problem.weight, problem.ignore_index, smoothing
    ).reshape(problem.target.shape)
    if problem.reduction != "mean":
        return problem.reduce(Unreduced(losses))
    kept = problem.target != problem.ignore_index
    if problem.weight is None:
        return problem.reduce(Unreduced(losses, torch.sum(kept, dtype=torch.float32)))
    target_weight = problem.weight[torch.where(kept, problem.target, 0)]
    return problem.reduce(Unreduced(losses, torch.sum(torch.where(kept, target_weight, 0.0))))


class _BlockedHalfBCEWithLogits(torch.autograd.Function):  # type: ignore[misc]
    """torch's binary cross-entropy with logits of flat half-precision tensors, computed in
    float32 block by block (each block converted while it is in the cache), never a float32
    copy of the whole input. ``"none"`` writes each block's loss in the input's dtype; the
    sums are float32. The backward pass recomputes ``sigmoid(x) - t`` per block."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, total: bool) -> Any:
        ctx.save_for_backward(logits, target)
        step = _block_elements(logits)
        if total:
            out = torch.zeros((), dtype=torch.float32, device=logits.device)
        else:
            out = torch.empty_like(logits)
        for i in range(0, logits.shape[0], step):
            j = i + step
            loss = F.binary_cross_entropy_with_logits(
                logits[i:j].float(), target[i:j].float(), reduction="sum" if total else "none"
            )
            if total:
                out += loss
            else:
                out[i:j] = loss
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, target = ctx.saved_tensors
        grad = torch.empty_like(logits)  # ours to write into
        step = _block_elements(logits)
        scalar = upstream.ndim == 0
        for i in range(0, logits.shape[0], step):
            j = i + step
            block = torch.sigmoid(logits[i:j].float()).sub_(target[i:j].float())
            grad[i:j] = block.mul_(upstream if scalar else upstream[i:j].float())
        return grad, None, None


def _blocked_half_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, reduction: str
) -> Array | None:
    """Half-precision logits and target of one dtype, no weights, contiguous, the target not
    differentiated: :class:`_BlockedHalfBCEWithLogits`. Eager only: torch.compile fuses the
    conversion by itself."""
    dtype = logits.dtype
    if (
        dtype not in (torch.float16, torch.bfloat16)
        or type(target) is not torch.Tensor
        or target.dtype != dtype
        or target.shape != logits.shape
        or target.requires_grad
        or not (logits.is_contiguous() and target.is_contiguous())
        or torch.compiler.is_compiling()
        or _transformed(logits, target)
    ):
        return None
    flat = logits.reshape(-1)
    if reduction == "none":
        out: torch.Tensor = _BlockedHalfBCEWithLogits.apply(flat, target.reshape(-1), False)
        return out.reshape(logits.shape)
    total = _BlockedHalfBCEWithLogits.apply(flat, target.reshape(-1), True)
    if reduction == "mean":
        total = total / flat.shape[0]  # 0 / 0 = NaN for no element, as torch's
    return total.to(dtype)
