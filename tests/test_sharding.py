"""Every loss under ``jax.jit`` on inputs sharded over a device mesh (issue 11, "Scale out").

A (2, 4) mesh, axes ``("batch", "class")``; the inputs split along the positions, the classes,
or both (``linear_cross_entropy``: ``weight`` split along its vocabulary, ``hidden`` along the
positions, or both). Each loss and its ``jax.grad`` must give the numbers of one device, keep
the positions' split in per-position outputs, and compile to a program that gathers nothing as
large as the logits (for ``linear_cross_entropy``, nothing as large as the weight either)
onto a device: XLA's partitioner gathers an array it cannot cut the way its inputs are cut,
silently, and then every device holds (and computes) the whole of it.

JAX only. On the CPU the 8 devices come from
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (``backends/jax.toml``); a session with
fewer devices (one GPU) skips the module.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from conftest import SESSION

if SESSION.module != "jax.numpy":  # jax, and jax-pallas (the Pallas kernels)
    pytest.skip("sharding over a device mesh: JAX only", allow_module_level=True)

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import crossent

if jax.device_count() < 8:
    pytest.skip(
        f"a (2, 4) mesh needs 8 devices; {SESSION.device} has {jax.device_count()} "
        "(on the CPU, XLA_FLAGS=--xla_force_host_platform_device_count=8 makes 8)",
        allow_module_level=True,
    )

MESH = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("batch", "class"))
#: Positions, classes (the vocabulary of linear_cross_entropy) and hidden features.
N, C, D = 64, 1000, 32
#: Which mesh axis the positions and the classes are split along.
LAYOUTS = {"batch": ("batch", None), "class": (None, "class"), "both": ("batch", "class")}


def _spec(shape: tuple[int, ...], layout: str) -> P:
    """Each array's split from its shape: positions along ``batch``, classes along ``class``
    (the three sizes differ, so a shape tells which axis is which)."""
    rows, classes = LAYOUTS[layout]
    axes = {N: rows, C: classes, D: None}
    return P(*(axes[s] for s in shape))


def _sharded(arrays: tuple[np.ndarray, ...], layout: str) -> list[jax.Array]:
    return [jax.device_put(a, NamedSharding(MESH, _spec(a.shape, layout))) for a in arrays]


def _single(arrays: tuple[np.ndarray, ...]) -> list[jax.Array]:
    return [jax.device_put(a, jax.devices()[0]) for a in arrays]


# --- Reading the compiled program -------------------------------------------------------------

#: A collective instruction and its result type: ``%g = f64[64,1000]{0,1} all-gather(%x)``,
#: or a tuple of types (a combined all-reduce, the asynchronous ``*-start`` of GPUs).
_COLLECTIVE = re.compile(
    r"=\s*(.+?)\s+(all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)"
    r"(?:-start)?\("
)
_ARRAY = re.compile(r"\b[a-z][a-z0-9]*\[([0-9,]*)\]")


def collectives(hlo: str) -> list[tuple[str, str, int]]:
    """Each collective of the compiled program's text: its operation, its result type and the
    elements of its largest array."""
    out = []
    for line in hlo.splitlines():
        found = _COLLECTIVE.search(line)
        if found:
            kind, op = found.groups()
            sizes = [math.prod(int(n) for n in d.split(",") if n) for d in _ARRAY.findall(kind)]
            out.append((op, kind, max(sizes, default=1)))
    return out


def assert_moves_less(compiled: Any, logits: int, gathered: int | None = None) -> None:
    """No collective moves an array of ``logits`` elements, no all-gather one of
    ``gathered`` (by default ``logits``)."""
    limit = {"all-gather": logits if gathered is None else gathered}
    large = [
        f"{op} {kind}"
        for op, kind, size in collectives(compiled.as_text())
        if size >= limit.get(op, logits)
    ]
    assert not large, (
        f"collectives of {limit['all-gather']} elements or more (all-gather), of {logits} "
        f"(the logits; the others): {large}"
    )


def test_collectives_reads_an_all_gather() -> None:
    """The check is not vacuous: a program that replicates a split array gathers it."""
    x = _sharded((np.zeros((N, C)),), "both")[0]
    replicate = jax.jit(lambda x: x * 2, out_shardings=NamedSharding(MESH, P()))
    found = collectives(replicate.lower(x).compile().as_text())
    assert found, "no collective found"
    assert all(op == "all-gather" for op, _, _ in found), found
    assert max(size for _, _, size in found) == N * C, found


# --- Comparing with one device ----------------------------------------------------------------


def assert_close(actual: Any, expected: Any, what: str) -> None:
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        e = np.asarray(e)
        atol = 1e-10 * float(np.max(np.abs(e), initial=0.0))
        np.testing.assert_allclose(np.asarray(a), e, rtol=1e-10, atol=atol, err_msg=what)


def assert_rows_split(out: jax.Array, layout: str) -> None:
    """A per-position output is split along ``batch`` as its positions came in."""
    rows = MESH.shape["batch"] if LAYOUTS[layout][0] else 1
    shard = out.sharding.shard_shape(out.shape)
    assert shard[0] == out.shape[0] // rows, (
        f"positions split {rows} ways came out as {out.sharding} (shard {shard})"
    )


def assert_split_as(grads: Any, inputs: Any, axes: int | None = None) -> None:
    """Each gradient is split as its argument (in its first ``axes`` axes, by default all): a
    split weight keeps a split gradient."""
    for g, x in zip(jax.tree.leaves(grads), jax.tree.leaves(inputs), strict=True):
        got, wanted = g.sharding.shard_shape(g.shape), x.sharding.shard_shape(x.shape)
        assert got[:axes] == wanted[:axes], (
            f"gradient split as {g.sharding}, its argument as {x.sharding}"
        )


# --- The losses of predictions ----------------------------------------------------------------


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class Case:
    """A loss of ``(predictions, *others)``, differentiated in the predictions."""

    id: str
    call: Callable[..., Any]
    #: The arrays, from a generator: predictions first.
    make: Callable[[np.random.Generator], tuple[np.ndarray, ...]]
    #: Whether ``call`` takes ``reduction`` (a loss), or returns an array that is summed.
    reduces: bool = True
    #: Whether the gradient keeps the classes' split, not only the positions'.
    split_gradient: bool = True

    def per_position(self, *arrays: Any) -> Any:
        return self.call(*arrays, reduction="none") if self.reduces else self.call(*arrays)

    def scalar(self, x: Any, *others: Any) -> Any:
        if self.reduces:
            return self.call(x, *others, reduction="mean")
        return jnp.sum(jnp.sin(self.call(x, *others)))


def _logits(rng: np.random.Generator) -> np.ndarray:
    return 3 * rng.standard_normal((N, C))


def _indices(rng: np.random.Generator, ignored: bool = False) -> np.ndarray:
    target = rng.integers(0, C, N)
    if ignored:
        target[::5] = -100
    return target


def _weight(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.5, 2.0, C)


CASES = [
    Case("log_softmax", crossent.log_softmax, lambda r: (_logits(r),), reduces=False),
    Case("softmax", crossent.softmax, lambda r: (_logits(r),), reduces=False),
    Case("logsumexp", crossent.logsumexp, lambda r: (_logits(r),), reduces=False),
    Case("log_sigmoid", crossent.log_sigmoid, lambda r: (_logits(r),), reduces=False),
    Case("cross_entropy-indices", crossent.cross_entropy, lambda r: (_logits(r), _indices(r))),
    Case(
        "cross_entropy-indices-options",
        lambda x, t, w, **kw: crossent.cross_entropy(x, t, weight=w, label_smoothing=0.1, **kw),
        lambda r: (_logits(r), _indices(r, ignored=True), _weight(r)),
    ),
    Case(
        "cross_entropy-probabilities-options",
        lambda x, t, w, **kw: crossent.cross_entropy(x, t, weight=w, label_smoothing=0.1, **kw),
        lambda r: (_logits(r), _softmax(_logits(r)), _weight(r)),
    ),
    Case(
        "nll_loss",
        lambda x, t, w, **kw: crossent.nll_loss(x, t, weight=w, **kw),
        lambda r: (np.log(_softmax(_logits(r))), _indices(r, ignored=True), _weight(r)),
        split_gradient=False,  # see _GRADIENT_OF_PICKS
    ),
    Case(
        "cross_entropy_from_probs",
        lambda x, t, w, **kw: crossent.cross_entropy_from_probs(x, t, weight=w, **kw),
        lambda r: (_softmax(_logits(r)), _indices(r, ignored=True), _weight(r)),
        split_gradient=False,  # see _GRADIENT_OF_PICKS
    ),
    Case(
        "binary_cross_entropy",
        lambda x, t, w, **kw: crossent.binary_cross_entropy(x, t, weight=w, **kw),
        lambda r: (
            1 / (1 + np.exp(-_logits(r))),
            r.uniform(0, 1, (N, C)),
            np.broadcast_to(_weight(r), (N, C)).copy(),
        ),
    ),
    Case(
        "binary_cross_entropy_with_logits",
        lambda x, t, pw, **kw: crossent.binary_cross_entropy_with_logits(
            x, t, pos_weight=pw, **kw
        ),
        lambda r: (_logits(r), r.uniform(0, 1, (N, C)), _weight(r)),
    ),
    Case(
        "sigmoid_focal_loss",
        lambda x, t, s, **kw: crossent.sigmoid_focal_loss(x, t, gamma=0.5, sample_weight=s, **kw),
        lambda r: (_logits(r), r.uniform(0, 1, (N, C)), _weight(r)),
    ),
    Case(
        "multilabel_soft_margin_loss",
        lambda x, t, w, **kw: crossent.multilabel_soft_margin_loss(x, t, weight=w, **kw),
        lambda r: (_logits(r), r.uniform(0, 1, (N, C)), _weight(r)),
    ),
    Case(
        "softmax_focal_loss",
        lambda x, t, w, **kw: crossent.softmax_focal_loss(x, t, gamma=0.5, weight=w, **kw),
        lambda r: (_logits(r), _indices(r, ignored=True), _weight(r)),
    ),
    Case(
        "poly1_cross_entropy",
        lambda x, t, w, **kw: crossent.poly1_cross_entropy(
            x, t, epsilon=-1.0, weight=w, label_smoothing=0.1, **kw
        ),
        lambda r: (_logits(r), _softmax(_logits(r)), _weight(r)),
    ),
    Case(
        "cross_entropy-softcap-z_loss",
        lambda x, t, w, **kw: crossent.cross_entropy(
            x, t, weight=w, softcap=2.0, z_loss=0.1, label_smoothing=0.1, **kw
        ),
        lambda r: (_logits(r), _indices(r, ignored=True), _weight(r)),
    ),
    Case(
        "kl_div",
        crossent.kl_div,
        lambda r: (np.log(_softmax(_logits(r))), _softmax(_logits(r))),
    ),
    Case("entropy", crossent.entropy, lambda r: (_logits(r),)),
    Case(
        "entropy-sample_weight",
        lambda x, s, **kw: crossent.entropy(x, sample_weight=s, **kw),
        lambda r: (_logits(r), r.uniform(0.0, 2.0, N)),
    ),
]


#: nll_loss's and cross_entropy_from_probs's gradients are 0 but at each position's target
#: class, where they are made from one number per position: XLA makes them whole on every
#: device, from those numbers, with no collective of their size. The numbers are right and
#: nothing large moves; each device holds an N x C gradient where a split would hold a part.
_GRADIENT_OF_PICKS = ("nll_loss", "cross_entropy_from_probs")


def test_every_loss_has_a_case() -> None:
    tested = {c.id.split("-")[0] for c in CASES} | {"linear_cross_entropy"}
    transforms = {"__version__", "grad", "value_and_grad"}  # tested on linear_cross_entropy
    assert set(crossent.__all__) - transforms == tested


@functools.cache
def _on_one_device(case: Case) -> tuple[Any, Any]:
    """The per-position output and the scalar's value and gradient, on one device."""
    arrays = _single(case.make(np.random.default_rng(0)))
    out = jax.jit(case.per_position)(*arrays)
    return out, jax.jit(jax.value_and_grad(case.scalar))(*arrays)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_loss_on_a_mesh(case: Case, layout: str) -> None:
    arrays = _sharded(case.make(np.random.default_rng(0)), layout)
    expected_out, expected_grad = _on_one_device(case)

    per_position = jax.jit(case.per_position).lower(*arrays).compile()
    out = per_position(*arrays)
    assert_close(out, expected_out, "per-position output")
    assert_rows_split(out, layout)
    assert_moves_less(per_position, N * C)

    value_and_grad = jax.jit(jax.value_and_grad(case.scalar)).lower(*arrays).compile()
    value, grad = value_and_grad(*arrays)
    assert_close((value, grad), expected_grad, "value and gradient")
    assert_moves_less(value_and_grad, N * C)
    assert_split_as(grad, arrays[0], None if case.split_gradient else 1)


