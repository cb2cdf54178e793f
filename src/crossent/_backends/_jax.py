"""Kernels for JAX arrays: the generic losses, with crossent's analytic derivative.

Under ``jax.jit`` XLA fuses the generic, standard-only path into the same few kernels as a
hand-written one; what it cannot do is find the short form of the derivative. Autodiff of the
generic cross-entropy differentiates the maximum, the log-sum-exp and the gather one by one,
and holds their intermediates for the backward pass; the analytic gradient is
``softmax - onehot``, from the exponentials the loss has already made. Each kernel here is the
generic loss wrapped in a ``jax.custom_jvp`` whose rule computes the loss and that gradient in
one pass (the ``*_value_and_grad`` functions of ``crossent._generic``) and returns their product
with the tangent. Being linear in the tangent, the rule serves reverse mode too (JAX transposes
it), so ``jax.grad``, ``jax.value_and_grad``, ``jax.jvp``, ``jax.hessian`` and ``vmap`` all see
it; the gradients are torch's, edges included (``binary_cross_entropy`` at probabilities of
exactly 0 and 1 divides by ``max(p (1 - p), 1e-12)``, as torch's backward does).

The other floating arguments (class-probability targets, weights) are differentiated by
autodiff of the generic loss, and only where a tangent reaches them (``symbolic_zeros``): a
``jax.grad`` with respect to the logits alone pays nothing for them.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from .._generic import _linear
from .._generic._linear import Linear
from .._generic._problems import Problem
from .._typing import Array

try:
    from . import _pallas
except ImportError:  # a jax without Pallas: the scan serves
    _pallas = None  # type: ignore[assignment]

__all__ = ["KERNELS", "kernels"]


def _analytic(
    loss: Callable[..., Array], value_and_grad: Callable[..., tuple[Array, Array]]
) -> Callable[..., Array]:
    """The JAX kernel of the generic ``loss``, differentiated with ``value_and_grad``."""

    def kernel(problem: Problem, *options: Any) -> Array:
        names = [n for n in problem.others if _differentiable(getattr(problem, n))]

        @jax.custom_jvp
        def compute(x: Array, others: dict[str, Array]) -> Array:
            return loss(problem.with_predictions(x, **others), *options)

        def rule(primals: Any, tangents: Any) -> tuple[Array, Array]:
            x, others = primals
            dx, d_others = tangents
            # in the compute dtype (float32 for half precision), rounded once at the end
            exact = problem.with_predictions(x, **others, dtype=problem.compute_dtype)
            value, gradient = value_and_grad(exact, *options)
            out = jnp.zeros(value.shape, value.dtype)
            if not isinstance(dx, SymbolicZero):
                out = out + problem.contract(gradient, dx.astype(gradient.dtype))
            moved = {n: t for n, t in d_others.items() if not isinstance(t, SymbolicZero)}
            if moved:  # the generic loss's own derivative in them
                fixed = {n: others[n] for n in names if n not in moved}

                def in_others(chosen: dict[str, Array]) -> Array:
                    return loss(exact.with_predictions(x, **fixed, **chosen), *options)

                chosen = {n: others[n] for n in moved}
                out = out + jax.jvp(in_others, (chosen,), (moved,))[1]
            return value.astype(problem.dtype), out.astype(problem.dtype)

        compute.defjvp(rule, symbolic_zeros=True)
        result: Array = compute(
            problem.caller_predictions(), {n: getattr(problem, n) for n in names}
        )
        return result

    kernel.__name__ = kernel.__qualname__ = loss.__name__
    kernel.__signature__ = inspect.signature(loss)  # type: ignore[attr-defined]
    return kernel


def _differentiable(x: Array | None) -> bool:
    return x is not None and jnp.issubdtype(x.dtype, jnp.floating)


# --- linear_cross_entropy ---------------------------------------------------------------------


def _linear_scan(
    problem: Linear,
    smoothing: float,
    wanted: tuple[bool, bool, bool],
    factor: Array | float | None,
) -> tuple[Array, Array | None, Array | None, Array | None]:
    """Every chunk of positions, in a ``lax.scan``: the losses, and with ``wanted`` the
    gradients (hidden's rows as the scan's output, weight's and bias's summed in its carry).

    The positions are cut into ``parts`` equal parts (a power of two up to 64 that divides
    their number and the chunk size), and a chunk takes the same number of rows from each:
    with ``hidden`` sharded along its positions over devices (data parallelism), the scan's
    dynamic slices then stay within each device's rows, where a chunk of contiguous rows
    would make XLA gather ``hidden`` and the target onto every device, and every device
    compute every position.

    The chunks have one size, so that one loop and its buffers serve them all: where a
    part's rows do not fill its last one, it starts earlier, and the rows it shares with the
    chunk before count there only (their gradient factor is 0 here, their losses dropped).
    Nothing is padded: a padded copy of ``hidden`` or of a target of class probabilities
    would be as large as they are."""
    n, d = problem.hidden.shape
    v = problem.num_classes
    compute = problem.compute_dtype
    gradient = any(wanted)
    sum_weight = gradient and wanted[1]
    sum_bias = gradient and wanted[2] and problem.bias is not None
    carry = (
        jnp.zeros((v, d), compute) if sum_weight else None,
        jnp.zeros((v,), compute) if sum_bias else None,
    )
    if n == 0:
        empty = jnp.zeros((0, d), problem.dtype) if gradient and wanted[0] else None
        return jnp.zeros((0,), compute), empty, carry[0], carry[1]
    parts = math.gcd(n, problem.chunk_size, _parts(_POSITION_PARTS))
    rows = n // parts  # of each part
    count = -(-n // problem.chunk_size)
    size = -(-rows // count)  # of each part, in one chunk: parts * size <= chunk_size rows
    per_row = factor is not None and not isinstance(factor, float) and factor.ndim == 1

    def by_part(x: Array) -> Array:
        return x.reshape(parts, rows, *x.shape[1:])

    def take(x: Array, start: Any) -> Array:
        """The chunk's rows of ``x`` (positions first): ``size`` of each part."""
        part = jax.lax.dynamic_slice_in_dim(by_part(x), start, size, axis=1)
        return part.reshape(parts * size, *x.shape[1:])

    def step(carry: Any, i: Array) -> tuple[Any, Any]:
        d_weight, d_bias = carry
        start = jnp.minimum(i * size, rows - size)
        hidden, target = take(problem.hidden, start), take(problem.target, start)
        factors = None
        if gradient:
            fresh = start + jnp.arange(size) >= i * size  # not in the chunk before
            fresh = jnp.broadcast_to(fresh, (parts, size)).reshape(-1)
            shared = 1.0 if factor is None else factor
            if per_row:
                shared = take(factor, start)
            factors = jnp.where(fresh, shared, 0.0).astype(compute)
        loss, g = _linear.chunk_pass(
            problem,
            smoothing,
            hidden,
            target,
            factors,
            gradient=gradient,
            logits=_logits(problem, hidden),
        )
        if g is None:
            return carry, (loss, None)
        dh, _, db = _linear.chunk_gradients(problem, g, hidden, (wanted[0], False, sum_bias))
        if sum_weight:
            # on a GPU, products of half-precision operands summed in float32; a CPU's are
            # fastest in float32
            low = on_accelerator()
            d_weight = _add_weight_gradient(d_weight, g, hidden if low else hidden.astype(compute))
        if db is not None:
            d_bias = d_bias + db
        return (d_weight, d_bias), (loss, dh)

    carry, (loss, dh) = jax.lax.scan(step, carry, jnp.arange(count))
    overlap = count * size - rows  # rows of each part's last chunk that the one before had

    def rows_once(x: Array) -> Array:
        """The scan's ``(count, parts * size, ...)`` rows in the positions' order, once."""
        x = jnp.moveaxis(x.reshape(count, parts, size, *x.shape[2:]), 1, 0)
        body = x[:, :-1].reshape(parts, (count - 1) * size, *x.shape[3:])
        return jnp.concatenate([body, x[:, -1, overlap:]], axis=1).reshape(n, *x.shape[3:])

    return rows_once(loss), None if dh is None else rows_once(dh), carry[0], carry[1]


