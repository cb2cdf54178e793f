"""Random calls of every loss, with every option, against torch in float64: values and analytic
gradients at 1e-10, on every backend, eager and lazy.

``tests/cases.py`` walks a fixed grid; this draws shapes, class axes, weights, ignored
positions, smoothing, ``eps`` and reductions at random, with logits from tiny to 1e4.
``CROSSENT_HYPOTHESIS_EXAMPLES=500 pytest tests/test_differential.py`` is a fuzz run.
"""

from __future__ import annotations

import numpy as np
import oracle
import pytest
import torch
from array_api_compat import is_dask_namespace, is_jax_namespace, is_torch_namespace
from cases import Case
from hypothesis import given
from hypothesis import strategies as st
from oracle import T

import crossent

REDUCTIONS = st.sampled_from(["none", "mean", "sum"])


@st.composite
def _categorical(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    classes = draw(st.integers(1, 6))
    positions = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    axis = draw(st.integers(0, len(positions)))
    shape = (*positions[:axis], classes, *positions[axis:])
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    logits = rng.standard_normal(shape) * scale
    name = draw(st.sampled_from(["cross_entropy", "nll_loss", "cross_entropy_from_probs"]))
    options = {"axis": axis - len(shape) if draw(st.booleans()) else axis}
    options["reduction"] = draw(REDUCTIONS)
    if draw(st.booleans()):
        options["weight"] = rng.uniform(0.0, 2.0, classes)
    soft = name != "nll_loss" and draw(st.booleans())
    if soft:
        target = np.moveaxis(rng.dirichlet(np.ones(classes), size=positions), -1, axis)
    else:
        target = rng.integers(0, classes, size=positions)
        ignore_index = draw(st.sampled_from([-100, 0, classes - 1]))
        options["ignore_index"] = ignore_index
        if target.size and draw(st.booleans()):
            target.reshape(-1)[rng.random(target.size) < 0.3] = ignore_index
    if name == "cross_entropy":
        options["label_smoothing"] = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
        pred = logits
    elif name == "nll_loss":
        pred = torch.log_softmax(T(logits), dim=axis).numpy()
    else:
        pred = torch.softmax(T(logits), dim=axis).numpy()
        # not eps=0: there the oracle's log of every class gives 0 * inf = NaN in the gradient
        # of classes that are not read (test_gradients has crossent's answer)
        options["eps"] = draw(st.sampled_from([None, 1e-7, 0.1]))
    return Case(name, pred, target, options)


@st.composite
def _pointwise(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    name = draw(
        st.sampled_from(["binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div"])
    )
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e4]))
    logits = rng.standard_normal(shape) * scale
    options = {}
    if name == "kl_div":
        options["reduction"] = draw(st.sampled_from(["none", "mean", "sum", "batchmean"]))
        options["log_target"] = draw(st.booleans())
        target = rng.random(shape) * (rng.random(shape) < 0.8)  # some zero targets
        if options["log_target"]:
            # no -inf: there torch's 0 * inf is NaN, crossent's documented 0 (test_divergence)
            target = np.log(target + 0.01)
        pred = -np.abs(logits)
        return Case(name, pred, target, options)
    options["reduction"] = draw(REDUCTIONS)
    target = rng.random(shape) if draw(st.booleans()) else (rng.random(shape) < 0.5) * 1.0
    if shape and draw(st.booleans()):
        options["weight"] = rng.uniform(0.0, 2.0, shape[-1:] if draw(st.booleans()) else shape)
    if name == "binary_cross_entropy":
        pred = torch.sigmoid(T(logits)).numpy()
        options["eps"] = draw(st.sampled_from([None, 1e-7, 0.1]))
    else:
        pred = logits
        if shape and draw(st.booleans()):
            options["pos_weight"] = rng.uniform(0.1, 3.0, shape[-1:])
    return Case(name, pred, target, options)


