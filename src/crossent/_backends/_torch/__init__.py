"""Kernels for PyTorch tensors: torch's own, through ``torch.nn.functional``.

Autograd through these is torch's own backward, so that ``crossent.cross_entropy`` on tensors
trains exactly as ``F.cross_entropy`` does, at its speed. The arguments arrive prepared (see
``crossent._generic._problems``): class axis last, values checked.

``KERNELS`` replaces generic functions on prepared problems; ``DIRECT_CALLS`` replaces a whole
public call on CPU tensors, before any preparation, and ``DEVICE_CALLS`` on GPU tensors. The
package is split by concern, each module importing only the generic layer, the checks and its
siblings, never this one:

- ``_common``: what they all share (Dynamo's leave to trace ``array_api_compat``, given when
  the package is imported; the ``torch.func`` test; the dtypes and block sizes);
- ``_functional``: torch's functions on prepared problems, and their compositions;
- ``_half``: the eager, blocked half-precision ``autograd.Function``s;
- ``_linear_autograd``: ``linear_cross_entropy``'s in-place chunks and ``autograd.Function``;
- ``_direct``: the direct calls of CPU tensors (and the Triton ones of GPU tensors);
- ``_triton``: the hand-written Triton kernels of GPU tensors, which the others call where they
  serve.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..._generic import _binary, _categorical, _linear, _softmax
from ._direct import DEVICE_CALLS, DIRECT_CALLS
from ._functional import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
    log_sigmoid,
    log_softmax,
    logsumexp,
    nll_loss,
    softmax,
)
from ._linear_autograd import (
    LinearPass,
    linear_autograd,
    linear_cross_entropy,
    linear_cross_entropy_value_and_grad,
)

# linear_autograd and LinearPass: _torch_distributed runs the Function over its sharded chunks
__all__ = ["DEVICE_CALLS", "DIRECT_CALLS", "KERNELS", "LinearPass", "linear_autograd"]

KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    _softmax.logsumexp: logsumexp,
    _softmax.softmax: softmax,
    _softmax.log_softmax: log_softmax,
    _softmax.log_sigmoid: log_sigmoid,
    _categorical.cross_entropy: cross_entropy,
    _categorical.nll_loss: nll_loss,
    _binary.binary_cross_entropy: binary_cross_entropy,
    _binary.binary_cross_entropy_with_logits: binary_cross_entropy_with_logits,
    _linear.linear_cross_entropy: linear_cross_entropy,
    _linear.linear_cross_entropy_value_and_grad: linear_cross_entropy_value_and_grad,
}
