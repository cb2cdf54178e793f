"""``cross_entropy(hidden @ weight.T + bias, target)`` of class indices in Triton, the ``N x V``
logits never made: each block of them is computed on chip, from ``BLOCK_D`` columns of
``hidden`` and ``weight`` at a time, and used there (Cut Cross-Entropy's design).

The forward, ``_forward``, gives each program a block of ``BLOCK_N`` rows and one of ``splits``
runs of vocabulary blocks. Over its run it keeps, per row, what ``_cross_entropy._rows`` keeps
over the whole row: the running maximum ``m``, the sum ``d`` of ``exp(x - m)`` (rescaled as
``m`` grows), the class-weighted sum of ``x - m`` and of the weights for label smoothing, the
target's logit (from the block where it falls) and whether a logit was NaN. Each run's partial
results go to a float32 buffer of ``(5, N, splits)``, which :func:`_combine` joins in torch's
operations (``O(N splits)``): with ``M = max_s m_s``,

    d = sum_s d_s exp(m_s - M),   sum_c w_c (x_c - M) = sum_s [shifted_s + W_s (m_s - M)],

the same rescaling the kernel makes from one block to the next, then the per-row loss of
``_cross_entropy`` (its ignore index, class weights, smoothing, soft-capping, z-loss, NaN at
an index that is no class and 0 where ignored) and the statistics ``(M, log d)``.

The backward (``_linear_backward``) runs a program per block of rows and of the vocabulary. It
makes its logits again, turns them into their gradient by ``_cross_entropy``'s formula (times
each row's upstream factor), and adds ``G W_block`` into the hidden gradient, ``G^T h_block``
into the weight's and ``G``'s column sums into the bias's, with ``tl.atomic_add`` into float32
buffers (a weight gradient summed in bfloat16 loses the small blocks' contributions, as
Liger-Kernel's PR #830 found), converted to the caller's dtype at the end.

Precision, as the dense ``F.linear`` then ``cross_entropy`` gives it: the products accumulate in
float32 (``input_precision="ieee"``: float32 inputs get float32's products, not TF32's); in half
precision each logit, bias added, is rounded once to the input dtype, and so is its gradient
before the two products. Both kernels are custom ops (``crossent::linear_cross_entropy_rows``
and its ``_backward``), so that ``torch.compile(fullgraph=True)`` sees one op each way.

On a GPU the loops over ``D`` are software-pipelined (``num_stages``) where the loads can be
vectorized: tensors from torch are 16-byte aligned, and Triton specializes on a ``D`` (the
rows' stride) that is a multiple of 16; another ``D`` is computed alike, more slowly.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ...._generic._tiles import GROUP, Plan, tile_plan
from ._math import _capped, _quiet, _rounded

__all__ = ["linear_cross_entropy_rows", "plan"]


def plan(rows: int, classes: int, device: torch.device, dtype: torch.dtype) -> Plan:
    """The tiles (``_generic._tiles``): the interpreter's on the CPU, else the GPU's, with the
    device's multiprocessors."""
    return tile_plan(
        rows,
        classes,
        float32=dtype == torch.float32,
        interpret=device.type == "cpu",
        processors=_processors(device),
    )


