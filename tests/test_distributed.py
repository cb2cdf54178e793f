"""process_group: cross_entropy and linear_cross_entropy with the classes split among the
processes of a torch.distributed group.

Two processes on the gloo backend (spawned once for the whole module: spawning costs seconds)
run every case; each holds a slice of the classes, of unequal sizes, and one of the splits
leaves a process with no class at all. The oracle is torch's unsharded ``F.cross_entropy``
(of ``F.linear``) in float64 on the concatenated logits (weights): every process must get its
loss, and from ``backward()`` its own slice of the gradient (for ``linear_cross_entropy`` the
whole gradient of ``hidden``). Each process writes what failed to a file that the tests read.
"""

from __future__ import annotations

import datetime
import itertools
import json
import traceback
from pathlib import Path

import numpy as np
import pytest
from conftest import SESSION

if SESSION.backend != "torch":
    pytest.skip("process_group splits torch tensors", allow_module_level=True)

import torch
import torch.distributed as dist
import torch.nn.functional as F

import crossent

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

WORLD = 2
RTOL, ATOL = 1e-10, 1e-13
C, V, D = 7, 11, 5
#: Classes of each process, in rank order: unequal, and a process without a class.
CLASS_SPLITS = [(3, 4), (C, 0)]
VOCAB_SPLITS = [(5, 6), (0, V)]
REDUCTIONS = ["mean", "sum", "none"]


# --- What each process runs -------------------------------------------------------------------


