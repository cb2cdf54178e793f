"""Fixtures shared by every test: the backend under test, its devices, and how to compare.

The backend and device come from ``CROSSENT_BACKEND`` and ``CROSSENT_DEVICE``, which nox sets
from ``backends/*.toml``; plain ``pytest`` tests NumPy on the CPU. torch in float64 is the oracle
in every session.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from array_api_compat import (
    array_namespace,
    is_array_api_strict_namespace,
    is_cupy_array,
    is_dask_array,
    is_dask_namespace,
    is_jax_namespace,
    is_torch_array,
)
from array_api_compat import device as array_device
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends"))
import matrix

SESSION = matrix.session()
for _name, _value in SESSION.env.items():
    os.environ.setdefault(_name, _value)

MODULE = importlib.import_module(SESSION.module)
_ROOT = SESSION.module.split(".")[0]
_SCOPE = {_ROOT: importlib.import_module(_ROOT), "np": np}

settings.register_profile(
    "crossent",
    deadline=None,  # a first jax.jit compiles for seconds
    max_examples=int(os.environ.get("CROSSENT_HYPOTHESIS_EXAMPLES", "40")),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile("crossent")


def _namespace() -> Any:
    return array_namespace(MODULE.asarray([0.0]))


XP = _namespace()


def pytest_report_header(config: pytest.Config) -> str:
    return (
        f"crossent backend: {SESSION.backend} ({SESSION.module}) on {SESSION.device}; "
        f"test devices: {', '.join(SESSION.test_devices)}"
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    if SESSION.available is not None and not eval(SESSION.available, dict(_SCOPE)):
        raise pytest.UsageError(
            f"{SESSION.backend} sees no {SESSION.device} device ({SESSION.available} is "
            "false): this session would test nothing it names"
        )


def _whole_suite(config: pytest.Config) -> bool:
    """Whether this run is the whole suite (as nox runs it), not a file or a selection."""
    root = Path(__file__).resolve().parents[1]
    whole = {root / "tests", root / "src" / "crossent"}
    args = list(config.invocation_params.args)
    if any(a in ("-k", "-m", "--lf", "--last-failed") or a.startswith(("-k", "-m")) for a in args):
        return False
    here = config.invocation_params.dir
    paths = [here / a.split("::")[0] for a in args if not a.startswith("-")]
    # option values (-p no:cacheprovider) are not paths on disk, and are passed over
    return all(p.resolve() in whole for p in paths if p.exists())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Leave this session's counts in ``.test-results/``: the docs' support matrix shows them."""
    if hasattr(session.config, "workerinput"):  # an xdist worker: the controller reports
        return
    if not _whole_suite(session.config):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    import json
    import time

    counts = {k: len(reporter.stats.get(k, [])) for k in ("passed", "failed", "skipped")}
    counts["failed"] += len(reporter.stats.get("error", []))
    folder = Path(__file__).resolve().parents[1] / ".test-results"
    folder.mkdir(exist_ok=True)
    record = {**counts, "date": time.strftime("%Y-%m-%d"), "module": SESSION.module}
    path = folder / f"{SESSION.backend}-{SESSION.device}.json"
    path.write_text(json.dumps(record) + "\n")


@pytest.fixture(scope="session")
def xp() -> Any:
    """The ``array_api_compat`` namespace of the backend under test."""
    return XP


@pytest.fixture(scope="session", params=SESSION.test_devices)
def device(request: pytest.FixtureRequest) -> Any:
    """Each device the backend file names for this session, in turn."""
    return eval(request.param, dict(_SCOPE))


# --- Making and reading arrays ---------------------------------------------------------------


def backend_dtype(name: str) -> Any:
    """The backend's dtype of that name; the test is skipped where the backend has none."""
    found = getattr(XP, name, None)
    if found is None and is_dask_namespace(XP):
        found = getattr(np, name, None)  # Dask arrays hold NumPy dtypes
    if found is None:
        pytest.skip(f"{SESSION.backend} has no {name}")
    return found


def _dtype(xp: Any, dtype: Any) -> Any:
    return backend_dtype(dtype) if isinstance(dtype, str) else dtype


