"""``binary_cross_entropy_with_logits`` in Triton: one read of the logits and targets for the
loss, one more read and one write for the gradient, in the caller's dtypes.

torch's own kernel, in half precision, makes several temporaries of the logits' size (``(1 -
t) x``, ``log_sigmoid(x)``, their sum), and crossent's full path converts the logits and
targets to float32 first (rule 6): on an H100, 2.3 times torch's time and 7 times its memory in
bfloat16. Here each element is read in its own dtype, computed in float32 and, for
``reduction="none"``, rounded once into the input dtype; ``"mean"`` and ``"sum"`` leave one
float32 partial sum per program, which torch adds up.

The loss is the generic one (``_generic._binary``),

    w [q t softplus(-x) + (1 - t) softplus(x)],   softplus(x) = max(x, 0) + log1p(exp(-|x|)),

which keeps a loss of 4e-18 where torch's ``(1 - t) x - log_sigmoid(x)`` cancels to 0 (but
gives torch's NaN at a logit of ``-inf``, where torch's sum is ``inf - inf``), and its gradient
``w [sigmoid(x) (1 - t + q t) - q t]``, with ``sigmoid`` from the same ``exp(-|x|)``. The
weights ``w`` and ``q`` broadcast to the logits: every operand is read as a ``(rows,
classes)`` view with its own strides (0 along a broadcast axis), so that a ``(C,)``
``pos_weight`` is never expanded.

Both directions are custom ops (``crossent::binary_cross_entropy_with_logits`` and its
``_backward``), one per reduction kind: the per-element losses, or the programs' partial sums,
whose gradient, one number per program, multiplies its block's elements.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ._math import _exp, _quiet, _rounded

__all__ = ["binary_cross_entropy_with_logits"]

#: Elements per program: a block of ``TILE // BLOCK_C`` rows of up to 1024 classes.
TILE = 4096
MAX_BLOCK_C = 1024


@triton.jit
def _log1p(z):
    """``log(1 + z)`` for ``z`` in [0, 1], to a few units in the last place: ``u = 1 + z``
    is rounded, and ``log(u) z / (u - 1)`` corrects for it (Goldberg), where ``u - 1`` is
    exact."""
    u = 1.0 + z
    return tl.where(u == 1.0, z, tl.log(u) * (z / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def _elements(
    x_ptr,
    t_ptr,
    w_ptr,
    q_ptr,
    up_ptr,
    out_ptr,
    n_rows,
    n_cols,
    col_blocks,
    x_rs,
    x_cs,
    t_rs,
    t_cs,
    w_rs,
    w_cs,
    q_rs,
    q_cs,
    up_rs,
    up_cs,
    HAS_WEIGHT: tl.constexpr,
    HAS_POS_WEIGHT: tl.constexpr,
    SUM: tl.constexpr,
    BACKWARD: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """One program per block of ``BLOCK_R x BLOCK_C`` elements of the ``(n_rows, n_cols)``
    views. Forward: the elements' losses into ``out_ptr`` (contiguous, the input's dtype), or
    with ``SUM`` their float32 sum into ``out_ptr[program]``. ``BACKWARD``: the gradient in
    the logits into ``out_ptr`` (contiguous, their dtype), times the upstream gradient: the
    program's element of ``up_ptr`` with ``SUM``, else each element's (strides ``up_*``)."""
    program = tl.program_id(0)
    rows = (program // col_blocks).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
    cols = (program % col_blocks).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
    inside = (rows < n_rows) & (cols < n_cols)
    x = tl.load(x_ptr + rows * x_rs + cols * x_cs, mask=inside, other=0.0).to(tl.float32)
    t = tl.load(t_ptr + rows * t_rs + cols * t_cs, mask=inside, other=0).to(tl.float32)
    positive = x > 0.0
    decay = _exp(tl.where(positive, -x, x))  # exp(-|x|), with x = 0 on the side of exp(x)
    weighted = t
    if HAS_POS_WEIGHT:
        weighted = t * tl.load(q_ptr + rows * q_rs + cols * q_cs, mask=inside, other=0.0).to(
            tl.float32
        )
    w = 1.0
    if HAS_WEIGHT:
        w = tl.load(w_ptr + rows * w_rs + cols * w_cs, mask=inside, other=0.0).to(tl.float32)
    out = out_ptr + rows * n_cols + cols
    if BACKWARD:
        sigmoid = tl.where(positive, 1.0, decay) / (1.0 + decay)
        dx = w * (sigmoid * (1.0 - t + weighted) - weighted)
        if SUM:
            dx *= tl.load(up_ptr + program)
        else:
            up = tl.load(up_ptr + rows * up_rs + cols * up_cs, mask=inside, other=0.0)
            dx *= up.to(tl.float32)
        tl.store(out, _rounded(dx, out_ptr.dtype.element_ty), mask=inside)
    else:
        tail = _log1p(decay)
        softplus = tl.where(positive, x, 0.0) + tail  # -log(1 - sigmoid(x))
        softplus_of_minus = tl.where(positive, 0.0, -x) + tail  # -log(sigmoid(x))
        loss = w * (weighted * softplus_of_minus + (1.0 - t) * softplus)
        # torch's (1 - t) x - log_sigmoid(x) is inf - inf at x = -inf, where this is the limit:
        # NaN there, as torch tensors have it on every device (docs/numerics.md)
        loss = tl.where(x == float("-inf"), float("nan"), loss)
        if SUM:
            total = tl.sum(tl.sum(tl.where(inside, loss, 0.0), axis=1), axis=0)
            tl.store(out_ptr + program, total)
        else:
            tl.store(out, _rounded(loss, out_ptr.dtype.element_ty), mask=inside)


def _blocks(n_cols: int) -> tuple[int, int]:
    block_c = min(triton.next_power_of_2(max(n_cols, 1)), MAX_BLOCK_C)
    return max(1, TILE // block_c), block_c


def _grid(shape: torch.Size) -> tuple[int, int, int, int, int]:
    """The ``(rows, classes)`` of the views, the blocks and the programs."""
    n_cols = shape[-1] if len(shape) else 1
    n_rows = shape.numel() // n_cols if n_cols else 0
    block_r, block_c = _blocks(n_cols)
    col_blocks = triton.cdiv(n_cols, block_c)
    return n_rows, n_cols, block_r, block_c, triton.cdiv(n_rows, block_r) * col_blocks


def _view(x: torch.Tensor | None, shape: torch.Size, n_rows: int, n_cols: int) -> Any:
    """``x`` broadcast to ``shape``, as ``(n_rows, n_cols)`` (a view where the strides allow,
    as they do for a contiguous tensor and for weights broadcast along leading axes), and its
    two strides. A bool tensor is read as its bytes."""
    if x is None:
        return None, 0, 0
    if x.dtype is torch.bool:
        x = x.view(torch.uint8)
    rows = torch.broadcast_to(x, shape).reshape(n_rows, n_cols)
    return rows, rows.stride(0), rows.stride(1)


def _launch(
    x: torch.Tensor,
    t: torch.Tensor,
    w: torch.Tensor | None,
    q: torch.Tensor | None,
    up: torch.Tensor | None,
    out: torch.Tensor,
    *,
    total: bool,
    backward: bool,
) -> None:
    shape = x.shape
    n_rows, n_cols, block_r, block_c, programs = _grid(shape)
    views = [_view(a, shape, n_rows, n_cols) for a in (x, t, w, q)]
    up_view: Any = (up, 0, 0) if total or up is None else _view(up, shape, n_rows, n_cols)
    strides = [s for _, *pair in (*views, up_view) for s in pair]
    with _quiet(x):
        _elements[(programs,)](
            *(a for a, *_ in views),
            up_view[0],
            out,
            n_rows,
            n_cols,
            triton.cdiv(n_cols, block_c),
            *strides,
            HAS_WEIGHT=w is not None,
            HAS_POS_WEIGHT=q is not None,
            SUM=total,
            BACKWARD=backward,
            BLOCK_R=block_r,
            BLOCK_C=block_c,
        )


@torch.library.custom_op("crossent::binary_cross_entropy_with_logits", mutates_args=())
def binary_cross_entropy_with_logits_op(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    total: bool,
) -> torch.Tensor:
    """The elements' losses in the logits' dtype and shape, or (``total``) the programs'
    float32 partial sums, of logits and a target of one shape, and weights that broadcast
    to it."""
    if total:
        out = torch.empty(_grid(logits.shape)[-1], dtype=torch.float32, device=logits.device)
    else:
        out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if logits.numel():
        _launch(logits, target, weight, pos_weight, None, out, total=total, backward=False)
    return out


@binary_cross_entropy_with_logits_op.register_fake
def _(logits, target, weight, pos_weight, total):
    if total:
        return logits.new_empty(_grid(logits.shape)[-1], dtype=torch.float32)
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


@torch.library.custom_op("crossent::binary_cross_entropy_with_logits_backward", mutates_args=())
def binary_cross_entropy_with_logits_backward(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    upstream: torch.Tensor,
    total: bool,
) -> torch.Tensor:
    """The gradient in the logits (their dtype, a new contiguous tensor) of
    ``sum(upstream * binary_cross_entropy_with_logits_op(...))``."""
    grad = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if logits.numel():
        up = upstream.to(torch.float32).contiguous() if total else upstream
        _launch(logits, target, weight, pos_weight, up, grad, total=total, backward=True)
    return grad


@binary_cross_entropy_with_logits_backward.register_fake
def _(logits, target, weight, pos_weight, upstream, total):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    logits, target, weight, pos_weight, total = inputs
    ctx.save_for_backward(logits, target, weight, pos_weight)
    ctx.total = total


def _backward(ctx: Any, upstream: torch.Tensor) -> tuple[Any, ...]:
    logits, target, weight, pos_weight = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = binary_cross_entropy_with_logits_backward(
            logits, target, weight, pos_weight, upstream, ctx.total
        )
    return grad, None, None, None, None


binary_cross_entropy_with_logits_op.register_autograd(_backward, setup_context=_setup_context)


def binary_cross_entropy_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    reduction: str,
) -> torch.Tensor:
    """The loss, reduced: ``"none"`` in the logits' dtype; the sums in float32, rounded once
    to it (``"mean"`` divides by the number of elements)."""
    if reduction == "none":
        return binary_cross_entropy_with_logits_op(logits, target, weight, pos_weight, False)
    partials = binary_cross_entropy_with_logits_op(logits, target, weight, pos_weight, True)
    out = torch.sum(partials)
    if reduction == "mean":
        out = out / logits.numel()
    return out.to(logits.dtype)