def _close(label: str, actual: torch.Tensor, expected: torch.Tensor, failures: list[str]) -> None:
    try:
        torch.testing.assert_close(actual, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    except AssertionError as error:
        failures.append(f"{label}: {error}")


def _backward(loss: torch.Tensor, seed: int) -> None:
    """An upstream gradient that is not 1, the same on every process."""
    generator = torch.Generator().manual_seed(seed)
    upstream = torch.rand(loss.shape, generator=generator, dtype=loss.dtype) + 0.5
    loss.backward(upstream)


def _slice(x: torch.Tensor, dim: int, split: tuple[int, ...], rank: int) -> torch.Tensor:
    start = sum(split[:rank])
    return x.narrow(dim, start, split[rank])


def _target(rng: np.random.Generator, shape: tuple[int, ...], classes: int) -> torch.Tensor:
    target = rng.integers(0, classes, shape)
    target.reshape(-1)[1::4] = -100  # ignored positions (none of a single one)
    return torch.as_tensor(target)


def _cross_entropy_cases(rank: int, failures: list[str]) -> None:
    group = dist.new_group(list(range(WORLD)))
    layouts = [((6, C), 1), ((6, C), -1), ((3, C, 4), 1), ((C,), 0)]
    grid = itertools.product(layouts, [False, True], [0.0, 0.2], REDUCTIONS, CLASS_SPLITS)
    for seed, ((shape, axis), weighted, smoothing, reduction, split) in enumerate(grid):
        label = f"cross_entropy {shape} axis={axis} weighted={weighted} "
        label += f"smoothing={smoothing} {reduction} split={split}"
        rng = np.random.default_rng(seed)
        logits = torch.as_tensor(rng.standard_normal(shape) * 3)
        positions = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
        target = _target(rng, positions, C)
        weight = torch.as_tensor(rng.random(C) + 0.5) if weighted else None
        options = {"weight": weight, "reduction": reduction, "label_smoothing": smoothing}

        whole = logits.clone().requires_grad_(True)
        # torch reads the class axis at 1 (0 for unbatched logits)
        moved = whole if len(shape) == 1 else whole.movedim(axis, 1)
        expected = F.cross_entropy(moved, target, **options)
        _backward(expected, seed)
        local = _slice(logits, axis, split, rank).clone().requires_grad_(True)
        try:
            loss = crossent.cross_entropy(local, target, axis=axis, process_group=group, **options)
            _backward(loss, seed)
        except Exception:
            failures.append(f"{label}: {traceback.format_exc()}")
            continue
        _close(f"{label}: loss", loss, expected.detach(), failures)
        _close(f"{label}: gradient", local.grad, _slice(whole.grad, axis, split, rank), failures)

    # every position ignored: NaN for "mean", as torch's; a gradient of 0
    rng = np.random.default_rng(99)  # the same numbers on every process
    ignored = torch.full((4,), -100)
    logits = torch.as_tensor(rng.standard_normal((4, C)))
    local = _slice(logits, 1, (3, 4), rank).clone().requires_grad_(True)
    loss = crossent.cross_entropy(local, ignored, process_group=group)
    loss.backward()
    if not (torch.isnan(loss) and torch.equal(local.grad, torch.zeros_like(local))):
        failures.append(f"cross_entropy, every position ignored: {loss}, {local.grad}")

    # no gradient asked for: the loss alone, with the same collectives
    with torch.no_grad():
        logits = torch.as_tensor(rng.standard_normal((5, C)))
        target = torch.tensor([0, 6, 3, -100, 4])
        loss = crossent.cross_entropy(
            _slice(logits, 1, (3, 4), rank), target, process_group=dist.group.WORLD
        )
        _close("cross_entropy under no_grad", loss, F.cross_entropy(logits, target), failures)

    # float32: the same numbers within its rounding
    logits = torch.as_tensor(rng.standard_normal((5, C)), dtype=torch.float32)
    local = _slice(logits, 1, (3, 4), rank).clone().requires_grad_(True)
    whole = logits.clone().requires_grad_(True)
    F.cross_entropy(whole, target, label_smoothing=0.1).backward()
    loss = crossent.cross_entropy(local, target, label_smoothing=0.1, process_group=group)
    loss.backward()
    expected_grad = _slice(whole.grad, 1, (3, 4), rank)
    if not torch.allclose(local.grad, expected_grad, rtol=1e-5, atol=1e-7):
        failures.append(f"cross_entropy float32 gradient: {local.grad} != {expected_grad}")

    # class probabilities are refused, naming the argument, before any collective
    try:
        crossent.cross_entropy(local, torch.softmax(local, 1).detach(), process_group=group)
        failures.append("cross_entropy took class probabilities with process_group")
    except TypeError as error:
        if "class indices" not in str(error) or "process_group" not in str(error):
            failures.append(f"cross_entropy's error for class probabilities: {error}")


def _linear_cases(rank: int, failures: list[str]) -> None:
    group = dist.group.WORLD
    grid = itertools.product(
        [(8,), (2, 5)], [False, True], [0.0, 0.1], REDUCTIONS, VOCAB_SPLITS, [3, None]
    )
    for seed, (positions, weighted, smoothing, reduction, split, chunk) in enumerate(grid):
        if chunk is None and (weighted or smoothing):
            continue  # the automatic chunk size with the plainest options suffices
        label = f"linear_cross_entropy {positions} weighted={weighted} smoothing={smoothing} "
        label += f"{reduction} split={split} chunk_size={chunk}"
        rng = np.random.default_rng(100 + seed)
        hidden = torch.as_tensor(rng.standard_normal((*positions, D)))
        weight = torch.as_tensor(rng.standard_normal((V, D)))
        bias = torch.as_tensor(rng.standard_normal(V))
        target = _target(rng, positions, V)
        class_weight = torch.as_tensor(rng.random(V) + 0.5) if weighted else None
        options = {"reduction": reduction, "label_smoothing": smoothing}

        h, w, b = (x.clone().requires_grad_(True) for x in (hidden, weight, bias))
        logits = F.linear(h, w, b).reshape(-1, V)
        expected = F.cross_entropy(logits, target.reshape(-1), weight=class_weight, **options)
        if reduction == "none":
            expected = expected.reshape(positions)
        _backward(expected, seed)

        local_h = hidden.clone().requires_grad_(True)
        local_w = _slice(weight, 0, split, rank).clone().requires_grad_(True)
        local_b = _slice(bias, 0, split, rank).clone().requires_grad_(True)
        try:
            loss = crossent.linear_cross_entropy(
                local_h,
                local_w,
                target,
                local_b,
                class_weight=class_weight,
                chunk_size=chunk,
                process_group=group,
                **options,
            )
            _backward(loss, seed)
        except Exception:
            failures.append(f"{label}: {traceback.format_exc()}")
            continue
        _close(f"{label}: loss", loss, expected.detach(), failures)
        _close(f"{label}: hidden gradient", local_h.grad, h.grad, failures)
        _close(f"{label}: weight gradient", local_w.grad, _slice(w.grad, 0, split, rank), failures)
        _close(f"{label}: bias gradient", local_b.grad, _slice(b.grad, 0, split, rank), failures)

    # no bias, the weight alone differentiated, and no gradient at all
    rng = np.random.default_rng(7)
    hidden = torch.as_tensor(rng.standard_normal((6, D)))
    weight = torch.as_tensor(rng.standard_normal((V, D)))
    target = _target(rng, (6,), V)
    w = weight.clone().requires_grad_(True)
    expected = F.cross_entropy(F.linear(hidden, w), target)
    expected.backward()
    local_w = _slice(weight, 0, (5, 6), rank).clone().requires_grad_(True)
    loss = crossent.linear_cross_entropy(
        hidden, local_w, target, chunk_size=4, process_group=group
    )
    loss.backward()
    _close("linear_cross_entropy without bias: loss", loss, expected.detach(), failures)
    _close(
        "linear_cross_entropy without bias: weight gradient",
        local_w.grad,
        _slice(w.grad, 0, (5, 6), rank),
        failures,
    )
    with torch.no_grad():
        loss = crossent.linear_cross_entropy(
            hidden, local_w, target, chunk_size=4, process_group=group
        )
    _close("linear_cross_entropy under no_grad", loss, expected.detach(), failures)

    try:
        probabilities = torch.softmax(F.linear(hidden, weight), 1)
        crossent.linear_cross_entropy(hidden, local_w, probabilities, process_group=group)
        failures.append("linear_cross_entropy took class probabilities with process_group")
    except TypeError as error:
        if "class indices" not in str(error) or "process_group" not in str(error):
            failures.append(f"linear_cross_entropy's error for class probabilities: {error}")


CHECKS = {"cross_entropy": _cross_entropy_cases, "linear_cross_entropy": _linear_cases}


def _worker(rank: int, store: str, results: str) -> None:
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=60),  # a process that fails leaves the other waiting
    )
    found: dict[str, list[str]] = {}
    try:
        for name, check in CHECKS.items():
            failures: list[str] = []
            try:
                check(rank, failures)
            except Exception:
                failures.append(traceback.format_exc())
            found[name] = failures
    finally:
        Path(results, f"rank{rank}.json").write_text(json.dumps(found))
        dist.destroy_process_group()


