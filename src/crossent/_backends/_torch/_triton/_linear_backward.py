"""The backward of ``_linear``'s fused linear cross-entropy: the gradients of ``hidden``,
``weight`` and ``bias`` from the logits made again, a block at a time, and the autograd formula
of ``crossent::linear_cross_entropy_rows`` that runs it (registered as this module is
imported: ``_triton`` imports both).

A program per block of rows and block of the vocabulary (``GROUP`` row blocks at a time in the
launch order) makes its logits ``x`` as the forward did, and their gradient as
``_cross_entropy._rows``'s backward does,

    G = g * ((1 - eps) w_y (p_c - [c = y]) + (eps / C) (W p_c - w_c) + 2 z w_y lse p_c),

``p_c = exp((x_c - m) - log d)`` from the forward's statistics, times ``1 - tanh^2`` of the
soft-capped logit, ``g`` the row's upstream gradient (0 where ignored, NaN at an index that is
no class). In half precision ``G`` is rounded to the input dtype, as the dense backward has
the logits' gradient, and then ``G W_block``, ``G^T h_block`` (``BLOCK_D`` columns at a time)
and ``G``'s column sums go into float32 buffers by ``tl.atomic_add``: each element of the
hidden gradient takes ``V / BLOCK_V`` additions, each of the weight's ``N / BLOCK_N``, in an
order that varies from run to run (the gradients are not bitwise deterministic on a GPU; the
losses are). The buffers are converted to the caller's dtypes at the end.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ...._generic._tiles import GROUP
from ._cross_entropy import _gradient
from ._linear import _grouped, _logits, _operands, linear_cross_entropy_rows, plan
from ._math import _quiet, _rounded

__all__ = ["linear_cross_entropy_rows_backward"]


@triton.jit
def _backward(
    h_ptr,
    h_stride,
    w_ptr,
    w_stride,
    b_ptr,
    target_ptr,
    weight_ptr,
    total_ptr,
    stats_ptr,
    grad_ptr,
    dh_ptr,
    dw_ptr,
    db_ptr,
    n_rows,
    n_cols,
    dim,
    ignore_index,
    smoothing,
    softcap,
    z_loss,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    SMOOTHING: tl.constexpr,
    UPCAST: tl.constexpr,
    WANT_H: tl.constexpr,
    WANT_W: tl.constexpr,
    WANT_B: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One block of rows and of classes: its gradient of the logits ``G``, then its shares of
    the gradients ``WANT_H``, ``WANT_W`` and ``WANT_B`` added into ``dh_ptr`` ``(N, D)``,
    ``dw_ptr`` ``(V, D)`` and ``db_ptr`` ``(V,)``, float32 and zeroed by the caller."""
    n_blocks = tl.cdiv(n_cols, BLOCK_V)
    block_n, block_v = _grouped(tl.program_id(0), tl.cdiv(n_rows, BLOCK_N), n_blocks, GROUP)
    rows = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = block_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_in = rows < n_rows
    col_in = cols < n_cols
    y = tl.load(target_ptr + rows, mask=row_in, other=ignore_index)
    kept = y != ignore_index
    is_class = (y >= 0) & (y < n_cols)
    safe = tl.where(is_class, y, 0)
    w_y = tl.load(weight_ptr + safe, mask=row_in, other=0.0) if HAS_WEIGHT else 1.0
    m = tl.load(stats_ptr + 2 * rows, mask=row_in, other=0.0)
    log_d = tl.load(stats_ptr + 2 * rows + 1, mask=row_in, other=0.0)
    # 0 where ignored (NaN logits stay NaN, as torch's backward has them); NaN at no class
    g = tl.where(kept, tl.load(grad_ptr + rows, mask=row_in, other=0.0), 0.0)
    g = tl.where(is_class | (y == ignore_index), g, float("nan"))
    target_coefficient = (1.0 - smoothing) * w_y
    p_coefficient = target_coefficient + 2.0 * z_loss * w_y * (m + log_d)
    if SMOOTHING:
        total = tl.load(total_ptr) if HAS_WEIGHT else n_cols.to(tl.float32)
        p_coefficient += smoothing / n_cols * total
    x = _logits(
        h_ptr, h_stride, w_ptr, w_stride, b_ptr, rows, cols, n_rows, n_cols, dim, softcap,
        HAS_BIAS, HAS_SOFTCAP, UPCAST, BLOCK_N, BLOCK_V, BLOCK_D,
    )  # fmt: skip
    p = tl.exp((x - m[:, None]) - log_d[:, None])  # as log_softmax: exact for large logits
    w = 1.0
    if SMOOTHING and HAS_WEIGHT:
        w = tl.load(weight_ptr + cols, mask=col_in, other=0.0)[None, :]
    dx = _gradient(
        x, p, cols[None, :] == safe[:, None], p_coefficient[:, None],
        target_coefficient[:, None], w, smoothing, n_cols, softcap, SMOOTHING, HAS_SOFTCAP,
    )  # fmt: skip
    dx = tl.where(row_in[:, None] & col_in[None, :], g[:, None] * dx, 0.0)
    dx = _rounded(dx, h_ptr.dtype.element_ty)  # the dense backward's gradient of the logits
    if WANT_B:
        tl.atomic_add(db_ptr + cols, tl.sum(dx.to(tl.float32), axis=0), mask=col_in, sem="relaxed")
    if UPCAST:
        dx = dx.to(tl.float32)
    if WANT_H or WANT_W:
        h_rows = rows.to(tl.int64)[:, None] * h_stride
        w_rows = cols.to(tl.int64)[:, None] * w_stride
        for start in range(0, dim, BLOCK_D):
            k = start + tl.arange(0, BLOCK_D)
            k_in = (k < dim)[None, :]
            if WANT_H:  # G W_block
                w_block = tl.load(w_ptr + w_rows + k[None, :], mask=col_in[:, None] & k_in)
                if UPCAST:
                    w_block = w_block.to(tl.float32)
                part = tl.dot(dx, w_block, input_precision="ieee")
                out = dh_ptr + rows.to(tl.int64)[:, None] * dim + k[None, :]
                tl.atomic_add(out, part, mask=row_in[:, None] & k_in, sem="relaxed")
            if WANT_W:  # G^T h_block
                h_block = tl.load(h_ptr + h_rows + k[None, :], mask=row_in[:, None] & k_in)
                if UPCAST:
                    h_block = h_block.to(tl.float32)
                part = tl.dot(tl.trans(dx), h_block, input_precision="ieee")
                out = dw_ptr + cols.to(tl.int64)[:, None] * dim + k[None, :]
                tl.atomic_add(out, part, mask=col_in[:, None] & k_in, sem="relaxed")


