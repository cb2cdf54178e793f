"""Fast paths for jax arrays."""

from __future__ import annotations