# --- linear_cross_entropy ---------------------------------------------------------------------

#: Where ``hidden`` (positions) and ``weight`` (vocabulary) are split.
LINEAR_LAYOUTS = {"vocab": "class", "hidden": "batch", "both": "both"}


def _linear_arrays(target: str) -> tuple[np.ndarray, ...]:
    """hidden, weight, target, and for class indices a bias and class weights."""
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((N, D))
    weight = rng.standard_normal((C, D)) / 4
    if target == "probabilities":
        return hidden, weight, _softmax(3 * rng.standard_normal((N, C)))
    return hidden, weight, _indices(rng, ignored=True), rng.standard_normal(C), _weight(rng)


def _linear(chunk_size: int | None, reduction: str) -> Callable[..., Any]:
    def loss(hidden: Any, weight: Any, target: Any, *rest: Any) -> Any:
        options: dict[str, Any] = {"reduction": reduction, "chunk_size": chunk_size}
        if rest:
            options.update(bias=rest[0], class_weight=rest[1], label_smoothing=0.1)
        return crossent.linear_cross_entropy(hidden, weight, target, **options)

    return loss


def _argnums(arrays: tuple[Any, ...]) -> tuple[int, ...]:
    return (0, 1, 3) if len(arrays) > 3 else (0, 1)  # hidden, weight (and bias)