@pytest.fixture
def to_xp(xp: Any, device: Any) -> Callable[..., Any]:
    """Turn a NumPy array (or nested lists) into an array of the backend on ``device``.

    ``dtype`` is a name (``"float32"``) or a dtype of the backend; by default the NumPy dtype
    is kept. Dask arrays are cut into two chunks along every axis, so reductions cross chunks.
    """

    def convert(values: Any, dtype: Any = None) -> Any:
        array = np.asarray(values)
        if dtype is None:
            out = xp.asarray(array, device=device)
        elif dtype in ("float16", "bfloat16"):
            out = xp.astype(xp.asarray(array.astype(np.float32), device=device), _dtype(xp, dtype))
        else:
            out = xp.asarray(array, dtype=_dtype(xp, dtype), device=device)
        if is_dask_array(out):
            out = out.rechunk(tuple(max(1, (s + 1) // 2) for s in out.shape))
        return out

    return convert


def to_numpy(x: Any) -> np.ndarray:
    """Any backend's array (or a torch tensor, or a list) as a NumPy array on the host."""
    if isinstance(x, (int, float, list, tuple, np.ndarray, np.generic)):
        return np.asarray(x)
    if is_torch_array(x):
        import torch

        x = x.detach().cpu()
        if x.dtype == torch.bfloat16:
            x = x.to(torch.float32)
        return x.numpy()
    if is_cupy_array(x):
        return x.get()
    if is_dask_array(x):
        return np.asarray(x.compute(scheduler="synchronous"))  # small arrays: no thread pool
    xp = array_namespace(x)
    if is_array_api_strict_namespace(xp):
        return np.from_dlpack(x.to_device(xp.Device("CPU_DEVICE")))
    return np.asarray(x)


@pytest.fixture
def assert_close(xp: Any, device: Any) -> Callable[..., None]:
    """Check an array of the backend against an expected value, array-api-extra style.

    The namespace, device, dtype (``dtype``, by name or object; float64 by default) and shape
    must match exactly; the values within ``rtol`` and ``atol``. ``desired`` is a NumPy array,
    a torch tensor (the oracle) or a number.
    """

    def check(
        actual: Any,
        desired: Any,
        *,
        rtol: float = 1e-10,
        atol: float = 0.0,
        dtype: Any = "float64",
    ) -> None:
        assert array_namespace(actual) is xp, (
            f"expected an array of {SESSION.module}, got {type(actual)}"
        )
        assert array_device(actual) == device, (
            f"expected the result on {device}, got {array_device(actual)}"
        )
        assert actual.dtype == _dtype(xp, dtype), f"expected dtype {dtype}, got {actual.dtype}"
        expected = np.asarray(to_numpy(desired), dtype=np.float64)
        assert tuple(actual.shape) == expected.shape, (
            f"expected shape {expected.shape}, got {tuple(actual.shape)}"
        )
        values = to_numpy(actual).astype(np.float64)
        np.testing.assert_allclose(values, expected, rtol=rtol, atol=atol, equal_nan=True)

    return check


# --- Running a public function as lazy and traced code -----------------------------------------


class ComputedTooEarly(AssertionError):
    pass


def _forbid_compute(*args: Any, **kwargs: Any) -> Any:
    raise ComputedTooEarly("Dask computed while the loss was being built")


@pytest.fixture
def lazy(xp: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a public function so that it runs as lazy or traced code where the backend has it.

    JAX: under ``jax.jit``, every non-array argument static. Dask: any compute while the loss
    is built fails the test; the result must be a Dask array. Elsewhere: the function itself.
    """

    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        if is_jax_namespace(xp):
            import jax

            @functools.wraps(func)
            def jitted(*args: Any, **kwargs: Any) -> Any:
                arrays = {k: v for k, v in kwargs.items() if isinstance(v, jax.Array)}
                static = {k: v for k, v in kwargs.items() if k not in arrays}
                traced = jax.jit(functools.partial(func, **static))
                return traced(*args, **arrays)

            return jitted
        if is_dask_namespace(xp):
            import dask

            @functools.wraps(func)
            def built(*args: Any, **kwargs: Any) -> Any:
                with dask.config.set(scheduler=_forbid_compute):
                    out = func(*args, **kwargs)
                pending = [out]
                while pending:  # a result, or nested tuples of them
                    array = pending.pop()
                    if isinstance(array, tuple):
                        pending.extend(array)
                        continue
                    assert is_dask_array(array), f"expected a Dask array, got {type(array)}"
                return out

            return built
        return func

    return wrap
