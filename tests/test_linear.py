"""linear_cross_entropy: the dense computation's numbers, and its three gradients, from chunks.

The oracle is torch's dense ``F.cross_entropy(F.linear(hidden, weight, bias), ...)`` in float64,
with autograd's gradients of ``hidden``, ``weight`` and ``bias``. Each backend's own route to
the gradients is checked: ``value_and_grad(..., argnums=(0, 1, 3))`` everywhere, torch's
``backward()`` with a random upstream gradient, ``jax.grad`` under ``jit``.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import oracle
import pytest
import torch
import torch.nn.functional as F
from array_api_compat import (
    is_array_api_strict_namespace,
    is_dask_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)
from conftest import to_numpy
from hypothesis import given
from hypothesis import strategies as st
from oracle import T

import crossent
from crossent._dispatch import generic_only

D, V = 5, 11
GRAD = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1, 3))

#: (reduction, label_smoothing, class weights, some positions ignored, bias, probabilities)
OPTIONS = [
    *itertools.product(
        ["mean", "sum", "none"], [0.0, 0.1], [False, True], [False, True], [True], [False]
    ),
    *itertools.product(
        ["mean", "sum", "none"], [0.0, 0.2], [False, True], [False], [True], [True]
    ),
    ("mean", 0.0, False, False, False, False),
    ("none", 0.1, True, True, False, False),
]
#: Chunks of one position, of three (positions not a multiple), and the automatic size.
CHUNKS = [1, 3, None]


def _inputs(positions, *, weighted, ignored, bias, probabilities, seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((*positions, D))
    weight = rng.standard_normal((V, D))
    b = rng.standard_normal(V) if bias else None
    if probabilities:
        target = rng.random((*positions, V))
        target /= target.sum(axis=-1, keepdims=True)
    else:
        target = rng.integers(0, V, positions)
        if ignored:
            target.reshape(-1)[::3] = -100
    class_weight = rng.uniform(0.2, 2.0, V) if weighted else None
    return hidden, weight, target, b, class_weight


def _torch_dense(hidden, weight, target, bias, class_weight, upstream, **options):
    """torch's loss and its gradients (None for a missing bias) under ``upstream``."""
    leaves = [T(x).requires_grad_(True) for x in (hidden, weight)]
    b = None if bias is None else T(bias).requires_grad_(True)
    cw = None if class_weight is None else T(class_weight)
    logits = F.linear(leaves[0], leaves[1], b)
    t = T(target)
    if {"softcap", "z_loss", "sample_weight"} & set(options):  # beyond torch's options
        extra = dict(options)
        if extra.get("sample_weight") is not None:
            extra["sample_weight"] = T(extra["sample_weight"])
        loss = oracle.cross_entropy(logits, t, weight=cw, **extra)
    elif t.is_floating_point():
        loss = F.cross_entropy(logits.movedim(-1, 1), t.movedim(-1, 1), weight=cw, **options)
    else:
        loss = F.cross_entropy(logits.movedim(-1, 1), t, weight=cw, **options)
    loss.backward(T(upstream))
    grads = [leaves[0].grad, leaves[1].grad, None if b is None else b.grad]
    return loss.detach(), grads


