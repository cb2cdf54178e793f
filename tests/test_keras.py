"""crossent.keras: a Keras 3 loss for every loss that takes one target and one prediction,
equal to Keras' own losses (labels as Keras hands them over, sample weights, reductions,
ignored classes) in a call and in ``fit``, on Keras' JAX and torch backends."""

from __future__ import annotations

import os

import numpy as np
import pytest
from array_api_compat import is_jax_namespace, is_torch_namespace
from conftest import XP

if is_jax_namespace(XP):
    os.environ.setdefault("KERAS_BACKEND", "jax")
elif is_torch_namespace(XP):
    os.environ.setdefault("KERAS_BACKEND", "torch")
else:
    pytest.skip("Keras runs on JAX and torch", allow_module_level=True)

keras = pytest.importorskip("keras")
if keras.backend.backend() != os.environ["KERAS_BACKEND"]:
    pytest.skip("Keras runs on another backend in this process", allow_module_level=True)

import crossent.keras as ck  # noqa: E402
from crossent._classes import class_name  # noqa: E402
from crossent._dispatch import LOSSES  # noqa: E402

RNG = np.random.default_rng(3)
N, C = 8, 5
LOGITS = RNG.standard_normal((N, C)) * 2
LABELS = RNG.integers(0, C, N)
SAMPLE_WEIGHT = RNG.uniform(0.2, 2.0, N)
REDUCTIONS = ["sum_over_batch_size", "sum", None, "mean_with_sample_weight"]


# Keras' own conversions to NumPy, with NumPy 2 (Variable.numpy, convert_to_numpy on torch)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _numpy(x):
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _close(a, b, rtol=1e-10):
    np.testing.assert_allclose(_numpy(a), _numpy(b), rtol=rtol, atol=1e-12)


def test_every_loss_of_one_target_has_a_class():
    expected = sorted(class_name(n) for n in LOSSES if n not in ck.LEFT_OUT)
    assert ck.__all__ == expected
    for name in ck.__all__:
        assert issubclass(getattr(ck, name), keras.losses.Loss)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("labels", ["float (N, 1)", "float (N,)", "int (N,)"])
def test_cross_entropy_equals_sparse_categorical_crossentropy(labels, reduction):
    y_true = LABELS[:, None] if "(N, 1)" in labels else LABELS
    y_true = y_true.astype("float64" if "float" in labels else "int64")
    ours = ck.CrossEntropyLoss(reduction=reduction, dtype="float64")
    theirs = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction=reduction, dtype="float64"
    )
    _close(ours(y_true, LOGITS), theirs(y_true, LOGITS))
    _close(ours(y_true, LOGITS, SAMPLE_WEIGHT), theirs(y_true, LOGITS, SAMPLE_WEIGHT))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ignore_index_is_masked_as_keras_ignore_class(reduction):
    y_true = LABELS.astype("float64")
    ours = ck.CrossEntropyLoss(ignore_index=2, reduction=reduction, dtype="float64")
    theirs = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=2, reduction=reduction, dtype="float64"
    )
    _close(ours(y_true, LOGITS, SAMPLE_WEIGHT), theirs(y_true, LOGITS, SAMPLE_WEIGHT))


def test_probabilities_equal_categorical_crossentropy():
    y_true = RNG.dirichlet(np.ones(C), N)
    ours = ck.CrossEntropyLoss(label_smoothing=0.1, dtype="float64")
    theirs = keras.losses.CategoricalCrossentropy(
        from_logits=True, label_smoothing=0.1, dtype="float64"
    )
    _close(ours(y_true, LOGITS, SAMPLE_WEIGHT), theirs(y_true, LOGITS, SAMPLE_WEIGHT))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_losses_equal_binary_crossentropy(reduction):
    y_true = RNG.integers(0, 2, (N, C)).astype("float64")
    with_logits = keras.losses.BinaryCrossentropy(
        from_logits=True, reduction=reduction, dtype="float64"
    )
    ours = ck.BCEWithLogitsLoss(reduction=reduction, dtype="float64")
    # Keras' own is off by about 1e-8 in float64 here (crossent's is exact: the float64
    # formula, and torch, in test_binary.py)
    _close(ours(y_true, LOGITS, SAMPLE_WEIGHT), with_logits(y_true, LOGITS, SAMPLE_WEIGHT), 1e-6)
    probs = 1 / (1 + np.exp(-LOGITS))
    of_probs = keras.losses.BinaryCrossentropy(reduction=reduction, dtype="float64")
    ours = ck.BCELoss(reduction=reduction, dtype="float64")
    # Keras clips probabilities to [1e-7, 1 - 1e-7]; these are inside
    _close(ours(y_true, probs, SAMPLE_WEIGHT), of_probs(y_true, probs, SAMPLE_WEIGHT), 1e-6)


