"""Kernels for JAX arrays.

Under ``jax.jit`` XLA fuses the generic, standard-only path into the same few kernels as a
hand-written one, so JAX needs a kernel of its own only where autodiff of the generic code would
differ from torch's gradient: ``binary_cross_entropy`` at probabilities of exactly 0 and 1 (and
below ``exp(-100)``), where torch's backward divides by ``max(p (1 - p), 1e-12)`` instead of
differentiating its clamp. A ``custom_jvp`` gives JAX that derivative, in forward and reverse
mode alike; the rest of the loss is the generic pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._generic import _binary
from .._generic._problems import Pointwise
from .._typing import Array, Namespace

__all__ = ["KERNELS"]


@jax.custom_jvp
def _terms_with_torch_slope(probs: Array, target: Array) -> Array:
    return _binary.binary_cross_entropy_terms(jnp, probs, target)


@_terms_with_torch_slope.defjvp
def _terms_with_torch_slope_jvp(
    primals: tuple[Array, Array], tangents: tuple[Array, Array]
) -> tuple[Array, Array]:
    probs, target = primals
    d_probs, d_target = tangents
    log_p, log_not_p = _binary.floored_logs(jnp, probs)
    loss = _binary.loss_of_logs(target, log_p, log_not_p)
    slope = _binary.binary_cross_entropy_slope(jnp, probs, target)
    return loss, slope * d_probs + (log_not_p - log_p) * d_target


def _terms(xp: Namespace, probs: Array, target: Array) -> Array:
    return _terms_with_torch_slope(probs, target)


def binary_cross_entropy(p: Pointwise, eps: float | None) -> Array:
    return p.reduce(_binary.binary_cross_entropy_pass(p, eps, gradient=False, terms=_terms))


KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    _binary.binary_cross_entropy: binary_cross_entropy,
}