def _backend_gradients(xp, to_xp, arrays, upstream, options):
    """The loss and the gradients of hidden, weight and bias by the backend's own route."""
    hidden, weight, target, bias = arrays
    if is_torch_namespace(xp):
        leaves = [x.detach().clone().requires_grad_(True) for x in (hidden, weight)]
        b = None if bias is None else bias.detach().clone().requires_grad_(True)
        loss = crossent.linear_cross_entropy(leaves[0], leaves[1], target, b, **options)
        loss.backward(to_xp(upstream, loss.dtype))
        return loss.detach(), (leaves[0].grad, leaves[1].grad, None if b is None else b.grad)
    if is_jax_namespace(xp):
        import jax
        import jax.numpy as jnp

        cotangent = jnp.asarray(upstream)

        def objective(h, w, b):
            out = crossent.linear_cross_entropy(h, w, target, b, **options)
            return jnp.sum(out * cotangent.astype(out.dtype)), out

        grads, loss = jax.jit(jax.grad(objective, argnums=(0, 1, 2), has_aux=True))(
            hidden, weight, bias
        )
        return loss, grads
    # no autodiff: the analytic gradients of the summed loss (upstream ones)
    argnums = (0, 1, 3) if bias is not None else (0, 1)
    step = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=argnums)
    loss, grads = step(hidden, weight, target, bias, **options)
    return loss, (*grads, None) if bias is None else grads


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize(
    ("reduction", "smoothing", "weighted", "ignored", "bias", "probabilities"), OPTIONS
)
def test_equals_the_dense_computation(
    reduction, smoothing, weighted, ignored, bias, probabilities, chunk_size, xp, to_xp,
    assert_close,
):  # fmt: skip
    positions = (2, 4) if probabilities else (7,)
    hidden, weight, target, b, class_weight = _inputs(
        positions, weighted=weighted, ignored=ignored, bias=bias, probabilities=probabilities
    )
    options = {"reduction": reduction, "label_smoothing": smoothing}
    autodiff = is_torch_namespace(xp) or is_jax_namespace(xp)
    rng = np.random.default_rng(1)
    shape = positions if reduction == "none" else ()
    upstream = rng.standard_normal(shape) if autodiff else np.ones(shape)
    expected, expected_grads = _torch_dense(
        hidden, weight, target, b, class_weight, upstream, **options
    )
    arrays = tuple(None if x is None else to_xp(x) for x in (hidden, weight, target, b))
    ours = {
        **options,
        "chunk_size": chunk_size,
        "class_weight": None if class_weight is None else to_xp(class_weight),
    }
    assert_close(crossent.linear_cross_entropy(*arrays, **ours), expected)
    loss, grads = _backend_gradients(xp, to_xp, arrays, upstream, ours)
    assert_close(loss, expected)
    for grad, want in zip(grads, expected_grads, strict=True):
        if want is None:
            assert grad is None
        else:
            assert_close(grad, want, atol=1e-13)


@pytest.mark.parametrize("chunk_size", [3, None])
@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softcap_z_loss_and_sample_weight(
    reduction, probabilities, chunk_size, xp, to_xp, assert_close
):
    positions = (2, 4) if probabilities else (7,)
    hidden, weight, target, b, class_weight = _inputs(
        positions, weighted=True, ignored=True, bias=True, probabilities=probabilities
    )
    s = np.random.default_rng(2).uniform(0.0, 3.0, positions)
    options = {"reduction": reduction, "label_smoothing": 0.1, "softcap": 1.5, "z_loss": 0.2}
    autodiff = is_torch_namespace(xp) or is_jax_namespace(xp)
    shape = positions if reduction == "none" else ()
    upstream = np.random.default_rng(1).standard_normal(shape) if autodiff else np.ones(shape)
    expected, expected_grads = _torch_dense(
        hidden, weight, target, b, class_weight, upstream, **options, sample_weight=s
    )
    arrays = tuple(to_xp(x) for x in (hidden, weight, target, b))
    ours = {
        **options,
        "chunk_size": chunk_size,
        "class_weight": to_xp(class_weight),
        "sample_weight": to_xp(s),
    }
    assert_close(crossent.linear_cross_entropy(*arrays, **ours), expected)
    loss, grads = _backend_gradients(xp, to_xp, arrays, upstream, ours)
    assert_close(loss, expected)
    for grad, want in zip(grads, expected_grads, strict=True):
        assert_close(grad, want, atol=1e-13)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_lazy_and_traced_calls(reduction, xp, to_xp, assert_close, lazy):
    hidden, weight, target, b, class_weight = _inputs(
        (9,), weighted=True, ignored=True, bias=True, probabilities=False
    )
    upstream = np.ones(9 if reduction == "none" else ())
    expected, _ = _torch_dense(
        hidden, weight, target, b, class_weight, upstream, reduction=reduction
    )
    args = [to_xp(x) for x in (hidden, weight, target, b)]
    out = lazy(crossent.linear_cross_entropy)(
        *args, class_weight=to_xp(class_weight), reduction=reduction, chunk_size=4
    )
    assert_close(out, expected)
    step = lazy(GRAD)
    value, grads = step(*args, class_weight=to_xp(class_weight), reduction=reduction, chunk_size=4)
    assert_close(value, expected)
    assert len(grads) == 3


