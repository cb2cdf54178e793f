"""Peak extra memory of one ``linear_cross_entropy`` step (``ours``) or of the dense
computation (``peer``), in this fresh process:
``python benchmarks/linear_memory.py torch ours 4096x512x32000`` (``torch:bfloat16`` for that
dtype; the torch sides ``chunked`` and ``reference`` are ``F.linear_cross_entropy``'s).

Extra memory is the growth of the resident set's high-water mark during the call, after a first
call has loaded every library and made every cache, minus the gradients the call returns (they
are its output). glibc returns large blocks on free here, so that each call's temporaries show
(``harness._allocator("memory")``). Prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import suites

import crossent


def _call(backend: str, side: str, shape: tuple[int, int, int]) -> tuple[Any, Any]:
    """The call to measure, and what drops the gradients a previous call left behind."""
    hidden, weight, target = suites._linear_data(shape)
    if backend == "numpy":
        if side == "ours":
            step = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1))
            return lambda: step(hidden, weight, target), lambda: None
        dense = crossent.value_and_grad(crossent.cross_entropy)

        def numpy_dense() -> Any:
            loss, g = dense(hidden @ weight.T, target)
            return loss, g @ weight, g.T @ hidden

        return numpy_dense, lambda: None
    import torch
    import torch.nn.functional as F

    dtype = getattr(torch, backend.partition(":")[2] or "float32")  # torch:bfloat16
    h = torch.from_numpy(hidden).to(dtype).requires_grad_(True)
    w = torch.from_numpy(weight).to(dtype).requires_grad_(True)
    t = torch.from_numpy(target)

    def torch_step() -> Any:
        if side == "ours":
            loss = crossent.linear_cross_entropy(h, w, t)
        elif side == "chunked":  # torch 2.13's own
            options = torch.nn.LinearCrossEntropyOptions()
            loss = F.linear_cross_entropy(h, w, t, options=options)
        elif side == "reference":
            loss = F.linear_cross_entropy(h, w, t, options=None)
        else:
            loss = F.cross_entropy(F.linear(h, w), t)
        loss.backward()
        return loss.detach(), h.grad, w.grad

    def reset() -> None:
        h.grad = w.grad = None

    return torch_step, reset


def _nbytes(out: Any) -> int:
    """Bytes of the arrays in ``out``, nested tuples of them."""
    if isinstance(out, tuple):
        return sum(_nbytes(x) for x in out)
    return int(getattr(out, "nbytes", 0))


def main(backend: str, side: str, shape_text: str) -> None:
    shape = tuple(int(s) for s in shape_text.split("x"))
    assert len(shape) == 3
    call, reset = _call(backend, side, shape)  # type: ignore[arg-type]
    harness._allocator("memory")
    out = call()  # loads and warms everything
    returned = _nbytes(out[1:])
    del out
    reset()
    gc.collect()
    peak = harness.peak_memory(call)  # the gradients it returns are made again, and counted
    extra = None if peak is None else max(0, peak - returned)
    print(json.dumps({"backend": backend, "side": side, "extra_bytes": extra}))


if __name__ == "__main__":
    main(*sys.argv[1:])
