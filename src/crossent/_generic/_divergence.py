"""The generic Kullback-Leibler divergence, with its gradient from the same pass, on a prepared
:class:`~._problems.Pointwise`."""

from __future__ import annotations

from .._typing import Array
from ._problems import Pass, Pointwise
from ._stable import mark_bad

__all__ = ["kl_div", "kl_div_pass", "kl_div_value_and_grad"]


def kl_div_pass(p: Pointwise, log_target: bool, *, gradient: bool) -> Pass:
    """The elementwise divergence, and with ``gradient`` its derivative with respect to
    ``log_probs``: minus the target probability."""
    xp = p.xp
    x, t = p.pred, p.target
    # A zero target contributes exactly 0. The values under the mask are replaced too, so that
    # no 0 * inf is ever formed: not in the result, not in a gradient, not in a warning.
    absent = (t == -xp.inf) if log_target else (t == 0)
    safe_x = xp.where(absent, 0.0, x)
    if log_target:
        safe_t = xp.where(absent, 0.0, t)
        terms = xp.exp(safe_t) * (safe_t - safe_x)
    else:
        safe_t = xp.where(absent, 1.0, t)
        terms = safe_t * (xp.log(safe_t) - safe_x)
    # ... but a NaN prediction stays NaN there, as torch's 0 * NaN does
    loss = mark_bad(xp, xp.where(absent, 0.0, terms), absent & xp.isnan(x))
    if not gradient:
        return Pass(loss)
    probability = xp.exp(safe_t) if log_target else safe_t
    return Pass(loss, None, xp.where(absent, 0.0, -probability))


def kl_div(p: Pointwise, log_target: bool) -> Array:
    return p.reduce(kl_div_pass(p, log_target, gradient=False))


def kl_div_value_and_grad(p: Pointwise, log_target: bool) -> tuple[Array, Array]:
    return p.value_and_grad(kl_div_pass(p, log_target, gradient=True))
