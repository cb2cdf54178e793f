"""``cross_entropy`` of class indices in Triton: each row's loss from one read of its logits, and
its gradient from one more read and one write.

One kernel, ``_rows``, runs a program per row, in two modes that share the row's target. Its
forward goes over blocks of the classes: an online log-sum-exp in float32 (the running
maximum ``m`` and the sum ``d`` of ``exp(x - m)``, rescaled as ``m`` grows), with the
class-weighted sum of ``x - m`` that label smoothing needs, and returns the row's loss and
``(m, log d)``. Its backward reads the logits again and writes

    g * ((1 - eps) w_y (p_c - [c = y]) + (eps / C) (W p_c - w_c) + 2 z w_y lse p_c)

with ``p_c = exp((x_c - m) - log d)`` (as ``log_softmax`` has it, exact for large logits, where
``x_c - lse`` is not), ``W`` the sum of the class weights and ``g`` the gradient of the
row's loss, times ``1 - tanh^2`` of the soft-capped logit where ``softcap`` is set. Nothing of
the logits' size is kept between the two: 6 bytes of traffic an element in bfloat16 against
torch's log-softmax and its backward's 10 or more. Reductions and sample weights are torch's
operations on the rows' losses (``_triton.cross_entropy``), so that any upstream gradient,
``reduction="none"`` included, reaches the backward as ``g``.

Both are custom ops (``crossent::cross_entropy_rows`` and ``crossent::cross_entropy_rows_
backward``), which ``torch.compile(fullgraph=True)`` and ``torch.export`` keep whole.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ._math import _capped, _quiet, _rounded

__all__ = ["cross_entropy_rows"]

#: Classes per block of a row: the block the online log-sum-exp takes at a time.
MAX_BLOCK = 4096


@triton.jit
def _total(total_ptr, n_cols, HAS_WEIGHT: tl.constexpr):
    """The sum of the class weights: read from the host's sum (no sync), or ``C``."""
    if HAS_WEIGHT:
        return tl.load(total_ptr)
    return n_cols.to(tl.float32)


@triton.jit
def _gradient(
    x, p, at_target, p_coefficient, target_coefficient, w, smoothing, n_cols, softcap,
    SMOOTHING: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):  # fmt: skip
    """The gradient of a row's loss in its (capped) logits ``x``, before the row's factor:
    ``p_coefficient p - [c = y] target_coefficient - (eps / C) w_c``, times ``1 - tanh^2``
    of the capped logit under ``softcap``; ``_linear_backward`` computes its blocks with it."""
    dx = p_coefficient * p - tl.where(at_target, target_coefficient, 0.0)
    if SMOOTHING:
        dx -= smoothing / n_cols * w
    if HAS_SOFTCAP:
        t = x / softcap
        dx *= (1.0 - t) * (1.0 + t)
    return dx