@functools.cache
def _linear_on_one_device(target: str) -> tuple[Any, Any]:
    arrays = _linear_arrays(target)
    single = _single(arrays)
    out = jax.jit(_linear(None, "none"))(*single)
    step = jax.value_and_grad(_linear(None, "mean"), argnums=_argnums(arrays))
    return out, jax.jit(step)(*single)


@pytest.mark.parametrize("target", ["indices", "probabilities"])
@pytest.mark.parametrize(
    ("layout", "chunk_size"),
    [(layout, chunk) for layout in LINEAR_LAYOUTS for chunk in (None, 16)],
    ids=[
        f"{layout}{'-chunks' if chunk else ''}"
        for layout in LINEAR_LAYOUTS
        for chunk in (None, 16)
    ],
)
def test_linear_cross_entropy_on_a_mesh(layout: str, chunk_size: int | None, target: str) -> None:
    """Its forward pass and its three gradients, one chunk of all the positions (the default
    here) or four (``chunk_size=16``): no all-gather of a chunk of logits (``N x V`` at most)
    nor of the weight, and the weight's gradient split as the weight. With the positions split,
    no all-gather of them either (``hidden``, the target: ``N`` elements or more): every
    device computes its own positions, chunk by chunk."""
    arrays = _sharded(_linear_arrays(target), LINEAR_LAYOUTS[layout])
    expected_out, expected_grad = _linear_on_one_device(target)
    gathered = C * D if layout == "vocab" else N

    per_position = jax.jit(_linear(chunk_size, "none")).lower(*arrays).compile()
    out = per_position(*arrays)
    assert_close(out, expected_out, "per-position losses")
    assert_rows_split(out, LINEAR_LAYOUTS[layout])
    assert_moves_less(per_position, N * C, gathered=gathered)

    argnums = _argnums(arrays)
    step = jax.value_and_grad(_linear(chunk_size, "mean"), argnums=argnums)
    compiled = jax.jit(step).lower(*arrays).compile()
    value, grads = compiled(*arrays)
    assert_close((value, grads), expected_grad, "value and gradients")
    assert_moves_less(compiled, N * C, gathered=gathered)
    assert_split_as(grads, [arrays[i] for i in argnums])


@pytest.mark.parametrize("layout", ["vocab", "both"])
def test_linear_cross_entropy_value_and_grad_on_a_mesh(layout: str) -> None:
    """``crossent.value_and_grad`` (the kernel's own gradients, no autodiff) on a split
    vocabulary: the numbers of ``jax.value_and_grad``, nothing logits-sized gathered."""
    hidden, weight, target, bias, class_weight = _sharded(
        _linear_arrays("indices"), LINEAR_LAYOUTS[layout]
    )
    step = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1, 3))

    def loss(hidden: Any, weight: Any, target: Any, bias: Any, class_weight: Any) -> Any:
        return step(hidden, weight, target, bias, class_weight=class_weight, label_smoothing=0.1)

    arrays = (hidden, weight, target, bias, class_weight)
    compiled = jax.jit(loss).lower(*arrays).compile()
    value, grads = compiled(*arrays)
    assert_close((value, grads), _linear_on_one_device("indices")[1], "value and gradients")
    assert_moves_less(compiled, N * C, gathered=C * D)
    assert_split_as(grads, [hidden, weight, bias])
