"""Fast paths for numpy arrays."""

from __future__ import annotations
