"""``cross_entropy(hidden @ weight.T + bias, target)`` of class indices in JAX Pallas, the
``N x V`` logits never made: each block of them is computed on chip from ``BLOCK_D`` columns of
``hidden`` and ``weight`` at a time and used there. The design and math of torch's Triton
kernels (``_torch._triton._linear`` and ``_linear_backward``) with the generic layer's
semantics, in :func:`linear_pass`, a drop-in for ``_jax._linear_scan``.

The forward (:func:`_forward_kernel`) gives each program a block of ``BLOCK_N`` rows and one of
``splits`` runs of vocabulary blocks, over which it keeps the online log-sum-exp of each row:
the running maximum ``m``, the sum ``d`` of ``exp(x - m)``, the target's logit, a count of NaN
logits and, for label smoothing, the class-weighted sum of ``x - m`` and of the weights. The
runs' partial results (float32 ``(planes, splits, N)``) are joined outside the kernel in
``O(N splits)`` operations (:func:`_losses`), which give each row's loss and the per-row
coefficients of the gradient. The backward (:func:`_backward_kernel`) runs a program per block
of rows and of classes: it makes its logits again, their gradient

    G = e A_n - S_n w_c - [c = y_n] T_n,  e = exp(x - m_n)   (times 1 - tanh^2 with softcap)

(the generic gradient's softmax, smoothing and target coefficients times the row's factor), and
adds ``G W_block``, ``G^T h_block`` and ``G``'s column sums into float32 buffers by
``atomic_add`` (zero-initialised inputs aliased to the outputs).

Precision as ``_jax._linear_scan`` has it on a GPU: products summed in float32 (``HIGHEST``:
IEEE products for float32, not TF32); in half precision each logit, bias added, rounded once to
the input dtype, and the logits' gradient rounded to it before the products of the hidden's and
the weight's gradients (the bias's sums the float32 gradient).

Sizes that are not multiples of the blocks: ``hidden`` and ``weight`` are read with masked
loads, never padded (a padded weight would be a copy of ``V x D``); the small per-row and
per-class arrays (targets, coefficients, bias, class weights) are padded to the blocks. On a
GPU the atomic adds are masked; Pallas's interpreter has no masked atomics, so there the
float32 buffers are padded to the blocks and sliced after.

The kernel is chosen as the computation is lowered (``lax.platform_dependent``): Triton's
lowering on ``cuda`` and ``rocm``, the interpreter on ``cpu``; a wrong guess of :func:`serves`
under ``jit`` costs speed, never results.
"""

from __future__ import annotations

import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from .._generic._linear import Linear
from .._generic._tiles import GROUP, Blocks, Plan, tile_plan

__all__ = ["INTERPRET", "linear_pass", "serves"]

#: Whether CPU arrays take the kernels, under Pallas's interpreter (read at import).
INTERPRET = os.environ.get("CROSSENT_PALLAS_INTERPRET", "") == "1"
_DTYPES = frozenset(jnp.dtype(t) for t in (jnp.float32, jnp.float16, jnp.bfloat16))
_GPU_PLATFORMS = ("gpu", "cuda", "rocm")
_F32 = jnp.float32


def _processors() -> int:
    """The multiprocessors of the first GPU (132, an H100's, where JAX has none)."""
    try:
        return int(getattr(jax.devices("gpu")[0], "core_count", 0) or 132)
    except RuntimeError:
        return 132


def plan(rows: int, classes: int, dtype: Any, interpret: bool) -> Plan:
    """The tiles (``_generic._tiles``), with the GPU's multiprocessors."""
    float32 = jnp.dtype(dtype) == jnp.float32
    processors = 1 if interpret else _processors()
    return tile_plan(rows, classes, float32=float32, interpret=interpret, processors=processors)


def _platforms(x: Any) -> set[str]:
    """Where ``x`` lies: its devices' platforms where it is a concrete array; under a
    transform (a tracer, which knows no device), JAX's default backend, where ``jit`` puts
    a computation unless told otherwise."""
    if not isinstance(x, jax.core.Tracer):
        try:
            return {d.platform for d in x.devices()}
        except (AttributeError, TypeError, RuntimeError):
            pass
    return {jax.default_backend()}


