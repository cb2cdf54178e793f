"""Dask: every loss equal to NumPy's over every chunking, each block of logits read once, and
logits larger than a cluster's memory on ``dask.distributed`` (slow)."""

from __future__ import annotations

import itertools
import os
import sys
import time

import numpy as np
import pytest
from conftest import SESSION

import crossent
from crossent._dispatch import generic_only

if SESSION.backend != "dask":
    pytest.skip("Dask's graphs: the dask session", allow_module_level=True)

import dask
import dask.array as da

N, C = 60, 50

#: How the logits (N, C) are cut: the Dask kernel must give NumPy's numbers on each.
CHUNKINGS = {
    "one chunk": (N, C),
    "rows only": (16, C),
    "classes chunked": (16, 16),
    "many class blocks": (30, 3),  # 17 blocks: a reduction tree of several levels
    "ragged": ((7, 23, 30), (3, 20, 27)),
}


def _inputs(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, C)) * 4
    logits[0, :20] = -np.inf  # -inf logits across a block border
    logits[1] = -np.inf  # a row of them
    target = rng.integers(0, C, N)
    target[::7] = -100
    soft = rng.dirichlet(np.ones(C), size=N)
    probs = rng.dirichlet(np.ones(C), size=N)
    probs[0, :5] = 0.0  # probabilities of exactly 0 and 1
    probs[1] = 0.0
    probs[1, 3] = 1.0
    return {"logits": logits, "target": target, "soft": soft, "probs": probs}


def _calls(inputs: dict[str, np.ndarray]) -> list[tuple[str, object, tuple[str, ...], dict]]:
    """(id, function, argument names, options) for every public function."""
    weight = np.random.default_rng(1).uniform(0.2, 2.0, C)
    half = np.full((N, C), 0.5)
    calls: list[tuple[str, object, tuple[str, ...], dict]] = []
    for reduction, smoothing, weighted in itertools.product(
        ["mean", "sum", "none"], [0.0, 0.3], [False, True]
    ):
        options = {"reduction": reduction, "label_smoothing": smoothing}
        if weighted:
            options["weight"] = weight
        for target in ("target", "soft"):
            calls.append(("cross_entropy", crossent.cross_entropy, ("logits", target), options))
    for reduction in ["mean", "none"]:
        options = {"reduction": reduction, "weight": weight}
        calls.append(("nll_loss", crossent.nll_loss, ("logits", "target"), options))
        calls.append(
            ("from_probs", crossent.cross_entropy_from_probs, ("probs", "target"), options)
        )
        calls.append(
            (
                "bce_with_logits",
                crossent.binary_cross_entropy_with_logits,
                ("logits", "half"),
                {"reduction": reduction},
            )
        )
        calls.append(("kl_div", crossent.kl_div, ("logits", "soft"), {"reduction": reduction}))
    inputs["half"] = half
    calls.append(("log_softmax", crossent.log_softmax, ("logits",), {}))
    calls.append(("log_softmax-0", crossent.log_softmax, ("logits",), {"axis": 0}))
    calls.append(("softmax", crossent.softmax, ("logits",), {}))
    calls.append(("logsumexp", crossent.logsumexp, ("logits",), {}))
    calls.append(("logsumexp-both", crossent.logsumexp, ("logits",), {"axis": (0, 1)}))
    return calls


INPUTS = _inputs()
CALLS = _calls(INPUTS)


def _dask(values: np.ndarray, chunks: object) -> da.Array:
    if values.ndim == 1:
        chunks = (chunks[0],)  # type: ignore[index]
    return da.from_array(values, chunks=chunks)


def _compute(out: object) -> object:
    if isinstance(out, tuple):
        return tuple(_compute(o) for o in out)
    return np.asarray(out.compute(scheduler="synchronous"))  # type: ignore[attr-defined]