@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_kernels_equal_the_generic_path(chunk_size, xp, to_xp, assert_close):
    rng = np.random.default_rng(5)
    hidden = to_xp(rng.standard_normal((14, 8)))
    weight = to_xp(rng.standard_normal((23, 8)))
    target = rng.integers(0, 23, 14)
    target[::4] = -100
    args = (hidden, weight, to_xp(target), to_xp(rng.standard_normal(23)))
    for options in (
        {"reduction": "mean", "label_smoothing": 0.1, "class_weight": to_xp(rng.random(23))},
        {"reduction": "none"},
        {"reduction": "sum", "label_smoothing": 0.3},
    ):
        options["chunk_size"] = chunk_size
        fast = crossent.linear_cross_entropy(*args, **options)
        fast_value, fast_grads = GRAD(*args, **options)
        with generic_only():
            generic = crossent.linear_cross_entropy(*args, **options)
            value, grads = GRAD(*args, **options)
        assert_close(fast, generic, rtol=1e-12)
        assert_close(fast_value, value, rtol=1e-12)
        for a, b in zip(fast_grads, grads, strict=True):
            assert_close(a, b, rtol=1e-12, atol=1e-14)


# Dask divides 0 by 0 when it computes, after crossent returns: NumPy warns then
@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")
def test_no_positions_and_every_position_ignored(xp, to_xp, assert_close):
    rng = np.random.default_rng(2)
    weight = to_xp(rng.standard_normal((V, D)))
    bias = to_xp(rng.standard_normal(V))
    empty = to_xp(np.zeros((0, D)))
    none = to_xp(np.zeros((0,), dtype=np.int64))
    for reduction, expected in (("mean", np.nan), ("sum", 0.0), ("none", np.zeros(0))):
        out = crossent.linear_cross_entropy(empty, weight, none, bias, reduction=reduction)
        assert_close(out, expected)
        value, (dh, dw, db) = GRAD(empty, weight, none, bias, reduction=reduction)
        assert_close(value, expected)
        assert_close(dh, np.zeros((0, D)))
        assert_close(dw, np.zeros((V, D)))
        assert_close(db, np.zeros(V))
    hidden = to_xp(rng.standard_normal((6, D)))
    ignored = to_xp(np.full(6, -100))
    value, (dh, dw, db) = GRAD(hidden, weight, ignored, bias, chunk_size=4)
    assert_close(value, np.nan)  # torch's 0 / 0
    assert_close(dh, np.zeros((6, D)))  # and torch's zero gradients
    assert_close(dw, np.zeros((V, D)))
    assert_close(db, np.zeros(V))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_half_precision_is_the_dense_computation_in_that_dtype(reduction, dtype, xp, to_xp):
    """The products in the input dtype, as the dense ``hidden @ weight.T`` rounds them, then
    float32: the loss and the gradients of the dense computation in that dtype, within its
    rounding."""
    if is_array_api_strict_namespace(xp) and dtype != "float32":
        pytest.skip("array-api-strict has no half precision")
    rng = np.random.default_rng(4)
    n, d, v = 300, 16, 700
    hidden = to_xp(rng.standard_normal((n, d)) * 0.5, dtype)
    weight = to_xp(rng.standard_normal((v, d)) * 0.5, dtype)
    target = rng.integers(0, v, n)
    target[::7] = -100
    t = to_xp(target)
    out = crossent.linear_cross_entropy(hidden, weight, t, reduction=reduction, chunk_size=64)
    assert out.dtype == hidden.dtype
    dense = crossent.cross_entropy(hidden @ weight.T, t, reduction=reduction)
    eps = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": 2.0**-23}[dtype]
    a, b = to_numpy(out).astype(np.float64), to_numpy(dense).astype(np.float64)
    np.testing.assert_allclose(a, b, rtol=4 * eps, atol=4 * eps)
    if is_torch_namespace(xp) or is_jax_namespace(xp) or is_dask_namespace(xp):
        return  # the gradients: below, with the analytic route everywhere
    _value, (dh, dw) = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1))(
        hidden, weight, t, reduction=reduction, chunk_size=64
    )
    assert dh.dtype == hidden.dtype
    assert dw.dtype == weight.dtype
    logits = hidden @ weight.T
    g = crossent.grad(crossent.cross_entropy)(logits, t, reduction=reduction)
    g32 = to_numpy(g).astype(np.float32)
    dense_dh = g32 @ to_numpy(weight).astype(np.float32)
    dense_dw = g32.T @ to_numpy(hidden).astype(np.float32)
    for ours, want in ((dh, dense_dh), (dw, dense_dw)):
        scale = np.abs(want).max()
        # 16 eps: a GPU's BLAS sums the products in another order (CuPy on an H100: 8.05 eps)
        np.testing.assert_allclose(
            to_numpy(ours).astype(np.float64), want, rtol=0, atol=16 * eps * scale
        )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_gradients_by_autodiff(dtype, xp, to_xp):
    if not (is_torch_namespace(xp) or is_jax_namespace(xp)):
        pytest.skip("autodiff: torch and JAX")
    rng = np.random.default_rng(6)
    n, d, v = 200, 16, 300
    h32 = rng.standard_normal((n, d)).astype(np.float32) * 0.5
    w32 = rng.standard_normal((v, d)).astype(np.float32) * 0.5
    target = rng.integers(0, v, n)
    hidden, weight = to_xp(h32, dtype), to_xp(w32, dtype)
    rounded = [to_numpy(x).astype(np.float64) for x in (hidden, weight)]
    _, (want_h, want_w, _) = _torch_dense(*rounded, target, None, None, np.ones(()))
    _, (dh, dw, _) = _backend_gradients(
        xp, to_xp, (hidden, weight, to_xp(target), None), np.ones(()), {"chunk_size": 48}
    )
    eps = {"float16": 2.0**-10, "bfloat16": 2.0**-7}[dtype]
    for ours, want in ((dh, want_h), (dw, want_w)):
        assert ours.dtype == hidden.dtype
        want = want.numpy()
        np.testing.assert_allclose(
            to_numpy(ours).astype(np.float64), want, rtol=0, atol=16 * eps * np.abs(want).max()
        )


