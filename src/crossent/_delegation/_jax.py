"""Fast paths for JAX arrays.

Under ``jax.jit`` XLA fuses the generic, standard-only path into the same few kernels as a
hand-written one, so JAX needs a path of its own only where autodiff of the generic code would
differ from torch's gradient: ``binary_cross_entropy`` at probabilities of exactly 0 and 1 (and
below ``exp(-100)``), where torch's backward divides by ``max(p (1 - p), 1e-12)`` instead of
differentiating its clamp. A ``custom_jvp`` gives JAX that derivative, in forward and reverse
mode alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._binary import GRADIENT_FLOOR, floored_logs
from .._categorical import clip_probs, out_of_unit_interval
from .._classes import mark_bad
from .._pointwise import Pointwise
from .._typing import Array


@jax.custom_jvp
def _binary_cross_entropy_terms(probs: Array, target: Array) -> Array:
    log_p, log_not_p = floored_logs(jnp, probs)
    return 0.0 - target * log_p - (1.0 - target) * log_not_p


@_binary_cross_entropy_terms.defjvp
def _binary_cross_entropy_terms_jvp(
    primals: tuple[Array, Array], tangents: tuple[Array, Array]
) -> tuple[Array, Array]:
    probs, target = primals
    d_probs, d_target = tangents
    log_p, log_not_p = floored_logs(jnp, probs)
    loss = 0.0 - target * log_p - (1.0 - target) * log_not_p
    slope = (probs - target) / jnp.maximum(probs * (1.0 - probs), GRADIENT_FLOOR)
    return loss, slope * d_probs + (log_not_p - log_p) * d_target


def binary_cross_entropy(p: Pointwise, eps: float | None) -> Array:
    probs = p.pred if eps is None else clip_probs(jnp, p.pred, eps)[0]
    loss = _binary_cross_entropy_terms(probs, p.target)
    if p.weight is not None:
        loss = loss * p.weight
    if not p.eager:
        loss = mark_bad(jnp, loss, out_of_unit_interval(jnp, p.pred, None))
    return p.reduce(loss)
