"""What the Triton kernels share: float32 functions that compile and interpret alike (Triton's
interpreter has no libdevice, and converts to bfloat16 by truncation), and the context their
launches run in on CPU tensors."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import numpy as np
import torch
import triton
import triton.language as tl

__all__ = ["_capped", "_exp", "_quiet", "_rounded", "_tanh"]


@triton.jit
def _exp(a):
    """``exp(a)`` in float32 to about 2 units in the last place for every ``a``. Compiled,
    ``tl.exp`` is ``ex2.approx(a * log2(e))``, whose rounding of the product costs ``|a|``
    times 6e-8 of the result (1e-6 at ``a = -20``); here Cody and Waite's reduction ``a = k ln 2
    + r`` (``ln 2`` in two parts, ``|r| <= ln(2) / 2``) leaves ``exp(r) 2^k``, with ``2^k`` in
    two factors so that neither overflows below float32's largest result nor flushes a
    subnormal one. NaN stays NaN; beyond the float32 range, 0 and inf."""
    a = tl.where(a < -110.0, -110.0, tl.where(a > 89.0, 89.0, a))  # NaN compares false
    k = tl.floor(a * 1.4426950408889634 + 0.5)
    r = (a - k * 0.693145751953125) - k * 1.4286068203094173e-06
    half = tl.floor(0.5 * k)
    return (tl.exp(r) * tl.exp2(half)) * tl.exp2(k - half)


@triton.jit
def _tanh(u):
    """tanh in float32 from ``exp`` alone (Triton's interpreter has no libdevice): Cephes'
    ``tanhf``, an odd polynomial below 0.625, ``1 - 2 / (exp(2|u|) + 1)`` above (1.6 units in
    the last place at most, against float64's tanh)."""
    a = tl.abs(u)
    z = u * u
    small = (
        (
            ((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
            + 1.33314422036e-1
        )
        * z
        - 3.33332819422e-1
    ) * z * u + u
    large = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    large = tl.where(u < 0.0, -large, large)
    return tl.where(a < 0.625, small, large)


@triton.jit
def _capped(x, softcap, HAS_SOFTCAP: tl.constexpr):
    if HAS_SOFTCAP:
        x = softcap * _tanh(x / softcap)
    return x


@triton.jit
def _rounded(v, dtype: tl.constexpr):
    """float32 ``v`` in ``dtype``, rounded to nearest, ties to even. bfloat16's by its bits:
    the same code compiled and interpreted (the interpreter's own conversion truncates)."""
    if dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        bits = tl.where(v != v, 0x7FC0, bits)  # NaN stays NaN (a carry could make it -0)
        return bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return v.to(dtype)


@contextlib.contextmanager
def _quiet(x: torch.Tensor) -> Iterator[None]:
    """NumPy's floating-point warnings off where the interpreter runs a kernel on CPU tensors:
    ``inf - inf`` in a lane that a ``where`` then drops is a result, not an accident, and so
    is the maximum of a block of NaNs (the interpreter's ``nanmax`` warns of it)."""
    if x.device.type != "cpu":
        yield
        return
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
