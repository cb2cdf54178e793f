"""The cross-entropy of a linear layer, ``cross_entropy(hidden @ weight.T + bias, target)``,
computed a chunk of positions at a time so that the logits are never made whole.

For ``N`` positions and ``V`` classes the logits are ``N x V``: for a language model's
vocabulary the largest array of a training step. Here the positions go through in chunks of
``chunk_size`` rows: each chunk's logits are made, turned into the chunk's losses and (when
asked) into the gradient with respect to them, which is multiplied straight into the chunk's
share of the three gradients,

.. math::

    \\partial h_c = G_c W, \\qquad \\partial W \\mathrel{+}= G_c^\\top h_c, \\qquad
    \\partial b \\mathrel{+}= \\textstyle\\sum_n G_{c, n},

and dropped. Each logit is computed once: the work is that of the dense computation, and the
largest temporary is one chunk of logits. The per-chunk math is the generic cross-entropy's own
(:func:`._categorical.cross_entropy_pass`) on a :class:`~._problems.Classes` of the chunk.

The functions here are what the dispatcher runs where no kernel replaces them; the kernels
(``crossent._backends``) reuse :func:`chunk_pass` and :func:`chunk_gradients` inside their own
loops (in place for NumPy, ``addmm_`` for torch, ``lax.scan`` for JAX).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from array_api_compat import device

from .._typing import Array, DType, Namespace
from ._arrays import reshape
from ._categorical import Picks, cross_entropy_pass, picks_of_indices
from ._problems import Classes, Problem, Unreduced

__all__ = [
    "CHUNK_BYTES_MAX",
    "CHUNK_BYTES_MIN",
    "CHUNK_FRACTION",
    "CHUNK_ROWS_BYTES_MAX",
    "CHUNK_ROWS_MIN",
    "NO_GRADIENTS",
    "GradientSums",
    "Linear",
    "chunk_gradients",
    "chunk_pass",
    "default_chunk_size",
    "gradient_factor",
    "linear_cross_entropy",
    "linear_cross_entropy_value_and_grad",
    "rows_of",
    "times_factor",
    "upstream_factor",
]

#: The automatic chunk's logits take 1/CHUNK_FRACTION of the dense logits' bytes, within
#: [CHUNK_BYTES_MIN, CHUNK_BYTES_MAX] (and at least one row): see :func:`default_chunk_size`.
CHUNK_FRACTION = 64
CHUNK_BYTES_MIN = 4 * 2**20
CHUNK_BYTES_MAX = 32 * 2**20
#: ... then raised to CHUNK_ROWS_MIN rows (or all the positions) where those take at most
#: CHUNK_ROWS_BYTES_MAX: each chunk reads and writes the whole weight's gradient.
CHUNK_ROWS_MIN = 128
CHUNK_ROWS_BYTES_MAX = 64 * 2**20
#: The same on a GPU or another accelerator.
ACCELERATOR_CHUNK_FRACTION = 8
ACCELERATOR_CHUNK_BYTES_MIN = 64 * 2**20
ACCELERATOR_CHUNK_BYTES_MAX = 2**30


def default_chunk_size(
    xp: Namespace,
    num_positions: int,
    num_classes: int,
    dtype: DType,
    *,
    accelerator: bool = False,
) -> int:
    """Rows per chunk when the caller gives none.

    On a CPU, a chunk's logits, in the compute ``dtype``, take 1/64 of what the dense logits
    would, within 4 and 32 MiB, and then at least 128 rows (or all the positions) where those
    fit in 64 MiB. The bytes keep the largest temporaries (two arrays of a chunk's size under
    ``jax.jit``, one on NumPy and torch) small beside the logits; the rows keep the products
    fast. Each chunk reads and writes the whole ``V x D`` gradient of the weight, for
    ``2 D V`` multiply-adds a row of the chunk: with a few dozen rows that sum is bound by
    memory, not arithmetic. For ``(N, D, V) = (1024, 256, 32000)`` in float32, the 32 rows
    of the bytes alone took 1.3 times the dense loss's time, forward and backward, and 128
    rows 0.8 times; for ``(2048, 256, 128000)``, 0.85 and 0.5 times.

    On an ``accelerator`` (a GPU), 1/8 of the dense logits, within 64 MiB and 1 GiB: each chunk
    reads and writes the whole weight's gradient, and a GPU's products want hundreds of rows,
    so that chunks of the CPU's size ran 10 to 20 times slower than the dense loss on an H100.
    """
    itemsize = int(xp.finfo(dtype).bits) // 8
    row = max(1, num_classes * itemsize)
    if accelerator:
        fraction, low, high = (
            ACCELERATOR_CHUNK_FRACTION,
            ACCELERATOR_CHUNK_BYTES_MIN,
            ACCELERATOR_CHUNK_BYTES_MAX,
        )
    else:
        fraction, low, high = CHUNK_FRACTION, CHUNK_BYTES_MIN, CHUNK_BYTES_MAX
    budget = min(high, max(low, num_positions * row // fraction))
    rows = max(1, budget // row)
    if not accelerator:
        rows = max(rows, min(CHUNK_ROWS_MIN, num_positions, CHUNK_ROWS_BYTES_MAX // row))
    return rows


#: Which gradients to compute: of ``hidden``, of ``weight``, of ``bias``.
Wanted = tuple[bool, bool, bool]
#: None of them: the losses alone.
NO_GRADIENTS: Wanted = (False, False, False)


@dataclass(frozen=True)
class Linear(Problem):
    """One call of ``linear_cross_entropy``, checked, with the positions flattened."""

    #: ``(N, D)``: the positions' features, in the caller's dtype.
    hidden: Array
    #: ``(V, D)``: one row per class, the layout of ``torch.nn.Linear.weight``.
    weight: Array
    #: ``(V,)`` or None.
    bias: Array | None
    #: Class indices ``(N,)`` in the default integer dtype, or class probabilities ``(N, V)``
    #: in the caller's dtype.
    target: Array
    #: One weight per class ``(V,)`` in the compute dtype, or None.
    class_weight: Array | None
    ignore_index: int
    #: Rows of logits made at a time.
    chunk_size: int
    #: The caller's ``hidden.shape``: the positions' shape, then ``D``.
    hidden_shape: tuple[int, ...]
    #: One weight per position ``(N,)`` in the compute dtype, or None. Outside the chunks:
    #: each position's loss and gradient factor are multiplied by it (:meth:`weigh`,
    #: :func:`gradient_factor`).
    sample_weight: Array | None = field(default=None, kw_only=True)
    #: Soft-capping and the z-loss, as :class:`~._problems.Classes` has them: in each chunk.
    softcap: float | None = field(default=None, kw_only=True)
    z_loss: float = field(default=0.0, kw_only=True)

    @property
    def index_target(self) -> bool:
        return bool(self.xp.isdtype(self.target.dtype, "integral"))

    @property
    def num_positions(self) -> int:
        return int(self.hidden.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def count(self) -> int:
        return self.num_positions

    def finish(self, out: Array) -> Array:
        """A loss of the positions' shape (or 0-d), in the caller's dtype."""
        if len(out.shape) == 1:
            out = reshape(self.xp, out, self.hidden_shape[:-1])
        return super().finish(out)

    def spans(self) -> list[tuple[int, int]]:
        """The chunks, as ``(start, stop)`` rows."""
        n, size = self.num_positions, self.chunk_size
        return [(start, min(start + size, n)) for start in range(0, n, size)]

    def logits(self, hidden: Array) -> Array:
        """``hidden @ weight.T + bias`` of a chunk, in the compute dtype.

        In half precision, as the dense computation makes them (``F.linear``: the products
        summed and the bias added in float32, then rounded once to the caller's dtype): a
        product that overflows the half dtype and a bias of ``-inf`` (a masked class) give
        ``-inf``, where rounding the product first would give ``inf - inf = NaN``. The standard
        has no product of half operands into float32, so the operands are converted, a chunk
        at a time; the torch and JAX kernels pass their own mixed-precision product to
        :func:`chunk_pass` instead."""
        xp = self.xp
        compute = self.compute_dtype
        weight = xp.astype(self.weight, compute, copy=False)
        out = xp.matmul(xp.astype(hidden, compute, copy=False), xp.permute_dims(weight, (1, 0)))
        if self.bias is not None:
            out = out + xp.astype(self.bias, compute, copy=False)
        if compute == self.dtype:
            return out
        return xp.astype(xp.astype(out, self.dtype), compute)

    def chunk(self, logits: Array, target: Array) -> Classes:
        """The cross-entropy problem of one chunk: its logits and its rows of the target (class
        probabilities in the compute dtype: converted a chunk at a time)."""
        if not self.index_target:
            target = self.xp.astype(target, self.compute_dtype, copy=False)
        return Classes(
            xp=self.xp,
            reduction="sum",
            dtype=self.compute_dtype,
            eager=self.eager,
            predictions=logits,
            target=target,
            weight=self.class_weight,
            ignore_index=self.ignore_index,
            axis=1,
            softcap=self.softcap,
            z_loss=self.z_loss,
        )

    def picks(self) -> Picks:
        """What the class indices pick, over every position."""
        return picks_of_indices(
            self.xp,
            self.target,
            self.num_classes,
            self.class_weight,
            self.ignore_index,
            self.eager,
            self.compute_dtype,
            self.sample_weight,
        )

    def denominator(self) -> Array | None:
        """What ``"mean"`` divides by: the kept positions' total weight for class indices
        (sample weights included), the sum of the sample weights or None (the number of
        positions) for class probabilities."""
        if self.index_target:
            return self.xp.sum(self.picks().weight)
        return None if self.sample_weight is None else self.xp.sum(self.sample_weight)

    def weigh(self, losses: Array) -> Array:
        """The positions' ``losses`` times their sample weights (0 at ignored positions, whose
        sample weight is not read)."""
        if self.sample_weight is None:
            return losses
        if self.index_target:
            return losses * self.picks().kept_weight
        return losses * self.sample_weight

    def reduce_losses(self, losses: Array) -> Array:
        """The reduced loss of the positions' ``losses`` (before their sample weights)."""
        return self.reduce(Unreduced(self.weigh(losses), self.denominator()))


