"""The cross-entropy of a linear layer, without making its logits."""

from __future__ import annotations

from ._dispatch import loss, on_accelerator
from ._generic import _linear as generic
from ._generic import _sharded
from ._generic._arrays import is_eager, reshape
from ._generic._linear import Linear, default_chunk_size
from ._generic._targets import check_target, class_problem
from ._typing import Array
from ._validation import (
    check_class_weights,
    check_index,
    check_int,
    check_real_floating,
    check_reduction,
    check_sample_weight,
    check_unit_interval,
    compute_dtype,
    get_namespace,
    num_elements,
    shape_str,
)

__all__ = ["linear_cross_entropy"]


@loss(
    "linear",
    generic,
    arguments=("hidden", "weight", "bias"),
    sharded=_sharded.linear_cross_entropy,
)
def linear_cross_entropy(
    hidden: Array,
    weight: Array,
    target: Array,
    bias: Array | None = None,
    *,
    class_weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    sample_weight: Array | None = None,
    chunk_size: int | None = None,
    process_group: object = None,
) -> tuple[Linear, tuple[float]]:
    r"""Cross-entropy of the logits of a linear layer, computed without making the logits.

    The value is that of the dense computation,

    .. math::

        \operatorname{cross\_entropy}(h W^\top + b,\ y), \qquad
        h \in \mathbb{R}^{N \times D},\ W \in \mathbb{R}^{V \times D},\ b \in \mathbb{R}^V,

    with every option of :func:`cross_entropy` (``class_weight`` is its ``weight``), but the
    ``N x V`` logits are never held at once: the positions go through in chunks of
    ``chunk_size`` rows, whose logits, losses and gradients are made and dropped in turn. For
    16,384 tokens and a vocabulary of 256k, the logits alone would take 16 GiB in float32; a
    chunk 64 MiB. Each logit is computed once, as in the dense computation (with
    ``reduction="none"`` under autodiff, whose upstream gradient differs per position, the
    backward pass makes each chunk's logits again).

    Gradients with respect to ``hidden``, ``weight`` and ``bias`` never make the logits either:
    ``loss.backward()`` on torch, ``jax.grad`` on JAX (under ``jit`` and ``vmap`` too), and on
    every backend ``crossent.value_and_grad(linear_cross_entropy, argnums=(0, 1, 3))``.

    Parameters
    ----------
    hidden : array
        The features of each position, shape ``(..., D)``, real floating.
    weight : array
        The classes' weights, shape ``(V, D)``: the layout of ``torch.nn.Linear.weight``. Same
        dtype as ``hidden``.
    target : array
        Class indices (integer dtype), shape ``hidden.shape[:-1]``; or class probabilities
        (floating dtype), shape ``hidden.shape[:-1] + (V,)``, which the chunks read row by row
        (such a target is as large as the logits would be).
    bias : array, optional
        One bias per class, shape ``(V,)``, dtype of ``hidden``.
    class_weight : array, optional
        One non-negative weight per class, shape ``(V,)``: :func:`cross_entropy`'s ``weight``.
    ignore_index : int, default -100
        A class index whose positions contribute nothing, to the loss or to the ``"mean"``
        denominator. Not used with class probabilities.
    reduction : {"mean", "sum", "none"}, default "mean"
        As in :func:`cross_entropy`.
    label_smoothing : float in [0, 1], default 0.0
        As in :func:`cross_entropy`.
    softcap : float > 0, optional
        As in :func:`cross_entropy`: each chunk's logits are soft-capped,
        ``softcap * tanh(logits / softcap)``, before anything else.
    z_loss : float >= 0, default 0.0
        As in :func:`cross_entropy`: each kept position's loss gains ``z_loss * lse**2``.
    sample_weight : array, optional
        One weight per position, shape ``hidden.shape[:-1]``, as in :func:`cross_entropy`:
        the loss is weighted by it, and ``"mean"`` divides by the weighted total.
    chunk_size : int, optional
        Positions whose logits are made at a time. By default the chunk's logits, in the
        compute dtype, take 1/64 of the bytes of the dense logits, within 4 and 32 MiB, and then
        at least 128 positions (or all of them) where those fit in 64 MiB, else at least one:
        128 positions for ``V = 32000`` or ``V = 128000`` in float32, 65 for ``V = 256000``
        (the weight's gradient is summed over the chunks, and chunks of a few dozen rows make
        that sum slow). On a GPU (torch, JAX, CuPy), 1/8 within 64 MiB and 1 GiB: 1024 of
        8192 positions for ``V = 128256``. The largest temporary is one array of
        ``chunk_size x V`` on NumPy and torch, two under ``jax.jit``; the standard-only path
        (CuPy, Dask, array-api-strict) makes a few, and one of the weight's size while it sums
        the weight's gradient.
    process_group : torch.distributed.ProcessGroup, optional
        Vocabulary parallelism: the classes are split among the processes of this group, and
        every process calls ``linear_cross_entropy`` with its own slice. Process ``r`` (its
        rank in the group) passes ``weight`` ``(V_r, D)`` and ``bias`` ``(V_r,)`` of the
        ``r``-th contiguous slice of the ``V`` classes (slices may differ in size); ``hidden``,
        ``target`` (class indices of all ``V`` classes) and ``class_weight`` (all ``V``
        weights) are the same on every process. Each gets the loss of the whole, the value of
        the unsharded call with the concatenated weights, and from ``loss.backward()`` the
        gradient of ``hidden`` of the whole (the same on every process) and of its own slices
        of ``weight`` and ``bias``. Each call runs an ``all_gather`` of the slices' sizes, then
        per chunk of positions an ``all_reduce`` (``MAX``) of each position's maximum and one
        (``SUM``) of its sum of exponentials, target logit and, with ``label_smoothing``, sum
        of weighted logits, and an ``all_reduce`` (``SUM``) of ``hidden``'s gradient. With a
        scalar ``reduction`` in float32 or float64 all of them run in the forward pass; with
        ``"none"`` (or half precision) the backward pass makes the chunks, and runs their
        collectives, again. Every process must differentiate the same arguments. torch
        tensors and class indices only, without ``softcap``, ``z_loss`` or ``sample_weight``.

    Returns
    -------
    array
        Of ``hidden``'s library, device and dtype: shape ``hidden.shape[:-1]`` for
        ``reduction="none"``, else 0-d.

    Raises
    ------
    TypeError
        If an argument is not an array of ``hidden``'s library, or has the wrong dtype; if
        ``process_group`` is not a ``torch.distributed.ProcessGroup``, comes with arrays other
        than torch tensors or with class probabilities.
    ValueError
        If shapes do not fit (each shape is named), an option is out of its set, or (eager
        arrays only) a class index is outside ``[0, V)`` and is not ``ignore_index``; on lazy
        arrays such a position gives NaN.

    See Also
    --------
    cross_entropy : The same loss, of logits that exist.
    value_and_grad : The loss and its gradients, with ``argnums``.

    Notes
    -----
    **Shape.** ``hidden`` ``(..., D)``, ``weight`` ``(V, D)``, ``bias`` ``(V,)``; ``target``
    of class indices ``hidden.shape[:-1]``, of class probabilities ``hidden.shape[:-1] +
    (V,)``; output ``hidden.shape[:-1]`` for ``reduction="none"``, ``()`` otherwise.

    float16 and bfloat16: the products ``h W^T`` are made in the input dtype, rounded as the
    dense computation rounds them; the log-sum-exp and every sum are float32, and the result is
    returned in the input dtype. The gradient of ``weight`` is summed over the chunks in
    float32.

    Examples
    --------
    >>> import numpy as np
    >>> from crossent import cross_entropy, linear_cross_entropy
    >>> rng = np.random.default_rng(0)
    >>> hidden = rng.standard_normal((6, 4))
    >>> weight = rng.standard_normal((10, 4))
    >>> target = np.array([1, 4, 9, 0, -100, 3])
    >>> loss = linear_cross_entropy(hidden, weight, target, chunk_size=4)
    >>> bool(np.isclose(loss, cross_entropy(hidden @ weight.T, target)))
    True
    """
    group = None
    if process_group is not None:
        group = _sharded.collectives("linear_cross_entropy", process_group)
    xp = get_namespace(
        ("hidden", hidden),
        ("weight", weight),
        ("target", target),
        ("bias", bias),
        ("class_weight", class_weight),
        ("sample_weight", sample_weight),
    )
    check_real_floating(xp, "hidden", hidden)
    for name, x in (("weight", weight), ("bias", bias)):
        if x is None:
            continue
        check_real_floating(xp, name, x)
        if x.dtype != hidden.dtype:
            raise TypeError(
                f"{name} has dtype {x.dtype}, expected {hidden.dtype}, the dtype of hidden"
            )
    reduction = check_reduction(reduction)
    ignore_index = check_index("ignore_index", ignore_index)
    smoothing = check_unit_interval("label_smoothing", label_smoothing)

    shape = tuple(hidden.shape)
    if len(shape) == 0:
        raise ValueError("hidden must have at least one dimension, the features; got shape ()")
    features = shape[-1]
    if len(weight.shape) != 2 or weight.shape[1] != features:
        raise ValueError(
            f"weight has shape {shape_str(weight.shape)}, expected (V, {features}): one row of "
            f"{features} features per class, for hidden {shape_str(shape)}"
        )
    num_classes = int(weight.shape[0])
    if num_classes == 0 and group is None:  # a process of a group may hold no class
        raise ValueError(f"weight of shape {shape_str(weight.shape)} has no classes (V = 0)")
    if bias is not None and tuple(bias.shape) != (num_classes,):
        raise ValueError(
            f"bias has shape {shape_str(bias.shape)}, expected ({num_classes},): one bias per "
            f"class of weight {shape_str(weight.shape)}"
        )
    dtype = compute_dtype(xp, hidden.dtype)
    positions = shape[:-1]
    eager = is_eager(hidden, weight, target, bias, class_weight)
    offset, classes = 0, num_classes  # classes: of the whole, where weight holds a slice
    if group is not None:
        _sharded.check_index_target(xp, target)
        offset, classes = group.classes(num_classes)
        if classes == 0:
            raise ValueError(
                f"weight of shape {shape_str(weight.shape)} has no classes (V = 0) on any "
                "process of process_group"
            )
    target, indices = check_target(
        xp,
        target,
        positions=positions,
        probabilities_shape=(*positions, num_classes),
        num_classes=classes,
        ignore_index=ignore_index,
        eager=eager,
        indices_of=lambda: f"hidden {shape_str(shape)} without its last axis",
        probabilities_of=lambda: (
            f"hidden {shape_str(shape)} without its last axis, then the {num_classes} classes "
            "of weight"
        ),
    )
    # class probabilities stay in their own dtype: each chunk converts its rows (a float32
    # copy of a bfloat16 target would be twice the size of the input)
    flat_target = reshape(xp, target, (-1,) if indices else (-1, num_classes))
    if class_weight is not None:

        def of() -> str:
            if group is not None:
                return f"the {classes} classes of weight over process_group"
            return f"weight {shape_str(weight.shape)}"

        class_weight = check_class_weights(xp, "class_weight", class_weight, classes, of, dtype)
    flat_sample_weight = None
    if sample_weight is not None:
        checked = check_sample_weight(
            xp,
            sample_weight,
            positions,
            lambda: f"hidden {shape_str(shape)} without its last axis",
            dtype,
        )
        flat_sample_weight = reshape(xp, checked, (-1,))
    if chunk_size is None:
        rows = default_chunk_size(
            xp, num_elements(positions), num_classes, dtype, accelerator=on_accelerator(xp, hidden)
        )
    else:
        rows = check_int("chunk_size", chunk_size)
        if rows < 1:
            raise ValueError(f"chunk_size must be a positive int, got {rows}")

    # a slice of the classes: the place of the slice in the whole
    sharding = {} if group is None else {"offset": offset, "total_classes": classes}
    problem = class_problem(
        Linear if group is None else _sharded.ShardedLinear,
        classes,
        softcap,
        z_loss,
        xp=xp,
        reduction=reduction,
        dtype=hidden.dtype,
        eager=eager,
        hidden=reshape(xp, hidden, (num_elements(positions), features)),
        weight=weight,
        bias=bias,
        target=flat_target,
        class_weight=class_weight,
        ignore_index=ignore_index,
        chunk_size=rows,
        hidden_shape=shape,
        sample_weight=flat_sample_weight,
        **sharding,
    )
    return problem, (smoothing,)