def serves(problem: Any) -> bool:
    """Whether the kernels compute this ``linear_cross_entropy``: a :class:`Linear` (not a
    sharded one) of class indices, float32 or half-precision ``hidden``, at least one row, one
    class and one feature, on a GPU (or on the CPU where :data:`INTERPRET` is set)."""
    if type(problem) is not Linear or not problem.index_target:
        return False
    hidden = problem.hidden
    if not isinstance(hidden, jax.Array) or jnp.dtype(hidden.dtype) not in _DTYPES:
        return False
    if min(problem.num_positions, problem.num_classes, int(hidden.shape[1])) < 1:
        return False
    return _platforms(hidden) <= {*_GPU_PLATFORMS, *(["cpu"] if INTERPRET else [])}


# --- inside the kernels -----------------------------------------------------------------------


class _Config(NamedTuple):  # what the kernels are specialised on (static)
    n: int
    v: int
    d: int
    dtype: Any
    blocks: Blocks
    softcap: float | None
    has_bias: bool
    has_weight: bool
    smoothing: bool
    interpret: bool


def _iota(size: int) -> jax.Array:
    return jax.lax.broadcasted_iota(jnp.int32, (size,), 0)


def _grouped(pid: jax.Array, row_blocks: int, other: int) -> tuple[jax.Array, jax.Array]:
    """Program ``pid``'s block of rows and its other coordinate, ``GROUP`` row blocks at a time
    (the row block varying fastest), so that programs running together share their columns."""
    per_group = jnp.int32(GROUP * other)
    first = jax.lax.div(pid, per_group) * GROUP
    size = jnp.minimum(row_blocks - first, GROUP)
    within = jax.lax.rem(pid, per_group)
    return first + jax.lax.rem(within, size), jax.lax.div(within, size)


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    """``a @ b`` contracting the given axes, summed in float32 (IEEE products for float32)."""
    dims = (((contract[0],), (contract[1],)), ((), ()))
    highest = jax.lax.Precision.HIGHEST
    return jax.lax.dot_general(a, b, dims, precision=highest, preferred_element_type=_F32)


def _mask(c: _Config, inside: jax.Array, k0: Any) -> jax.Array:
    """``inside`` (a block's rows) and the columns ``k0:k0 + BLOCK_D`` of ``D`` (where ``D``
    is not a multiple of ``BLOCK_D``), as a ``(rows, BLOCK_D)`` mask."""
    mask = inside[:, None]
    if c.d % c.blocks.depth:
        mask = mask & ((k0 + _iota(c.blocks.depth)) < c.d)[None, :]
    return jnp.broadcast_to(mask, (inside.shape[0], c.blocks.depth))


def _load_rows(ref: Any, start: Any, size: int, inside: jax.Array, k0: Any, c: _Config) -> Any:
    """``ref[start:start + size, k0:k0 + BLOCK_D]``, 0 outside the array."""
    block = ref.at[pl.ds(start, size), pl.ds(k0, c.blocks.depth)]
    return plgpu.load(block, mask=_mask(c, inside, k0), other=0.0)


def _logits(
    c: _Config, h_ref: Any, w_ref: Any, b_ref: Any, r0: Any, c0: Any, row_in: Any, col_in: Any
) -> tuple[jax.Array, jax.Array | None]:
    """The float32 block ``h[rows] @ w[cols].T + b[cols]`` as the dense logits read as float32
    (in half precision rounded once to the input dtype), soft-capped; and with ``softcap`` the
    derivative of the cap, ``1 - tanh^2``."""
    bn, bv, bd = c.blocks.rows, c.blocks.classes, c.blocks.depth

    def step(k: Any, acc: jax.Array) -> jax.Array:
        k0 = k.astype(jnp.int32) * bd  # the loop's index is int64 under jax_enable_x64
        h = _load_rows(h_ref, r0, bn, row_in, k0, c)
        w = _load_rows(w_ref, c0, bv, col_in, k0, c)
        return acc + _dot(h, w, (1, 1))

    x = jax.lax.fori_loop(0, pl.cdiv(c.d, bd), step, jnp.zeros((bn, bv), _F32))
    if c.has_bias:
        x = x + b_ref[pl.ds(c0, bv)].astype(_F32)[None, :]
    if jnp.dtype(c.dtype) != jnp.float32:
        x = x.astype(c.dtype).astype(_F32)
    if c.softcap is None:
        return x, None
    t = jnp.tanh(x / c.softcap)
    return c.softcap * t, 1.0 - t * t