def _logits(problem: Linear, hidden: Array) -> Array:
    """A chunk's logits as :meth:`Linear.logits` makes them, with half-precision operands
    multiplied into float32 by XLA itself (the tensor cores of a GPU), not converted first."""
    compute = problem.compute_dtype
    out = jnp.matmul(hidden, problem.weight.T, preferred_element_type=compute)
    if problem.bias is not None:
        out = out + problem.bias.astype(compute)
    return out if compute == problem.dtype else out.astype(problem.dtype).astype(compute)


def _add_weight_gradient(d_weight: Array, g: Array, hidden: Array) -> Array:
    """``d_weight + g.T @ hidden``, a slice of classes at a time (each about a quarter of the
    chunk's size): XLA updates the sum in place, where the whole product would be a temporary
    of the weight's size, the largest of the step.

    A slice is not a contiguous range of classes but one run of each of ``parts`` equal parts
    of them (:func:`_class_slices`), so that the loop's dynamic slices never cut across a
    split of the classes: with ``weight`` sharded along its classes over devices (a vocabulary
    split as Megatron-LM splits it), XLA's partitioner gives each device the runs of its own
    classes. A slice of contiguous classes, wherever it starts, it cannot place on one device:
    it gathers the chunk's whole gradient onto every device (a chunk of the logits, ``N x V``
    where one chunk holds every position) and makes the whole weight's gradient on each."""
    v, d = d_weight.shape
    if v == 0:
        return d_weight
    n = g.shape[0]
    parts, count, run = _class_slices(v, max(1, min(v, g.size // 4 // max(d, 1))))

    def add(j: Any, total: Array) -> Array:
        if parts == 1:  # contiguous slices: the fastest where nothing is split
            part = jax.lax.dynamic_slice_in_dim(g, j * run, run, axis=1)
            current = jax.lax.dynamic_slice_in_dim(total, j * run, run, axis=0)
            return jax.lax.dynamic_update_slice_in_dim(
                total, current + _product(part.T, hidden, total.dtype), j * run, 0
            )
        # reshaped in the loop, not before it: XLA then reads the slice from the chunk's
        # gradient where it lies, where a reshaped copy would be one more chunk in memory
        part = jax.lax.dynamic_slice_in_dim(g.reshape(n, parts, count, run), j, 1, axis=2)
        runs = total.reshape(parts, count, run, d)
        current = jax.lax.dynamic_slice_in_dim(runs, j, 1, axis=1)
        product = _product(part.reshape(n, parts * run).T, hidden, total.dtype)
        product = product.reshape(current.shape)
        return jax.lax.dynamic_update_slice_in_dim(runs, current + product, j, 1).reshape(v, d)

    result: Array = jax.lax.fori_loop(0, count, add, d_weight)
    return result


def on_accelerator() -> bool:
    """Whether JAX's default backend is a GPU or another accelerator (arrays under ``jit``
    cannot say where they are)."""
    return bool(jax.default_backend() != "cpu")


def _product(a: Array, b: Array, dtype: Any) -> Array:
    """``a @ b`` in ``dtype``; with ``b`` in half precision, ``a`` is rounded to it and the
    product is summed in ``dtype`` (the GPU's tensor cores do so)."""
    if b.dtype == dtype:
        return a @ b
    return jnp.matmul(a.astype(b.dtype), b, preferred_element_type=dtype)


def _parts(most: int) -> int:
    """``most``, where JAX has several devices, so that arrays may be split among them; else 1,
    the contiguous layout, which is the fastest on one device."""
    return most if jax.device_count() > 1 else 1


#: The most equal parts, a power of two, in which a split of the positions leaves every chunk
#: of :func:`_linear_scan` on the devices of its own positions (data parallelism).
_POSITION_PARTS = 64
#: The same for a split of the classes and the slices of :func:`_add_weight_gradient`
#: (vocabulary parallelism, most often 8 ways or fewer). A slice of ``parts`` runs is slower
#: to read than a contiguous one: with 64 parts a step took 12 % longer on a CPU at
#: V = 128000, with 8 parts (and the positions in 64) 9 %; with one device (:func:`_parts`)
#: the slices are contiguous. A split into more parts gets the right numbers, and XLA gathers
#: a chunk's gradient of the logits.
_CLASS_PARTS = 8


def _class_slices(v: int, rows: int) -> tuple[int, int, int]:
    """How :func:`_add_weight_gradient` cuts ``v`` classes into slices of about ``rows``:
    ``(parts, count, run)``, ``v == parts * count * run``; slice ``j`` is the ``j``-th run of
    ``run`` classes in each of the ``parts`` equal parts of the classes.

    ``parts`` is the largest power of two up to 8 that divides ``v``, so that a split of the
    classes in 2, 4, ... of them splits every slice the same way; ``count`` is the divisor of
    ``v / parts`` nearest ``v / rows`` (the larger one on a tie: the smaller slice). Where
    ``v / parts`` has few divisors (a prime), the slices are fewer and larger, or more and
    smaller, than asked."""
    parts = math.gcd(v, _parts(_CLASS_PARTS))
    rest = v // parts
    wanted = -(-v // rows)
    divisors = {x for i in range(1, math.isqrt(rest) + 1) if rest % i == 0 for x in (i, rest // i)}
    count = min(divisors, key=lambda x: (abs(math.log(x / wanted)), -x))
    return parts, count, rest // count


def _linear_problem(problem: Linear, arrays: tuple[Any, ...]) -> Linear:
    hidden, weight, bias, target, class_weight, sample_weight = arrays
    return dataclasses.replace(
        problem,
        hidden=hidden,
        weight=weight,
        bias=bias,
        target=target,
        class_weight=class_weight,
        sample_weight=sample_weight,
    )


#: The arrays of a Linear problem after hidden, weight and bias, which are not differentiated.
_NOT_DIFFERENTIATED = ("target", "class_weight", "sample_weight")


def _linear_pass(problem: Linear) -> Callable[..., Any]:
    """What computes the positions' losses and gradients: the Pallas kernels where they serve
    (a GPU, or the CPU under ``CROSSENT_PALLAS_INTERPRET=1``), else :func:`_linear_scan`."""
    if _pallas is not None and _pallas.serves(problem):
        return _pallas.linear_pass
    return _linear_scan


def linear_cross_entropy(problem: Linear, smoothing: float) -> Array:
    """The scan of chunks in a ``jax.custom_vjp``: with a scalar reduction the forward pass of
    ``jax.grad`` computes the gradients from the logits it makes anyway, and the backward pass
    scales them; with ``reduction="none"`` the backward pass makes each chunk's logits again,
    times its positions' upstream gradients. Only the arguments that ``jax.grad`` asks for
    get a gradient computed (``symbolic_zeros``)."""

    run = _linear_pass(problem)

    def value(q: Linear) -> Array:
        return q.reduce_losses(run(q, smoothing, _linear.NO_GRADIENTS, None)[0])

    @jax.custom_vjp
    def compute(*arrays: Any) -> Array:
        return value(_linear_problem(problem, arrays))

    def forward(*primals: Any) -> tuple[Array, Any]:
        arrays = tuple(None if x is None else x.value for x in primals)
        moved = tuple(x is not None and x.perturbed for x in primals)
        for name, perturbed in zip(_NOT_DIFFERENTIATED, moved[3:], strict=True):
            if perturbed:
                raise TypeError(
                    "linear_cross_entropy is differentiated in hidden, weight and bias only, "
                    f"not in its {name}; wrap it in jax.lax.stop_gradient"
                )
        q = _linear_problem(problem, arrays)
        wanted = (moved[0], moved[1], moved[2])
        # float16: the backward pass makes the gradient, with the upstream one (a loss scale)
        # in it before it is rounded, as the dense computation rounds it
        half = q.compute_dtype != q.dtype
        if q.reduction == "none" or not any(wanted) or half:
            return value(q), (arrays, wanted, None)
        losses, *gradients = run(q, smoothing, wanted, _linear.gradient_factor(q))
        return q.reduce_losses(losses), (arrays, wanted, gradients)

    def backward(residuals: Any, upstream: Array) -> tuple[Any, ...]:
        arrays, wanted, gradients = residuals
        if isinstance(upstream, SymbolicZero):
            return (None,) * 6
        q = _linear_problem(problem, arrays)
        if gradients is None:
            factor = _linear.upstream_factor(q, upstream)
            _, *gradients = run(q, smoothing, wanted, factor)
        else:
            scale = upstream.astype(q.compute_dtype)
            gradients = [None if g is None else g * scale for g in gradients]
        d_hidden, d_weight, d_bias = _linear.finish_gradients(q, wanted, *gradients)
        if d_hidden is not None:  # the flattened positions this function was given
            d_hidden = d_hidden.reshape(q.hidden.shape)
        return d_hidden, d_weight, d_bias, None, None, None

    compute.defvjp(forward, backward, symbolic_zeros=True)
    # every array a primal, also those never differentiated: one closed over would leak a
    # tracer of the transform around the call (jax.grad in sample_weight)
    out: Array = compute(
        problem.hidden,
        problem.weight,
        problem.bias,
        problem.target,
        problem.class_weight,
        problem.sample_weight,
    )
    return out


def linear_cross_entropy_value_and_grad(
    problem: Linear, smoothing: float, wanted: tuple[bool, bool, bool]
) -> tuple[Array, tuple[Array | None, ...]]:
    run = _linear_pass(problem)
    losses, *gradients = run(problem, smoothing, wanted, _linear.gradient_factor(problem))
    value = problem.reduce_losses(losses)
    return value, _linear.finish_gradients(problem, wanted, *gradients)


#: The kernels written here; :func:`kernels` adds the analytic derivative of every other loss.
KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    _linear.linear_cross_entropy: linear_cross_entropy,
    _linear.linear_cross_entropy_value_and_grad: linear_cross_entropy_value_and_grad,
}


def kernels(
    losses: Iterable[tuple[Callable[..., Array], Callable[..., tuple[Array, Any]]]],
) -> dict[Callable[..., Any], Callable[..., Any]]:
    """The kernel table of JAX arrays, for the ``(generic, value_and_grad)`` pair of every
    declared loss: each generic loss differentiated by its ``value_and_grad``
    (:func:`_analytic`), but where :data:`KERNELS` has a kernel of its own."""
    table = {generic: _analytic(generic, value_and_grad) for generic, value_and_grad in losses}
    return table | KERNELS
