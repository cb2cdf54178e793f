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

from .._generic import _binary, _categorical, _divergence
from .._generic._problems import Classes, Pointwise, Problem
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
}
