"""The delegation layer: the one place that names torch, JAX or NumPy internals.

Each public function prepares its arguments once, then asks :func:`fast_path` for a native
implementation for the arrays' namespace. A fast path takes the same prepared arguments as the
generic, standard-only implementation and may return ``None`` where it does not cover a case; the
generic path then runs. Every fast path is tested equal to the generic path (``tests/``), which
:func:`generic_only` forces.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

import numpy as np
from array_api_compat import (
    is_jax_array,
    is_jax_namespace,
    is_lazy_array,
    is_numpy_namespace,
    is_torch_namespace,
)

from .._typing import Array, Namespace

F = TypeVar("F", bound=Callable[..., Any])

_FAST_PATHS: ContextVar[bool] = ContextVar("crossent_fast_paths", default=True)


@contextlib.contextmanager
def generic_only() -> Iterator[None]:
    """Run the standard-only implementation of every function inside the block.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import log_softmax
    >>> from crossent._delegation import generic_only
    >>> with generic_only():
    ...     out = log_softmax(np.zeros(2))
    """
    token = _FAST_PATHS.set(False)
    try:
        yield
    finally:
        _FAST_PATHS.reset(token)


def fast_path(name: str, xp: Namespace) -> Callable[..., Any] | None:
    """The native implementation of ``name`` for namespace ``xp``, or ``None``.

    Backend modules are imported here, on first use, and only for a namespace whose arrays have
    already arrived: ``import crossent`` imports no framework.
    """
    if not _FAST_PATHS.get():
        return None
    if is_torch_namespace(xp):
        from . import _torch as module
    elif is_jax_namespace(xp):
        from . import _jax as module  # type: ignore[no-redef]
    elif is_numpy_namespace(xp):
        from . import _numpy as module  # type: ignore[no-redef]
    else:
        return None
    impl: Callable[..., Any] | None = getattr(module, name, None)
    return impl


def dispatch(name: str, generic: Callable[..., Array], problem: Any, *options: Any) -> Array:
    """Compute ``name`` on a prepared ``problem``: natively where a fast path covers it, else
    with ``generic``, the standard-only implementation."""
    native = fast_path(name, problem.xp)
    if native is not None:
        out = native(problem, *options)
        if out is not None:
            return out
    return generic(problem, *options)


def is_eager(*arrays: Array) -> bool:
    """Whether the values of ``arrays`` can be read now, cheaply, without tracing or computing.

    ``array_api_compat.is_lazy_array`` says yes for every JAX array; a JAX array outside
    ``jax.jit``, ``jax.grad`` and ``jax.vmap`` is concrete, and its values are checked like
    NumPy's, so that a wrong class index raises instead of giving NaN.
    """
    for x in arrays:
        if x is None or not is_lazy_array(x):
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


def public_function(func: F) -> F:
    """Decorate a public function: the entry of every call.

    - CPU torch tensors go straight to torch's kernel (``_torch.direct_<name>``), before any
      preparation: for a loss that takes 70 microseconds, crossent's checks would otherwise
      cost more than the loss. The direct call declines (returns None) on anything it does not
      cover or that torch rejects, and the full path then runs and raises crossent's errors.
    - NumPy does not warn about intended edge values: ``log(0) = -inf`` for a row of all
      ``-inf`` logits is a result, not an accident.
    """
    name = func.__name__
    direct: list[Callable[..., Any] | None] = []  # torch's direct call, looked up once

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if args and _is_cpu_torch_tensor(args[0]) and _FAST_PATHS.get():
            if not direct:
                from . import _torch

                direct.append(getattr(_torch, f"direct_{name}", None))
            if direct[0] is not None:
                out = direct[0](*args, **kwargs)
                if out is not None:
                    return out
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _is_cpu_torch_tensor(x: object) -> bool:
    # Never imports torch: a torch tensor can only exist once torch is in sys.modules.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor) and x.is_cpu
