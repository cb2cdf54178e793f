"""entropy: torch.distributions.Categorical's entropy of softmax(logits), its analytic gradient,
its edges, half precision, lazy arrays, JAX's transformations and torch.compile."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from array_api_compat import is_jax_namespace, is_torch_namespace
from conftest import to_numpy
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from oracle import T, entropy_torch

import crossent
from crossent._dispatch import generic_only

inf = np.inf
REDUCTIONS = ["mean", "sum", "none"]
#: shape, class axis
LAYOUTS = {"NC": ((6, 5), -1), "C": ((5,), -1), "NCd": ((3, 5, 4), 1), "empty": ((0, 5), -1)}


def _oracle(logits, **options):
    """The loss and its gradient by torch autograd, in float64."""
    leaf = T(logits).requires_grad_(True)
    options = {k: T(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    loss = entropy_torch(leaf, **options)
    (grad,) = torch.autograd.grad(loss.sum(), leaf)
    return loss.detach().numpy(), grad.numpy()


def test_the_oracle_is_torch_distributions_categorical():
    rng = np.random.default_rng(0)
    logits = np.concatenate([rng.standard_normal((4, 5)) * 3, [[-inf, 0.0, 1.0, -inf, 2.0]]])
    expected = torch.distributions.Categorical(logits=T(logits)).entropy()
    np.testing.assert_allclose(entropy_torch(T(logits), reduction="none"), expected, rtol=1e-14)


# Dask computes the empty mean's 0 / 0 = NaN (torch's) outside crossent's calls
@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "sample_weight"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_entropy_and_its_gradient_equal_torch(layout, reduction, weighted, to_xp, assert_close):
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(shape) * 3
    options = {"axis": axis, "reduction": reduction}
    if weighted:
        positions = np.moveaxis(logits, axis, -1).shape[:-1]
        options["sample_weight"] = rng.uniform(0.0, 2.0, positions)
    expected, expected_grad = _oracle(logits, **options)
    xp_options = {k: to_xp(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    assert_close(crossent.entropy(to_xp(logits), **xp_options), expected)
    loss, grad = crossent.value_and_grad(crossent.entropy)(to_xp(logits), **xp_options)
    assert_close(loss, expected)
    assert_close(grad, expected_grad, atol=1e-15)
    with generic_only():
        assert_close(crossent.entropy(to_xp(logits), **xp_options), expected)


def test_entropy_lies_between_0_and_log_c_and_masks_by_sample_weight(to_xp, assert_close):
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [1e4, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    out = to_numpy(crossent.entropy(to_xp(logits), reduction="none"))
    np.testing.assert_allclose(out[:2], [np.log(4.0), 0.0], rtol=1e-15)
    assert 0.0 < out[2] < np.log(4.0)
    mask = np.array([1.0, 0.0, 1.0])
    masked = crossent.entropy(to_xp(logits), sample_weight=to_xp(mask))
    assert_close(masked, (out[0] + out[2]) / 2)


# --- Edges -------------------------------------------------------------------------------------

EDGES = np.array(
    [
        [0.0, 0.0, 0.0],  # every class alike: log 3, a gradient of exactly 0
        [-inf, 1.0, 2.0],  # a masked class adds 0
        [-inf, -inf, 5.0],  # certain: 0
        [1e4, -1e4, 0.0],  # p = 1 and p = 0 to the last bit
        [-inf, -inf, -inf],  # no distribution: NaN
        [inf, 0.0, 0.0],  # NaN, as torch's
        [np.nan, 0.0, 1.0],  # NaN in, NaN out
    ]
)


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@pytest.mark.parametrize("route", ["value_and_grad", "autodiff", "generic autodiff"])
def test_edges_as_torch(route, xp, to_xp, assert_close, lazy):
    expected, expected_grad = _oracle(EDGES, reduction="none")
    assert_close(lazy(crossent.entropy)(to_xp(EDGES), reduction="none"), expected)
    if route == "value_and_grad":
        _, grad = lazy(crossent.value_and_grad(crossent.entropy))(to_xp(EDGES), reduction="sum")
    elif is_torch_namespace(xp):
        leaf = to_xp(EDGES).requires_grad_(True)
        if route == "generic autodiff":
            with generic_only():
                crossent.entropy(leaf, reduction="sum").backward()
        else:
            crossent.entropy(leaf, reduction="sum").backward()
        grad = leaf.grad
    elif is_jax_namespace(xp):
        import jax

        def summed(x):
            return crossent.entropy(x, reduction="sum")

        if route == "generic autodiff":
            with generic_only():
                grad = jax.grad(summed)(to_xp(EDGES))
        else:
            grad = jax.jit(jax.grad(summed))(to_xp(EDGES))
    else:
        pytest.skip("this backend has no autodiff")
    # torch's p (-log p - H) of the row of equal logits rounds to 1e-18 where crossent's is 0
    assert_close(grad, expected_grad, atol=1e-15 * np.nanmax(np.abs(expected_grad)))


@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 4), st.integers(1, 5)),
        elements=st.one_of(
            st.floats(-50, 50), st.sampled_from([-inf, inf, np.nan, 0.0, 1e300, -1e300])
        ),
    )
)
def test_nan_and_inf_propagate_as_torch(logits):
    """Any mix of NaN, infinities and extreme logits: the value and gradient of each position
    are torch's (rule 8), NaN exactly where torch's is."""
    with np.errstate(all="ignore"):
        expected, expected_grad = _oracle(logits, reduction="none")
        loss, grad = crossent.value_and_grad(crossent.entropy)(logits, reduction="none")
    np.testing.assert_allclose(loss, expected, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-12)


# --- Half precision, checks --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_half_precision_is_computed_in_float32(dtype, to_xp, assert_close):
    rng = np.random.default_rng(3)
    logits = to_xp(rng.standard_normal((8, 6)) * 4, dtype)
    out = crossent.entropy(logits, reduction="none")
    # the float32 entropy of the same numbers, rounded once to the dtype
    exact = to_xp(to_numpy(logits).astype(np.float32), "float32")
    expected = to_numpy(crossent.entropy(exact, reduction="none")).astype(np.float64)
    rtol = {"float16": 2.0**-11, "bfloat16": 2.0**-8, "float32": 0.0}[dtype]
    assert_close(out, expected, rtol=rtol, atol=1e-30, dtype=dtype)


def test_bad_arguments_say_what_came(to_xp):
    logits = to_xp(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"sample_weight has shape \(3,\), expected \(4,\)"):
        crossent.entropy(logits, sample_weight=to_xp(np.ones(3)))
    with pytest.raises(TypeError, match="sample_weight"):
        crossent.entropy(logits, sample_weight=to_xp(np.ones(4), "int64"))
    with pytest.raises(ValueError, match=r"has no classes along axis -1"):
        crossent.entropy(to_xp(np.zeros((4, 0))))
    with pytest.raises(TypeError, match="logits"):
        crossent.entropy(to_xp(np.zeros((4, 3)), "int64"))
    with pytest.raises(ValueError, match="reduction"):
        crossent.entropy(logits, reduction="batchmean")
    with pytest.raises(TypeError):
        crossent.entropy(logits, to_xp(np.zeros(4)))  # no target


# --- Frameworks ----------------------------------------------------------------------------------


def test_jax_grad_jit_and_vmap_in_logits_and_sample_weight(xp, to_xp, assert_close):
    if not is_jax_namespace(xp):
        pytest.skip("JAX's transformations")
    import jax

    rng = np.random.default_rng(4)
    x, w = to_xp(rng.standard_normal((3, 4, 5))), to_xp(rng.uniform(0.1, 2.0, (3, 4)))

    def summed(arrays):
        return crossent.entropy(arrays[0], sample_weight=arrays[1], reduction="sum")

    fast = jax.jit(jax.grad(summed))((x, w))
    with generic_only():
        generic = jax.grad(summed)((x, w))
    for a, b in zip(fast, generic, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-15)
    batched = jax.vmap(jax.grad(lambda z: crossent.entropy(z)))(x)
    for i in range(3):
        assert_close(batched[i], crossent.grad(crossent.entropy)(x[i]), rtol=1e-12)


@pytest.mark.parametrize(
    ("reduction", "weighted"), list(itertools.product(["mean", "none"], [False, True]))
)
def test_torch_compile_fullgraph(reduction, weighted, xp, to_xp, assert_close):
    if not is_torch_namespace(xp):
        pytest.skip("torch.compile compiles torch tensors")
    torch._dynamo.reset()
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((4, 3))
    options = {"reduction": reduction}
    if weighted:
        options["sample_weight"] = to_xp(rng.uniform(0.1, 2.0, 4))

    def run(f):
        leaf = to_xp(logits).requires_grad_(True)
        out = f(leaf, **options)
        (grad,) = torch.autograd.grad(out.sum(), leaf)
        return out.detach(), grad

    compiled = torch.compile(crossent.entropy, fullgraph=True, backend="aot_eager")
    out, grad = run(compiled)
    expected, expected_grad = run(crossent.entropy)
    assert_close(out, expected, rtol=1e-12)
    assert_close(grad, expected_grad, rtol=1e-12, atol=1e-300)
    torch._dynamo.reset()