def _unpack(refs: tuple[Any, ...], flags: tuple[bool, ...]) -> list[Any]:
    """The refs of ``flags`` arguments, None where an argument is absent."""
    it = iter(refs)
    return [next(it) if present else None for present in flags]


def _forward_kernel(c: _Config, splits: int, per_split: int, *refs: Any) -> None:
    """One block of rows over one run of vocabulary blocks: the online log-sum-exp and the
    smoothing sums, row by row, into ``out``'s planes ``(m, d, x_y, shifted, seen)`` at
    ``(split, rows)``; ``d`` NaN where the run saw a NaN logit."""
    h_ref, w_ref, b_ref, y_ref, cw_ref, out_ref = _unpack(
        refs, (True, True, c.has_bias, True, c.has_weight, True)
    )
    bn, bv = c.blocks.rows, c.blocks.classes
    class_blocks = pl.cdiv(c.v, bv)
    block_n, split = _grouped(pl.program_id(0), pl.cdiv(c.n, bn), splits)
    r0 = block_n * bn
    row_in = (r0 + _iota(bn)) < c.n
    y = y_ref[pl.ds(r0, bn)]
    first = split * per_split
    last = jnp.minimum(first + per_split, class_blocks)
    inf = float("inf")  # a Python float: a literal of the kernel (a NumPy one is not lowered)

    def step(block: Any, state: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
        m, d, x_y, shifted, seen, nans = state
        c0 = block * bv
        cols = c0 + _iota(bv)
        inside = cols < c.v
        x, _ = _logits(c, h_ref, w_ref, b_ref, r0, c0, row_in, inside)
        x = jnp.where(inside[None, :], x, -inf)
        nans = nans + jnp.sum((x != x).astype(jnp.int32), axis=1, dtype=jnp.int32)
        m_new = jnp.maximum(m, jnp.max(x, axis=1))
        # exp(-inf - -inf) is NaN: a maximum still -inf leaves d at 0, an -inf logit adds 0
        rescale = jnp.where(m_new == -inf, 1.0, jnp.exp(m - m_new))
        e = jnp.where(x == -inf, 0.0, jnp.exp(x - m_new[:, None]))
        d = d * rescale + jnp.sum(e, axis=1)
        x_y = x_y + jnp.sum(jnp.where(cols[None, :] == y[:, None], x, 0.0), axis=1)
        if c.smoothing:
            w = cw_ref[pl.ds(c0, bv)] if c.has_weight else inside.astype(_F32)
            # the terms taken from the running maximum, as log-probabilities are
            moved = jnp.where((seen == 0.0) | (m == m_new), 0.0, seen * (m - m_new))
            diff = jnp.where(x == -inf, -inf, x - m_new[:, None])
            shifted = shifted + moved + jnp.sum(jnp.where(inside, w * diff, 0.0), axis=1)
            seen = seen + jnp.sum(w)
        return m_new, d, x_y, shifted, seen, nans

    zeros = jnp.zeros((bn,), _F32)
    init = (jnp.full((bn,), -inf, _F32), zeros, zeros, zeros, zeros, jnp.zeros((bn,), jnp.int32))
    m, d, x_y, shifted, seen, nans = jax.lax.fori_loop(first, last, step, init)
    planes = [m, jnp.where(nans > 0, jnp.nan, d), x_y]
    if c.smoothing:
        planes += [shifted, seen]
    for p, value in enumerate(planes):
        out_ref[p, split, pl.ds(r0, bn)] = value


def _backward_kernel(c: _Config, wanted: tuple[bool, bool, bool], *refs: Any) -> None:
    """One block of rows and of classes: its gradient of the logits ``G``, then its shares of
    the gradients that ``wanted`` asks for added into the float32 outputs (``dh`` ``(N, D)``,
    ``dw`` ``(V, D)``, ``db`` ``(V,)``; padded to the blocks under the interpreter)."""
    count = sum(wanted)
    flags = (True, True, c.has_bias, True, True, c.has_weight) + (True,) * (2 * count)
    h_ref, w_ref, b_ref, y_ref, rows_ref, cw_ref, *outs = _unpack(refs, flags)
    outs = outs[count:]  # the aliased inputs (zeros) first, then the outputs
    dh_ref = outs.pop(0) if wanted[0] else None
    dw_ref = outs.pop(0) if wanted[1] else None
    db_ref = outs.pop(0) if wanted[2] else None
    bn, bv, bd = c.blocks.rows, c.blocks.classes, c.blocks.depth
    block_n, block_v = _grouped(pl.program_id(0), pl.cdiv(c.n, bn), pl.cdiv(c.v, bv))
    r0, c0 = block_n * bn, block_v * bv
    rows, cols = r0 + _iota(bn), c0 + _iota(bv)
    row_in, col_in = rows < c.n, cols < c.v
    y = y_ref[pl.ds(r0, bn)]
    shift, a, s, t = (rows_ref[i, pl.ds(r0, bn)][:, None] for i in range(4))
    x, derivative = _logits(c, h_ref, w_ref, b_ref, r0, c0, row_in, col_in)
    g = jnp.exp(x - shift) * a
    if c.smoothing:
        g = g - s * (cw_ref[pl.ds(c0, bv)][None, :] if c.has_weight else 1.0)
    g = g - jnp.where(cols[None, :] == y[:, None], t, 0.0)
    if derivative is not None:
        g = g * derivative
    g = jnp.where(row_in[:, None] & col_in[None, :], g, 0.0)

    def add(ref: Any, index: tuple[Any, ...], value: jax.Array, mask: jax.Array) -> None:
        plgpu.atomic_add(ref, index, value, mask=None if c.interpret else mask)

    if db_ref is not None:
        add(db_ref, (pl.ds(c0, bv),), jnp.sum(g, axis=0), col_in)
    low = g.astype(c.dtype)  # the dense backward's gradient of the logits

    def step(k: Any, carry: None) -> None:
        k0 = k.astype(jnp.int32) * bd
        if dh_ref is not None:  # G W_block
            part = _dot(low, _load_rows(w_ref, c0, bv, col_in, k0, c), (1, 0))
            add(dh_ref, (pl.ds(r0, bn), pl.ds(k0, bd)), part, _mask(c, row_in, k0))
        if dw_ref is not None:  # G^T h_block
            part = _dot(low, _load_rows(h_ref, r0, bn, row_in, k0, c), (0, 0))
            add(dw_ref, (pl.ds(c0, bv), pl.ds(k0, bd)), part, _mask(c, col_in, k0))
        return carry

    if dh_ref is not None or dw_ref is not None:
        jax.lax.fori_loop(0, pl.cdiv(c.d, bd), step, None)


# --- around them ------------------------------------------------------------------------------


def _f32(shape: tuple[int, ...]) -> Any:
    return jax.ShapeDtypeStruct(shape, _F32)  # type: ignore[no-untyped-call, unused-ignore]


def _round_up(size: int, block: int) -> int:
    return -(-size // block) * block


def _pad(x: jax.Array, size: int, value: Any = 0) -> jax.Array:
    """``x`` along its last axis padded to ``size`` with ``value``."""
    extra = size - x.shape[-1]
    if extra == 0:
        return x
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, extra)], constant_values=value)


