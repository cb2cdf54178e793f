"""The dispatcher: each call runs a backend kernel where one is registered, else the generic path.

Each loss is declared once, by :func:`loss` on its public function (a :class:`Loss` record in
:data:`LOSSES`); every list of losses derives from those records. A public function prepares
its arguments, then calls ``dispatch(xp, generic, *args)``, where
``generic`` is the standard-only function of ``crossent._generic`` that computes it. Each
backend module of ``crossent._backends`` declares ``KERNELS``, a dict from generic functions to
the kernels that replace them on its arrays, with the same arguments. A kernel may return
``None`` where it does not cover a case; the generic function then runs. Every kernel is tested
equal to the generic path (``tests/test_backends.py``), which :func:`generic_only` forces.

This is the only module that imports a backend module, and it does so on first use, for a
namespace whose arrays have already arrived: ``import crossent`` imports no framework.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import ModuleType
from typing import Any, ParamSpec, TypeVar

import numpy as np
from array_api_compat import (
    is_cupy_namespace,
    is_dask_namespace,
    is_jax_namespace,
    is_numpy_namespace,
    is_torch_namespace,
)

from ._docstrings import fill
from ._generic._arrays import torch_compiling
from ._generic._sharded import refuse_options
from ._typing import Array, Namespace

__all__ = [
    "FAMILIES",
    "LOSSES",
    "PUBLIC_FUNCTIONS",
    "Loss",
    "declaration",
    "dispatch",
    "entry",
    "generic_only",
    "kernels",
    "loss",
    "on_accelerator",
    "public_function",
]

# The Triton kernels' test switch (``_backends/_torch/_triton``), read as crossent is imported:
# Triton reads its own interpreter switch as it is itself imported, which torch._dynamo does
# early, so it is handed on before any torch kernel loads.
if os.environ.get("CROSSENT_TRITON_INTERPRET") == "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
#: What a loss's preparation returns: the checked problem and the generic pass's options.
Prepared = tuple[Any, tuple[Any, ...]]
#: A kernel table: generic function -> the backend's replacement for it.
Kernels = Mapping[Callable[..., Any], Callable[..., Any]]

_FAST_PATHS: ContextVar[bool] = ContextVar("crossent_fast_paths", default=True)

#: Every public function, by the generic function it computes (filled by :func:`loss` and
#: :func:`public_function`); the tests check the kernel tables against it.
PUBLIC_FUNCTIONS: dict[Callable[..., Any], Callable[..., Any]] = {}


@contextlib.contextmanager
def generic_only() -> Iterator[None]:
    """Run the standard-only implementation of every function inside the block.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import log_softmax
    >>> from crossent._dispatch import generic_only
    >>> with generic_only():
    ...     out = log_softmax(np.zeros(2))
    """
    token = _FAST_PATHS.set(False)  # read by _fast_paths
    try:
        yield
    finally:
        _FAST_PATHS.reset(token)


def _fast_paths() -> bool:
    """Whether the kernels may run: outside :func:`generic_only`, and always in code that
    ``torch.compile`` traces (its compiled graphs do not read the switch, which Dynamo cannot
    trace)."""
    return torch_compiling() or _FAST_PATHS.get()


#: Kernel tables by namespace name: torch.compile can compare strings, not modules.
_TABLES: dict[str, Kernels] = {}


def kernels(xp: Namespace) -> Kernels:
    """The kernels registered for the backend of namespace ``xp`` (empty for none)."""
    if torch_compiling():
        # Not the cache: a compiled graph would guard on its contents, and be compiled again
        # once an eager call of another backend fills it.
        return _load_kernels(xp)
    table = _TABLES.get(xp.__name__)
    if table is None:
        table = _TABLES[xp.__name__] = _load_kernels(xp)
    return table


def _load_kernels(xp: Namespace) -> Kernels:
    if is_torch_namespace(xp):
        from ._backends import _torch

        return _torch.KERNELS
    if is_jax_namespace(xp):
        from ._backends import _jax

        return _jax.kernels((d.generic, d.value_and_grad) for d in LOSSES.values())
    if is_numpy_namespace(xp):
        from ._backends import _numpy

        return _numpy.KERNELS
    if is_dask_namespace(xp):
        from ._backends import _dask

        return _dask.KERNELS
    return {}


def on_accelerator(xp: Namespace, x: Any) -> bool:
    """Whether ``x`` lives on a GPU or another accelerator, where work is cut into larger
    pieces than a CPU's cache wants. Under ``jax.jit``, whether JAX's default backend is one."""
    if is_cupy_namespace(xp):
        return True
    if is_torch_namespace(xp):
        return bool(x.device.type != "cpu")
    if is_jax_namespace(xp):
        from ._backends import _jax

        return _jax.on_accelerator()
    return False


def dispatch(xp: Namespace, generic: Callable[..., Any], /, *args: Any) -> Any:
    """``generic(*args)``, computed by the kernel registered for ``generic`` in ``xp``'s
    backend where there is one and it covers the case."""
    if _fast_paths():
        kernel = kernels(xp).get(generic)
        if kernel is not None:
            out = kernel(*args)
            if out is not None:
                return out
    return generic(*args)


def public_function(generic: Callable[..., Any]) -> Callable[[F], F]:
    """Decorate the public function that ``generic`` computes: :func:`entry`, and an entry in
    :data:`PUBLIC_FUNCTIONS`."""

    def decorate(func: F) -> F:
        wrapper = entry(generic)(_filled(func))
        PUBLIC_FUNCTIONS[generic] = wrapper
        return wrapper

    return decorate


#: The families of losses, in the order the API page gives them: the page has a section each.
FAMILIES = ("categorical", "linear", "binary", "divergence")


@dataclass(frozen=True)
class Loss:
    """One loss, as :func:`loss` declares it. Every list of losses reads these records: the
    gradient registry of :func:`crossent.value_and_grad`, the JAX ``custom_jvp`` table, the
    docs' lists and support matrix, and the tests' lists."""

    #: The public function.
    public: Callable[..., Array]
    #: Its family, one of :data:`FAMILIES`: the section of the API page that lists it.
    family: str
    #: The generic loss of a prepared problem, ``generic(problem, *options)``; backends
    #: register kernels for it.
    generic: Callable[..., Array]
    #: The generic ``(loss, gradient)`` of a prepared problem; backends may register kernels
    #: for it too.
    value_and_grad: Callable[..., tuple[Array, Any]]
    #: Checks the public function's arguments, given as the caller gave them, and returns the
    #: problem and its options (the body of the declared function).
    prepare: Callable[..., Prepared]
    #: The arguments it is differentiated in, by name; () for the first alone. With several,
    #: ``value_and_grad`` takes one more argument, which of them to compute (a bool each),
    #: and returns their gradients as a tuple, None for those not asked for.
    arguments: tuple[str, ...] = ()
    #: The function of ``crossent._generic._sharded`` that computes it over a
    #: ``process_group``, or None where it takes none.
    sharded: Callable[..., Array] | None = None

    @property
    def name(self) -> str:
        return self.public.__name__


#: Every loss, by name, in the order of declaration.
LOSSES: dict[str, Loss] = {}


def declaration(func: object) -> Loss | None:
    """The declaration of the public loss ``func``, or None for anything else."""
    found = LOSSES.get(getattr(func, "__name__", ""))
    return found if found is not None and found.public is func else None


def loss(
    family: str,
    generic: ModuleType,
    *,
    problem: Callable[..., Any] | None = None,
    arguments: tuple[str, ...] = (),
    sharded: Callable[..., Array] | None = None,
) -> Callable[[Callable[P, Any]], Callable[P, Array]]:
    """Declare a loss: decorate the function whose signature and docstring are the public
    loss's, and whose body checks the arguments and returns ``(problem, options)``.

    ``generic`` is the module of ``crossent._generic`` that computes it: its function of the
    loss's name is the generic loss, ``<name>_value_and_grad`` its analytic gradient (a
    missing one is an ``AttributeError`` at import). The decorated function is the public
    loss: it dispatches ``generic.<name>(problem, *options)``, and with a ``process_group``
    (where ``sharded`` is given) the sharded computation. Its record goes into
    :data:`LOSSES` and :data:`PUBLIC_FUNCTIONS`.

    ``problem`` is the family's preparation, where the body needs nothing of the problem: a
    function ``problem(first, *arrays, **options)`` (``_problems.prepare_classes``, say, with
    its fixed options bound by ``functools.partial``) called with the name of the first
    argument, the positional arguments and those of its keyword-only parameters that the
    public function has, as the caller gave them or by the public defaults. The body then
    checks the loss's own options and returns them alone (see :func:`_with_problem`)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")

    def decorate(body: Callable[P, Any]) -> Callable[P, Array]:
        body = _filled(body)
        prepare = body if problem is None else _with_problem(body, problem)
        name = prepare.__name__
        compute_loss: Callable[..., Array] = getattr(generic, name)
        value_and_grad = getattr(generic, f"{name}_value_and_grad")

        earlier = LOSSES.get(name)
        if earlier is not None and earlier.prepare.__module__ != prepare.__module__:
            # (a module reloaded, by importlib.reload or IPython's autoreload, declares anew)
            raise ValueError(f"the loss {name} is declared twice, in {earlier.prepare.__module__}")
        signature = inspect.signature(prepare)

        def compute(*args: Any, **kwargs: Any) -> Any:
            group = kwargs.get("process_group") if sharded is not None else None
            if group is not None:
                assert sharded is not None
                signature.bind(*args, **kwargs)  # a misspelt option before any collective
                rest = {k: v for k, v in kwargs.items() if k != "process_group"}
                return _sharded_call(name, sharded, group, prepare, *args, **rest)
            problem, options = prepare(*args, **kwargs)
            return dispatch(problem.xp, compute_loss, problem, *options)

        functools.update_wrapper(compute, prepare)
        public = entry(compute_loss)(compute)
        # the public signature and annotations: the preparation's, returning the loss
        public.__signature__ = signature.replace(  # type: ignore[attr-defined]
            return_annotation="Array"
        )
        public.__annotations__ = {**prepare.__annotations__, "return": "Array"}
        declared = Loss(public, family, compute_loss, value_and_grad, prepare, arguments, sharded)
        LOSSES[name] = declared
        PUBLIC_FUNCTIONS[compute_loss] = public
        return public

    return decorate