def _close(actual: object, desired: object) -> None:
    if isinstance(desired, tuple):
        for a, d in zip(actual, desired, strict=True):  # type: ignore[call-overload]
            _close(a, d)
        return
    # The gradient's entries are differences (softmax minus target): judged on its scale.
    desired = np.asarray(desired)
    finite = np.abs(desired[np.isfinite(desired)])
    scale = float(finite.max()) if finite.size else 0.0
    np.testing.assert_allclose(actual, desired, rtol=1e-12, atol=1e-12 * scale, equal_nan=True)


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")
@pytest.mark.parametrize("chunking", list(CHUNKINGS), ids=list(CHUNKINGS))
@pytest.mark.parametrize(
    ("name", "func", "names", "options"), CALLS, ids=[f"{c[0]}-{i}" for i, c in enumerate(CALLS)]
)
def test_every_loss_equals_numpy_on_every_chunking(name, func, names, options, chunking):
    chunks = CHUNKINGS[chunking]
    args = [_dask(INPUTS[n], chunks) for n in names]
    dask_options = {
        k: _dask(v, (v.shape,)) if isinstance(v, np.ndarray) else v for k, v in options.items()
    }
    expected = func(*(INPUTS[n] for n in names), **options)
    _close(_compute(func(*args, **dask_options)), expected)
    if func in (crossent.log_softmax, crossent.softmax, crossent.logsumexp):
        return
    expected = crossent.value_and_grad(func)(*(INPUTS[n] for n in names), **options)
    _close(_compute(crossent.value_and_grad(func)(*args, **dask_options)), expected)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_classes_on_axis_1_and_half_precision(smoothing):
    rng = np.random.default_rng(2)
    logits = rng.standard_normal((6, 50, 7)) * 3
    target = rng.integers(0, 50, (6, 7))
    target[0, 0] = -100
    x = da.from_array(logits, chunks=(3, 16, 4))
    t = da.from_array(target, chunks=(3, 4))
    options = {"axis": 1, "label_smoothing": smoothing, "reduction": "none"}
    expected = crossent.cross_entropy(logits, target, **options)
    _close(_compute(crossent.cross_entropy(x, t, **options)), expected)
    half = crossent.cross_entropy(x.astype(np.float16), t, **options)
    assert half.dtype == np.float16
    reference = crossent.cross_entropy(logits.astype(np.float16), target, **options)
    np.testing.assert_allclose(_compute(half), reference, rtol=1e-3)


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero) encountered:RuntimeWarning")
def test_nan_and_inf_propagate_across_blocks():
    logits = np.zeros((4, 9))
    logits[0, 7] = np.nan  # NaN in the last block, not the target's
    logits[1, 8] = np.inf
    logits[2, :] = -np.inf
    logits[3, 2] = -np.inf
    target = np.array([0, 0, 0, 2])
    x, t = da.from_array(logits, chunks=(2, 3)), da.from_array(target, chunks=2)
    expected = crossent.cross_entropy(logits, target, reduction="none")
    _close(_compute(crossent.cross_entropy(x, t, reduction="none")), expected)
    assert np.isnan(expected[:3]).all()
    assert expected[3] == np.inf
    _close(_compute(crossent.logsumexp(x, axis=1)), crossent.logsumexp(logits, axis=1))
    _close(_compute(crossent.log_softmax(x)), crossent.log_softmax(logits))


def test_a_bad_index_gives_nan():
    x = da.zeros((4, 9), chunks=(2, 3))
    t = da.from_array(np.array([0, 9, -1, -100]), chunks=2)
    out = _compute(crossent.cross_entropy(x, t, reduction="none"))
    np.testing.assert_array_equal(np.isnan(out), [False, True, True, False])


def _readers(out: da.Array, source: da.Array) -> dict[object, int]:
    """How many tasks of ``out``'s graph read each block of ``source``, through the per-block
    conversions of layout and dtype (``moveaxis``, ``astype``) that come first."""
    graph = dict(out.__dask_graph__())
    dependents: dict[object, set[object]] = {}
    for key, task in graph.items():
        for dependency in _dependencies(task):
            dependents.setdefault(dependency, set()).add(key)
    counts = {}
    for block in (k for k in graph if isinstance(k, tuple) and k[0] == source.name):
        readers = dependents.get(block, set())
        while len(readers) == 1:
            (reader,) = readers
            if not str(reader[0]).startswith(("transpose", "astype")):
                break
            readers = dependents.get(reader, set())
        counts[block] = len(readers)
    return counts


def _dependencies(task: object) -> set[object]:
    found = getattr(task, "dependencies", None)  # Dask's task objects
    if found is not None:
        return set(found)
    from dask.core import get_dependencies

    return set(get_dependencies({"probe": task}, "probe"))


