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
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from .._generic import _binary, _categorical, _divergence, _linear
from .._generic._linear import Linear
from .._generic._problems import Classes, Pass, Pointwise, Problem
from .._typing import Array

__all__ = ["KERNELS"]

#: The floating arrays of each kind of problem that autodiff may reach, besides predictions.
_OTHERS = {Classes: ("target", "weight"), Pointwise: ("target", "weight", "pos_weight")}


def _predictions(p: Problem) -> Array:
    """The predictions in the caller's layout (Classes keeps its class axis last)."""
    if isinstance(p, Classes):
        return jnp.moveaxis(p.predictions, -1, p.axis)
    assert isinstance(p, Pointwise)
    return p.pred


def _rebuild(p: Problem, x: Array, others: dict[str, Array], **changes: Any) -> Problem:
    if isinstance(p, Classes):
        return dataclasses.replace(p, predictions=jnp.moveaxis(x, p.axis, -1), **others, **changes)
    assert isinstance(p, Pointwise)
    return dataclasses.replace(p, pred=x, **others, **changes)


def _contract(p: Problem, gradient: Array, tangent: Array) -> Array:
    """The loss's tangent from the gradient of the (summed) loss and the predictions' tangent:
    per position for ``"none"``, a scalar otherwise."""
    product = gradient * tangent
    if p.reduction != "none":
        return jnp.sum(product)
    if isinstance(p, Classes):
        return jnp.sum(product, axis=p.axis)
    return product


def _analytic(
    loss: Callable[..., Array], value_and_grad: Callable[..., tuple[Array, Array]]
) -> Callable[..., Array]:
    """The JAX kernel of the generic ``loss``, differentiated with ``value_and_grad``."""

    def kernel(p: Problem, *options: Any) -> Array:
        names = [n for n in _OTHERS[type(p)] if _differentiable(getattr(p, n))]

        @jax.custom_jvp
        def compute(x: Array, others: dict[str, Array]) -> Array:
            return loss(_rebuild(p, x, others), *options)

        def rule(primals: Any, tangents: Any) -> tuple[Array, Array]:
            x, others = primals
            dx, d_others = tangents
            # in the compute dtype (float32 for half precision), rounded once at the end
            exact = _rebuild(p, x, others, dtype=p.compute_dtype)
            value, gradient = value_and_grad(exact, *options)
            out = jnp.zeros(value.shape, value.dtype)
            if not isinstance(dx, SymbolicZero):
                out = out + _contract(p, gradient, dx.astype(gradient.dtype))
            moved = {n: t for n, t in d_others.items() if not isinstance(t, SymbolicZero)}
            if moved:  # the generic loss's own derivative in them
                fixed = {n: others[n] for n in names if n not in moved}

                def in_others(chosen: dict[str, Array]) -> Array:
                    return loss(_rebuild(exact, x, {**fixed, **chosen}), *options)

                chosen = {n: others[n] for n in moved}
                out = out + jax.jvp(in_others, (chosen,), (moved,))[1]
            return value.astype(p.dtype), out.astype(p.dtype)

        compute.defjvp(rule, symbolic_zeros=True)
        result: Array = compute(_predictions(p), {n: getattr(p, n) for n in names})
        return result

    kernel.__name__ = kernel.__qualname__ = loss.__name__
    kernel.__signature__ = inspect.signature(loss)  # type: ignore[attr-defined]
    return kernel


def _differentiable(x: Array | None) -> bool:
    return x is not None and jnp.issubdtype(x.dtype, jnp.floating)


# --- linear_cross_entropy ---------------------------------------------------------------------