def test_kl_div_equals_kl_divergence_of_log_probabilities():
    y_true = RNG.dirichlet(np.ones(C), N)
    probs = RNG.dirichlet(np.ones(C), N)
    ours = ck.KLDivLoss(dtype="float64")
    theirs = keras.losses.KLDivergence(dtype="float64")
    _close(ours(y_true, np.log(probs), SAMPLE_WEIGHT), theirs(y_true, probs, SAMPLE_WEIGHT))


def test_sigmoid_focal_loss_equals_binary_focal_crossentropy():
    y_true = RNG.integers(0, 2, (N, C)).astype("float64")
    ours = ck.SigmoidFocalLoss(alpha=0.25, gamma=2.0, dtype="float64")
    theirs = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=True, alpha=0.25, gamma=2.0, from_logits=True, dtype="float64"
    )
    _close(ours(y_true, LOGITS, SAMPLE_WEIGHT), theirs(y_true, LOGITS, SAMPLE_WEIGHT), 1e-6)


def test_labels_that_are_no_integers_are_refused():
    with pytest.raises(ValueError, match="y_true holds class labels that are not integers"):
        ck.CrossEntropyLoss()(np.array([0.0, 1.5]), LOGITS[:2])
    with pytest.raises(ValueError, match=r"y_true has shape \(3,\), expected class labels"):
        ck.CrossEntropyLoss()(np.array([0.0, 1.0, 1.0]), LOGITS[:2])


def test_labels_that_are_no_integers_give_nan_under_jit():
    if not is_jax_namespace(XP):
        pytest.skip("jax.jit")
    import jax

    loss = ck.CrossEntropyLoss(dtype="float64")
    out = jax.jit(lambda t, x: loss(t, x))(np.array([0.0, 1.5]), LOGITS[:2])
    assert np.isnan(float(out))


def test_config_round_trips():
    loss = ck.SoftmaxFocalLoss(gamma=1.5, weight=[1.0, 2.0, 1.0, 1.0, 0.5], reduction="sum")
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(again) is ck.SoftmaxFocalLoss
    assert again.get_config() == loss.get_config()
    _close(again(LABELS, LOGITS), loss(LABELS, LOGITS))


@pytest.mark.parametrize(
    ("ours", "theirs", "target"),
    [
        (
            lambda: ck.CrossEntropyLoss(),
            lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            "labels",
        ),
        (
            lambda: ck.BCEWithLogitsLoss(),
            lambda: keras.losses.BinaryCrossentropy(from_logits=True),
            "binary",
        ),
    ],
    ids=["CrossEntropyLoss", "BCEWithLogitsLoss"],
)
def test_fit_equals_keras_own_loss(ours, theirs, target):
    """A few epochs of ``fit`` (jit-compiled on JAX) give the losses and weights of Keras'
    own loss."""
    features = RNG.standard_normal((32, 6))
    if target == "labels":
        y = RNG.integers(0, C, 32).astype("float32")[:, None]  # as a user's dataset has them
    else:
        y = RNG.integers(0, 2, (32, C)).astype("float32")
    weights = RNG.uniform(0.5, 1.5, 32)
    runs = []
    for make in (ours, theirs):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(C)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=make())
        history = model.fit(features, y, sample_weight=weights, epochs=3, batch_size=8,
                            shuffle=False, verbose=0)  # fmt: skip
        runs.append((history.history["loss"], model.get_weights()))
    (loss_a, weights_a), (loss_b, weights_b) = runs
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(weights_a, weights_b, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