@triton.jit
def _rows(
    logits_ptr,
    row_stride,
    target_ptr,
    weight_ptr,
    total_ptr,
    stats_ptr,
    out_ptr,
    out_stride,
    grad_loss_ptr,
    n_cols,
    ignore_index,
    smoothing,
    softcap,
    z_loss,
    HAS_WEIGHT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    SMOOTHING: tl.constexpr,
    BACKWARD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """One program per row. Forward: the row's loss into ``out_ptr`` and ``(m, log d)`` into
    ``stats_ptr``. ``BACKWARD``: the row's gradient, times its factor at ``grad_loss_ptr``,
    into ``out_ptr``'s row (``out_stride``), from the statistics the forward wrote."""
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * row_stride
    y = tl.load(target_ptr + row)
    kept = y != ignore_index
    is_class = (y >= 0) & (y < n_cols)
    safe = tl.where(is_class, y, 0)
    w_y = tl.load(weight_ptr + safe) if HAS_WEIGHT else 1.0
    if BACKWARD:
        m = tl.load(stats_ptr + 2 * row)
        log_d = tl.load(stats_ptr + 2 * row + 1)
        # 0 where ignored (NaN logits stay NaN, as torch's backward has them); NaN at no class
        g = tl.where(kept, tl.load(grad_loss_ptr + row), 0.0)
        g = tl.where(is_class | (y == ignore_index), g, float("nan"))
        target_coefficient = (1.0 - smoothing) * w_y
        p_coefficient = target_coefficient + 2.0 * z_loss * w_y * (m + log_d)
        if SMOOTHING:
            p_coefficient += smoothing / n_cols * _total(total_ptr, n_cols, HAS_WEIGHT)
        out = out_ptr + row * out_stride
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < n_cols
            raw = tl.load(base + cols, mask=inside, other=0.0).to(tl.float32)
            x = _capped(raw, softcap, HAS_SOFTCAP)
            p = tl.exp((x - m) - log_d)  # as log_softmax: exact for large logits
            w = 1.0
            if SMOOTHING and HAS_WEIGHT:
                w = tl.load(weight_ptr + cols, mask=inside, other=0.0)
            dx = _gradient(
                x, p, cols == safe, p_coefficient, target_coefficient, w, smoothing, n_cols,
                softcap, SMOOTHING, HAS_SOFTCAP,
            )  # fmt: skip
            tl.store(out + cols, _rounded(g * dx, out_ptr.dtype.element_ty), mask=inside)
    else:
        m = float("-inf")  # the running maximum
        d = 0.0  # sum of exp(x - m)
        shifted = 0.0  # sum of w_c (x_c - m), for label smoothing
        seen = 0.0  # sum of w_c so far
        nans = 0
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < n_cols
            x = tl.load(base + cols, mask=inside, other=float("-inf")).to(tl.float32)
            x = tl.where(inside, _capped(x, softcap, HAS_SOFTCAP), float("-inf"))
            nans += tl.sum((x != x).to(tl.int32), axis=0)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            # exp(-inf - -inf) is NaN: a maximum still -inf leaves d at 0, an -inf logit adds 0
            rescale = tl.where(m_new == float("-inf"), 1.0, tl.exp(m - m_new))
            e = tl.where(x == float("-inf"), 0.0, tl.exp(x - m_new))
            d = d * rescale + tl.sum(e, axis=0)
            if SMOOTHING:
                w = tl.load(weight_ptr + cols, mask=inside, other=0.0) if HAS_WEIGHT else 1.0
                # the terms taken from the maximum, as log-probabilities are: exact for large
                # logits, where sum(w x) - W m would cancel
                moved = tl.where((seen == 0.0) | (m == m_new), 0.0, seen * (m - m_new))
                diff = tl.where(x == float("-inf"), float("-inf"), x - m_new)
                shifted += moved + tl.sum(tl.where(inside, w * diff, 0.0), axis=0)
                seen += tl.sum(tl.where(inside, w, 0.0), axis=0)
            m = m_new
        log_d = tl.where(nans > 0, float("nan"), tl.log(d))
        x_y = _capped(tl.load(base + safe).to(tl.float32), softcap, HAS_SOFTCAP)
        loss = (1.0 - smoothing) * w_y * ((m - x_y) + log_d)  # -log p_y
        if SMOOTHING:  # -sum_c w_c log p_c = W log d - sum_c w_c (x_c - m)
            loss += smoothing / n_cols * (seen * log_d - shifted)
        lse = m + log_d
        loss += z_loss * w_y * (lse * lse)
        loss = tl.where(is_class, loss, float("nan"))
        tl.store(out_ptr + row, tl.where(kept, loss, 0.0))
        tl.store(stats_ptr + 2 * row, m)
        tl.store(stats_ptr + 2 * row + 1, log_d)


def _block(classes: int) -> int:
    return min(triton.next_power_of_2(max(classes, 1)), MAX_BLOCK)


def _launch(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    out: torch.Tensor,
    factors: torch.Tensor | None,
    options: tuple[int, float, float | None, float],
    *,
    backward: bool,
) -> None:
    """Run :func:`_rows` over every row. The sum of the class weights, where smoothing reads
    it in the backward, is a tensor of one element that the kernel loads (no sync)."""
    ignore_index, smoothing, softcap, z_loss = options
    rows, classes = logits.shape
    total = None
    if backward and smoothing != 0.0 and weight is not None:
        total = weight.sum(dtype=torch.float32).reshape(1)
    _rows[(rows,)](
        logits,
        logits.stride(0),
        target,
        weight,
        total,
        stats,
        out,
        out.stride(0),
        factors,
        classes,
        ignore_index,
        smoothing,
        1.0 if softcap is None else softcap,
        z_loss,
        HAS_WEIGHT=weight is not None,
        HAS_SOFTCAP=softcap is not None,
        SMOOTHING=smoothing != 0.0,
        BACKWARD=backward,
        BLOCK=_block(classes),
    )


@torch.library.custom_op("crossent::cross_entropy_rows", mutates_args=())
def cross_entropy_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    smoothing: float,
    softcap: float | None,
    z_loss: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's loss (float32; 0 where ignored, NaN at an index that is no class) and its
    statistics, its maximum ``m`` and ``log(sum(exp(x - m)))`` (float32 ``(N, 2)``), of
    ``logits`` ``(N, C)`` (classes contiguous) and class indices ``target`` ``(N,)``;
    ``weight``, float32 ``(C,)``, or None."""
    rows = logits.shape[0]
    losses = torch.empty(rows, dtype=torch.float32, device=logits.device)
    stats = torch.empty((rows, 2), dtype=torch.float32, device=logits.device)
    if rows == 0:
        return losses, stats
    options = (ignore_index, smoothing, softcap, z_loss)
    with _quiet(logits):
        _launch(logits, target, weight, stats, losses, None, options, backward=False)
    return losses, stats


@cross_entropy_rows.register_fake
def _(logits, target, weight, ignore_index, smoothing, softcap, z_loss):
    rows = logits.shape[0]
    return logits.new_empty(rows, dtype=torch.float32), logits.new_empty(
        (rows, 2), dtype=torch.float32
    )


@torch.library.custom_op("crossent::cross_entropy_rows_backward", mutates_args=())
def cross_entropy_rows_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    stats: torch.Tensor,
    grad_losses: torch.Tensor,
    ignore_index: int,
    smoothing: float,
    softcap: float | None,
    z_loss: float,
) -> torch.Tensor:
    """The gradient of ``sum(grad_losses * cross_entropy_rows(...)[0])`` in ``logits``, in
    their dtype, in a new tensor."""
    rows, classes = logits.shape
    grad = torch.empty((rows, classes), dtype=logits.dtype, device=logits.device)
    if rows == 0 or classes == 0:
        return grad
    options = (ignore_index, smoothing, softcap, z_loss)
    with _quiet(logits):
        factors = grad_losses.to(torch.float32).contiguous()
        _launch(logits, target, weight, stats, grad, factors, options, backward=True)
    return grad


@cross_entropy_rows_backward.register_fake
def _(logits, target, weight, stats, grad_losses, ignore_index, smoothing, softcap, z_loss):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    logits, target, weight, ignore_index, smoothing, softcap, z_loss = inputs
    ctx.save_for_backward(logits, target, weight, output[1])
    ctx.options = (ignore_index, smoothing, softcap, z_loss)


def _backward_rows(ctx: Any, grad_losses: torch.Tensor, grad_stats: Any) -> tuple[Any, ...]:
    logits, target, weight, stats = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = cross_entropy_rows_backward(
            logits, target, weight, stats, grad_losses, *ctx.options
        )
    return grad, None, None, None, None, None, None


cross_entropy_rows.register_autograd(_backward_rows, setup_context=_setup_context)
