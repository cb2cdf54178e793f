"""Fast paths for torch arrays."""

from __future__ import annotations
