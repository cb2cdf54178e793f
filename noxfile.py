"""The test matrix, built from ``backends/*.toml``: one ``tests`` session per backend and device.

``nox`` runs every CPU session and ``lint``; ``nox -l`` lists them all;
``nox -s "tests(backend='jax', device='cpu')"`` runs one. A session whose device this machine
lacks (no CUDA GPU) skips with a message saying so. ``nox -s docs`` builds the site and
``nox -s bench`` runs the benchmarks; neither is part of the default run. ``nox -s slow`` runs
the tests marked slow, in sessions of their own; CI runs it after ``nox``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "backends"))
import matrix  # noqa: E402

nox.options.default_venv_backend = "venv"  # pip: it finds the CPU build of torch on this disk
nox.options.reuse_existing_virtualenvs = True

MATRIX = matrix.sessions()


def _session_name(s: matrix.Session) -> str:
    return f"tests(backend='{s.backend}', device='{s.device}')"


nox.options.sessions = [_session_name(s) for s in MATRIX if s.device == "cpu"] + ["lint"]


def _missing_device(kind: str) -> str | None:
    """Why this machine has no device of ``kind``, or None when it has one."""
    if kind == "cpu":
        return None
    if kind == "cuda":
        smi = shutil.which("nvidia-smi")
        if smi is None:
            return "no nvidia-smi on PATH, so no NVIDIA driver"
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
        if listed.returncode != 0 or "GPU" not in listed.stdout:
            return "nvidia-smi lists no GPU"
        return None
    return f"nox knows no device kind {kind!r}"


def _parallel(device: str) -> list[str]:
    """pytest-xdist's workers for a session: one a core (at most 4) on a CPU device, where the
    tests are single-threaded (compiling, dispatching) and each worker its own process; none on
    an accelerator, which every worker would share (and JAX preallocate)."""
    workers = min(os.cpu_count() or 1, 4)
    return ["-n", str(workers)] if device == "cpu" and workers > 1 else []


def _prepare(session: nox.Session, backend: str, device: str) -> dict[str, str]:
    """Skip where the device is missing, else install the backend's requirements; the
    environment its tests read."""
    spec = matrix.session(backend, device)
    why = _missing_device(device)
    if why is not None:
        session.skip(f"not run: {backend} on {device} needs a {device} device here ({why})")
    session.install("-e", ".[test]", *spec.requirements)
    return {**spec.env, matrix.BACKEND_VARIABLE: backend, matrix.DEVICE_VARIABLE: device}


@nox.session
@nox.parametrize(
    ("backend", "device"),
    [(s.backend, s.device) for s in MATRIX],
    ids=[f"backend='{s.backend}', device='{s.device}'" for s in MATRIX],
)
def tests(session: nox.Session, backend: str, device: str) -> None:
    """The whole test suite on one backend and device, torch in float64 as the oracle."""
    env = _prepare(session, backend, device)
    args = list(session.posargs) or list(matrix.session(backend, device).tests)
    if backend == "numpy" and not args:
        # the docstrings' examples too; the torch, JAX (Pallas) and Dask kernels import their
        # framework
        args = ["tests", "--doctest-modules", "src/crossent"]
        args += ["--ignore=src/crossent/_backends/_torch"]  # a package: all its modules
        args += ["--ignore=src/crossent/_backends/_torch_distributed.py"]
        args += ["--ignore=src/crossent/_backends/_jax.py"]
        args += ["--ignore=src/crossent/_backends/_pallas.py"]
        args += ["--ignore=src/crossent/_backends/_dask.py"]
        # Keras, transformers: the docs build runs their examples
        args += ["--ignore=src/crossent/keras.py", "--ignore=src/crossent/transformers.py"]
    session.run("python", "-m", "pytest", *_parallel(device), *args, env=env)


SLOW = [s for s in MATRIX if s.slow_tests]


@nox.session
@nox.parametrize(
    ("backend", "device"),
    [(s.backend, s.device) for s in SLOW],
    ids=[f"backend='{s.backend}', device='{s.device}'" for s in SLOW],
)
def slow(session: nox.Session, backend: str, device: str) -> None:
    """The tests marked slow (whole option grids, compilers) of one backend and device: those
    whose file says ``slow_tests = true``. CI runs them all (``nox -s slow``)."""
    env = _prepare(session, backend, device)
    args = [*_parallel(device), "-m", "slow", *session.posargs]
    session.run("python", "-m", "pytest", *args, env=env)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on everything; mypy, strict, on src/; the import contracts of pyproject.toml."""
    session.install("ruff==0.17.6", "mypy==2.4.1", "import-linter==2.17", "-e", ".")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("lint-imports")


@nox.session
def docs(session: nox.Session) -> None:
    """The site in docs/_build/html, warnings as errors, every example run (doctest)."""
    session.install("-e", ".[docs]")
    env = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    common = ["-W", "--keep-going", "-d", "docs/_build/doctrees", "docs"]
    session.run("sphinx-build", "-b", "html", *common, "docs/_build/html", env=env)
    session.run("python", "docs/_ext/offline.py", "docs/_build/html")  # nothing from a network
    session.run("sphinx-build", "-b", "doctest", *common, "docs/_build/doctest", env=env)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite (never part of the test run): ``nox -s bench -- --help``."""
    session.install("-e", ".[bench]")
    # glibc's thresholds are set per phase, times and memory (benchmarks/harness.py)
    session.run("python", "benchmarks/run.py", *session.posargs)
    why = _missing_device("cuda")
    if why is None:  # crossent against the peers on the GPU: benchmarks/results-cuda.json
        session.run("python", "benchmarks/gpu.py")
    else:
        session.log(f"benchmarks/gpu.py not run: no CUDA GPU here ({why})")