def gradient_factor(problem: Linear) -> Array | float | None:
    """What the gradient of each position's loss is multiplied by for the reduction: None for
    ``"sum"`` and ``"none"`` (the gradient of the summed loss); for ``"mean"``, ``1 / N`` with
    class probabilities, and with class indices torch's ``1 / W`` at kept positions and 0 at
    ignored ones (NaN at kept ones where the total weight ``W`` is 0). With sample weights,
    times each position's (``"mean"`` then divides by their total, or the weighted ``W``)."""
    xp = problem.xp
    s = problem.sample_weight
    if not problem.index_target:
        if problem.reduction != "mean":
            return s
        if s is None:
            return 1.0 / problem.num_positions if problem.num_positions else float("nan")
        return s * _inverse(xp, xp.sum(s))
    if problem.reduction != "mean":
        return None if s is None else problem.picks().kept_weight
    picks = problem.picks()
    inverse = _inverse(xp, xp.sum(picks.weight))
    return xp.where(picks.kept, inverse if s is None else inverse * picks.kept_weight, 0.0)


def _inverse(xp: Namespace, total: Array) -> Array:
    """``1 / total``, NaN where it is 0 (an empty mean), and no division by 0 for autodiff."""
    empty = total == 0
    return xp.where(empty, xp.nan, 1.0 / xp.where(empty, 1.0, total))


