"""Reads the backend files of this folder: the one place that knows their keys.

``noxfile.py`` builds its sessions from :func:`sessions`; ``tests/conftest.py`` builds its
fixtures from :func:`session`. Standard library only: nox imports it before any install.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FOLDER = Path(__file__).resolve().parent

#: Environment variables through which nox tells pytest which session it runs.
BACKEND_VARIABLE = "CROSSENT_BACKEND"
DEVICE_VARIABLE = "CROSSENT_DEVICE"


@dataclass(frozen=True)
class Session:
    """One (backend, device) pair of the test matrix."""

    backend: str
    device: str
    module: str
    requirements: tuple[str, ...]
    env: dict[str, str]
    test_devices: tuple[str, ...]
    available: str | None
    #: Whether the backend has tests marked slow, which ``nox -s slow`` runs.
    slow_tests: bool = False
    #: What runs over several devices or processes, and how it is tested: the support
    #: matrix's "distributed" column.
    distributed: str = "one process"
    #: The pytest arguments of the session where the file gives them (a sample of the
    #: suite); empty for the whole suite.
    tests: tuple[str, ...] = ()


def _read(path: Path) -> list[Session]:
    spec = tomllib.loads(path.read_text())
    out = []
    for kind, device in spec["devices"].items():
        out.append(
            Session(
                backend=path.stem,
                device=kind,
                module=spec["module"],
                requirements=tuple(spec.get("requirements", ()))
                + tuple(device.get("requirements", ())),
                env={**spec.get("env", {}), **device.get("env", {})},
                test_devices=tuple(device["test_devices"]),
                available=device.get("available"),
                slow_tests=bool(spec.get("slow_tests", False)),
                distributed=str(spec.get("distributed", "one process")),
                tests=tuple(spec.get("tests", ())),
            )
        )
    return out


def sessions() -> list[Session]:
    """Every (backend, device) pair declared in this folder, in name order."""
    return [s for path in sorted(FOLDER.glob("*.toml")) for s in _read(path)]


def session(backend: str | None = None, device: str | None = None) -> Session:
    """The pair named by the arguments, else by the environment; NumPy on the CPU by default."""
    backend = backend or os.environ.get(BACKEND_VARIABLE, "numpy")
    device = device or os.environ.get(DEVICE_VARIABLE, "cpu")
    for s in sessions():
        if (s.backend, s.device) == (backend, device):
            return s
    known = ", ".join(f"{s.backend}/{s.device}" for s in sessions())
    raise LookupError(f"no backend file declares {backend}/{device}; known pairs: {known}")
