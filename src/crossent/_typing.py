"""Type aliases shared by the modules: arrays of any library are ``Array``."""

from __future__ import annotations

from types import ModuleType
from typing import Any, TypeAlias

#: An array of any Array API library (NumPy, PyTorch, JAX, CuPy, Dask, array-api-strict).
Array: TypeAlias = Any
#: A dtype object of any Array API library.
DType: TypeAlias = Any
#: A device object of any Array API library.
Device: TypeAlias = Any
#: An ``array_api_compat`` namespace.
Namespace: TypeAlias = ModuleType

__all__ = ["Array", "DType", "Device", "Namespace"]