def _with_problem(body: Callable[..., tuple[Any, ...]], make: Callable[..., Any]) -> Any:
    """The preparation of a loss declared with ``problem=make``: ``body`` checks the loss's own
    options and returns them (Python checks the arguments against its signature), then
    ``make`` checks the arrays and the family's options and makes the problem."""
    public = inspect.signature(body).parameters
    positional = [
        n for n, p in public.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    taken = inspect.signature(make).parameters
    keywords = [n for n, p in taken.items() if p.kind == p.KEYWORD_ONLY and n in public]
    for n, p in taken.items():  # a preparation's option the loss cannot give: at import
        if p.kind == p.KEYWORD_ONLY and p.default is p.empty and n not in public:
            raise TypeError(f"{body.__name__} has no parameter {n}, which {make} needs")
    defaults = {n: public[n].default for n in keywords}
    first = positional[0]

    @functools.wraps(body)
    def prepare(*args: Any, **kwargs: Any) -> Prepared:
        options = body(*args, **kwargs)
        given = dict(zip(positional, args, strict=False))
        given.update(kwargs)
        arrays = [given[n] for n in positional]
        made = make(first, *arrays, **{n: given.get(n, defaults[n]) for n in keywords})
        return made, options

    return prepare


def _filled(func: F) -> F:
    """``func`` with its docstring's shared paragraphs (``_docstrings``) filled in, and
    ``%(first)s`` the name of its first argument."""
    first = next(iter(inspect.signature(func).parameters))
    return fill(first=first)(func)


def entry(generic: Callable[..., Any]) -> Callable[[F], F]:
    """Decorate a function that computes ``generic`` from the caller's arguments.

    - CPU torch tensors go straight to torch's kernel (``_backends._torch.DIRECT_CALLS``),
      before any preparation: for a loss that takes 70 microseconds, crossent's checks would
      otherwise cost more than the loss. The direct call declines (returns None) on anything
      it does not cover or that torch rejects, and the full path then runs and raises
      crossent's errors. GPU tensors go to ``DEVICE_CALLS`` (the Triton kernels that read the
      caller's dtypes) the same way.
    - NumPy does not warn about intended edge values: ``log(0) = -inf`` for a row of all
      ``-inf`` logits is a result, not an accident.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if args and _is_torch_tensor(args[0]):
                compiling = torch_compiling()
                cpu, accelerated = _torch_direct_calls(compiling)  # loads the torch kernels
                if compiling or _FAST_PATHS.get():
                    direct = (cpu if args[0].is_cpu else accelerated).get(generic)
                    if direct is not None:
                        try:
                            out = direct(*args, **kwargs)
                        except TypeError:  # arguments the public function refuses
                            out = None
                        if out is not None:
                            return out
                # no NumPy runs here, and torch.compile cannot trace np.errstate
                return func(*args, **kwargs)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


_DIRECT_CALLS: list[tuple[Kernels, Kernels]] = []  # torch's, once an eager tensor has come


def _torch_direct_calls(compiling: bool) -> tuple[Kernels, Kernels]:
    """torch's direct calls of CPU tensors and of tensors on other devices."""
    if compiling:
        # Not the cache: a compiled graph would guard on it, and be compiled again once an
        # eager call fills it. The import costs only the trace.
        from ._backends import _torch

        return _torch.DIRECT_CALLS, _torch.DEVICE_CALLS
    if not _DIRECT_CALLS:
        from ._backends import _torch

        _DIRECT_CALLS.append((_torch.DIRECT_CALLS, _torch.DEVICE_CALLS))
    return _DIRECT_CALLS[0]


def _is_torch_tensor(x: object) -> bool:
    # Never imports torch: a torch tensor can only exist once torch is in sys.modules.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _sharded_call(
    name: str,
    generic: Callable[..., Any],
    process_group: object,
    prepare: Callable[..., Prepared],
    /,
    *args: Any,
    **kwargs: Any,
) -> Any:
    """``generic`` (a function of ``crossent._generic._sharded``) of arrays whose classes are
    split among the processes of ``process_group``, from the public function's ``args`` and
    ``kwargs``: ``prepare(*args, process_group=collectives, **kwargs)`` checks them, with the
    group's collectives, and the backend's kernel computes the loss. ``torch.distributed`` is
    the one backend (``_backends._torch_distributed``): other arrays are refused."""
    refuse_options(name, kwargs)
    if not (args and _is_torch_tensor(args[0])):
        kind = type(args[0]) if args else type(None)
        raise TypeError(
            "process_group splits torch tensors among the processes of a torch.distributed "
            f"group, got {kind.__module__}.{kind.__qualname__}; pass process_group=None"
        )
    from ._backends import _torch_distributed

    return _torch_distributed.sharded(generic, process_group, prepare, *args, **kwargs)