def _linear_scan(
    p: Linear,
    smoothing: float,
    wanted: tuple[bool, bool, bool],
    factor: Array | float | None,
) -> tuple[Array, Array | None, Array | None, Array | None]:
    """Every chunk of positions, in a ``lax.scan``: the losses, and with ``wanted`` the
    gradients (hidden's rows as the scan's output, weight's and bias's summed in its carry).

    The chunks have one size, so that one loop and its buffers serve them all: where the
    positions do not fill the last one, it starts earlier, and the rows it shares with the
    chunk before count there only (their gradient factor is 0 here, their losses dropped).
    Nothing is padded: a padded copy of ``hidden`` or of a target of class probabilities
    would be as large as they are."""
    n, d = p.hidden.shape
    v = p.num_classes
    compute = p.compute_dtype
    gradient = any(wanted)
    sum_weight = gradient and wanted[1]
    sum_bias = gradient and wanted[2] and p.bias is not None
    carry = (
        jnp.zeros((v, d), compute) if sum_weight else None,
        jnp.zeros((v,), compute) if sum_bias else None,
    )
    if n == 0:
        empty = jnp.zeros((0, d), p.dtype) if gradient and wanted[0] else None
        return jnp.zeros((0,), compute), empty, carry[0], carry[1]
    count = -(-n // p.chunk_size)
    size = -(-n // count)
    per_row = factor is not None and not isinstance(factor, float) and factor.ndim == 1

    def step(carry: Any, i: Array) -> tuple[Any, Any]:
        d_weight, d_bias = carry
        start = jnp.minimum(i * size, n - size)
        hidden = jax.lax.dynamic_slice_in_dim(p.hidden, start, size)
        target = jax.lax.dynamic_slice_in_dim(p.target, start, size)
        rows = None
        if gradient:
            fresh = start + jnp.arange(size) >= i * size  # not in the chunk before
            shared = 1.0 if factor is None else factor
            if per_row:
                shared = jax.lax.dynamic_slice_in_dim(factor, start, size)
            rows = jnp.where(fresh, shared, 0.0).astype(compute)
        loss, g = _linear.chunk_pass(p, smoothing, hidden, target, rows, gradient=gradient)
        if g is None:
            return carry, (loss, None)
        dh, _, db = _linear.chunk_gradients(p, g, hidden, (wanted[0], False, sum_bias))
        if sum_weight:
            d_weight = _add_weight_gradient(d_weight, g, hidden.astype(compute))
        if db is not None:
            d_bias = d_bias + db
        return (d_weight, d_bias), (loss, dh)

    carry, (loss, dh) = jax.lax.scan(step, carry, jnp.arange(count))
    overlap = count * size - n  # rows of the last chunk that the one before had

    def rows_once(x: Array) -> Array:
        return jnp.concatenate([x[:-1].reshape(-1, *x.shape[2:]), x[-1, overlap:]])

    return rows_once(loss), None if dh is None else rows_once(dh), carry[0], carry[1]


def _add_weight_gradient(d_weight: Array, g: Array, hidden: Array) -> Array:
    """``d_weight + g.T @ hidden``, a slice of classes at a time (each a quarter of the chunk's
    size): XLA updates the sum in place, where the whole product would be a temporary of the
    weight's size, the largest of the step."""
    v, d = d_weight.shape
    size = max(1, min(v, g.size // 4 // max(d, 1)))
    whole = v // size * size

    def add(start: Any, total: Array, width: int) -> Array:
        part = jax.lax.dynamic_slice_in_dim(g, start, width, axis=1)
        current = jax.lax.dynamic_slice_in_dim(total, start, width, axis=0)
        return jax.lax.dynamic_update_slice_in_dim(total, current + part.T @ hidden, start, 0)

    d_weight = jax.lax.fori_loop(0, v // size, lambda i, t: add(i * size, t, size), d_weight)
    if whole < v:
        d_weight = add(whole, d_weight, v - whole)
    return d_weight


def _linear_problem(p: Linear, arrays: tuple[Any, ...]) -> Linear:
    hidden, weight, bias, target, class_weight = arrays
    return dataclasses.replace(
        p, hidden=hidden, weight=weight, bias=bias, target=target, class_weight=class_weight
    )


def linear_cross_entropy(p: Linear, smoothing: float) -> Array:
    """The scan of chunks in a ``jax.custom_vjp``: with a scalar reduction the forward pass of
    ``jax.grad`` computes the gradients from the logits it makes anyway, and the backward pass
    scales them; with ``reduction="none"`` the backward pass makes each chunk's logits again,
    times its positions' upstream gradients. Only the arguments that ``jax.grad`` asks for
    get a gradient computed (``symbolic_zeros``)."""

    def value(q: Linear) -> Array:
        return q.reduce(
            Pass(_linear_scan(q, smoothing, _linear.NO_GRADIENTS, None)[0], q.denominator())
        )

    @jax.custom_vjp
    def compute(*arrays: Any) -> Array:
        return value(_linear_problem(p, arrays))

    def forward(*primals: Any) -> tuple[Array, Any]:
        arrays = tuple(None if x is None else x.value for x in primals)
        moved = tuple(x is not None and x.perturbed for x in primals)
        if moved[3] or moved[4]:
            raise TypeError(
                "linear_cross_entropy is differentiated in hidden, weight and bias only, not "
                "in its target or class_weight; wrap those in jax.lax.stop_gradient"
            )
        q = _linear_problem(p, arrays)
        wanted = (moved[0], moved[1], moved[2])
        # float16: the backward pass makes the gradient, with the upstream one (a loss scale)
        # in it before it is rounded, as the dense computation rounds it
        half = q.compute_dtype != q.dtype
        if q.reduction == "none" or not any(wanted) or half:
            return value(q), (arrays, wanted, None)
        losses, *gradients = _linear_scan(q, smoothing, wanted, _linear.gradient_factor(q))
        return q.reduce(Pass(losses, q.denominator())), (arrays, wanted, gradients)

    def backward(residuals: Any, upstream: Array) -> tuple[Any, ...]:
        arrays, wanted, gradients = residuals
        if isinstance(upstream, SymbolicZero):
            return (None,) * 5
        q = _linear_problem(p, arrays)
        if gradients is None:
            factor = _linear.upstream_factor(q, upstream)
            _, *gradients = _linear_scan(q, smoothing, wanted, factor)
        else:
            scale = upstream.astype(q.compute_dtype)
            gradients = [None if g is None else g * scale for g in gradients]
        d_hidden, d_weight, d_bias = _linear.finish_gradients(q, wanted, *gradients)
        if d_hidden is not None:  # the flattened positions this function was given
            d_hidden = d_hidden.reshape(q.hidden.shape)
        return d_hidden, d_weight, d_bias, None, None

    compute.defvjp(forward, backward, symbolic_zeros=True)
    out: Array = compute(p.hidden, p.weight, p.bias, p.target, p.class_weight)
    return out


def linear_cross_entropy_value_and_grad(
    p: Linear, smoothing: float, wanted: tuple[bool, bool, bool]
) -> tuple[Array, tuple[Array | None, ...]]:
    losses, *gradients = _linear_scan(p, smoothing, wanted, _linear.gradient_factor(p))
    value = p.reduce(Pass(losses, p.denominator()))
    return value, _linear.finish_gradients(p, wanted, *gradients)


KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    _categorical.cross_entropy: _analytic(
        _categorical.cross_entropy, _categorical.cross_entropy_value_and_grad
    ),
    _categorical.nll_loss: _analytic(_categorical.nll_loss, _categorical.nll_loss_value_and_grad),
    _categorical.cross_entropy_from_probs: _analytic(
        _categorical.cross_entropy_from_probs,
        _categorical.cross_entropy_from_probs_value_and_grad,
    ),
    _binary.binary_cross_entropy: _analytic(
        _binary.binary_cross_entropy, _binary.binary_cross_entropy_value_and_grad
    ),
    _binary.binary_cross_entropy_with_logits: _analytic(
        _binary.binary_cross_entropy_with_logits,
        _binary.binary_cross_entropy_with_logits_value_and_grad,
    ),
    _divergence.kl_div: _analytic(_divergence.kl_div, _divergence.kl_div_value_and_grad),
    _linear.linear_cross_entropy: linear_cross_entropy,
    _linear.linear_cross_entropy_value_and_grad: linear_cross_entropy_value_and_grad,
}
