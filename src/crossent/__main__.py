"""``python -m crossent``: what crossent sees here, and one loss computed on every backend.

Prints crossent's version, each supported array library with its version and devices (or that
it is not installed; nothing missing is ever imported), and a worked example: the cross-entropy
of a small batch of logits on every installed backend, with how far each is from an
independent float64 reference: the loss computed here in plain Python (``math.fsum``,
``math.exp``, ``math.log``), no array library involved, so that even with NumPy alone the
comparison is with something that is not crossent.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

import crossent

LOGITS = np.array(
    [
        [2.0, 0.5, -1.0, 0.0],
        [0.1, 0.2, 3.0, -2.0],
        [1e4, -1e4, 0.0, 5.0],  # extreme logits: exact, no overflow
    ]
)
TARGET = np.array([0, 2, 0])
#: What agreement means here: float64 results equal to 12 significant digits.
TOLERANCE = 1e-12


def _devices_torch(module: Any) -> list[str]:
    found = ["cpu"]
    if module.cuda.is_available():
        found += [f"cuda:{i}" for i in range(module.cuda.device_count())]
    return found


def _devices_jax(module: Any) -> list[str]:
    jax = importlib.import_module("jax")
    return [f"{d.platform}:{d.id}" for d in jax.devices()]


def _devices_cupy(module: Any) -> list[str]:
    try:
        count = module.cuda.runtime.getDeviceCount()
    except Exception as error:  # no driver, no GPU: CuPy raises its own errors for each
        return [f"none usable ({type(error).__name__})"]
    return [f"cuda:{i}" for i in range(count)]


def _devices_strict(module: Any) -> list[str]:
    return [str(d).split("'")[1] for d in module.__array_namespace_info__().devices()]


#: name shown, distribution to look up, module whose arrays are used, devices lister
BACKENDS: list[tuple[str, str, str, Callable[[Any], list[str]]]] = [
    ("numpy", "numpy", "numpy", lambda m: ["cpu"]),
    ("torch", "torch", "torch", _devices_torch),
    ("jax", "jax", "jax.numpy", _devices_jax),
    ("cupy", "cupy", "cupy", _devices_cupy),
    ("dask", "dask", "dask.array", lambda m: ["cpu (NumPy chunks)"]),
    ("array_api_strict", "array_api_strict", "array_api_strict", _devices_strict),
]


def _installed(top_level: str) -> bool:
    return importlib.util.find_spec(top_level) is not None


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in (name, name.replace("_", "-"), f"{name}-cuda12x", f"{name}-cuda11x"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "?"


def _load(module_name: str) -> Any:
    if module_name == "jax.numpy":
        jax = importlib.import_module("jax")
        jax.config.update("jax_enable_x64", True)  # the example is float64
    return importlib.import_module(module_name)


def _example(module: Any) -> float:
    logits = module.asarray(LOGITS)
    target = module.asarray(TARGET)
    loss = crossent.cross_entropy(logits, target)
    compute = getattr(loss, "compute", None)  # Dask: the loss is built lazily
    if compute is not None:
        loss = compute()
    return float(loss)


def _python_reference() -> float:
    """The mean cross-entropy of LOGITS and TARGET in plain Python floats: each row's
    log-sum-exp shifted by its maximum, summed with ``math.fsum``."""
    losses = []
    for row, label in zip(LOGITS.tolist(), TARGET.tolist(), strict=True):
        top = max(row)
        log_norm = top + math.log(math.fsum(math.exp(x - top) for x in row))
        losses.append(log_norm - row[label])
    return math.fsum(losses) / len(losses)


def _torch_reference() -> float:
    torch = importlib.import_module("torch")
    functional = importlib.import_module("torch.nn.functional")
    return float(functional.cross_entropy(torch.asarray(LOGITS), torch.asarray(TARGET)))


def main() -> int:
    print(f"crossent {crossent.__version__} on Python {sys.version.split()[0]}")
    print()
    print("Backends")
    available: list[tuple[str, Any]] = []
    for name, top_level, module_name, list_devices in BACKENDS:
        if not _installed(top_level):
            print(f"  {name:<18}not installed")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = _load(module_name)
                devices = ", ".join(list_devices(module))
        except Exception as error:  # a broken install is reported, not fatal
            print(f"  {name:<18}{_version(top_level):<12}fails to load: {error}")
            continue
        print(f"  {name:<18}{_version(top_level):<12}{devices}")
        available.append((name, module))

    print()
    print("Worked example: crossent.cross_entropy(logits, target), mean over 3 positions")
    with np.printoptions(precision=1, suppress=True):
        for line in f"logits = {LOGITS!r}".splitlines():
            print(f"  {line}")
    print(f"  target = {TARGET!r}")
    print()
    reference = _python_reference()
    failures = 0
    for name, module in available:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = _example(module)
        except Exception as error:
            print(f"  {name:<18}failed: {type(error).__name__}: {error}")
            failures += 1
            continue
        gap = abs(value - reference) / abs(reference)
        agrees = gap <= TOLERANCE
        failures += not agrees
        verdict = "agrees" if agrees else "DISAGREES"
        print(f"  {name:<18}{value:.15f}   {verdict} with the reference (relative gap {gap:.1e})")
    print(f"  {'reference':<18}{reference:.15f}   plain Python floats (math.fsum), no crossent")
    if _installed("torch"):
        torch_value = _torch_reference()
        print(f"  {'F.cross_entropy':<18}{torch_value:.15f}   torch's, the oracle of the tests")
    print()
    if failures:
        print(f"{failures} backend(s) failed or disagree with the reference.")
        return 1
    print(
        f"All {len(available)} installed backends agree with the independent float64 reference "
        f"to {TOLERANCE:g}."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