@st.composite
def _newer(draw):
    """The newer losses and options: the focal losses, Poly-1, the multi-label soft margin, and
    cross-entropy's ``softcap``, ``z_loss`` and ``sample_weight``."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    name = draw(
        st.sampled_from(
            [
                "cross_entropy",
                "softmax_focal_loss",
                "poly1_cross_entropy",
                "sigmoid_focal_loss",
                "multilabel_soft_margin_loss",
            ]
        )
    )
    classes = draw(st.integers(1, 5))
    positions = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=2)))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    options = {"reduction": draw(REDUCTIONS)}
    if name in ("sigmoid_focal_loss", "multilabel_soft_margin_loss"):
        shape = (*positions, classes)
        logits = rng.standard_normal(shape) * scale
        target = rng.random(shape) if draw(st.booleans()) else (rng.random(shape) < 0.5) * 1.0
        if name == "sigmoid_focal_loss":
            options["alpha"] = draw(st.sampled_from([0.25, None, 0.9]))
            # gamma of 1 or more: torchvision's (1 - p_t)**gamma is exact to 1e-10 there
            options["gamma"] = draw(st.sampled_from([0.0, 1.0, 2.0]))
            if draw(st.booleans()):
                options["sample_weight"] = rng.uniform(0.0, 2.0, shape[-1:])
        else:
            if draw(st.booleans()):
                options["weight"] = rng.uniform(0.0, 2.0, shape[-1:])
            if positions and draw(st.booleans()):
                options["sample_weight"] = rng.uniform(0.0, 2.0, positions)
        return Case(name, logits, target, options)
    axis = draw(st.integers(0, len(positions)))
    shape = (*positions[:axis], classes, *positions[axis:])
    logits = rng.standard_normal(shape) * scale
    options["axis"] = axis
    if draw(st.booleans()):
        options["weight"] = rng.uniform(0.0, 2.0, classes)
    if draw(st.booleans()):
        options["sample_weight"] = rng.uniform(0.0, 3.0, positions)
    if draw(st.booleans()):
        target = np.moveaxis(rng.dirichlet(np.ones(classes), size=positions), -1, axis)
    else:
        target = rng.integers(0, classes, size=positions)
        if target.size and draw(st.booleans()):
            target.reshape(-1)[rng.random(target.size) < 0.3] = -100
    if name == "cross_entropy":
        options["label_smoothing"] = draw(st.sampled_from([0.0, 0.2]))
        options["softcap"] = draw(st.sampled_from([None, 0.5, 5.0]))
        options["z_loss"] = draw(st.sampled_from([0.0, 0.1]))
    elif name == "softmax_focal_loss":
        options["gamma"] = draw(st.sampled_from([0.0, 0.5, 2.0]))
    else:
        options["epsilon"] = draw(st.sampled_from([1.0, -1.0, 2.0]))
        options["label_smoothing"] = draw(st.sampled_from([0.0, 0.3]))
    return Case(name, logits, target, options)


#: Losses whose terms cancel (Poly-1's cross-entropy and 1 - p_t; the z-loss, the cap): to
#: within rounding of the terms, not of their difference.
_CANCELLING = {"softmax_focal_loss", "poly1_cross_entropy", "sigmoid_focal_loss",
               "multilabel_soft_margin_loss"}  # fmt: skip


def _tolerances(case: Case) -> tuple[float, float]:
    if case.name in _CANCELLING or {"softcap", "z_loss"} & set(case.options):
        return 1e-10, 1e-14 * (1.0 + float(np.abs(case.pred).max(initial=0.0)))
    if case.name == "binary_cross_entropy_with_logits":
        # torch cancels (1 - t) x - log_sigmoid(x) to 0 below 1e-16 of |x| (test_backends)
        return 1e-10, float(np.finfo(np.float64).eps * np.abs(case.pred).max(initial=1.0)) * 8
    return 1e-10, 1e-300


# Dask computes after crossent returns, outside its silencing of NumPy's warnings; the oracle
# warns about kl_div's "mean"
@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered")
@given(case=st.one_of(_categorical(), _pointwise(), _newer()))
def test_random_calls_equal_torch(case, xp, to_xp, assert_close, lazy):
    pred = T(case.pred).requires_grad_(True)
    expected = case.torch_loss(pred)
    expected.sum().backward()
    args, options = case.crossent_args(to_xp)
    func = getattr(crossent, case.name)
    lazy_backend = is_dask_namespace(xp) or is_jax_namespace(xp)
    step = crossent.value_and_grad(func)
    loss, grad = (lazy(step) if lazy_backend else step)(*args, **options)
    rtol, atol = _tolerances(case)
    assert_close(loss, expected.detach(), rtol=rtol, atol=atol)
    # a gradient entry that cancels (softmax near 1 minus 1) rounds relative to its terms
    grad_atol = 1e-10 * float(np.nanmax(np.abs(pred.grad.numpy()), initial=0.0)) + atol
    assert_close(grad, pred.grad, rtol=rtol, atol=grad_atol)
    assert_close(func(*args, **options), expected.detach(), rtol=rtol, atol=atol)
    if is_torch_namespace(xp) or is_jax_namespace(xp):  # the framework's own autodiff too
        assert_close(_autodiff(xp, func, args, options), pred.grad, rtol=rtol, atol=grad_atol)


def _autodiff(xp, func, args, options):
    """The gradient of the summed loss with respect to the first argument, by autodiff."""
    if is_torch_namespace(xp):
        pred = args[0].detach().clone().requires_grad_(True)
        func(pred, *args[1:], **options).sum().backward()
        return pred.grad
    import jax

    return jax.grad(lambda pred: func(pred, *args[1:], **options).sum())(args[0])


# --- linear_cross_entropy against the dense computation ---------------------------------------


@st.composite
def _linear(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    positions = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2)))
    features, classes = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    hidden = rng.standard_normal((*positions, features)) * draw(st.sampled_from([0.1, 1.0, 10.0]))
    weight = rng.standard_normal((classes, features))
    options = {"reduction": draw(REDUCTIONS), "chunk_size": draw(st.sampled_from([1, 2, None]))}
    options["label_smoothing"] = draw(st.sampled_from([0.0, 0.2]))
    if draw(st.booleans()):
        options["bias"] = rng.standard_normal(classes)
    if draw(st.booleans()):
        target = rng.dirichlet(np.ones(classes), size=positions)
    else:
        target = rng.integers(0, classes, size=positions)
        if target.size and draw(st.booleans()):
            target.reshape(-1)[rng.random(target.size) < 0.3] = -100
        if draw(st.booleans()):
            options["class_weight"] = rng.uniform(0.0, 2.0, classes)
    if draw(st.booleans()):
        options["sample_weight"] = rng.uniform(0.0, 2.0, positions)
    options["softcap"] = draw(st.sampled_from([None, 2.0]))
    options["z_loss"] = draw(st.sampled_from([0.0, 0.1]))
    return hidden, weight, target, options


def _dense(hidden, weight, target, options):
    """torch's loss of the logits themselves, and its gradients of hidden and weight."""
    h, w = T(hidden).requires_grad_(True), T(weight).requires_grad_(True)
    extra = {k: T(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    bias = extra.pop("bias", None)
    class_weight = extra.pop("class_weight", None)
    extra.pop("chunk_size")
    loss = oracle.cross_entropy(torch.nn.functional.linear(h, w, bias), T(target),
                                weight=class_weight, **extra)  # fmt: skip
    grads = torch.autograd.grad(loss.sum(), (h, w)) if loss.numel() else (None, None)
    return loss.detach(), grads


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered")
@given(inputs=_linear())
def test_random_linear_calls_equal_the_dense_computation(inputs, xp, to_xp, assert_close):
    hidden, weight, target, options = inputs
    expected, (want_h, want_w) = _dense(hidden, weight, target, options)
    args = (to_xp(hidden), to_xp(weight), to_xp(target))
    xp_options = {k: to_xp(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    assert_close(crossent.linear_cross_entropy(*args, **xp_options), expected, atol=1e-13)
    loss, (dh, dw) = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1))(
        *args, **xp_options
    )
    assert_close(loss, expected, atol=1e-13)
    if want_h is None:  # no position: the mean is NaN, and nothing is differentiated
        return
    scale = float(np.abs(want_w.numpy()).max(initial=0.0))
    assert_close(dh, want_h, atol=1e-12 * (1 + scale))
    assert_close(dw, want_w, atol=1e-12 * (1 + scale))