@pytest.mark.parametrize("target", ["indices", "probabilities"])
def test_each_block_of_logits_is_read_once(target):
    x = da.random.default_rng(0).standard_normal((64, 40), chunks=(16, 10))
    if target == "indices":
        t = da.from_array(np.arange(64) % 40, chunks=16)
    else:
        t = da.full((64, 40), 1 / 40, chunks=(16, 10))
    loss = crossent.cross_entropy(x, t, label_smoothing=0.1)
    assert set(_readers(loss, x).values()) == {1}
    with generic_only():  # the standard alone: max, then x - max, then the target's logit
        generic = crossent.cross_entropy(x, t, label_smoothing=0.1)
    assert min(_readers(generic, x).values()) == (3 if target == "indices" else 2)
    # The gradient reads each block once more: it is as large as the logits.
    value, grad = crossent.value_and_grad(crossent.cross_entropy)(x, t, label_smoothing=0.1)
    both = da.stack([da.broadcast_to(value, grad.shape), grad])
    assert set(_readers(both, x).values()) == {2}
    assert set(_readers(crossent.logsumexp(x, axis=1), x).values()) == {1}


# --- dask.distributed: logits larger than the cluster's memory ---------------------------------

#: The larger-than-memory test: 2 worker processes of WORKER_MEMORY each; float32 logits of
#: ROWS x CLASSES (2.1 GB, four times the cluster's memory) in blocks of BLOCK (8 MiB).
WORKERS, WORKER_MEMORY = 2, "256MiB"
ROWS, CLASSES, BLOCK = 16384, 32768, (1024, 2048)


def logits_block(row: int, column: int) -> np.ndarray:
    """One block of the big logits, made from its position alone: a worker and the NumPy
    reference make the same numbers."""
    rng = np.random.default_rng([7, row, column])
    return rng.standard_normal(BLOCK, dtype=np.float32) * np.float32(4.0)


def target_block(row: int) -> np.ndarray:
    return np.random.default_rng([8, row]).integers(0, CLASSES, BLOCK[0])


def lazy_logits() -> tuple[da.Array, da.Array]:
    """The logits and target as Dask arrays that nothing holds: each block is generated by
    the task that needs it."""
    rows, columns = ROWS // BLOCK[0], CLASSES // BLOCK[1]
    logits = da.map_blocks(
        _generated,
        dtype=np.float32,
        chunks=((BLOCK[0],) * rows, (BLOCK[1],) * columns),
        meta=np.empty((0, 0), np.float32),
    )
    target = da.map_blocks(
        _generated_target, dtype=np.int64, chunks=((BLOCK[0],) * rows,), meta=np.empty(0, int)
    )
    return logits, target


def _generated(block_info: dict | None = None) -> np.ndarray:
    row, column = block_info[None]["chunk-location"]  # type: ignore[index]
    return logits_block(row, column)


def _generated_target(block_info: dict | None = None) -> np.ndarray:
    return target_block(block_info[None]["chunk-location"][0])  # type: ignore[index]


def numpy_block_by_block() -> float:
    """The mean loss, a slab of rows at a time, by crossent on NumPy."""
    total = 0.0
    for row in range(ROWS // BLOCK[0]):
        slab = np.concatenate([logits_block(row, c) for c in range(CLASSES // BLOCK[1])], axis=1)
        total += float(crossent.cross_entropy(slab, target_block(row), reduction="sum"))
    return total / ROWS


@pytest.mark.slow
def test_logits_larger_than_the_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers lack tests/
    logits, target = lazy_logits()
    assert logits.nbytes > 4 * WORKERS * dask.utils.parse_bytes(WORKER_MEMORY) * 0.99
    with (
        distributed.LocalCluster(
            n_workers=WORKERS,
            threads_per_worker=1,
            memory_limit=WORKER_MEMORY,
            processes=True,
            dashboard_address=None,
            local_directory=str(tmp_path),
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        before = client.run(os.getpid)
        started = time.perf_counter()
        loss = float(crossent.cross_entropy(logits, target).compute())
        seconds = time.perf_counter() - started
        after = client.run(os.getpid)
    assert before == after, "a worker was restarted: it ran out of memory"
    assert np.isclose(loss, numpy_block_by_block(), rtol=1e-5)
    print(f"{logits.nbytes / 1e9:.1f} GB of logits in {seconds:.1f} s")