# --- The tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """What failed on either process, by loss: the one spawn of the module."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(str(root / "store"), str(root)), nprocs=WORLD, join=True)
    found: dict[str, list[str]] = {name: [] for name in CHECKS}
    for rank in range(WORLD):
        for name, failed in json.loads((root / f"rank{rank}.json").read_text()).items():
            found[name] += [f"rank {rank}: {message}" for message in failed]
    return found


@pytest.mark.parametrize("loss", list(CHECKS))
def test_every_process_gets_the_unsharded_loss_and_its_slice_of_the_gradient(loss, failures):
    assert not failures[loss], "\n".join(failures[loss])


class NotAGroup:
    pass


def test_process_group_must_be_a_process_group():
    logits = torch.zeros((2, 3), dtype=torch.float64)
    target = torch.tensor([0, 2])
    with pytest.raises(TypeError, match=r"process_group must be a torch.distributed ProcessGroup"):
        crossent.cross_entropy(logits, target, process_group=NotAGroup())
    with pytest.raises(TypeError, match=r"process_group must be a torch.distributed ProcessGroup"):
        crossent.linear_cross_entropy(logits, logits, target, process_group=NotAGroup())


def test_process_group_takes_torch_tensors_only():
    logits = np.zeros((2, 3))
    target = np.array([0, 2])
    with pytest.raises(TypeError, match=r"process_group splits torch tensors.*numpy\.ndarray"):
        crossent.cross_entropy(logits, target, process_group=NotAGroup())
    with pytest.raises(TypeError, match=r"process_group splits torch tensors.*numpy\.ndarray"):
        crossent.linear_cross_entropy(logits, logits, target, process_group=NotAGroup())


@pytest.mark.parametrize("loss", ["cross_entropy", "linear_cross_entropy"])
def test_value_and_grad_refuse_process_group(loss):
    func = getattr(crossent, loss)
    arguments = [torch.zeros((2, 3), dtype=torch.float64), torch.tensor([0, 2])]
    if loss == "linear_cross_entropy":
        arguments.insert(1, torch.zeros((3, 3), dtype=torch.float64))
    with pytest.raises(TypeError, match=rf"do not take process_group: differentiate {loss}"):
        crossent.value_and_grad(func)(*arguments, process_group=NotAGroup())
    value, _ = crossent.value_and_grad(func)(*arguments, process_group=None)
    assert torch.equal(value, func(*arguments))


@pytest.mark.parametrize("loss", ["cross_entropy", "linear_cross_entropy"])
def test_process_group_is_refused_inside_a_torch_func_transform(loss):
    """Inside vmap the collectives and the Functions cannot take the batched tensors: a clear
    error before any group is touched (linear_cross_entropy once returned None there)."""
    func = getattr(crossent, loss)
    hidden = torch.zeros((4, 2, 3), dtype=torch.float64)
    weight = torch.zeros((3, 3), dtype=torch.float64)
    target = torch.tensor([0, 2])

    def one(x):
        arguments = (x, target) if loss == "cross_entropy" else (x, weight, target)
        return func(*arguments, process_group=NotAGroup())

    with pytest.raises(TypeError, match=r"process_group splits plain tensors.*torch.func"):
        torch.func.vmap(one)(hidden)
