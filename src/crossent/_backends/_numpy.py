"""Kernels for NumPy arrays: cross-entropy, block by block, in threads.

The generic path makes four full passes over the logits with full-size temporaries (shift,
exponentiate, sum, gather), each streamed from memory. Here the rows go through in blocks small
enough to stay in a core's cache: a block is shifted, summed, exponentiated and summed again
while it sits there, into a buffer of the block's size, so that the logits are read from memory
once and no temporary of their size is made. NumPy's ufuncs release the GIL, so blocks run on a
thread per core. Each target kind has its block step, and the per-position arithmetic that
follows is the generic path's own (``IndexTerms.loss``, ``probability_loss``).
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


def _buffer(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """A block-sized scratch array of this thread, made once and reused."""
    key = (shape, dtype)
    if getattr(_buffers, "key", None) != key:
        _buffers.key = key
        _buffers.array = np.empty(shape, dtype=dtype)
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


class _Blocks:
    """The blocks of rows of one call, each read into a block of the gradient (if given) or of
    a thread's scratch, which also holds one of the target's rows (class probabilities) and
    the capped logits' ``tanh`` for the chain rule (``softcap``). ``found``: what the blocks
    keep of each row, in the order the generic loss of their kind reads it."""

    def __init__(self, problem: Classes, gradient: Any, targets: _Rows | None) -> None:
        self.logits, self.targets = _Rows(problem, problem.predictions), targets
        self.dtype, self.cap = np.dtype(problem.compute_dtype), problem.softcap
        converted = self.logits.array.dtype != self.dtype  # float16: each block as it is read
        self.copy = converted or self.logits.strided or self.cap is not None
        self.positions, self.classes = problem.num_positions, problem.num_classes
        self.rows = max(1, BLOCK_ELEMENTS // self.classes)
        self.parts = 1 + (targets is not None) + (self.cap is not None)
        self.gradient = None if gradient is None else gradient.reshape(-1, self.classes)
        # Row sums as a product with a vector of ones: BLAS's gemv is three times faster than
        # np.sum along a short axis, and as exact for these sums of positive terms.
        self.ones = np.ones(self.classes, dtype=self.dtype)
        self.log_norm = np.empty(self.positions, self.dtype)
        self.shift = np.empty(self.positions, self.dtype) if problem.z_loss > 0.0 else None
        self.found: tuple[np.ndarray | None, ...] = ()

    def run(self, problem: Classes, step: Callable[..., None]) -> list[np.ndarray | None]:
        """``step(self, lo, hi, scratch)`` on every block of rows, in threads; ``found``, in
        the shape of the positions."""

        def work(start: int, stop: int) -> None:
            scratch = _buffer((self.parts, self.rows, self.classes), self.dtype)
            lo = start
            while lo < stop:
                hi = self.logits.stop(lo, min(lo + self.rows, stop))
                if self.targets is not None:
                    hi = self.targets.stop(lo, hi)
                step(self, lo, hi, scratch)
                lo = hi

        _run_blocks(self.positions, self.classes, work)
        shape = problem.predictions.shape[:-1]
        return [None if row is None else row.reshape(shape) for row in self.found]

    def shifted(
        self, lo: int, hi: int, scratch: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Rows ``lo:hi`` read, capped and shifted, ``x - m``, where they are written; the
        capped logits' ``tanh`` (or None); the shifts ``m``."""
        out = scratch[0, : hi - lo] if self.gradient is None else self.gradient[lo:hi]
        if self.copy:
            self.logits.read(lo, hi, out)
        block = out if self.copy else self.logits.array[lo:hi]
        tanh = None
        if self.cap is not None:
            tanh = scratch[-1, : hi - lo]
            np.divide(out, self.cap, out=tanh)
            np.tanh(tanh, out=tanh)
            np.multiply(tanh, self.cap, out=out)
            shift = _row_max(out)
        else:
            shift = self.logits.row_max(lo, hi, block)
        shift[shift == -np.inf] = 0.0  # a row of all -inf: exp gives 0, not NaN
        if self.shift is not None:  # the z-loss's
            self.shift[lo:hi] = shift
        np.subtract(block, shift[:, None], out=out)
        return out, tanh, shift

    def normalised(self, lo: int, hi: int, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``exp(x - m)`` in place of ``out``; ``sum_c exp(x_c - m)`` and its log, kept."""
        np.exp(out, out=out)
        total: np.ndarray = out @ self.ones
        return total, np.log(total, out=self.log_norm[lo:hi])


def _through_softcap(out: np.ndarray, tanh: np.ndarray | None) -> None:
    """A block's gradient times the derivative of soft-capping, ``1 - tanh**2``."""
    if tanh is not None:
        np.multiply(tanh, tanh, out=tanh)
        np.subtract(1.0, tanh, out=tanh)
        out *= tanh


class _IndexBlocks(_Blocks):
    """Blocks with class indices: each row's shifted target logit and, with smoothing, its
    class-weighted sum of shifted logits; with a gradient, the factors of each position's:
    ``s_n`` of the softmax, ``(1 - eps) w_y`` of the target class, the sample weight of
    smoothing's ``(eps / C) w_c`` and the z-loss's ``2 z_loss w_n`` (times ``lse_n`` in the
    block), all times ``scale`` at kept positions and 0 at ignored ones (None: 1)."""

    def __init__(
        self, problem: Classes, terms: IndexTerms, smoothing: float, gradient: Any, scale: Any
    ) -> None:
        super().__init__(problem, gradient, None)
        self.index = np.asarray(terms.picks.index).reshape(-1)
        self.shifted_target = np.empty(self.positions, self.dtype)
        self.shifted_sum = np.empty(self.positions, self.dtype) if smoothing > 0.0 else None
        weight = problem.weight
        self.weights = self.ones if weight is None else np.asarray(weight, self.dtype)
        self.smoothing = smoothing
        self.found = (self.log_norm, self.shifted_target, self.shifted_sum, self.shift)
        if gradient is None:
            return
        self.kept = kept = np.asarray(terms.picks.kept).reshape(-1)
        row_scale = kept.astype(self.dtype) if scale is None else np.where(kept, scale, 0.0)
        self.softmax = row_scale * np.asarray(terms.softmax_coefficient(problem)).reshape(-1)
        self.target = row_scale * np.asarray(terms.target_term()).reshape(-1)
        self.spread = (smoothing / self.classes) * (1.0 if weight is None else weight)
        self.spread_rows = row_scale * np.asarray(terms.picks.kept_weight).reshape(-1)
        self.z = (2.0 * problem.z_loss) * row_scale * np.asarray(terms.picks.weight).reshape(-1)


def _index_block(blocks: _IndexBlocks, lo: int, hi: int, scratch: np.ndarray) -> None:
    """Rows ``lo:hi`` with class indices: their statistics, and their gradient if asked."""
    out, tanh, shift = blocks.shifted(lo, hi, scratch)
    local, index = np.arange(hi - lo), blocks.index[lo:hi]
    blocks.shifted_target[lo:hi] = out[local, index]
    if blocks.shifted_sum is not None:
        np.matmul(out, blocks.weights, out=blocks.shifted_sum[lo:hi])
    total, log_norm = blocks.normalised(lo, hi, out)
    if blocks.gradient is None:
        return
    factor = blocks.softmax[lo:hi]
    if blocks.shift is not None:  # the z-loss: 0 at ignored positions, though their lse be inf
        factor = factor + np.where(blocks.kept[lo:hi], blocks.z[lo:hi] * (shift + log_norm), 0.0)
    out *= (factor / total)[:, None]
    if blocks.smoothing > 0.0:
        out -= blocks.spread_rows[lo:hi, None] * blocks.spread
    out[local, index] -= blocks.target[lo:hi]
    _through_softcap(out, tanh)


class _ProbabilityBlocks(_Blocks):
    """Blocks with class probabilities: each row's mass of the target (smoothed and weighted
    as the generic ``coefficients``) and its sum of shifted logits by it; with a gradient,
    each position's factor, ``scale`` times its sample weight (as ``weigh_rows``)."""

    def __init__(self, problem: Classes, smoothing: float, gradient: Any, scale: Any) -> None:
        super().__init__(problem, gradient, _Rows(problem, problem.target))
        self.smoothing = smoothing
        self.weights = None if problem.weight is None else np.asarray(problem.weight, self.dtype)
        self.mass = np.empty(self.positions, self.dtype)
        self.shifted_sum = np.empty(self.positions, self.dtype)
        self.found = (self.log_norm, self.mass, self.shifted_sum, self.shift)
        if gradient is None:
            return
        factor = np.asarray(1.0 if scale is None else scale, self.dtype)
        self.row_scale = np.broadcast_to(factor, self.positions)
        if problem.sample_weight is not None:
            self.row_scale = self.row_scale * np.asarray(problem.sample_weight).reshape(-1)
        self.z = (2.0 * problem.z_loss) * self.row_scale  # the z-loss's, times lse_n in the block


def _probability_block(blocks: _ProbabilityBlocks, lo: int, hi: int, scratch: np.ndarray) -> None:
    """Rows ``lo:hi`` with class probabilities: their statistics, and their gradient if asked."""
    out, tanh, shift = blocks.shifted(lo, hi, scratch)
    weighted = scratch[1, : hi - lo]
    blocks.targets.read(lo, hi, weighted)  # type: ignore[union-attr]
    if blocks.smoothing > 0.0:
        weighted *= 1.0 - blocks.smoothing
        weighted += blocks.smoothing / blocks.classes
    if blocks.weights is not None:
        weighted *= blocks.weights
    mass = blocks.mass[lo:hi] = weighted @ blocks.ones
    blocks.shifted_sum[lo:hi] = np.einsum("ij,ij->i", weighted, out)
    total, log_norm = blocks.normalised(lo, hi, out)
    if blocks.gradient is None:
        return
    row_scale = blocks.row_scale[lo:hi]
    factor = row_scale * mass
    if blocks.shift is not None:  # the z-loss
        factor = factor + blocks.z[lo:hi] * (shift + log_norm)
    out *= (factor / total)[:, None]
    out -= row_scale[:, None] * weighted
    _through_softcap(out, tanh)


def _loss(
    problem: Classes, terms: IndexTerms | None, smoothing: float, gradient: Any, scale: Any
) -> Any:
    """Each position's loss, by the generic arithmetic from what the blocks find in its row;
    with a ``gradient`` buffer, the gradient of the sum there, each position's times ``scale``."""
    if terms is None:
        blocks: _Blocks = _ProbabilityBlocks(problem, smoothing, gradient, scale)
        return _categorical.probability_loss(problem, *blocks.run(problem, _probability_block))
    blocks = _IndexBlocks(problem, terms, smoothing, gradient, scale)
    return terms.loss(problem, *blocks.run(problem, _index_block))


def _weight_sum(problem: Classes, terms: IndexTerms | None) -> Any:
    """What ``"mean"`` divides by where it is not the number of positions."""
    if terms is not None:
        return terms.weight_sum(problem)
    return None if problem.sample_weight is None else np.sum(problem.sample_weight)


def cross_entropy(problem: Classes, smoothing: float) -> Any:
    if not _applies(problem):
        return None
    terms = IndexTerms.of(problem, smoothing) if problem.index_target else None
    loss = _loss(problem, terms, smoothing, gradient=None, scale=None)
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
    loss = problem.reduce(Unreduced(_loss(problem, terms, smoothing, gradient, scale), weight_sum))
    return loss, problem.finish(problem.to_caller_layout(gradient))


# --- linear_cross_entropy ---------------------------------------------------------------------


def _linear_pass(
    problem: Linear, smoothing: float, wanted: tuple[bool, bool, bool], gradient: bool
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None] | None:
    """Every chunk of positions through one buffer of the chunk's logits: made by BLAS into
    it, turned into the losses and (with ``gradient``) into the gradient with respect to them
    there, block by block in threads (:func:`_loss`), then multiplied into the three
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
        losses[start:stop] = _loss(cp, terms, smoothing, logits if gradient else None, rows_scale)
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