def _params(blocks: Blocks, interpret: bool) -> dict[str, Any]:
    triton = plgpu.CompilerParams(num_warps=blocks.warps, num_stages=blocks.stages)
    return {"interpret": True} if interpret else {"compiler_params": triton}


def _run(
    problem: Linear,
    smoothing: float,
    wanted: tuple[bool, bool, bool],
    interpret: bool,
    hidden: jax.Array,
    weight: jax.Array,
    bias: jax.Array | None,
    rows: dict[str, jax.Array],
    class_weight: jax.Array | None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None, jax.Array | None]:
    """Both kernels on one platform: the losses, then the gradients that ``wanted`` asks for."""
    n, d = hidden.shape
    v = weight.shape[0]
    p = plan(n, v, hidden.dtype, interpret)
    flags = (problem.softcap, bias is not None, class_weight is not None, smoothing != 0.0)
    fwd, bwd = (
        _Config(n, v, d, hidden.dtype, b, *flags, interpret) for b in (p.forward, p.backward)
    )
    n_pad = max(_round_up(n, blocks.rows) for blocks in (p.forward, p.backward))
    v_pad = max(_round_up(v, blocks.classes) for blocks in (p.forward, p.backward))
    b = None if bias is None else _pad(bias, v_pad)
    cw = None if class_weight is None else _pad(class_weight.astype(_F32), v_pad)
    index = _pad(rows["index"], n_pad, -1)
    operands = [x for x in (hidden, weight, b, index, cw) if x is not None]
    planes = 5 if fwd.smoothing else 3
    parts = pl.pallas_call(
        functools.partial(_forward_kernel, fwd, p.splits, p.blocks_per_split),
        out_shape=_f32((planes, p.splits, n_pad)),
        grid=(pl.cdiv(n, fwd.blocks.rows) * p.splits,),
        name="crossent_linear_forward",
        **_params(p.forward, interpret),
    )(*operands)[:, :, :n]
    want = (wanted[0], wanted[1], wanted[2] and bias is not None)
    losses, coefficients = _losses(problem, smoothing, parts, rows, any(want))
    if coefficients is None:
        return losses, None, None, None
    bn, bv, bd = p.backward.rows, p.backward.classes, p.backward.depth
    # the interpreter has no masked atomics: there the buffers are padded to the blocks
    n_, v_, d_ = (_round_up(x, b) if interpret else x for x, b in ((n, bn), (v, bv), (d, bd)))
    shapes = [s for s, w in zip([(n_, d_), (v_, d_), (v_,)], want, strict=True) if w]
    zeros = [jnp.zeros(s, _F32) for s in shapes]
    coefficients = _pad(coefficients, n_pad)
    operands = [x for x in (hidden, weight, b, index, coefficients, cw) if x is not None]
    first = len(operands)
    outs = pl.pallas_call(
        functools.partial(_backward_kernel, bwd, want),
        out_shape=[_f32(s) for s in shapes],
        grid=(pl.cdiv(n, bn) * pl.cdiv(v, bv),),
        input_output_aliases={first + i: i for i in range(len(zeros))},
        name="crossent_linear_backward",
        **_params(p.backward, interpret),
    )(*operands, *zeros)
    it = iter(outs)
    d_hidden = next(it)[:n, :d].astype(problem.dtype) if want[0] else None
    d_weight = next(it)[:v, :d] if want[1] else None
    d_bias = next(it)[:v] if want[2] else None
    return losses, d_hidden, d_weight, d_bias