SPECIALS = [np.nan, np.inf, -np.inf]


# Dask computes after crossent returns, outside its silence about edge values: NumPy warns then
@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero|overflow) encountered")
@given(
    data=st.data(),
    where=st.lists(st.sampled_from(["hidden", "weight", "bias"]), min_size=1, max_size=3),
)
def test_nan_and_inf_reach_the_loss_as_in_torch(data, where, xp, to_xp):
    arrays = dict(
        zip(
            ("hidden", "weight", "target", "bias", "class_weight"),
            _inputs((6,), weighted=False, ignored=True, bias=True, probabilities=False, seed=3),
            strict=True,
        )
    )
    for name in where:
        flat = arrays[name].reshape(-1)
        flat[data.draw(st.integers(0, flat.size - 1))] = data.draw(st.sampled_from(SPECIALS))
    expected, _ = _torch_dense(
        arrays["hidden"], arrays["weight"], arrays["target"], arrays["bias"], None,
        np.ones(6), reduction="none",
    )  # fmt: skip
    args = [to_xp(arrays[k]) for k in ("hidden", "weight", "target", "bias")]
    out = to_numpy(crossent.linear_cross_entropy(*args, reduction="none", chunk_size=4))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected.numpy()))
    finite = ~np.isnan(out)
    np.testing.assert_allclose(out[finite], expected.numpy()[finite], rtol=1e-10)
    total = to_numpy(crossent.linear_cross_entropy(*args, reduction="sum", chunk_size=4))
    np.testing.assert_allclose(total, expected.numpy().sum(), rtol=1e-10)