@triton.jit
def _grouped(pid, n_row_blocks, n_other, GROUP: tl.constexpr):
    """Program ``pid``'s block of rows and its other coordinate, ``GROUP`` row blocks at a time
    (the row block varying fastest), so that programs running together share rows and columns."""
    per_group = GROUP * n_other
    first = (pid // per_group) * GROUP
    size = tl.minimum(n_row_blocks - first, GROUP)
    return first + (pid % per_group) % size, (pid % per_group) // size


@triton.jit
def _logits(
    h_ptr,
    h_stride,
    w_ptr,
    w_stride,
    b_ptr,
    rows,
    cols,
    n_rows,
    n_cols,
    dim,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """The float32 block ``h[rows] @ w[cols].T + b[cols]``, soft-capped, as the dense logits
    read as float32: products summed in float32, the bias added, and in half precision the sum
    rounded once to the input dtype (a bias of ``-inf`` gives ``-inf``, not ``inf - inf``).
    ``UPCAST``: bfloat16 operands multiplied as float32 (exact products; the interpreter's
    ``tl.dot`` reads bfloat16's bits as integers)."""
    h_rows = h_ptr + rows.to(tl.int64)[:, None] * h_stride
    w_rows = w_ptr + cols.to(tl.int64)[:, None] * w_stride
    row_in = (rows < n_rows)[:, None]
    col_in = (cols < n_cols)[:, None]
    acc = tl.zeros((BLOCK_N, BLOCK_V), dtype=tl.float32)
    for start in range(0, dim, BLOCK_D):
        k = start + tl.arange(0, BLOCK_D)
        k_in = (k < dim)[None, :]
        h = tl.load(h_rows + k[None, :], mask=row_in & k_in, other=0.0)
        w = tl.load(w_rows + k[None, :], mask=col_in & k_in, other=0.0)
        if UPCAST:
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(h, tl.trans(w), acc, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)[None, :]
    if h_ptr.dtype.element_ty != tl.float32:
        acc = _rounded(acc, h_ptr.dtype.element_ty).to(tl.float32)
    return _capped(acc, softcap, HAS_SOFTCAP)


@triton.jit
def _forward(
    h_ptr,
    h_stride,
    w_ptr,
    w_stride,
    b_ptr,
    target_ptr,
    weight_ptr,
    parts_ptr,
    n_rows,
    n_cols,
    dim,
    splits,
    blocks_per_split,
    softcap,
    HAS_BIAS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    HAS_SOFTCAP: tl.constexpr,
    SMOOTHING: tl.constexpr,
    UPCAST: tl.constexpr,
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """One block of rows over one run of vocabulary blocks: ``_cross_entropy._rows``'s forward
    (the same online log-sum-exp and smoothing sums, row by row), its partial results into
    ``parts_ptr``'s planes ``(m, d, x_y, shifted, seen)`` at ``(row, split)``; ``d`` NaN where
    the run saw a NaN logit."""
    block_n, split = _grouped(tl.program_id(0), tl.cdiv(n_rows, BLOCK_N), splits, GROUP)
    rows = block_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_in = rows < n_rows
    y = tl.load(target_ptr + rows, mask=row_in, other=-1)
    m = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)  # the running maximum
    d = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum of exp(x - m)
    x_y = tl.zeros((BLOCK_N,), dtype=tl.float32)  # the target's logit, where it falls here
    shifted = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum of w_c (x_c - m)
    seen = tl.zeros((BLOCK_N,), dtype=tl.float32)  # sum of w_c so far (the same in every row)
    nans = tl.zeros((BLOCK_N,), dtype=tl.int32)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, tl.cdiv(n_cols, BLOCK_V))
    for block in range(first, last):
        cols = block * BLOCK_V + tl.arange(0, BLOCK_V)
        inside = (cols < n_cols)[None, :]
        x = _logits(
            h_ptr, h_stride, w_ptr, w_stride, b_ptr, rows, cols, n_rows, n_cols, dim, softcap,
            HAS_BIAS, HAS_SOFTCAP, UPCAST, BLOCK_N, BLOCK_V, BLOCK_D,
        )  # fmt: skip
        x = tl.where(inside, x, float("-inf"))
        nans += tl.sum((x != x).to(tl.int32), axis=1)
        m_new = tl.maximum(m, tl.max(x, axis=1))
        # exp(-inf - -inf) is NaN: a maximum still -inf leaves d at 0, an -inf logit adds 0
        rescale = tl.where(m_new == float("-inf"), 1.0, tl.exp(m - m_new))
        e = tl.where(x == float("-inf"), 0.0, tl.exp(x - m_new[:, None]))
        d = d * rescale + tl.sum(e, axis=1)
        x_y += tl.sum(tl.where(cols[None, :] == y[:, None], x, 0.0), axis=1)  # one term or none
        if SMOOTHING:
            w = tl.load(weight_ptr + cols, mask=cols < n_cols, other=0.0) if HAS_WEIGHT else 1.0
            # the terms taken from the maximum, as log-probabilities are: exact for large
            # logits, where sum(w x) - W m would cancel
            moved = tl.where((seen == 0.0) | (m == m_new), 0.0, seen * (m - m_new))
            diff = tl.where(x == float("-inf"), float("-inf"), x - m_new[:, None])
            shifted += moved + tl.sum(tl.where(inside, w * diff, 0.0), axis=1)
            seen += tl.sum(tl.where(cols < n_cols, w, 0.0), axis=0)
        m = m_new
    plane = n_rows * splits
    out = parts_ptr + rows.to(tl.int64) * splits + split
    tl.store(out, m, mask=row_in)
    tl.store(out + plane, tl.where(nans > 0, float("nan"), d), mask=row_in)
    tl.store(out + 2 * plane, x_y, mask=row_in)
    if SMOOTHING:
        tl.store(out + 3 * plane, shifted, mask=row_in)
        tl.store(out + 4 * plane, seen, mask=row_in)


def _combine(
    parts: torch.Tensor,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    classes: int,
    options: tuple[int, float, float | None, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The runs' partial results joined, then each row's loss and statistics, as
    ``_cross_entropy._rows`` finishes them (the same formulas, in torch's float32)."""
    ignore_index, smoothing, _, z_loss = options
    m_s, d_s, x_s = parts[0], parts[1], parts[2]
    m = m_s.amax(dim=1)
    gap = m_s - m[:, None]
    # a run whose maximum is -inf has d = 0 (and exp(-inf - -inf) is NaN); NaN's d stays NaN
    d = (d_s * torch.where(m_s == float("-inf"), 0.0, torch.exp(gap))).sum(dim=1)
    log_d = torch.log(d)
    is_class = (target >= 0) & (target < classes)
    w_y: torch.Tensor | float = 1.0
    if class_weight is not None and classes > 0:
        w_y = class_weight[torch.where(is_class, target, 0)]
    loss = (1.0 - smoothing) * w_y * ((m - x_s.sum(dim=1)) + log_d)  # -log p_y
    if smoothing != 0.0:  # -sum_c w_c log p_c = W log d - sum_c w_c (x_c - m)
        shifted_s, seen_s = parts[3], parts[4]
        moved = torch.where((seen_s == 0.0) | (gap == 0.0), 0.0, seen_s * gap)
        shifted = (shifted_s + moved).sum(dim=1)
        loss = loss + smoothing / max(classes, 1) * (seen_s.sum(dim=1) * log_d - shifted)
    lse = m + log_d
    loss = loss + z_loss * w_y * (lse * lse)
    loss = torch.where(is_class, loss, float("nan"))
    loss = torch.where(target != ignore_index, loss, 0.0)
    return loss, torch.stack((m, log_d), dim=1)


def _processors(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 1


def _operands(*xs: torch.Tensor | None) -> list[Any]:
    return [None if x is None else x.contiguous() for x in xs]


@torch.library.custom_op("crossent::linear_cross_entropy_rows", mutates_args=())
def linear_cross_entropy_rows(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    ignore_index: int,
    smoothing: float,
    softcap: float | None,
    z_loss: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's loss of ``cross_entropy(hidden @ weight.T + bias, target)`` (float32 ``(N,)``;
    0 where ignored, NaN at an index that is no class) and its statistics ``(m, log(sum(exp(x
    - m))))`` (float32 ``(N, 2)``): ``hidden`` ``(N, D)``, ``weight`` ``(V, D)``, ``bias``
    ``(V,)`` or None, all of one dtype (float32, float16 or bfloat16), ``target`` ``(N,)``
    int64, ``class_weight`` float32 ``(V,)`` or None."""
    rows, dim = hidden.shape
    classes = weight.shape[0]
    device, f32 = hidden.device, torch.float32
    if rows == 0:
        return torch.empty(0, dtype=f32, device=device), torch.empty(
            (0, 2), dtype=f32, device=device
        )
    hidden, weight, bias, target, class_weight = _operands(
        hidden, weight, bias, target, class_weight
    )
    p = plan(rows, classes, hidden.device, hidden.dtype)
    blocks, smoothing_on = p.forward, smoothing != 0.0
    parts = torch.empty((5 if smoothing_on else 3, rows, p.splits), dtype=f32, device=device)
    grid = (triton.cdiv(rows, blocks.rows) * p.splits,)
    with _quiet(hidden):
        _forward[grid](
            hidden, hidden.stride(0), weight, weight.stride(0), bias, target, class_weight, parts,
            rows, classes, dim, p.splits, p.blocks_per_split,
            1.0 if softcap is None else softcap,
            HAS_BIAS=bias is not None, HAS_WEIGHT=class_weight is not None,
            HAS_SOFTCAP=softcap is not None, SMOOTHING=smoothing_on,
            UPCAST=hidden.device.type == "cpu" and hidden.dtype == torch.bfloat16, GROUP=GROUP,
            BLOCK_N=blocks.rows, BLOCK_V=blocks.classes, BLOCK_D=blocks.depth,
            num_warps=blocks.warps, num_stages=blocks.stages,
        )  # fmt: skip
        options = (ignore_index, smoothing, softcap, z_loss)
        return _combine(parts, target, class_weight, classes, options)


@linear_cross_entropy_rows.register_fake
def _(hidden, weight, bias, target, class_weight, ignore_index, smoothing, softcap, z_loss):
    rows = hidden.shape[0]
    return hidden.new_empty(rows, dtype=torch.float32), hidden.new_empty(
        (rows, 2), dtype=torch.float32
    )