@torch.library.custom_op("crossent::linear_cross_entropy_rows_backward", mutates_args=())
def linear_cross_entropy_rows_backward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    stats: torch.Tensor,
    grad_losses: torch.Tensor,
    ignore_index: int,
    smoothing: float,
    softcap: float | None,
    z_loss: float,
    wanted: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients of ``sum(grad_losses * linear_cross_entropy_rows(...)[0])`` in ``hidden``
    (its dtype), ``weight`` and ``bias`` (weight's dtype), from the forward's ``stats``: new
    tensors where ``wanted`` (three bools) asks for them, and empty ones (``torch.empty(0)``)
    in their place where not or where ``bias`` is None (a custom op returns no None)."""
    rows, dim = hidden.shape
    classes = weight.shape[0]
    device, f32 = hidden.device, torch.float32
    want_h, want_w, want_b = wanted[0], wanted[1], wanted[2] and bias is not None
    d_hidden = torch.zeros((rows, dim) if want_h else (0,), dtype=f32, device=device)
    d_weight = torch.zeros((classes, dim) if want_w else (0,), dtype=f32, device=device)
    d_bias = torch.zeros((classes,) if want_b else (0,), dtype=f32, device=device)
    if rows and classes and (want_h or want_w or want_b):
        hidden, weight, bias, target, class_weight, stats = _operands(
            hidden, weight, bias, target, class_weight, stats
        )
        total = None
        if smoothing != 0.0 and class_weight is not None:
            total = class_weight.sum(dtype=torch.float32).reshape(1)
        p = plan(rows, classes, hidden.device, hidden.dtype)
        blocks = p.backward
        grid = (triton.cdiv(rows, blocks.rows) * triton.cdiv(classes, blocks.classes),)
        with _quiet(hidden):
            _backward[grid](
                hidden, hidden.stride(0), weight, weight.stride(0), bias, target, class_weight,
                total, stats, grad_losses.to(torch.float32).contiguous(),
                d_hidden if want_h else None, d_weight if want_w else None,
                d_bias if want_b else None,
                rows, classes, dim, ignore_index, smoothing,
                1.0 if softcap is None else softcap, z_loss,
                HAS_BIAS=bias is not None, HAS_WEIGHT=class_weight is not None,
                HAS_SOFTCAP=softcap is not None, SMOOTHING=smoothing != 0.0,
                UPCAST=hidden.device.type == "cpu" and hidden.dtype == torch.bfloat16,
                WANT_H=want_h, WANT_W=want_w, WANT_B=want_b, GROUP=GROUP,
                BLOCK_N=blocks.rows, BLOCK_V=blocks.classes, BLOCK_D=blocks.depth,
                num_warps=blocks.warps, num_stages=blocks.stages,
            )  # fmt: skip
    return d_hidden.to(hidden.dtype), d_weight.to(weight.dtype), d_bias.to(weight.dtype)


@linear_cross_entropy_rows_backward.register_fake
def _(
    hidden, weight, bias, target, class_weight, stats, grad_losses, ignore_index, smoothing,
    softcap, z_loss, wanted,
):  # fmt: skip
    rows, dim = hidden.shape
    classes = weight.shape[0]
    want_b = wanted[2] and bias is not None
    return (
        hidden.new_empty((rows, dim) if wanted[0] else (0,)),
        weight.new_empty((classes, dim) if wanted[1] else (0,)),
        weight.new_empty((classes,) if want_b else (0,)),
    )


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    hidden, weight, bias, target, class_weight, ignore_index, smoothing, softcap, z_loss = inputs
    ctx.save_for_backward(hidden, weight, bias, target, class_weight, output[1])
    ctx.options = (ignore_index, smoothing, softcap, z_loss)


def _backward_rows(ctx: Any, grad_losses: torch.Tensor, grad_stats: Any) -> tuple[Any, ...]:
    """The gradients of ``hidden``, ``weight`` and ``bias`` (None where not needed); the
    statistics are not differentiated (``grad_stats`` is dropped)."""
    hidden, weight, bias, target, class_weight, stats = ctx.saved_tensors
    wanted = [bool(ctx.needs_input_grad[i]) for i in range(3)]
    wanted[2] = wanted[2] and bias is not None
    grads: list[Any] = [None, None, None]
    if any(wanted):
        out = linear_cross_entropy_rows_backward(
            hidden, weight, bias, target, class_weight, stats, grad_losses, *ctx.options, wanted
        )
        grads = [g if want else None for g, want in zip(out, wanted, strict=True)]
    return (*grads, None, None, None, None, None, None)


linear_cross_entropy_rows.register_autograd(_backward_rows, setup_context=_setup_context)