def test_bad_class_index_raises_on_eager_arrays_and_is_nan_on_lazy_ones(xp, to_xp, lazy):
    hidden, weight, target, b, _ = _inputs(
        (5,), weighted=False, ignored=False, bias=True, probabilities=False
    )
    target[2] = V  # no class
    args = [to_xp(x) for x in (hidden, weight, target, b)]
    if is_dask_namespace(xp) or is_jax_namespace(xp):
        out = to_numpy(lazy(crossent.linear_cross_entropy)(*args, reduction="none"))
        assert np.isnan(out[2])
        assert not np.isnan(out[[0, 1, 3, 4]]).any()
        assert np.isnan(to_numpy(lazy(crossent.linear_cross_entropy)(*args)))
        _, grads = lazy(GRAD)(*args, reduction="sum")
        assert np.isnan(to_numpy(grads[0])[2]).all()
    else:
        with pytest.raises(ValueError, match=r"target holds class index 11, outside \[0, 11\)"):
            crossent.linear_cross_entropy(*args)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"weight": np.zeros((V, D + 1))}, ValueError, r"weight has shape \(11, 6\), expected "
         r"\(V, 5\): one row of 5 features per class, for hidden \(7, 5\)"),
        ({"weight": np.zeros(V)}, ValueError, r"weight has shape \(11,\), expected \(V, 5\)"),
        ({"weight": np.zeros((0, D))}, ValueError, r"weight of shape \(0, 5\) has no classes"),
        ({"bias": np.zeros(V + 1)}, ValueError, r"bias has shape \(12,\), expected \(11,\): "
         r"one bias per class of weight \(11, 5\)"),
        ({"target": np.zeros(6, dtype=np.int64)}, ValueError, r"target has shape \(6,\), "
         r"expected \(7,\): hidden \(7, 5\) without its last axis"),
        ({"target": np.zeros((7, V + 1))}, ValueError, r"target of class probabilities has "
         r"shape \(7, 12\), expected \(7, 11\)"),
        ({"target": np.zeros(7, dtype=bool)}, TypeError, r"target must hold class indices"),
        ({"hidden": np.zeros(())}, ValueError, r"hidden must have at least one dimension"),
        ({"weight": np.zeros((V, D), dtype=np.float32)}, TypeError,
         r"weight has dtype \S*float32, expected \S*float64, the dtype of hidden"),
        ({"class_weight": np.ones(V - 1)}, ValueError, r"class_weight has shape \(10,\), "
         r"expected \(11,\)"),
        ({"chunk_size": 0}, ValueError, r"chunk_size must be a positive int, got 0"),
        ({"chunk_size": 2.5}, TypeError, r"chunk_size must be"),
        ({"reduction": "batchmean"}, ValueError, r"reduction must be one of"),
        ({"label_smoothing": 1.5}, ValueError, r"label_smoothing"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(change, error, message, xp, to_xp):
    values = {
        "hidden": np.zeros((7, D)),
        "weight": np.zeros((V, D)),
        "target": np.zeros(7, dtype=np.int64),
        "bias": np.zeros(V),
        "class_weight": None,
        "reduction": "mean",
        "label_smoothing": 0.0,
        "chunk_size": None,
    }
    values.update(change)
    arrays = {k: to_xp(v) if isinstance(v, np.ndarray) else v for k, v in values.items()}
    with pytest.raises(error, match=message):
        crossent.linear_cross_entropy(
            arrays.pop("hidden"), arrays.pop("weight"), arrays.pop("target"), arrays.pop("bias"),
            **arrays,
        )  # fmt: skip


def test_argnums(xp, to_xp, assert_close):
    rng = np.random.default_rng(8)
    logits = to_xp(rng.standard_normal((4, 3)))
    target = to_xp(np.array([0, 2, 1, 1]))
    _loss, grad = crossent.value_and_grad(crossent.cross_entropy)(logits, target)
    _loss0, grad0 = crossent.value_and_grad(crossent.cross_entropy, argnums=0)(logits, target)
    _, (grad1,) = crossent.value_and_grad(crossent.cross_entropy, argnums=(0,))(logits, target)
    for a in (grad0, grad1, crossent.grad(crossent.cross_entropy, argnums=-2)(logits, target)):
        assert_close(a, to_numpy(grad))
    with pytest.raises(ValueError, match=r"argnums holds 1, the argument target, but "
                       r"cross_entropy is differentiated in logits \(0\) only"):  # fmt: skip
        crossent.value_and_grad(crossent.cross_entropy, argnums=1)
    with pytest.raises(ValueError, match=r"argnums holds 5, but cross_entropy takes 2"):
        crossent.grad(crossent.cross_entropy, argnums=5)
    for bad in ("0", (), (0.0,), True):
        with pytest.raises(TypeError, match="argnums must be an int or a non-empty tuple"):
            crossent.value_and_grad(crossent.cross_entropy, argnums=bad)
    hidden, weight, t, b, _ = _inputs((3,), weighted=False, ignored=False, bias=True,
                                      probabilities=False)  # fmt: skip
    args = [to_xp(x) for x in (hidden, weight, t)]
    dw, dh = crossent.grad(crossent.linear_cross_entropy, argnums=(1, 0))(*args, to_xp(b))
    assert tuple(dw.shape) == (V, D)
    assert tuple(dh.shape) == (3, D)
    with pytest.raises(ValueError, match="argnums asks for the gradient of bias, which is None"):
        crossent.grad(crossent.linear_cross_entropy, argnums=3)(*args)
    only = r"linear_cross_entropy is differentiated in hidden \(0\), weight \(1\), bias \(3\)"
    with pytest.raises(ValueError, match=rf"the argument target, but {only} only"):
        crossent.grad(crossent.linear_cross_entropy, argnums=2)


def test_default_chunk_size():
    from crossent._generic._linear import default_chunk_size

    # 1/64 of the dense logits, within 4 and 32 MiB, then 128 rows where they fit in 64 MiB
    assert default_chunk_size(np, 65536, 32000, np.float32) == 262  # 32 MiB
    assert default_chunk_size(np, 4096, 32000, np.float32) == 128  # not 64 (8 MiB)
    assert default_chunk_size(np, 2048, 128000, np.float32) == 128  # 64 MiB, not 32 rows
    assert default_chunk_size(np, 16384, 256000, np.float32) == 65  # 64 MiB, not 32 rows
    assert default_chunk_size(np, 100, 32000, np.float32) == 100  # every position
    assert default_chunk_size(np, 10, 1000, np.float32) == 1048  # 4 MiB: one chunk
    assert default_chunk_size(np, 1000, 10**7, np.float32) == 1  # 128 rows would not fit
    assert default_chunk_size(np, 1, 10**7, np.float64) == 1  # one row at least
    # a GPU: 1/8 of the dense logits, within 64 MiB and 1 GiB
    on_gpu = functools.partial(default_chunk_size, accelerator=True)
    assert on_gpu(np, 8192, 128256, np.float32) == 1024  # 8 chunks
    assert on_gpu(np, 4096, 32000, np.float32) == 524  # 64 MiB
    assert on_gpu(np, 65536, 256000, np.float32) == 1048  # 1 GiB
    assert on_gpu(np, 1, 10**9, np.float32) == 1


def test_chunks_are_larger_on_an_accelerator(xp, device):
    from conftest import SESSION

    from crossent._dispatch import on_accelerator

    x = xp.zeros((2, 3), device=device)
    assert on_accelerator(xp, x) is (SESSION.device != "cpu")


# --- Framework-specific -----------------------------------------------------------------------


# torch 2.13's Dynamo instantiates every autograd.Function it traces, and warns of it itself
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_torch_compile_traces_it(xp):
    if not is_torch_namespace(xp):
        pytest.skip("torch.compile compiles torch tensors")
    rng = np.random.default_rng(9)
    hidden, weight, target, b, cw = _inputs((7,), weighted=True, ignored=True, bias=True,
                                            probabilities=False)  # fmt: skip
    class_weight = T(cw)
    for reduction in ("mean", "none"):
        torch._dynamo.reset()
        compiled = torch.compile(
            lambda h, w, t, b, reduction=reduction: crossent.linear_cross_entropy(
                h, w, t, b, class_weight=class_weight, reduction=reduction, chunk_size=3,
                label_smoothing=0.1,
            ),
            fullgraph=True,
            backend="aot_eager",
        )  # fmt: skip
        leaves = [T(x).requires_grad_(True) for x in (hidden, weight, b)]
        out = compiled(leaves[0], leaves[1], T(target), leaves[2])
        upstream = rng.standard_normal(tuple(out.shape))
        out.backward(T(upstream))
        expected, grads = _torch_dense(hidden, weight, target, b, cw, upstream,
                                       reduction=reduction, label_smoothing=0.1)  # fmt: skip
        torch.testing.assert_close(out.detach(), expected, rtol=1e-10, atol=0)
        for leaf, want in zip(leaves, grads, strict=True):
            torch.testing.assert_close(leaf.grad, want, rtol=1e-10, atol=1e-13)


def test_jax_vmap_and_stop_gradient_of_the_target(xp, to_xp, assert_close):
    if not is_jax_namespace(xp):
        pytest.skip("JAX's transformations")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(10)
    hidden = rng.standard_normal((3, 6, D))  # three batches of six positions
    weight = rng.standard_normal((V, D))
    target = rng.integers(0, V, (3, 6))

    def loss(h, w, t):
        return crossent.linear_cross_entropy(h, w, t, chunk_size=4)

    values = jax.jit(jax.vmap(loss, in_axes=(0, None, 0)))(
        jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(target)
    )
    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=1), in_axes=(0, None, 0)))(
        jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(target)
    )
    for i in range(3):
        expected, (_, want_w, _) = _torch_dense(
            hidden[i], weight, target[i], None, None, np.ones(())
        )
        assert_close(values[i], expected)
        assert_close(grads[i], want_w, atol=1e-13)
    probs = rng.random((6, V))

    def soft(h, t):
        return crossent.linear_cross_entropy(h, jnp.asarray(weight), t)

    with pytest.raises(TypeError, match="differentiated in hidden, weight and bias only"):
        jax.grad(soft, argnums=1)(jnp.asarray(hidden[0]), jnp.asarray(probs))
    g = jax.grad(lambda h, t: soft(h, jax.lax.stop_gradient(t)))(
        jnp.asarray(hidden[0]), jnp.asarray(probs)
    )
    assert g.shape == (6, D)


