"""The test matrix itself: each session tests the backend it names, and nothing else."""

from __future__ import annotations

import subprocess
import sys

import matrix
import numpy as np
from conftest import MODULE, SESSION

import crossent


def test_arrays_under_test_are_of_the_selected_backend(xp, to_xp, device):
    # A session must never fall back to NumPy unnoticed: the arrays the tests make, and what
    # crossent returns for them, belong to the backend the session names.
    backend_type = type(MODULE.asarray([0.0]))
    made = to_xp(np.zeros((2, 3)))
    out = crossent.cross_entropy(made, to_xp(np.array([0, 2])))
    for array in (made, out):
        assert isinstance(array, backend_type), f"expected {backend_type}, got {type(array)}"
        if SESSION.backend != "numpy":
            assert not isinstance(array, np.ndarray)


def test_the_session_is_the_one_nox_asked_for():
    import os

    assert SESSION.backend == os.environ.get(matrix.BACKEND_VARIABLE, "numpy")
    assert SESSION.device == os.environ.get(matrix.DEVICE_VARIABLE, "cpu")
    assert MODULE.__name__ == SESSION.module


def test_every_backend_file_is_complete():
    names = {s.backend for s in matrix.sessions()}
    assert {"numpy", "torch", "jax", "cupy", "dask", "array_api_strict"} <= names
    for s in matrix.sessions():
        assert s.device in ("cpu", "cuda")
        assert s.test_devices, s
        if s.device != "cpu":
            assert s.available, f"{s.backend}/{s.device} must say how to see its device"


def test_importing_crossent_imports_no_other_array_library():
    frameworks = ("torch", "jax", "jaxlib", "cupy", "dask", "array_api_strict", "scipy")
    code = (
        "import sys, crossent; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {frameworks!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_main_job_shows_every_backend_agreeing():
    out = subprocess.run(
        [sys.executable, "-m", "crossent"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"crossent {crossent.__version__}" in out.stdout
    assert "installed backends agree" in out.stdout
    assert "numpy" in out.stdout
    assert "DISAGREES" not in out.stdout
    assert "agree with the independent float64 reference" in out.stdout


def test_main_job_s_reference_is_torch_s_loss():
    """The plain-Python reference of ``python -m crossent`` is the loss torch computes."""
    import torch
    import torch.nn.functional as F

    from crossent import __main__ as main_job

    expected = F.cross_entropy(torch.asarray(main_job.LOGITS), torch.asarray(main_job.TARGET))
    assert abs(main_job._python_reference() - float(expected)) <= 1e-15 * float(expected)


def test_version_is_a_string():
    assert isinstance(crossent.__version__, str)
    assert crossent.__version__.count(".") == 2


def test_readme_example_runs():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert blocks, "the README has no Python example"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


def test_a_sample_of_the_suite_names_files_that_exist():
    root = matrix.FOLDER.parent
    for s in matrix.sessions():
        for argument in s.tests:
            if argument.startswith("tests/"):
                assert (root / argument).exists(), (s.backend, argument)


def test_the_triton_switch_is_handed_to_triton_as_crossent_is_imported():
    import os

    code = "import os, crossent; print(os.environ.get('TRITON_INTERPRET'))"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**env, "CROSSENT_TRITON_INTERPRET": "1"},
    )
    assert out.stdout.strip() == "1"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "None"
