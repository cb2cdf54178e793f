"""The Pallas kernels of ``linear_cross_entropy`` (``crossent._backends._pallas``): equal to the
generic path for every option, dtype and reduction, in the loss and the three gradients, under
``jax.jit(jax.value_and_grad)``, ``vmap`` and ``crossent.value_and_grad``; NaN and inf as the
generic path has them; half precision rounded once.

They run where the kernels serve the session's arrays: a GPU, or the CPU under Pallas's
interpreter (``CROSSENT_PALLAS_INTERPRET=1``, the ``jax-pallas`` backend file). Elsewhere the
file skips.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

jax = pytest.importorskip("jax")
jnp = jax.numpy

import crossent  # noqa: E402
from crossent._dispatch import generic_only  # noqa: E402


@pytest.fixture(autouse=True)
def _served(xp, device):
    from array_api_compat import is_jax_namespace

    if not is_jax_namespace(xp):
        pytest.skip("the Pallas kernels take JAX arrays")
    from crossent._backends import _pallas

    if not (device.platform == "gpu" or (_pallas.INTERPRET and device.platform == "cpu")):
        pytest.skip("the Pallas kernels serve GPU arrays, or CPU ones under the interpreter")


@pytest.fixture
def calls(monkeypatch):
    """The number of times the kernels' pass was traced or run."""
    from crossent._backends import _pallas

    count = [0]
    run = _pallas.linear_pass

    def counted(*args, **kwargs):
        count[0] += 1
        return run(*args, **kwargs)

    monkeypatch.setattr(_pallas, "linear_pass", counted)
    return count


def _inputs(device, positions, dim, classes, dtype, *, bias=False, seed=0):
    rng = np.random.default_rng(seed)
    hidden = rng.standard_normal((*positions, dim)) * 2.0
    weight = rng.standard_normal((classes, dim)) / math.sqrt(dim)
    target = rng.integers(0, classes, positions)
    if target.size > 2:
        target.reshape(-1)[1::5] = -100
    b = rng.standard_normal(classes) if bias else None

    def put(x, dt=dtype):
        return None if x is None else jax.device_put(jnp.asarray(x, dtype=dt), device)

    return put(hidden), put(weight), put(target, jnp.int32), put(b)


def _run(hidden, weight, target, bias, **options):
    """``jit(value_and_grad)`` of the loss (summed with an upstream gradient for "none") in
    hidden, weight and bias."""

    def loss_of(h, w, b):
        out = crossent.linear_cross_entropy(h, w, target, bias=b, **options)
        if out.ndim:
            up = jnp.linspace(-1.0, 2.0, out.size, dtype=jnp.float32).reshape(out.shape)
            return jnp.sum(out.astype(jnp.float32) * up), out
        return out, out

    argnums = (0, 1) if bias is None else (0, 1, 2)
    step = jax.jit(jax.value_and_grad(loss_of, argnums=argnums, has_aux=True))
    (_, loss), grads = step(hidden, weight, bias)
    return loss, grads


def _close(actual, desired, dtype, what):
    """float32 to 1e-5 of the largest entry; half precision to two units of it."""
    a, d = np.asarray(actual, dtype=np.float64), np.asarray(desired, dtype=np.float64)
    assert actual.dtype == desired.dtype, what
    assert a.shape == d.shape, what
    np.testing.assert_array_equal(np.isnan(a), np.isnan(d), err_msg=what)
    finite = ~np.isnan(d)
    if not finite.any():
        return
    scale = float(np.abs(d[finite]).max()) + 1e-30
    rtol = 1e-5 if dtype == "float32" else 2.0 * float(jnp.finfo(dtype).eps)
    error = float(np.abs(a[finite] - d[finite]).max())
    assert error <= rtol * scale, (what, error / scale)


OPTIONS = [
    {},
    {"label_smoothing": 0.1},
    {"class_weight": True, "label_smoothing": 0.2},
    {"softcap": 4.0, "z_loss": 1e-2},
    {"sample_weight": True, "ignore_index": 3},
]


def _options(options, device, positions, classes, target):
    rng = np.random.default_rng(2)
    out = dict(options)
    if out.get("class_weight") is True:
        out["class_weight"] = jax.device_put(jnp.asarray(rng.random(classes) + 0.5), device)
    if out.get("sample_weight") is True:
        out["sample_weight"] = jax.device_put(jnp.asarray(rng.random(positions)), device)
    if "ignore_index" in out:
        target = jnp.where(target == -100, out["ignore_index"], target)
    return out, target


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize(
    ("positions", "dim", "classes", "bias"),
    [((37,), 40, 101, True), ((2, 3), 16, 16, False)],
    ids=["37x40x101-bias", "2x3x16x16"],
)
def test_equals_the_generic_path(
    device, dtype, reduction, options, positions, dim, classes, bias, calls
):
    hidden, weight, target, b = _inputs(device, positions, dim, classes, dtype, bias=bias)
    kwargs, target = _options(options, device, positions, classes, target)
    kwargs["reduction"] = reduction
    loss, grads = _run(hidden, weight, target, b, **kwargs)
    assert calls[0] >= 1
    seen = calls[0]
    with generic_only():
        expected, expected_grads = _run(hidden, weight, target, b, **kwargs)
    assert calls[0] == seen  # the generic path runs none
    _close(loss, expected, dtype, "loss")
    assert len(grads) == len(expected_grads)
    for name, g, e in zip(("hidden", "weight", "bias"), grads, expected_grads, strict=False):
        _close(g, e, dtype, name)