def test_torch_backward_twice(xp):
    if not is_torch_namespace(xp):
        pytest.skip("torch's autograd")
    hidden, weight, target, _, _ = _inputs(
        (5,), weighted=False, ignored=False, bias=False, probabilities=False
    )
    leaf = T(hidden).requires_grad_(True)
    loss = crossent.linear_cross_entropy(leaf, T(weight), T(target))
    loss.backward(retain_graph=True)
    # the gradients were made in the forward pass and handed over to the first backward pass
    with pytest.raises(RuntimeError, match="call linear_cross_entropy again"):
        loss.backward()
    # reduction="none" makes them in the backward pass: as often as asked
    leaf.grad = None
    losses = crossent.linear_cross_entropy(leaf, T(weight), T(target), reduction="none")
    losses.sum().backward(retain_graph=True)
    first = leaf.grad.clone()
    losses.sum().backward()
    torch.testing.assert_close(leaf.grad, 2 * first)


def test_torch_evaluation_and_targets_that_require_grad(xp):
    if not is_torch_namespace(xp):
        pytest.skip("torch's autograd")
    hidden, weight, target, _, _ = _inputs(
        (6,), weighted=False, ignored=True, bias=False, probabilities=False
    )
    h, w = T(hidden).requires_grad_(True), T(weight).requires_grad_(True)
    with torch.no_grad():
        evaluated = crossent.linear_cross_entropy(h, w, T(target))
    assert evaluated.grad_fn is None
    torch.testing.assert_close(evaluated, crossent.linear_cross_entropy(h, w, T(target)).detach())
    probs = torch.softmax(T(np.ones((6, V))), dim=-1).requires_grad_(True)
    with pytest.raises(TypeError, match=r"not in its target; pass target.detach\(\)"):
        crossent.linear_cross_entropy(h, w, probs)


