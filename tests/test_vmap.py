"""Per-example gradients: ``torch.func.vmap`` over ``torch.func.grad``, and ``jax.vmap`` over
``jax.grad``, through every public loss with its options, equal the analytic gradient of each
example computed alone.

Inside a ``torch.func`` transform a tensor's values cannot be read (``vmap`` refuses
``.item()``): crossent takes such tensors for lazy, as it takes JAX's under ``jit``, and its
``autograd.Function``s (the blocked half-precision ones, ``linear_cross_entropy``'s) give way
to torch operations the transform sees through.
"""

from __future__ import annotations

import numpy as np
import pytest
from array_api_compat import is_jax_namespace, is_torch_namespace
from cases import ALL_LOSSES, Case, all_cases, variant_cases
from conftest import to_numpy

import crossent

CASES = [*all_cases()[::3], *variant_cases()]
COPIES = 3


def test_every_loss_is_in_the_vmap_grid():
    assert {case.name for case in CASES} == set(ALL_LOSSES)


def _transforms(xp):
    """``(vmap, grad)`` of the backend's framework."""
    if is_torch_namespace(xp):
        import torch.func

        return torch.func.vmap, torch.func.grad
    if is_jax_namespace(xp):
        import jax

        def vmap(func, in_dims=0):
            return jax.vmap(func, in_axes=in_dims)

        return vmap, jax.grad
    pytest.skip("vmap and grad: torch.func and JAX")


def _batch(case: Case) -> np.ndarray:
    """``COPIES`` examples: the case's predictions, and two perturbed in place of the values
    probabilities must keep (a probability stays one)."""
    pred = case.pred
    if case.name in ("binary_cross_entropy", "cross_entropy_from_probs", "kl_div"):
        return np.stack([pred] * COPIES)
    return np.stack([pred + 0.5 * k for k in range(COPIES)])


@pytest.mark.parametrize(("index", "case"), list(enumerate(CASES)), ids=[c.id for c in CASES])
def test_vmap_of_grad_equals_each_example_alone(index, case, xp, to_xp, assert_close):
    vmap, grad = _transforms(xp)
    if is_jax_namespace(xp) and index % 3:
        pytest.skip("JAX runs every third case: vmap of grad is slow op by op")
    args, options = case.crossent_args(to_xp)
    func = getattr(crossent, case.name)
    batch = to_xp(_batch(case))

    def summed(pred, *target):
        return func(pred, *target, **options).sum()

    rest = args[1:]  # the target, where the loss has one
    per_example = vmap(grad(summed), in_dims=(0, *[None] * len(rest)))(batch, *rest)
    for k in range(COPIES):
        expected = crossent.grad(func)(batch[k, ...], *rest, **options)
        assert_close(per_example[k, ...], to_numpy(expected), atol=1e-15)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"softcap": 2.0, "z_loss": 0.1},
        {"sample_weight": True, "label_smoothing": 0.2},
        {"class_weight": True, "reduction": "sum"},
    ],
    ids=["plain", "softcap-z_loss", "sample_weight", "class_weight"],
)
def test_vmap_of_grad_of_linear_cross_entropy(options, xp, to_xp, assert_close):
    """Per-example gradients of a language model's head: the weight's, one per example."""
    vmap, grad = _transforms(xp)
    rng = np.random.default_rng(3)
    examples, positions, features, classes = COPIES, 4, 5, 7
    hidden = rng.standard_normal((examples, positions, features))
    weight = rng.standard_normal((classes, features))
    target = rng.integers(0, classes, (examples, positions))
    target[0, 1] = -100
    extra = {k: v for k, v in options.items() if not isinstance(v, bool)}
    if options.get("sample_weight"):
        extra["sample_weight"] = to_xp(rng.uniform(0.1, 2.0, positions))
    if options.get("class_weight"):
        extra["class_weight"] = to_xp(rng.uniform(0.1, 2.0, classes))
    extra["chunk_size"] = 3

    def loss(h, w, t):
        return crossent.linear_cross_entropy(h, w, t, **extra)

    grads = vmap(grad(loss, argnums=(0, 1)), in_dims=(0, None, 0))(
        to_xp(hidden), to_xp(weight), to_xp(target)
    )
    for k in range(examples):
        _, expected = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1))(
            to_xp(hidden[k]), to_xp(weight), to_xp(target[k]), **extra
        )
        for found, want in zip(grads, expected, strict=True):
            assert_close(found[k, ...], to_numpy(want), atol=1e-14)


def test_a_bad_class_index_under_vmap_gives_nan(xp, to_xp):
    """Values are not read inside the transform: a bad index gives NaN, never a number (on a
    path of crossent's own: torch's kernels raise, as they do in vmap of torch's loss)."""
    vmap, grad = _transforms(xp)
    logits = to_xp(np.zeros((2, 3, 4)))
    target = to_xp(np.array([[0, 1, 9], [0, 1, 2]]))

    def summed(x, t):
        return crossent.softmax_focal_loss(x, t, reduction="none").sum()

    found = to_numpy(vmap(grad(summed))(logits, target))
    assert np.isnan(found[0, 2]).all()
    assert np.isfinite(found[0, :2]).all()
    assert np.isfinite(found[1]).all()