def _prepare(problem: Linear, factor: Any) -> dict[str, jax.Array]:
    """What the rows' targets and factors give, as ``picks_of_indices`` has it (in float32):
    the target's class (-1 where none counts), whether it is kept, its weight (0 where ignored),
    whether it is bad (kept but no class: NaN), and the gradient's factor."""
    t = problem.target
    n, v = problem.num_positions, problem.num_classes
    kept = t != problem.ignore_index
    in_range = (t >= 0) & (t < v)
    safe = jnp.where(in_range, t, 0)
    if problem.class_weight is None:
        weight = kept.astype(_F32)
    else:
        weight = jnp.where(kept, jnp.take(problem.class_weight, safe).astype(_F32), 0.0)
    f = jnp.broadcast_to(jnp.asarray(1.0 if factor is None else factor, _F32), (n,))
    return {
        "index": jnp.where(kept & in_range, t, -1).astype(jnp.int32),
        "kept": kept,
        "weight": weight,
        "bad": kept & ~in_range,
        "factor": f,
    }


def _losses(
    problem: Linear, smoothing: float, parts: jax.Array, rows: dict[str, jax.Array], grad: bool
) -> tuple[jax.Array, jax.Array | None]:
    """The runs' partial results joined, each row's loss as the generic ``IndexTerms.loss``
    makes it from ``(m, log d, x_y - m, sum w (x - m))``, and with ``grad`` the backward's
    per-row ``(m, A, S, T)`` (float32 ``(4, N)``)."""
    m_s, d_s, x_s = parts[0], parts[1], parts[2]
    inf = float("inf")
    top = jnp.max(m_s, axis=0)
    gap = m_s - top
    # a run whose maximum is -inf has d = 0 (and exp(-inf - -inf) is NaN); NaN's d stays NaN
    total = jnp.sum(d_s * jnp.where(m_s == -inf, 0.0, jnp.exp(gap)), axis=0)
    top = jnp.where(jnp.isnan(total), jnp.nan, top)
    shift = jnp.where(top == -inf, 0.0, top)  # stable_max
    log_norm = jnp.where(total == 0.0, -inf, jnp.log(jnp.where(total == 0.0, 1.0, total)))
    weight, kept, bad = rows["weight"], rows["kept"], rows["bad"]
    classes = problem.num_classes
    loss = weight * (log_norm - (jnp.sum(x_s, axis=0) - shift))
    if problem.class_weight is None:
        weight_sum: Any = float(classes)
    else:
        weight_sum = jnp.sum(problem.class_weight.astype(_F32))
    if smoothing != 0.0:
        shifted_s, seen_s = parts[3], parts[4]
        moved = jnp.where((seen_s == 0.0) | (gap == 0.0), 0.0, seen_s * gap)
        shifted_sum = jnp.sum(shifted_s + moved, axis=0)
        smooth = weight_sum * log_norm - shifted_sum
        loss = (1.0 - smoothing) * loss + (smoothing / classes) * smooth
    lse = shift + log_norm
    if problem.z_loss > 0.0:
        loss = loss + problem.z_loss * weight * (lse * lse)
    loss = jnp.where(bad, jnp.nan, jnp.where(kept, loss, 0.0))
    if not grad:
        return loss, None
    kept_f = kept.astype(_F32)
    coefficient = (1.0 - smoothing) * weight
    if smoothing != 0.0:
        coefficient = coefficient + (smoothing / classes) * weight_sum * kept_f
    if problem.z_loss > 0.0:
        coefficient = coefficient + jnp.where(kept, (2.0 * problem.z_loss) * weight * lse, 0.0)
    f = rows["factor"]
    a = jnp.where(bad, jnp.nan, coefficient / total * f)
    s = (smoothing / classes) * kept_f * f
    t = (1.0 - smoothing) * weight * f
    return loss, jnp.stack([shift, a, s, t])