def test_numpy_reads_a_probability_target_in_any_layout(xp, to_xp, assert_close):
    if not is_numpy_namespace(xp):
        pytest.skip("the NumPy kernel's rows")
    hidden, weight, _, _, _ = _inputs((7,), weighted=False, ignored=False, bias=False,
                                      probabilities=False)  # fmt: skip
    rng = np.random.default_rng(12)
    wide = rng.random((7, V + 5))  # a vocabulary padded to a rounder size, sliced back
    for target in (wide[:, :V], np.asfortranarray(wide[:, :V])):
        expected, (want_h, want_w, _) = _torch_dense(hidden, weight, target, None, None,
                                                     np.ones(()))  # fmt: skip
        value, (dh, dw) = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1))(
            hidden, weight, target, chunk_size=3
        )
        assert_close(value, expected)
        assert_close(dh, want_h, atol=1e-13)
        assert_close(dw, want_w, atol=1e-13)


def test_an_ignored_position_takes_no_upstream_gradient(xp, to_xp):
    """torch's gradient at an ignored position is 0, even under a NaN upstream gradient."""
    if not (is_torch_namespace(xp) or is_jax_namespace(xp)):
        pytest.skip("autodiff: torch and JAX")
    hidden, weight, target, b, _ = _inputs((6,), weighted=False, ignored=True, bias=True,
                                           probabilities=False)  # fmt: skip
    upstream = np.ones(6)
    upstream[target == -100] = np.nan
    _, expected = _torch_dense(hidden, weight, target, b, None, upstream, reduction="none")
    arrays = tuple(to_xp(x) for x in (hidden, weight, target, b))
    _, grads = _backend_gradients(xp, to_xp, arrays, upstream, {"reduction": "none"})
    for ours, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(to_numpy(ours), want.numpy(), rtol=1e-10, atol=1e-13)