def upstream_factor(problem: Linear, upstream: Array) -> Array:
    """The factor of each position's gradient under ``upstream``, the gradient that autodiff
    brings to the loss (one number per position for ``"none"``, a 0-d array otherwise): the
    reduction's factor times it, and 0 at ignored positions whatever it is (torch's gradient
    there is 0 even where the upstream one is NaN). 0-d where every position has the same."""
    xp = problem.xp
    up = xp.astype(upstream, problem.compute_dtype)
    if problem.reduction == "none":
        up = reshape(xp, up, (-1,))
    base = gradient_factor(problem)
    factor = up if base is None else base * up
    if problem.index_target:
        factor = xp.where(problem.picks().kept, factor, 0.0)
    return factor


def rows_of(factor: Array | float | None, start: int, stop: int) -> Array | float | None:
    """The factors of rows ``start:stop``: a factor per row is sliced, a shared one kept."""
    if factor is None or isinstance(factor, float) or len(factor.shape) == 0:
        return factor
    return factor[start:stop]


def chunk_pass(
    problem: Linear,
    smoothing: float,
    hidden: Array,
    target: Array,
    factor: Array | float | None,
    *,
    gradient: bool,
    logits: Array | None = None,
) -> tuple[Array, Array | None]:
    """The losses of one chunk of positions (rows ``hidden`` and ``target``) and, with
    ``gradient``, the gradient of their sum with respect to the chunk's logits, each row
    multiplied by its ``factor`` (an array of the chunk's rows, a number, or None for 1).
    ``logits``: the chunk's, where a kernel made them (else :meth:`Linear.logits`)."""
    if logits is None:
        logits = problem.logits(hidden)
    result = cross_entropy_pass(problem.chunk(logits, target), smoothing, gradient=gradient)
    return result.loss, times_factor(problem, result.gradient, factor)


def times_factor(problem: Linear, g: Array | None, factor: Array | float | None) -> Array | None:
    """A chunk's gradient ``g`` with each row times its ``factor`` (an array of the chunk's
    rows, a number, or None for 1), in the compute dtype; None for no gradient."""
    if g is None:
        return None
    if isinstance(factor, float):
        g = g * factor
    elif factor is not None:
        rows: Array = factor
        g = g * (rows if len(rows.shape) == 0 else rows[:, None])
    return problem.xp.astype(g, problem.compute_dtype, copy=False)


