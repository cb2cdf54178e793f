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

from .._generic import _categorical
from .._generic._categorical import IndexTerms
from .._generic._problems import Classes, Pass

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


def _rows_of(p: Classes) -> np.ndarray | None:
    """The logits as a C-contiguous ``(positions, C)`` view; None where the kernel does not
    apply (class probabilities, a class axis that is not contiguous): the generic path runs."""
    predictions = p.predictions
    if not (p.index_target and predictions.flags.c_contiguous and predictions.size > 0):
        return None
    rows: np.ndarray = predictions.reshape(-1, p.num_classes)
    return rows


def _statistics(
    p: Classes,
    logits: np.ndarray,
    terms: IndexTerms,
    gradient: np.ndarray | None = None,
    scale: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read the rows once, block by block: the log normaliser, the shifted target logit and,
    with smoothing, the weighted sum of shifted logits of every position.

    With ``gradient`` (an array of the rows' shape), each block's exponentials are turned into
    its gradient there, instead of in a scratch buffer: times ``scale`` at kept positions, 0 at
    ignored ones (None: the gradient of the sum).
    """
    rows, classes = logits.shape
    dtype = np.dtype(p.compute_dtype)
    convert = logits.dtype != dtype  # float16: each block is converted as it is read
    index = np.asarray(terms.pick.index).reshape(-1)
    log_norm = np.empty(rows, dtype=dtype)
    picked = np.empty(rows, dtype=dtype)
    smoothing = terms.smoothing
    shifted_sum = np.empty(rows, dtype=dtype) if smoothing > 0.0 else None
    class_weights = None if p.weight is None else np.asarray(p.weight)
    block_rows = max(1, BLOCK_ELEMENTS // classes)

    if gradient is not None:
        kept = np.asarray(terms.pick.kept).reshape(-1)
        row_scale = kept.astype(dtype) if scale is None else np.where(kept, scale, 0.0)
        softmax_scale = row_scale * np.asarray(terms.softmax_coefficient(p)).reshape(-1)
        target_term = row_scale * np.asarray(terms.target_term()).reshape(-1)
        # (eps / C) w_c, taken from every class of a kept position
        spread = (smoothing / classes) * (1.0 if class_weights is None else class_weights)

    # Row sums as a product with a vector of ones: BLAS's gemv is three times faster than
    # np.sum along a short axis, and as exact for these sums of positive terms.
    ones = np.ones(classes, dtype=dtype)
    class_weights = ones if class_weights is None else class_weights.astype(dtype)

    def work(start: int, stop: int) -> None:
        scratch = None if gradient is not None else _buffer(block_rows, classes, dtype)
        for lo in range(start, stop, block_rows):
            hi = min(lo + block_rows, stop)
            block = logits[lo:hi]
            out = scratch[: hi - lo] if gradient is None else gradient[lo:hi]  # type: ignore[index]
            if convert:
                out[...] = block
                block = out
            shift = _row_max(block)
            shift[shift == -np.inf] = 0.0  # a row of all -inf: exp gives 0, not NaN
            np.subtract(block, shift[:, None], out=out)
            local = np.arange(hi - lo)
            picked[lo:hi] = out[local, index[lo:hi]]
            if shifted_sum is not None:
                np.matmul(out, class_weights, out=shifted_sum[lo:hi])
            np.exp(out, out=out)
            total = out @ ones
            log_norm[lo:hi] = np.log(total)
            if gradient is not None:
                out *= (softmax_scale[lo:hi] / total)[:, None]
                if smoothing > 0.0:
                    out -= row_scale[lo:hi, None] * spread
                out[local, index[lo:hi]] -= target_term[lo:hi]

    _run_blocks(rows, classes, work)
    shape = p.predictions.shape[:-1]
    return (
        log_norm.reshape(shape),
        picked.reshape(shape),
        None if shifted_sum is None else shifted_sum.reshape(shape),
    )


def cross_entropy(p: Classes, smoothing: float) -> Any:
    logits = _rows_of(p)
    if logits is None:
        return None
    terms = IndexTerms.of(p, smoothing)
    loss = terms.loss(p, *_statistics(p, logits, terms))
    return p.reduce(Pass(loss, terms.weight_sum(p)))


def cross_entropy_value_and_grad(p: Classes, smoothing: float) -> Any:
    logits = _rows_of(p)
    if logits is None:
        return None
    terms = IndexTerms.of(p, smoothing)
    weight_sum = terms.weight_sum(p)
    # The mean's 1 / W goes into the block loop: no second pass over the gradient. As torch's,
    # it is NaN at kept positions whose total weight W is 0 (ignored ones stay 0).
    scale = None
    if p.reduction == "mean":
        total = float(weight_sum)
        scale = 1.0 / total if total != 0.0 else math.nan
    gradient = np.empty(p.predictions.shape, dtype=p.compute_dtype)
    statistics = _statistics(p, logits, terms, gradient.reshape(-1, p.num_classes), scale)
    loss = p.reduce(Pass(terms.loss(p, *statistics), weight_sum))
    return loss, p.finish(p.to_caller_layout(gradient))


KERNELS: dict[Callable[..., Any], Callable[..., Any]] = {
    _categorical.cross_entropy: cross_entropy,
    _categorical.cross_entropy_value_and_grad: cross_entropy_value_and_grad,
}
