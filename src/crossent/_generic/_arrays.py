"""The few generic helpers that must ask which framework an array belongs to.

They never import a framework whose arrays have not arrived: ``array_api_compat`` answers from
the array's type, and JAX is imported only to look at a JAX array.
"""

from __future__ import annotations

import sys

from array_api_compat import (
    device,
    is_dask_namespace,
    is_jax_array,
    is_jax_namespace,
    is_lazy_array,
    is_numpy_namespace,
    is_torch_array,
    is_torch_namespace,
)

from .._typing import Array, Namespace

__all__ = [
    "as_array",
    "constant",
    "is_eager",
    "reshape",
    "take_along_last",
    "torch_compiling",
    "torch_transformed",
]


def torch_compiling() -> bool:
    """Whether ``torch.compile`` (or ``torch.export``) is tracing the running code.

    Its tensors then have no values to read: they are as lazy as JAX's under ``jit``.
    Never imports torch.
    """
    torch = sys.modules.get("torch")
    return torch is not None and torch.compiler.is_compiling()


def torch_transformed(x: Array) -> bool:
    """Whether the torch tensor ``x`` is seen through a ``torch.func`` transform (``vmap``,
    ``grad``, ``jacrev``, ``jvp``, ...): a wrapper whose values a batched transform cannot read
    (``vmap`` refuses ``.item()``), and which torch's ctx-style ``autograd.Function`` refuses.
    """
    if torch_compiling():  # Dynamo traces the transforms itself, and not this question
        return False
    functorch = sys.modules["torch"]._C._functorch  # x is a tensor: torch is imported
    return bool(functorch.is_functorch_wrapped_tensor(x))


def is_eager(*arrays: Array) -> bool:
    """Whether the values of ``arrays`` can be read now, cheaply, without tracing or computing.

    ``array_api_compat.is_lazy_array`` says yes for every JAX array; a JAX array outside
    ``jax.jit``, ``jax.grad`` and ``jax.vmap`` is concrete, and its values are checked like
    NumPy's, so that a wrong class index raises instead of giving NaN. A torch tensor is lazy
    under ``torch.compile`` and inside a ``torch.func`` transform.
    """
    for x in arrays:
        if x is None:
            continue
        if is_torch_array(x):
            if torch_compiling() or torch_transformed(x):
                return False
            continue
        if not is_lazy_array(x):
            continue
        if is_jax_array(x):
            import jax

            if not isinstance(x, jax.core.Tracer):
                continue
        return False
    return True


def constant(xp: Namespace, x: Array) -> Array:
    """``x``, seen by autodiff as a constant where the framework can say so.

    For a shift that cancels out of the result (the maximum subtracted before ``exp``), this is
    exact, and it spares autodiff a pass through ``max``.
    """
    if is_jax_namespace(xp):
        import jax

        return jax.lax.stop_gradient(x)
    if is_torch_namespace(xp):
        return x.detach()
    return x


def as_array(xp: Namespace, x: Array) -> Array:
    """``x`` as an array of ``xp``: NumPy turns 0-d results into scalars, which are not arrays."""
    if is_numpy_namespace(xp):
        return xp.asarray(x)
    return x


def take_along_last(xp: Namespace, x: Array, index: Array) -> Array:
    """``take_along_axis(x, index, axis=-1)`` for non-negative ``index``.

    torch's ``gather`` for tensors: under ``torch.compile(dynamic=True)``, ``take_along_dim``
    (which ``array_api_compat`` calls) fixes the sizes of its inputs, and every new batch size
    compiles again; ``gather`` keeps them symbolic.
    """
    if is_torch_namespace(xp):
        return x.gather(-1, index)
    return xp.take_along_axis(x, index, axis=-1)


def reshape(xp: Namespace, x: Array, shape: tuple[int, ...]) -> Array:
    """``xp.reshape(x, shape)``, also for an empty Dask array of several chunks, which Dask's
    reshape refuses (it has no values to move: a new empty array takes its place)."""
    if is_dask_namespace(xp) and 0 in tuple(x.shape):
        empty = tuple(0 if size == -1 else size for size in shape)
        return xp.zeros(empty, dtype=x.dtype, device=device(x))
    return xp.reshape(x, shape)