def linear_pass(
    problem: Linear,
    smoothing: float,
    wanted: tuple[bool, bool, bool],
    factor: Any,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None, jax.Array | None]:
    """``_jax._linear_scan``'s contract: the float32 losses of the ``(N,)`` positions (0 where
    ignored, NaN at an index that is no class), and where ``wanted`` asks for them the
    gradients of ``sum(factor * losses)`` in ``hidden`` (its dtype), ``weight`` and ``bias``
    (float32); None for the others. ``factor``: per row ``(N,)``, 0-d, a float, or None for 1.
    The kernel of the platform the arrays lie on (eager) or the computation is lowered for
    (traced): Triton's on a GPU, the interpreter's on a CPU."""
    n, d = problem.hidden.shape
    v = problem.num_classes
    compute = problem.compute_dtype
    if n == 0:
        d_hidden = jnp.zeros((0, d), problem.dtype) if wanted[0] else None
        d_weight = jnp.zeros((v, d), compute) if wanted[1] else None
        d_bias = jnp.zeros((v,), compute) if wanted[2] and problem.bias is not None else None
        return jnp.zeros((0,), compute), d_hidden, d_weight, d_bias
    rows = _prepare(problem, factor)
    arrays = (problem.hidden, problem.weight, problem.bias, rows, problem.class_weight)

    if not isinstance(problem.hidden, jax.core.Tracer):  # eager: where the arrays lie
        return _run(problem, smoothing, wanted, "cpu" in _platforms(problem.hidden), *arrays)

    def on(interpret: bool) -> Any:
        return lambda *a: _run(problem, smoothing, wanted, interpret, *a)

    out: Any = jax.lax.platform_dependent(*arrays, cpu=on(True), cuda=on(False), rocm=on(False))
    return tuple(out)