def test_value_and_grad_takes_the_kernels(device, calls):
    hidden, weight, target, bias = _inputs(device, (21,), 24, 50, "float32", bias=True)
    func = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1, 3))
    value, grads = func(hidden, weight, target, bias, label_smoothing=0.1)
    assert calls[0] == 1
    with generic_only():
        expected, expected_grads = func(hidden, weight, target, bias, label_smoothing=0.1)
    _close(value, expected, "float32", "loss")
    for g, e in zip(grads, expected_grads, strict=True):
        _close(g, e, "float32", "gradient")


def test_vmap_over_hidden(device, calls):
    hidden, weight, target, _ = _inputs(device, (3, 9), 16, 20, "float32")

    def loss_of(h):
        return crossent.linear_cross_entropy(h, weight, target[0])

    grads = jax.vmap(jax.grad(loss_of))(hidden)
    assert calls[0] >= 1
    with generic_only():
        expected = jax.vmap(jax.grad(loss_of))(hidden)
    _close(grads, expected, "float32", "vmap")


SPECIALS = [math.nan, math.inf, -math.inf]


@settings(max_examples=15, deadline=None)
@given(
    hidden_specials=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 15), st.sampled_from(SPECIALS)), max_size=3
    ),
    bias_specials=st.lists(st.tuples(st.integers(0, 19), st.sampled_from(SPECIALS)), max_size=2),
)
def test_nan_and_inf_propagate_as_the_generic_path(device, hidden_specials, bias_specials):
    hidden, weight, target, bias = _inputs(device, (6,), 16, 20, "float32", bias=True)
    for row, col, value in hidden_specials:
        hidden = hidden.at[row, col].set(value)
    for col, value in bias_specials:
        bias = bias.at[col].set(value)
    loss, grads = _run(hidden, weight, target, bias, reduction="none")
    with generic_only():
        expected, expected_grads = _run(hidden, weight, target, bias, reduction="none")
    for name, a, d in zip(("loss", "hidden", "weight", "bias"), (loss, *grads),
                          (expected, *expected_grads), strict=True):  # fmt: skip
        a, d = np.asarray(a, dtype=np.float64), np.asarray(d, dtype=np.float64)
        np.testing.assert_array_equal(np.isnan(a), np.isnan(d), err_msg=name)
        kept = ~np.isnan(d)
        np.testing.assert_allclose(a[kept], d[kept], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_half_precision_is_float32_rounded_once(device, reduction):
    # the loss of the dense logits (h W^T + b rounded once to bfloat16) within half a unit of
    # its float64 value, but for float32's own rounding
    hidden, weight, target, bias = _inputs(device, (33,), 48, 70, "bfloat16", bias=True, seed=3)
    loss = jax.jit(
        lambda h, w, b: crossent.linear_cross_entropy(
            h, w, target, bias=b, reduction=reduction, label_smoothing=0.1
        )
    )(hidden, weight, bias)
    h, w, b = (np.asarray(x, dtype=np.float64) for x in (hidden, weight, bias))
    logits = np.asarray(jnp.asarray(h @ w.T + b).astype(jnp.bfloat16), dtype=np.float64)
    t = np.asarray(target)
    kept = t != -100
    log_p = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    log_p -= logits.max(1, keepdims=True)
    picked = -log_p[np.arange(len(t)), np.where(kept, t, 0)]
    smooth = -log_p.mean(axis=1)
    losses = np.where(kept, 0.9 * picked + 0.1 * smooth, 0.0)
    exact = losses.sum() / (kept.sum() if reduction == "mean" else 1)
    assert loss.dtype == jnp.bfloat16
    unit = float(jnp.finfo(jnp.bfloat16).eps) * abs(exact)
    assert abs(float(loss) - exact) <= 0.5 * unit * (1 + 1e-2) + 1e-6 * abs(exact)


def test_what_the_kernels_leave_to_the_scan(device, calls):
    hidden, weight, _, _ = _inputs(device, (6,), 16, 10, "float32")
    probabilities = jax.nn.softmax(jnp.asarray(np.random.default_rng(1).random((6, 10))))
    crossent.linear_cross_entropy(hidden, weight, jax.device_put(probabilities, device))
    assert calls[0] == 0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_kernels_lower_for_a_gpu(device, dtype):
    # the lowering the interpreter skips: jit(value_and_grad) exported for CUDA has both
    # kernels as Triton calls (the check refusing Triton calls in an export is the only one off)
    from jax import export

    hidden, weight, target, bias = _inputs(device, (40,), 64, 300, dtype, bias=True)

    def step(h, w, b):
        return crossent.linear_cross_entropy(h, w, target, bias=b, label_smoothing=0.1)

    exported = export.export(
        jax.jit(jax.value_and_grad(step, argnums=(0, 1, 2))),
        platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(hidden, weight, bias)
    calls = [line for line in exported.mlir_module().splitlines() if "xla.gpu.triton" in line]
    assert len(calls) >= 2, "the forward and backward kernels"
