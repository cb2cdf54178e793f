"""Kernels for NumPy arrays: cross-entropy of class indices, block by block, in threads.

The generic path makes four full passes over the logits with full-size temporaries (shift,
exponentiate, sum, gather), each streamed from memory. Here the rows go through in blocks small
enough to stay in a core's cache: a block is shifted, summed, exponentiated and summed again
while it sits there, into a buffer of the block's size, so that the logits are read from memory
once and no temporary of their size is made. NumPy's ufuncs release the GIL, so blocks run on a
thread per core. The per-position arithmetic that follows is the generic path's own
(:class:`crossent._generic._categorical.IndexTerms`).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .._generic import _categorical, _linear
from .._generic._categorical import IndexTerms
from .._generic._linear import Linear
from .._generic._problems import Classes, Unreduced

__all__ = ["KERNELS"]

#: Elements of one block: 64 Ki float32 values are 256 KiB, which stay in a core's L2 cache
#: with the block of logits they come from.
BLOCK_ELEMENTS = 1 << 16
#: Below this many elements a call stays in the calling thread: handing blocks to the pool
#: costs more than it saves.
PARALLEL_ELEMENTS = 1 << 18

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_buffers = threading.local()


def _workers() -> int:
    """Threads for the kernel: ``CROSSENT_NUM_THREADS`` if set, else the usable cores."""
    requested = os.environ.get("CROSSENT_NUM_THREADS")
    if requested:
        return max(1, int(requested))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, _workers() - 1), thread_name_prefix="crossent")
        return _pool


def _buffer(rows: int, columns: int, dtype: np.dtype[Any]) -> np.ndarray:
    """A block-sized scratch array of this thread, made once and reused."""
    key = (rows, columns, dtype)
    if getattr(_buffers, "key", None) != key:
        _buffers.key = key
        _buffers.array = np.empty((rows, columns), dtype=dtype)
    out: np.ndarray = _buffers.array
    return out


def _run_blocks(rows: int, columns: int, work: Callable[[int, int], None]) -> None:
    """Call ``work(start, stop)`` over spans of rows covering ``[0, rows)``, in parallel when
    the array is large.

    The calling thread works too, and every thread takes the next span as it finishes one:
    on a shared machine a core may be slow to wake, and then the others take its share.
    """
    workers = _workers()
    if rows * columns < PARALLEL_ELEMENTS or workers == 1 or rows < 2:
        work(0, rows)
        return
    work = _quiet(work)
    pieces = min(rows, workers * 16)
    edges = [rows * i // pieces for i in range(pieces + 1)]
    spans = [(start, stop) for start, stop in itertools.pairwise(edges) if stop > start]
    next_span = itertools.count()  # next() on it is atomic under the GIL

    def drain() -> None:
        for i in iter(lambda: next(next_span), None):
            if i >= len(spans):
                return
            work(*spans[i])

    helpers = [_executor().submit(drain) for _ in range(workers - 1)]
    drain()
    for helper in helpers:
        helper.result()


def _quiet(work: Callable[[int, int], None]) -> Callable[[int, int], None]:
    """``work`` under the caller's silence about edge values: NumPy's error state is per
    thread, and a row of all ``-inf`` is a result here, not an accident."""

    def quiet_work(start: int, stop: int) -> None:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            work(start, stop)

    return quiet_work


def _row_max(block: np.ndarray) -> np.ndarray:
    """The maximum of each row. NumPy reduces a short last axis slowly (4 ns an element for
    ten classes, against 0.1 ns for a thousand): few classes are reduced across a transposed
    copy instead, which vectorises over rows."""
    if block.shape[1] >= 64:
        row_max: np.ndarray = block.max(axis=1)
        return row_max
    column_max: np.ndarray = np.ascontiguousarray(block.T).max(axis=0)
    return column_max


class _Rows:
    """The logits (and class-probability target) of a problem as ``(positions, C)`` rows,
    read in blocks: a C-contiguous class-last array is a view; a class axis elsewhere in a
    C-contiguous caller array, ``(A, C, B)`` (``axis=1`` of ``(N, C, d1, ...)``), gives the
    rows ``x[a, :, b0:b1].T`` of one ``a``, or those of several whole ones, which a block
    copies into its buffer."""

    def __init__(self, problem: Classes, x: np.ndarray) -> None:
        self.classes = problem.num_classes
        caller = np.moveaxis(x, -1, problem.axis)  # the caller's array, a view
        self.strided = not x.flags.c_contiguous
        self.array: np.ndarray
        if self.strided:
            assert caller.flags.c_contiguous
            before = math.prod(caller.shape[: problem.axis])
            self.span = math.prod(caller.shape[problem.axis + 1 :])  # positions per a
            self.array = caller.reshape(before, self.classes, self.span)
        else:
            self.span = x.size // self.classes if x.size else 1
            self.array = x.reshape(-1, self.classes)

    @staticmethod
    def applies(problem: Classes, x: np.ndarray) -> bool:
        return x.size > 0 and (
            x.flags.c_contiguous or np.moveaxis(x, -1, problem.axis).flags.c_contiguous
        )

    def stop(self, lo: int, hi: int) -> int:
        """Where a block from ``lo`` may end, at most ``hi``: in a strided layout either within
        one ``a`` or at the end of a whole number of them (few positions per ``a``)."""
        if not self.strided:
            return hi
        offset = lo % self.span
        if offset or hi - lo < self.span:
            return min(hi, lo - offset + self.span)
        return lo + (hi - lo) // self.span * self.span

    def row_max(self, lo: int, hi: int, block: np.ndarray) -> np.ndarray:
        """The maximum of rows ``lo:hi`` (``block`` holds them): a strided layout reduces its
        own class axis, over contiguous positions, instead of the rows' short one."""
        if not self.strided or self.classes >= 64:
            return _row_max(block)
        a, b = divmod(lo, self.span)
        if b + hi - lo <= self.span:
            found: np.ndarray = self.array[a, :, b : b + hi - lo].max(axis=0)
        else:
            found = self.array[a : a + (hi - lo) // self.span].max(axis=1).reshape(-1)
        return found.astype(block.dtype, copy=False)

    def read(self, lo: int, hi: int, out: np.ndarray) -> None:
        """Copy rows ``lo:hi`` (a block that :meth:`stop` allowed) into ``out``."""
        if not self.strided:
            out[...] = self.array[lo:hi]
            return
        a, b = divmod(lo, self.span)
        if b + hi - lo <= self.span:  # within one a
            out[...] = self.array[a, :, b : b + hi - lo].T
        else:  # whole a's
            count = (hi - lo) // self.span
            out.reshape(count, self.span, self.classes)[...] = self.array[a : a + count].transpose(
                0, 2, 1
            )


def _applies(problem: Classes) -> bool:
    """Whether the kernel reads this problem: otherwise (a class axis that is neither last nor
    in a C-contiguous array, an empty one) the generic path runs."""
    if not _Rows.applies(problem, problem.predictions):
        return False
    return problem.index_target or _Rows.applies(problem, problem.target)


def _statistics(
    problem: Classes,
    terms: IndexTerms | None,
    smoothing: float,
    gradient: np.ndarray | None = None,
    scale: Any = None,
) -> tuple[Any, ...]:
    """Read the rows once, block by block.

    Class indices (``terms``): the log normaliser, the shifted target logit and, with
    smoothing, the weighted sum of shifted logits of every position. Class probabilities
    (``terms`` None): the log normaliser, the target's weighted mass and its weighted sum of
    shifted logits, the target smoothed and weighted as the generic path does.

    With ``gradient`` (a C-contiguous array of the class-last shape), each block's
    exponentials are turned into its gradient there, instead of in a scratch buffer: times
    ``scale`` at kept positions, 0 at ignored ones (None: the gradient of the sum).

    ``softcap``: each block is capped as it is read (its ``tanh`` kept in a second scratch
    block for the gradient's chain rule). ``z_loss``: each row's shift is kept too (the last
    statistic; None without the z-loss), and the gradient's softmax factor gains
    ``2 z_loss w_n lse_n`` once the block's row sums are known. Sample weights are in the
    terms' weights (class indices) or multiply each row's loss and each term of its gradient
    (class probabilities).
    """
    logits = _Rows(problem, problem.predictions)
    targets = None if terms is not None else _Rows(problem, problem.target)
    rows, classes = problem.num_positions, problem.num_classes
    dtype = np.dtype(problem.compute_dtype)
    convert = logits.array.dtype != dtype  # float16: each block is converted as it is read
    cap = problem.softcap
    copy = convert or logits.strided or cap is not None
    z_loss = problem.z_loss
    shifts = np.empty(rows, dtype=dtype) if z_loss > 0.0 else None
    sample = (
        None if problem.sample_weight is None else np.asarray(problem.sample_weight).reshape(-1)
    )
    log_norm = np.empty(rows, dtype=dtype)
    target_logit = np.empty(rows, dtype=dtype)  # the target logit, or the target's sum of them
    mass = np.empty(rows, dtype=dtype) if terms is None else None
    shifted_sum = np.empty(rows, dtype=dtype) if terms is not None and smoothing > 0 else None
    class_weights = None if problem.weight is None else np.asarray(problem.weight)
    block_rows = max(1, BLOCK_ELEMENTS // classes)
    grad_rows = None if gradient is None else gradient.reshape(-1, classes)
    index = None if terms is None else np.asarray(terms.picks.index).reshape(-1)

    if gradient is not None:
        if terms is not None:
            kept = np.asarray(terms.picks.kept).reshape(-1)
            row_scale = kept.astype(dtype) if scale is None else np.where(kept, scale, 0.0)
            softmax_scale = row_scale * np.asarray(terms.softmax_coefficient(problem)).reshape(-1)
            target_term = row_scale * np.asarray(terms.target_term()).reshape(-1)
            # (eps / C) w_c, taken from every class of a kept position (times its sample weight)
            spread = (smoothing / classes) * (1.0 if class_weights is None else class_weights)
            spread_scale = row_scale * np.asarray(terms.picks.kept_weight).reshape(-1)
            # the z-loss's 2 z_loss w_n, times lse_n in the block
            z_scale = (2.0 * z_loss) * row_scale * np.asarray(terms.picks.weight).reshape(-1)
        else:
            row_scale = np.broadcast_to(np.asarray(1.0 if scale is None else scale, dtype), rows)
            if sample is not None:  # each term of the gradient, as the generic weigh_rows
                row_scale = row_scale * sample
            z_scale = (2.0 * z_loss) * row_scale

    # Row sums as a product with a vector of ones: BLAS's gemv is three times faster than
    # np.sum along a short axis, and as exact for these sums of positive terms.
    ones = np.ones(classes, dtype=dtype)
    class_weights = ones if class_weights is None else class_weights.astype(dtype)

    # scratch blocks of a thread: its logits (unless they go into the gradient), the target's
    # rows (class probabilities), the tanh of the capped logits (softcap)
    parts = 1 + (terms is None) + (cap is not None)
    capped_at = (1 + (terms is None)) * block_rows

    def work(start: int, stop: int) -> None:
        scratch = _buffer(parts * block_rows, classes, dtype)
        lo = start
        while lo < stop:
            hi = logits.stop(lo, min(lo + block_rows, stop))
            if targets is not None:
                hi = targets.stop(lo, hi)
            out = scratch[: hi - lo] if grad_rows is None else grad_rows[lo:hi]
            if copy:
                logits.read(lo, hi, out)
                block = out
            else:
                block = logits.array[lo:hi]
            if cap is not None:
                tanh = scratch[capped_at : capped_at + hi - lo]
                np.divide(out, cap, out=tanh)
                np.tanh(tanh, out=tanh)
                np.multiply(tanh, cap, out=out)
                shift = _row_max(out)
            else:
                shift = logits.row_max(lo, hi, block)
            shift[shift == -np.inf] = 0.0  # a row of all -inf: exp gives 0, not NaN
            if shifts is not None:
                shifts[lo:hi] = shift
            np.subtract(block, shift[:, None], out=out)
            local = np.arange(hi - lo)
            if targets is not None:  # class probabilities, smoothed and weighted
                weighted = scratch[block_rows : block_rows + hi - lo]
                targets.read(lo, hi, weighted)
                if smoothing > 0.0:
                    weighted *= 1.0 - smoothing
                    weighted += smoothing / classes
                if problem.weight is not None:
                    weighted *= class_weights
                mass[lo:hi] = weighted @ ones  # type: ignore[index]
                target_logit[lo:hi] = np.einsum("ij,ij->i", weighted, out)
            else:
                target_logit[lo:hi] = out[local, index[lo:hi]]  # type: ignore[index]
                if shifted_sum is not None:
                    np.matmul(out, class_weights, out=shifted_sum[lo:hi])
            np.exp(out, out=out)
            total = out @ ones
            log_norm[lo:hi] = np.log(total)
            z = None
            if gradient is not None and z_loss > 0.0:
                z = z_scale[lo:hi] * (shift + log_norm[lo:hi])
                if terms is not None:  # ignored positions: 0, though their lse be inf
                    z = np.where(kept[lo:hi], z, 0.0)
            if gradient is not None and targets is not None:
                factor = row_scale[lo:hi] * mass[lo:hi]  # type: ignore[index]
                if z is not None:
                    factor = factor + z
                out *= (factor / total)[:, None]
                out -= row_scale[lo:hi, None] * weighted
            elif gradient is not None:
                factor = softmax_scale[lo:hi] if z is None else softmax_scale[lo:hi] + z
                out *= (factor / total)[:, None]
                if smoothing > 0.0:
                    out -= spread_scale[lo:hi, None] * spread
                out[local, index[lo:hi]] -= target_term[lo:hi]  # type: ignore[index]
            if gradient is not None and cap is not None:
                np.multiply(tanh, tanh, out=tanh)  # the chain rule: times 1 - tanh**2
                np.subtract(1.0, tanh, out=tanh)
                out *= tanh
            lo = hi

    _run_blocks(rows, classes, work)
    shape = problem.predictions.shape[:-1]
    shift_rows = None if shifts is None else shifts.reshape(shape)
    if terms is None:
        statistics = (log_norm, mass, target_logit)
        return (*(x.reshape(shape) for x in statistics), shift_rows)  # type: ignore[union-attr]
    return (
        log_norm.reshape(shape),
        target_logit.reshape(shape),
        None if shifted_sum is None else shifted_sum.reshape(shape),
        shift_rows,
    )


def _loss(
    problem: Classes, smoothing: float, statistics: tuple[np.ndarray, ...], terms: Any
) -> Any:
    if terms is not None:
        return terms.loss(problem, *statistics)
    log_norm, mass, target_sum, shift = statistics
    loss = log_norm * mass - target_sum  # the generic path's loss of class probabilities
    if shift is not None:  # the z-loss
        lse = shift + log_norm
        loss = loss + problem.z_loss * (lse * lse)
    return loss if problem.sample_weight is None else loss * np.asarray(problem.sample_weight)


def _weight_sum(problem: Classes, terms: IndexTerms | None) -> Any:
    """What ``"mean"`` divides by where it is not the number of positions."""
    if terms is not None:
        return terms.weight_sum(problem)
    return None if problem.sample_weight is None else np.sum(problem.sample_weight)


def cross_entropy(problem: Classes, smoothing: float) -> Any:
    if not _applies(problem):
        return None
    terms = IndexTerms.of(problem, smoothing) if problem.index_target else None
    loss = _loss(problem, smoothing, _statistics(problem, terms, smoothing), terms)
    return problem.reduce(Unreduced(loss, _weight_sum(problem, terms)))


def cross_entropy_value_and_grad(problem: Classes, smoothing: float) -> Any:
    if not _applies(problem):
        return None
    terms = IndexTerms.of(problem, smoothing) if problem.index_target else None
    weight_sum = _weight_sum(problem, terms)
    # The mean's 1 / W goes into the block loop: no second pass over the gradient. As torch's,
    # it is NaN at kept positions whose total weight W is 0 (ignored ones stay 0).
    scale = None
    if problem.reduction == "mean":
        total = float(problem.num_positions if weight_sum is None else weight_sum)
        scale = 1.0 / total if total != 0.0 else math.nan
    gradient = np.empty(problem.predictions.shape, dtype=problem.compute_dtype)
    statistics = _statistics(problem, terms, smoothing, gradient, scale)
    loss = problem.reduce(Unreduced(_loss(problem, smoothing, statistics, terms), weight_sum))
    return loss, problem.finish(problem.to_caller_layout(gradient))


# --- linear_cross_entropy ---------------------------------------------------------------------


def _linear_pass(
    problem: Linear, smoothing: float, wanted: tuple[bool, bool, bool], gradient: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None] | None:
    """Every chunk of positions through one buffer of the chunk's logits: made by BLAS into
    it, turned into the losses and (with ``gradient``) into the gradient with respect to them
    there, block by block in threads (:func:`_statistics`), then multiplied into the three
    gradients. The weight's gradient is summed in slices of classes, each product into a
    scratch slice a quarter of the buffer's size: NumPy's ``matmul`` cannot add into its
    output, and a scratch array of the weight's size would be the largest temporary of all."""
    n, d = problem.hidden.shape
    v = problem.num_classes
    dtype = np.dtype(problem.compute_dtype)
    if problem.hidden.dtype != dtype or n == 0:  # float16: the generic path
        return None
    index_target = problem.index_target
    # each position's gradient factor (the mean's, times its sample weight): a number, an
    # array of the positions or None
    scale = _linear.gradient_factor(problem) if gradient else None
    losses = np.empty(n, dtype=dtype)
    d_hidden = np.empty((n, d), dtype=dtype) if gradient and wanted[0] else None
    d_weight = np.zeros((v, d), dtype=dtype) if gradient and wanted[1] else None
    d_bias = None
    if gradient and wanted[2] and problem.bias is not None:
        d_bias = np.zeros(v, dtype=dtype)
    rows = min(problem.chunk_size, n)
    buffer = np.empty((rows, v), dtype=dtype)
    classes_per_slice = max(1, rows * v // 4 // max(d, 1))
    scratch = (
        np.empty((min(v, classes_per_slice), d), dtype=dtype) if d_weight is not None else None
    )
    ones = np.ones(rows, dtype=dtype)
    for start, stop in problem.spans():
        hidden = problem.hidden[start:stop]
        logits = buffer[: stop - start]
        np.matmul(hidden, problem.weight.T, out=logits)
        if problem.bias is not None:
            logits += problem.bias
        target = problem.target[start:stop]
        if not index_target:  # rows the blocks can read (a copy of the chunk's, if need be)
            target = np.ascontiguousarray(target, dtype=dtype)
        cp = problem.chunk(logits, target)
        terms = IndexTerms.of(cp, smoothing) if index_target else None
        rows_scale = _linear.rows_of(scale, start, stop)
        statistics = _statistics(cp, terms, smoothing, logits if gradient else None, rows_scale)
        losses[start:stop] = _loss(cp, smoothing, statistics, terms)
        if d_hidden is not None:
            np.matmul(logits, problem.weight, out=d_hidden[start:stop])
        if d_bias is not None:
            d_bias += ones[: stop - start] @ logits
        if d_weight is not None:
            assert scratch is not None
            for lo in range(0, v, classes_per_slice):
                hi = min(v, lo + classes_per_slice)
                part = scratch[: hi - lo]
                np.matmul(logits[:, lo:hi].T, hidden, out=part)
                d_weight[lo:hi] += part
    return losses, d_hidden, d_weight, d_bias


def linear_cross_entropy(problem: Linear, smoothing: float) -> Any:
    result = _linear_pass(problem, smoothing, _linear.NO_GRADIENTS, gradient=False)
    if result is None:
        return None
    return problem.reduce_losses(result[0])


def linear_cross_entropy_value_and_grad(
    problem: Linear, smoothing: float, wanted: tuple[bool, bool, bool]
) -> Any:
    result = _linear_pass(problem, smoothing, wanted, gradient=True)
    if result is None:
        return None
    losses, *gradients = result
    value = problem.reduce_losses(losses)
    return value, _linear.finish_gradients(problem, wanted, *gradients)


KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    _categorical.cross_entropy: cross_entropy,
    _categorical.cross_entropy_value_and_grad: cross_entropy_value_and_grad,
    _linear.linear_cross_entropy: linear_cross_entropy,
    _linear.linear_cross_entropy_value_and_grad: linear_cross_entropy_value_and_grad,
}