def test_float16_gradients_keep_the_loss_scale(xp, to_xp):
    """A mean over many positions makes gradients below float16's normal range; a loss scale
    (the upstream gradient) lifts them before they are rounded, as in the dense computation."""
    if not (is_torch_namespace(xp) or is_jax_namespace(xp)):
        pytest.skip("autodiff: torch and JAX")
    rng = np.random.default_rng(13)
    n, d, v = 4096, 8, 40
    hidden = to_xp(rng.standard_normal((n, d)), "float16")
    weight = to_xp(rng.standard_normal((v, d)) * 0.3, "float16")
    target = rng.integers(0, v, n)
    scale = 2.0**14
    rounded = [to_numpy(x).astype(np.float64) for x in (hidden, weight)]
    _, (want_h, _, _) = _torch_dense(*rounded, target, None, None, np.asarray(scale))
    _, (dh, _, _) = _backend_gradients(
        xp, to_xp, (hidden, weight, to_xp(target), None), np.asarray(scale), {"chunk_size": 512}
    )
    want = want_h.numpy()
    ours = to_numpy(dh).astype(np.float64)
    assert np.count_nonzero(ours == 0) <= np.count_nonzero(want == 0)
    np.testing.assert_allclose(ours, want, rtol=0, atol=2e-2 * np.abs(want).max())


def test_jax_grad_in_sample_weight_is_refused_by_name(xp, to_xp):
    """As torch's ``sample_weight.requires_grad`` is: a TypeError naming it (a tracer once
    escaped the custom_vjp)."""
    if not is_jax_namespace(xp):
        pytest.skip("jax.grad")
    import jax

    hidden, weight, target, _, _ = _inputs((4,), weighted=False, ignored=False, bias=False,
                                           probabilities=False)  # fmt: skip
    args = (to_xp(hidden), to_xp(weight), to_xp(target))

    def loss(s):
        return crossent.linear_cross_entropy(*args, sample_weight=s)

    with pytest.raises(TypeError, match=r"not in its sample_weight; wrap it in jax.lax"):
        jax.grad(loss)(to_xp(np.ones(4)))


def test_torch_sample_weight_that_requires_grad_is_refused_by_name(xp):
    if not is_torch_namespace(xp):
        pytest.skip("torch's autograd")
    hidden, weight, target, _, _ = _inputs((4,), weighted=False, ignored=False, bias=False,
                                           probabilities=False)  # fmt: skip
    s = T(np.ones(4)).requires_grad_(True)
    h = T(hidden).requires_grad_(True)
    with pytest.raises(TypeError, match=r"not in its sample_weight; pass sample_weight.detach"):
        crossent.linear_cross_entropy(h, T(weight), T(target), sample_weight=s)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_bias_of_minus_inf_masks_a_product_that_overflows(dtype, xp, to_xp, assert_close):
    """The bias is added before the logits are rounded, as ``F.linear`` adds it: a masked
    class (-inf) whose product overflows the dtype (9360 * 7 > 65504) gives -inf, not NaN."""
    hidden = to_xp(np.array([[9360.0]]), dtype)
    weight = to_xp(np.array([[0.0], [7.0]]), dtype)
    bias = to_xp(np.array([0.0, -np.inf]), dtype)
    target = to_xp(np.array([0]))
    loss = crossent.linear_cross_entropy(hidden, weight, target, bias=bias)
    assert_close(loss, 0.0, dtype=dtype)
    value, grads = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1, 3))(
        hidden, weight, target, bias
    )
    assert_close(value, 0.0, dtype=dtype)
    for grad in grads:
        assert np.all(to_numpy(grad) == 0.0)


# Dask computes the empty mean's 0 / 0 after crossent returns, outside its silencing of NumPy
@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("shape", [(0, 3, D), (2, 0, D), (0, D)], ids=str)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batches_in_chunks(shape, reduction, xp, to_xp, assert_close):
    """No position at all, in an array of several chunks (Dask once failed in its reshape):
    NumPy's empty result, a NaN mean, zero gradients."""
    rng = np.random.default_rng(22)
    hidden = np.zeros(shape)
    weight = rng.standard_normal((V, D))
    positions = shape[:-1]
    chunked = {}
    if is_dask_namespace(xp):
        import dask.array as da

        chunked = {"hidden": da.from_array(hidden, chunks=(1,) * len(shape))}
    h = chunked.get("hidden", to_xp(hidden))
    for target in (np.zeros(positions, dtype=np.int64), np.zeros((*positions, V))):
        for extra in ({}, {"sample_weight": to_xp(np.ones(positions))}):
            options = {"reduction": reduction, **extra}
            loss = crossent.linear_cross_entropy(h, to_xp(weight), to_xp(target), **options)
            expected = np.zeros(positions) if reduction == "none" else np.nan if (
                reduction == "mean") else 0.0  # fmt: skip
            assert_close(loss, expected)
            _, (dh, dw) = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1))(
                h, to_xp(weight), to_xp(target), chunk_size=1, **options
            )
            assert_close(dh, np.zeros(shape))
            assert_close(dw, np.zeros((V, D)))
