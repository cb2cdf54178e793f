"""JAX's autodiff through crossent's analytic derivative (``crossent._backends._jax``):
``jax.grad`` in every argument, ``jax.jvp``, ``jax.hessian`` and ``vmap`` give what autodiff of
the generic path gives, which ``generic_only`` runs."""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import is_jax_namespace
from cases import all_cases
from conftest import XP

import crossent
from crossent._dispatch import generic_only

if not is_jax_namespace(XP):
    pytest.skip("JAX's transformations", allow_module_level=True)

import jax
import jax.numpy as jnp

ALL = all_cases()
CASES = ALL[::7]  # 7: prime to the grid's period, so that every loss and option comes


def _floating(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)


def _split(case, to_xp):
    """The case as ``(loss of the differentiable arrays, those arrays)``."""
    (pred, target), options = case.crossent_args(to_xp)
    arrays = {"pred": pred}
    if _floating(target):
        arrays["target"] = target
    for name in ("weight", "pos_weight"):
        if name in options:
            arrays[name] = options.pop(name)
    func = getattr(crossent, case.name)

    def loss(arrays):
        rest = {k: v for k, v in arrays.items() if k not in ("pred", "target")}
        return func(arrays["pred"], arrays.get("target", target), **options, **rest)

    return loss, arrays


def _summed(loss):
    return lambda arrays: jnp.sum(loss(arrays))


def _close(actual, expected, rtol=1e-10):
    for key in expected:
        a, e = np.asarray(actual[key]), np.asarray(expected[key])
        atol = 1e-10 * float(np.nanmax(np.abs(e), initial=0.0)) + 1e-300
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True, err_msg=key)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_grad_in_every_argument_equals_generic_autodiff(case, to_xp):
    loss, arrays = _split(case, to_xp)
    fast = jax.jit(jax.grad(_summed(loss)))(arrays)
    with generic_only():
        generic = jax.jit(jax.grad(_summed(loss)))(arrays)
    _close(fast, generic)


@pytest.mark.parametrize("case", CASES[::3], ids=lambda c: c.id)
def test_jvp_equals_generic_autodiff(case, to_xp):
    loss, arrays = _split(case, to_xp)
    rng = np.random.default_rng(0)
    tangents = {k: to_xp(rng.standard_normal(v.shape)) for k, v in arrays.items()}
    fast = jax.jvp(loss, (arrays,), (tangents,))
    with generic_only():
        generic = jax.jvp(loss, (arrays,), (tangents,))
    _close({"value": fast[0], "tangent": fast[1]}, {"value": generic[0], "tangent": generic[1]})


@pytest.mark.parametrize(
    "name", ["cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "nll_loss"]
)
def test_hessian_equals_generic_autodiff(name, to_xp):
    case = next(c for c in ALL if c.name == name)
    loss, arrays = _split(case, to_xp)

    def of_pred(pred):
        return jnp.sum(loss({**arrays, "pred": pred}))

    fast = jax.hessian(of_pred)(arrays["pred"])
    with generic_only():
        generic = jax.hessian(of_pred)(arrays["pred"])
    _close({"hessian": fast}, {"hessian": generic})


def test_vmap_of_grad(to_xp):
    rng = np.random.default_rng(1)
    logits = to_xp(rng.standard_normal((3, 5, 4)))
    target = to_xp(rng.integers(0, 4, (3, 5)))
    grads = jax.vmap(jax.grad(crossent.cross_entropy))(logits, target)
    for i in range(3):
        one = jax.grad(crossent.cross_entropy)(logits[i], target[i])
        np.testing.assert_allclose(np.asarray(grads[i]), np.asarray(one), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_gradient_is_the_float32_one_rounded_once(dtype, to_xp):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 5)) * 3
    target = to_xp(rng.integers(0, 5, 6))
    half = jax.grad(crossent.cross_entropy)(to_xp(logits, dtype), target)
    single = jax.grad(crossent.cross_entropy)(to_xp(logits, dtype).astype(jnp.float32), target)
    assert half.dtype == to_xp(logits, dtype).dtype
    np.testing.assert_array_equal(np.asarray(half), np.asarray(single.astype(half.dtype)))