def chunk_gradients(
    problem: Linear, g: Array, hidden: Array, wanted: Wanted
) -> tuple[Array | None, Array | None, Array | None]:
    """A chunk's share of the three gradients, from ``g``, the gradient with respect to its
    logits: ``g @ weight`` (its rows of the hidden gradient, in the caller's dtype),
    ``g.T @ hidden`` and ``sum(g)`` (to be added up over the chunks, in the compute dtype)."""
    xp = problem.xp
    d_hidden = d_weight = d_bias = None
    if wanted[0]:
        d_hidden = xp.matmul(xp.astype(g, problem.dtype, copy=False), problem.weight)
    if wanted[1]:
        rows = xp.astype(hidden, problem.compute_dtype, copy=False)
        d_weight = xp.matmul(xp.permute_dims(g, (1, 0)), rows)
    if wanted[2]:
        d_bias = xp.sum(g, axis=0)
    return d_hidden, d_weight, d_bias


def _rows(problem: Linear, start: int, stop: int) -> tuple[Array, Array]:
    return problem.hidden[start:stop, ...], problem.target[start:stop, ...]


def linear_cross_entropy(problem: Linear, smoothing: float) -> Array:
    losses = [
        chunk_pass(problem, smoothing, *_rows(problem, start, stop), None, gradient=False)[0]
        for start, stop in problem.spans()
    ]
    return problem.reduce_losses(_join(problem, losses))


def linear_cross_entropy_value_and_grad(
    problem: Linear, smoothing: float, wanted: Wanted
) -> tuple[Array, tuple[Array | None, Array | None, Array | None]]:
    """The reduced loss and the gradients of ``hidden``, ``weight`` and ``bias`` that
    ``wanted`` asks for (None for the others), in the caller's shapes and dtype: of the
    reduced loss (for ``"none"``, of the summed loss)."""
    factor = gradient_factor(problem)
    losses, sums = [], GradientSums()
    for start, stop in problem.spans():
        hidden, target = _rows(problem, start, stop)
        rows = rows_of(factor, start, stop)
        loss, g = chunk_pass(problem, smoothing, hidden, target, rows, gradient=True)
        assert g is not None
        losses.append(loss)
        sums.add(*chunk_gradients(problem, g, hidden, wanted))
    value = problem.reduce_losses(_join(problem, losses))
    d_hidden = _join(problem, sums.hidden, 2)
    return value, finish_gradients(problem, wanted, d_hidden, sums.weight, sums.bias)


@dataclass
class GradientSums:
    """The gradients of the chunks so far: the rows of ``hidden``'s, one chunk's after
    another, and the sums of ``weight``'s and ``bias``'s (None until a chunk gives one)."""

    hidden: list[Array] = field(default_factory=list)
    weight: Array | None = None
    bias: Array | None = None

    def add(self, d_hidden: Array | None, d_weight: Array | None, d_bias: Array | None) -> None:
        """One chunk's share (:func:`chunk_gradients`)."""
        if d_hidden is not None:
            self.hidden.append(d_hidden)
        if d_weight is not None:
            self.weight = d_weight if self.weight is None else self.weight + d_weight
        if d_bias is not None:
            self.bias = d_bias if self.bias is None else self.bias + d_bias


def finish_gradients(
    problem: Linear,
    wanted: Wanted,
    d_hidden: Array | None,
    d_weight: Array | None,
    d_bias: Array | None,
) -> tuple[Array | None, Array | None, Array | None]:
    """The gradients in the caller's shapes and dtype; zeros where there were no positions."""
    xp = problem.xp
    v, d = (int(s) for s in problem.weight.shape)
    out: list[Array | None] = []
    for want, grad, shape in (
        (wanted[0], d_hidden, problem.hidden_shape),
        (wanted[1], d_weight, (v, d)),
        (wanted[2] and problem.bias is not None, d_bias, (v,)),
    ):
        if not want:
            out.append(None)
            continue
        if grad is None:
            grad = xp.zeros(shape, dtype=problem.dtype, device=device(problem.hidden))
        out.append(xp.astype(reshape(xp, grad, shape), problem.dtype, copy=False))
    return out[0], out[1], out[2]


def _join(problem: Linear, parts: list[Array], ndim: int = 1) -> Array:
    """The chunks' rows as one array (an empty one where there are none)."""
    xp = problem.xp
    if not parts:
        shape = (0,) if ndim == 1 else (0, int(problem.weight.shape[1]))
        return xp.zeros(shape, dtype=problem.compute_dtype, device=device(problem.hidden))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)
