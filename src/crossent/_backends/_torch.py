"""Kernels for PyTorch tensors: torch's own, through ``torch.nn.functional``.

Autograd through these is torch's own backward, so that ``crossent.cross_entropy`` on tensors
trains exactly as ``F.cross_entropy`` does, at its speed. The arguments arrive prepared (see
``crossent._generic._problems``): class axis last, values checked.

``KERNELS`` replaces generic functions on prepared problems; ``DIRECT_CALLS`` replaces a whole
public call on CPU tensors, before any preparation (see the end of this module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .._generic import _binary, _categorical, _linear, _softmax
from .._generic._arrays import torch_transformed
from .._generic._categorical import IndexTerms
from .._generic._linear import Linear
from .._generic._problems import Classes, Pass, Pointwise
from .._typing import Array, Namespace
from .._validation import broadcasts_to

__all__ = ["DIRECT_CALLS", "KERNELS"]


def _let_dynamo_trace_array_api_compat() -> None:
    """Tell torch.compile that ``array_api_compat``'s cached helpers may be traced.

    They answer questions about types and namespaces (``is_torch_namespace`` and the like),
    with ``functools.lru_cache``: pure functions, which Dynamo traces correctly, but at each of
    their call sites it would warn that it ignores the cache. torch lets a library vouch for
    such functions (it does so for einops) through a private function: without it the
    warnings show, and nothing else changes. This module is loaded with the first tensor,
    before crossent calls any of them on it (``crossent._dispatch.entry``).
    """
    from array_api_compat.common import _helpers

    try:
        from torch._dynamo.utils import allow_lru_cache_wrapper_trace_without_warning as allow
    except ImportError:  # pragma: no cover (a torch without it)
        return
    for value in vars(_helpers).values():
        if hasattr(value, "cache_info"):
            allow(value)


_let_dynamo_trace_array_api_compat()


def _transformed(*tensors: torch.Tensor | None) -> bool:
    """Whether any of ``tensors`` is seen through a ``torch.func`` transform: the blocked and
    linear ``autograd.Function``s and their in-place buffers are for plain tensors only."""
    return any(x is not None and torch_transformed(x) for x in tensors)


def _class_first(x: torch.Tensor) -> torch.Tensor:
    """torch's layout: classes at dimension 1, or 0 for one unbatched example."""
    return x if x.ndim < 2 else x.movedim(-1, 1)


_FLOATS = (torch.float32, torch.float64)


def logsumexp(xp: Namespace, x: torch.Tensor, axes: tuple[int, ...]) -> Array:
    return torch.logsumexp(x, dim=axes, keepdim=True)


def softmax(xp: Namespace, x: torch.Tensor, axis: int) -> Array:
    return torch.softmax(x, dim=axis)


def log_softmax(xp: Namespace, x: torch.Tensor, axis: int) -> Array:
    return torch.log_softmax(x, dim=axis)


def log_sigmoid(xp: Namespace, x: torch.Tensor) -> Array:
    return F.logsigmoid(x)


#: Elements per block of half-precision input read as float32: 1 MiB, which a core's cache
#: holds (of 256 KiB to 16 MiB blocks, it measured best on the benchmark shapes).
BLOCK_ELEMENTS = 2**18
#: The same on a GPU: 256 MiB of float32. Blocks of the CPU's size made thousands of small
#: kernel launches, 60 to 80 times slower than torch's cross_entropy on an H100.
ACCELERATOR_BLOCK_ELEMENTS = 2**26


def _block_elements(x: torch.Tensor) -> int:
    return BLOCK_ELEMENTS if x.device.type == "cpu" else ACCELERATOR_BLOCK_ELEMENTS


def _half_block_losses(
    rows: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    smoothing: float,
) -> torch.Tensor:
    """torch's cross-entropy of each row of a block of half-precision logits, in float32: the
    block is converted (by log_softmax, in one pass) while it is in the cache."""
    log_probs = torch.log_softmax(rows, dim=1, dtype=torch.float32)
    if smoothing == 0.0:
        return F.nll_loss(log_probs, target, weight, None, ignore_index, None, "none")
    # cross_entropy of log-probabilities is the same loss (their log normaliser is 0)
    return F.cross_entropy(
        log_probs, target, weight, None, ignore_index, None, "none", label_smoothing=smoothing
    )


class _BlockedHalfCrossEntropy(torch.autograd.Function):  # type: ignore[misc]
    """The float32 cross-entropy of each row of half-precision logits ``(N, C)``, block by
    block: no float32 copy of the logits is ever whole. The backward pass recomputes each
    block's softmax in float32, makes torch's gradient of it there (written out below), and
    rounds it once, into the logits' dtype."""

    @staticmethod
    def forward(
        ctx: Any,
        rows: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        ignore_index: int,
        smoothing: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(rows, target, weight)
        ctx.options = (ignore_index, smoothing)
        step = max(1, _block_elements(rows) // rows.shape[1])
        with torch.no_grad():
            losses = [
                _half_block_losses(
                    rows[i : i + step], target[i : i + step], weight, ignore_index, smoothing
                )
                for i in range(0, rows.shape[0], step)
            ]
        return torch.cat(losses) if losses else rows.new_zeros((0,), dtype=torch.float32)

    @staticmethod
    @torch.autograd.function.once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        rows, target, weight = ctx.saved_tensors
        ignore_index, smoothing = ctx.options
        num_classes = rows.shape[1]
        # torch's gradient of the loss of row n, written out (as crossent.value_and_grad's):
        # g_n [s_n softmax(x_n) - (1 - eps) w_{y_n} onehot(y_n) - (eps / C) w], with
        # s_n = (1 - eps) w_{y_n} + (eps / C) sum(w), and 0 where y_n is ignored
        kept = target != ignore_index
        index = torch.where(kept, target, 0)
        picked = torch.ones_like(upstream) if weight is None else weight[index]
        scale = torch.where(kept, upstream, 0.0)
        at_target = scale * ((1.0 - smoothing) * picked)
        total = num_classes if weight is None else torch.sum(weight)
        spread = scale * (smoothing / num_classes)
        softmax_scale = at_target + spread * total
        grad = torch.empty_like(rows)  # ours to write into
        step = max(1, _block_elements(rows) // num_classes)
        for i in range(0, rows.shape[0], step):
            j = i + step
            block = torch.softmax(rows[i:j], dim=1, dtype=torch.float32)
            block.mul_(softmax_scale[i:j, None])
            block.scatter_add_(1, index[i:j, None], -at_target[i:j, None])
            if smoothing != 0.0:
                block.sub_(spread[i:j, None] * (1.0 if weight is None else weight))
            grad[i:j] = block
        return grad, None, None, None, None


def _blocked_half_cross_entropy(p: Classes, smoothing: float) -> Array | None:
    """Index targets of eager half-precision logits whose class axis is last and contiguous:
    :class:`_BlockedHalfCrossEntropy`, reduced in float32. (torch.compile fuses the conversion
    into the kernels by itself, and takes the route below.)"""
    logits = p.predictions
    if not p.index_target or torch.compiler.is_compiling() or not logits.is_contiguous():
        return None
    if _transformed(logits, p.target, p.weight):
        return None
    rows = logits.reshape(-1, logits.shape[-1])
    losses = _BlockedHalfCrossEntropy.apply(
        rows, p.target.reshape(-1), p.weight, p.ignore_index, smoothing
    ).reshape(p.target.shape)
    if p.reduction != "mean":
        return p.reduce(Pass(losses))
    kept = p.target != p.ignore_index
    if p.weight is None:
        return p.reduce(Pass(losses, torch.sum(kept, dtype=torch.float32)))
    picked = p.weight[torch.where(kept, p.target, 0)]
    return p.reduce(Pass(losses, torch.sum(torch.where(kept, picked, 0.0))))


def _weighted_positions(p: Classes, losses: torch.Tensor, pick: Any) -> Array:
    """Per-position ``losses`` of a call with sample weights (0 at ignored positions), each
    times its sample weight, reduced: ``"mean"`` divides by ``sum s_n w[y_n]`` (class
    indices, ``pick``) or ``sum s_n`` (class probabilities)."""
    s = p.sample_weight
    if pick is not None:
        if s is not None:
            losses = losses * pick.kept_weight  # s_n where kept, 0 where ignored
        return p.reduce(Pass(losses, torch.sum(pick.weight)))
    if s is None:
        return p.reduce(Pass(losses))
    return p.reduce(Pass(losses * s, torch.sum(s)))


def _composed_cross_entropy(p: Classes, smoothing: float) -> Array:
    """torch's cross-entropy of the soft-capped logits (``Classes.scores``), with the z-loss
    from one ``logsumexp`` more and the sample weights: torch's kernels composed, which
    autograd and torch.compile see through."""
    rows = p.scores()  # float32 for half precision, capped with softcap
    classes = rows.shape[-1]
    rows = rows.reshape(-1, classes)
    pick = _categorical.picks(p) if p.index_target else None
    target = p.target.reshape(-1) if pick is not None else p.target.reshape(-1, classes)
    losses = F.cross_entropy(
        rows,
        target,
        weight=p.weight,
        ignore_index=p.ignore_index,
        reduction="none",
        label_smoothing=smoothing,
    ).reshape(p.predictions.shape[:-1])
    if p.z_loss > 0.0:
        lse = torch.logsumexp(rows, dim=1).reshape(losses.shape)
        if pick is None:
            losses = losses + p.z_loss * lse * lse
        else:  # weighted as its position, by w[y_n]; nothing where ignored
            w = 1.0 if p.weight is None else torch.take(p.weight, pick.index)
            losses = losses + torch.where(pick.kept, p.z_loss * w * (lse * lse), 0.0)
    if pick is not None and pick.bad is not None:
        losses = torch.where(pick.bad, torch.nan, losses)
    return _weighted_positions(p, losses, pick)


def cross_entropy(p: Classes, smoothing: float) -> Array:
    if not p.plain:
        return _composed_cross_entropy(p, smoothing)
    target = p.target if p.index_target else _class_first(p.target)
    logits = _class_first(p.predictions)
    if logits.dtype not in _FLOATS:
        blocked = _blocked_half_cross_entropy(p, smoothing)
        if blocked is not None:
            return blocked
        # float16 and bfloat16: torch's log_softmax reads them and computes and writes float32
        # in one pass, where converting first would take two. cross_entropy of log-probabilities
        # is the same loss (their log normaliser is 0).
        logits = torch.log_softmax(logits, dim=1 if logits.ndim > 1 else 0, dtype=torch.float32)
        if p.index_target and smoothing == 0.0:
            out = F.nll_loss(
                logits,
                target,
                weight=p.weight,
                ignore_index=p.ignore_index,
                reduction=p.reduction,
            )
            return p.finish(out)
    out = F.cross_entropy(
        logits,
        target,
        weight=p.weight,
        ignore_index=p.ignore_index,
        reduction=p.reduction,
        label_smoothing=smoothing,
    )
    return p.finish(out)


def nll_loss(p: Classes) -> Array:
    if p.sample_weight is not None:
        pick = _categorical.picks(p)
        # the class weights in the compute dtype, after torch's exact gather: torch's half
        # kernel takes no float32 weights
        negated = _nll_class_last(p.predictions, p.target, None, p.ignore_index, "none")
        losses = negated.to(p.compute_dtype)
        if p.weight is not None:
            # gather, not indexing: a 0-d index compiles, and vmap batches it (not take)
            index = pick.index
            losses = losses * p.weight.gather(0, index.reshape(-1)).reshape(index.shape)
        if pick.bad is not None:
            losses = torch.where(pick.bad, torch.nan, losses)
        return _weighted_positions(p, losses, pick)
    if p.predictions.dtype not in _FLOATS:
        # float16 and bfloat16: torch's kernel gathers -x_y exactly (0 where ignored), and its
        # backward scatters without the conversions that make torch's generic scatter slow;
        # weights and sums are then float32, where torch's half kernel would round them.
        negated = _nll_class_last(p.predictions, p.target, None, p.ignore_index, "none")
        if p.weight is None:  # the common case, in as few operations as it takes
            return _reduce_half_nll(negated, p.target, p.ignore_index, p.reduction)
        pick = _categorical.picks(p)
        loss = pick.weight * negated.to(torch.float32)
        return p.reduce(Pass(loss, torch.sum(pick.weight)))
    out = _nll_class_last(p.predictions, p.target, p.weight, p.ignore_index, p.reduction)
    return p.finish(out)


def _reduce_half_nll(
    negated: torch.Tensor, target: torch.Tensor, ignore_index: int, reduction: str
) -> torch.Tensor:
    """The reduction of torch's exact half-precision ``-x_y`` (0 where ignored), unweighted,
    summed in float32 and rounded once."""
    if reduction == "none":
        return negated
    total = torch.sum(negated, dtype=torch.float32)
    if reduction == "mean":  # no kept position: 0 / 0 = NaN, as torch's
        total = total / torch.sum(target != ignore_index, dtype=torch.float32)
    return total.to(negated.dtype)


def _nll_class_last(
    log_probs: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    reduction: str,
) -> torch.Tensor:
    """``F.nll_loss`` of log-probabilities whose class axis is last, read as rows of a 2-d
    view. torch's own layout would need the class axis moved to 1, and the backward of its
    nll_loss over ``(N, C, d1, ...)`` input fails on such a strided view (torch 2.13: "grad_input
    must be contiguous"); the rows of a contiguous tensor are a view, not a copy."""
    if log_probs.ndim <= 2:
        return F.nll_loss(log_probs, target, weight, None, ignore_index, None, reduction)
    rows = log_probs.reshape(-1, log_probs.shape[-1])
    out = F.nll_loss(rows, target.reshape(-1), weight, None, ignore_index, None, reduction)
    return out.reshape(target.shape) if reduction == "none" else out


def binary_cross_entropy(p: Pointwise, eps: float | None) -> Array:
    probs = p.pred if eps is None else torch.clamp(p.pred, eps, 1.0 - eps)
    # torch raises on a NaN probability or target, where crossent gives NaN: NaN positions
    # enter torch as 1/2, and come out NaN again. (Out-of-range values raised already.)
    nan = torch.isnan(probs) | torch.isnan(p.target)
    loss = F.binary_cross_entropy(
        torch.where(nan, 0.5, probs),
        torch.where(nan, 0.5, p.target),
        weight=p.weight,
        reduction="none",
    )
    return p.reduce(Pass(torch.where(nan, torch.nan, loss)))


def binary_cross_entropy_with_logits(p: Pointwise) -> Array:
    # torch sums (1 - t) x - log_sigmoid(x): where the loss is below 1e-16 of |x| it cancels to
    # 0, where the generic path keeps the tiny loss; both are exact to the rounding of x.
    out = F.binary_cross_entropy_with_logits(
        p.pred, p.target, weight=p.weight, pos_weight=p.pos_weight, reduction=p.reduction
    )
    return p.finish(out)


# --- linear_cross_entropy ---------------------------------------------------------------------


def _linear_chunk(
    p: Linear,
    smoothing: float,
    hidden: torch.Tensor,
    target: torch.Tensor,
    factor: torch.Tensor | float | None,
    buffer: torch.Tensor | None,
    gradient: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk of positions, class indices, in place in ``buffer`` (ours): its logits,
    shifted, exponentiated and turned into the gradient with respect to them (each row times
    its ``factor``). The generic chunk makes five arrays of the chunk's size; this, one."""
    if buffer is None or p.softcap is not None or p.z_loss > 0.0:
        # class probabilities (the target is as large as the logits anyway), soft-capping and
        # the z-loss: the generic chunk, in torch's operations, of torch's product
        logits = F.linear(hidden, p.weight, p.bias).to(p.compute_dtype)
        return _linear.chunk_pass(
            p, smoothing, hidden, target, factor, gradient=gradient, logits=logits
        )
    logits = buffer[: hidden.shape[0]]
    if p.hidden.dtype in _FLOATS:
        torch.mm(hidden, p.weight.T, out=logits)
        if p.bias is not None:
            logits += p.bias
    else:  # the product in half precision, rounded as the dense one, then float32
        logits.copy_(F.linear(hidden, p.weight, p.bias))
    cp = p.chunk(logits, target)
    terms = IndexTerms.of(cp, smoothing)
    pick = terms.pick
    index = pick.index[:, None]
    shift = logits.amax(dim=1, keepdim=True)
    shift.masked_fill_(shift == -torch.inf, 0.0)  # a row of all -inf: exp gives 0, not NaN
    logits -= shift
    picked = logits.gather(1, index)[:, 0]
    shifted_sum = None
    if smoothing > 0.0:
        w = cp.weight
        shifted_sum = logits.sum(dim=1) if w is None else torch.mv(logits, w)
    logits.exp_()
    total = logits.sum(dim=1)
    loss = terms.loss(cp, torch.log(total), picked, shifted_sum)
    if not gradient:
        return loss, None
    coefficient = terms.softmax_coefficient(cp) / total
    at_target = terms.target_term()
    spread = pick.kept.to(total.dtype) * (smoothing / p.num_classes)
    if factor is not None:
        coefficient, at_target, spread = (x * factor for x in (coefficient, at_target, spread))
    logits *= coefficient[:, None]
    if smoothing > 0.0:  # (eps / C) w_c from every class of a kept position
        if cp.weight is None:
            logits -= spread[:, None]
        else:
            logits.addr_(spread, cp.weight, alpha=-1.0)
    logits.scatter_add_(1, index, -at_target[:, None])
    if pick.bad is not None:
        logits *= torch.where(pick.bad, torch.nan, 1.0)[:, None].to(logits.dtype)
    return loss, logits


#: What runs the chunks of ``linear_cross_entropy``: ``(problem, smoothing, wanted, factor)`` to
#: the positions' losses and the gradients of hidden, weight and bias (None where not wanted).
LinearPass = Callable[
    [Linear, float, tuple[bool, bool, bool], Any],
    tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
]


def _linear_pass(
    p: Linear,
    smoothing: float,
    wanted: tuple[bool, bool, bool],
    factor: torch.Tensor | float | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Every chunk: the positions' losses and the gradients ``wanted`` (hidden's in the
    caller's dtype, weight's and bias's summed in the compute dtype: ``addmm_`` adds each
    chunk's product into the sum without a temporary)."""
    n, d = p.hidden.shape
    v = p.num_classes
    compute = p.compute_dtype
    on = {"device": p.hidden.device}
    gradient = any(wanted)
    losses = torch.empty((n,), dtype=compute, **on)
    d_hidden = torch.empty((n, d), dtype=p.dtype, **on) if wanted[0] else None
    d_weight = torch.zeros((v, d), dtype=compute, **on) if wanted[1] else None
    d_bias = torch.zeros((v,), dtype=compute, **on) if wanted[2] and p.bias is not None else None
    buffer = None
    if p.index_target and n:
        buffer = torch.empty((min(p.chunk_size, n), v), dtype=compute, **on)
    for start, stop in p.spans():
        hidden, target = p.hidden[start:stop], p.target[start:stop]
        rows = _linear.rows_of(factor, start, stop)
        loss, g = _linear_chunk(p, smoothing, hidden, target, rows, buffer, gradient)
        losses[start:stop] = loss
        if g is None:
            continue
        if d_hidden is not None:
            torch.mm(g.to(p.dtype), p.weight, out=d_hidden[start:stop])
        if d_weight is not None:
            if hidden.device.type == "cpu" or hidden.dtype is compute:
                d_weight.addmm_(g.T, hidden.to(compute))
            else:  # a GPU's half-precision product (float32 ones are several times slower)
                d_weight += torch.mm(g.T.to(hidden.dtype), hidden)
        if d_bias is not None:
            d_bias += g.sum(dim=0)
    return losses, d_hidden, d_weight, d_bias


class _LinearCrossEntropy(torch.autograd.Function):  # type: ignore[misc]
    """``linear_cross_entropy`` with torch's autograd, never making the logits.

    With a scalar reduction the gradients are computed in the forward pass, from the logits
    it makes anyway (as Liger's fused linear cross-entropy does), and the backward pass only
    scales them by the upstream gradient: three matrix products in all, as the dense
    computation. With ``reduction="none"`` the upstream gradient differs per position, so the
    backward pass makes each chunk's logits again, times it.
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        p: Linear,
        smoothing: float,
        run: LinearPass | None = None,
    ) -> torch.Tensor:
        wanted = (
            bool(ctx.needs_input_grad[0]),
            bool(ctx.needs_input_grad[1]),
            bias is not None and bool(ctx.needs_input_grad[2]),
        )
        run = _linear_pass if run is None else run
        # float16: the gradient is rounded to the input dtype with the upstream one (a loss
        # scale) already in it, as the dense computation rounds it, so the backward pass makes it
        early = p.reduction != "none" and any(wanted) and p.hidden.dtype in _FLOATS
        factor = _linear.gradient_factor(p) if early else None
        losses, *gradients = run(p, smoothing, wanted if early else _linear.NO_GRADIENTS, factor)
        ctx.problem, ctx.smoothing, ctx.wanted, ctx.early = p, smoothing, wanted, early
        ctx.run = run
        # Ours, not the graph's: the backward pass scales them in place and hands them over
        ctx.gradients = gradients if early else None
        return p.reduce_losses(losses)

    @staticmethod
    @torch.autograd.function.once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        p: Linear = ctx.problem
        if ctx.early:
            gradients, ctx.gradients = ctx.gradients, None
            if gradients is None:
                raise RuntimeError(
                    "linear_cross_entropy made its gradients in the forward pass, and the first "
                    "backward pass took them: call linear_cross_entropy again to go backward "
                    "through it again"
                )
            scale = upstream.to(p.compute_dtype)
            for g in gradients:  # in place: a copy of the weight's gradient would be the peak
                if g is not None:
                    g.mul_(scale.to(g.dtype))
        else:
            factor = _linear.upstream_factor(p, upstream)
            _, *gradients = ctx.run(p, ctx.smoothing, ctx.wanted, factor)
        d_hidden, d_weight, d_bias = _linear.finish_gradients(p, ctx.wanted, *gradients)
        if d_hidden is not None:  # the flattened positions this function was given
            d_hidden = d_hidden.reshape(p.hidden.shape)
        return d_hidden, d_weight, d_bias, None, None, None


def linear_autograd(p: Linear, smoothing: float, run: LinearPass | None = None) -> Array | None:
    """``linear_cross_entropy`` through :class:`_LinearCrossEntropy`, whose chunks ``run``
    computes (:func:`_linear_pass` by default; the sharded pass of
    ``_torch_distributed``): only the losses where nothing is differentiated. None inside a
    ``torch.func`` transform, whose wrapped tensors neither the Function nor the in-place
    chunks take: the generic chunks then run, in torch's operations, which it sees through."""
    differentiable = [x for x in (p.hidden, p.weight, p.bias) if x is not None]
    if _transformed(*differentiable, p.target, p.class_weight, p.sample_weight):
        return None
    if not torch.is_grad_enabled() or not any(x.requires_grad for x in differentiable):
        # evaluation (no_grad, inference_mode, frozen weights): the losses alone
        with torch.no_grad():
            passed = _linear_pass if run is None else run
            losses = passed(p, smoothing, _linear.NO_GRADIENTS, None)[0]
            return p.reduce_losses(losses)
    named = (("target", p.target), ("class_weight", p.class_weight))
    for name, x in (*named, ("sample_weight", p.sample_weight)):
        if x is not None and x.requires_grad:
            raise TypeError(
                f"linear_cross_entropy is differentiated in hidden, weight and bias only, not "
                f"in its {name}; pass {name}.detach()"
            )
    # no run passed where there is none: torch.compile traces the plain call
    args = (p.hidden, p.weight, p.bias, p, smoothing) + (() if run is None else (run,))
    out: torch.Tensor = _LinearCrossEntropy.apply(*args)
    return out


def linear_cross_entropy(p: Linear, smoothing: float) -> Array | None:
    return linear_autograd(p, smoothing)


def linear_cross_entropy_value_and_grad(
    p: Linear, smoothing: float, wanted: tuple[bool, bool, bool]
) -> tuple[Array, tuple[Array | None, ...]]:
    with torch.no_grad():
        losses, *gradients = _linear_pass(p, smoothing, wanted, _linear.gradient_factor(p))
        value = p.reduce_losses(losses)
        return value, _linear.finish_gradients(p, wanted, *gradients)


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


# --- Direct calls: CPU tensors straight to torch, before crossent's preparation ---------------
#
# Each takes the public function's arguments, with its defaults (tests/test_backends.py checks
# the signatures are the same). It declines (returns None) where torch's numbers would not be
# crossent's: half precision (crossent computes it in float32), mixed dtypes (torch promotes,
# crossent keeps the predictions' dtype), options that are not plain Python values, and what
# torch accepts but crossent refuses (its reduction alias "elementwise_mean", a target of the
# wrong shape, weights that would enlarge the loss, label smoothing outside [0, 1]). torch
# checks the values itself; where it raises, the full path runs and raises crossent's error,
# so that a call is refused with the same message on every backend (tests/test_validation.py).
# On CUDA a bad class index is a device-side assert, not an exception: CUDA tensors take the
# full path, which checks indices first.

_TORCH_ERRORS = (RuntimeError, ValueError, TypeError, IndexError)


_NUMBERS = (int, float)
_REDUCTIONS = ("none", "mean", "sum")


def _plain(x: torch.Tensor, axis: object, reduction: object, *options: object) -> bool:
    """Whether the options are the plain Python values torch and crossent read alike, with
    ``axis`` in range (torch reads no axis of a 1-d input)."""
    if type(axis) is not int or type(reduction) is not str or not -x.ndim <= axis < x.ndim:
        return False
    if reduction not in _REDUCTIONS:
        return False
    for option in options:  # noqa: SIM110 (all() of a generator costs more than the check)
        if type(option) not in _NUMBERS:
            return False
    return True


def _same_dtype(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    dtype = x.dtype
    if dtype is not torch.float32 and dtype is not torch.float64:
        return False
    for other in others:
        if other is not None and (not isinstance(other, torch.Tensor) or other.dtype != dtype):
            return False
    return True


def _torch_layout(x: torch.Tensor, axis: int) -> torch.Tensor:
    if x.ndim < 2 or axis in (1, 1 - x.ndim):
        return x
    return x.movedim(axis, 1)


def direct_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    axis: int = -1,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    softcap: float | None = None,
    z_loss: float = 0.0,
    sample_weight: torch.Tensor | None = None,
    process_group: object = None,
) -> Array:
    if not (
        process_group is None  # classes split among processes: the sharded path
        and softcap is None  # crossent's options beyond torch's: the kernel composes them
        and sample_weight is None
        and type(z_loss) is float
        and z_loss == 0.0
        and isinstance(target, torch.Tensor)
        and _same_dtype(logits, weight, target if target.is_floating_point() else None)
        and _plain(logits, axis, reduction, ignore_index, label_smoothing)
        and type(ignore_index) is int
        and 0.0 <= label_smoothing <= 1.0  # torch takes any value
        and logits.shape[axis] > 0  # torch gives NaN for no classes, crossent refuses
    ):
        return None
    if logits.ndim == 1 and target.ndim != logits.ndim - (not target.is_floating_point()):
        return None  # torch reads a (1,) target of (C,) logits as (); batched shapes it checks
    try:
        if target.is_floating_point():
            target = _torch_layout(target, axis)
        return F.cross_entropy(
            _torch_layout(logits, axis),
            target,
            weight=weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
        )
    except _TORCH_ERRORS:
        return None


def direct_nll_loss(
    log_probs: torch.Tensor,
    target: torch.Tensor,
    *,
    axis: int = -1,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    sample_weight: torch.Tensor | None = None,
) -> Array:
    # The loss itself takes microseconds: the checks are written out, and torch is called
    # with positional arguments, to keep crossent's cost within a few percent of it.
    if sample_weight is not None:
        return None
    if (
        weight is None
        and (log_probs.dtype is torch.bfloat16 or log_probs.dtype is torch.float16)
        and log_probs.ndim == 2
        and (axis == 1 or axis == -1)
        and type(axis) is int
        and type(target) is torch.Tensor
        and type(ignore_index) is int
        and type(reduction) is str
        and reduction in _REDUCTIONS
        and log_probs.shape[1] > 0
    ):
        # half precision: torch's exact gather, summed in float32 (as the kernel nll_loss)
        try:
            negated = F.nll_loss(log_probs, target, None, None, ignore_index, None, "none")
        except _TORCH_ERRORS:
            return None
        return _reduce_half_nll(negated, target, ignore_index, reduction)
    if (
        type(target) is not torch.Tensor
        or (weight is not None and type(weight) is not torch.Tensor)
        or not _same_dtype(log_probs, weight)
        or type(axis) is not int
        or type(reduction) is not str
        or type(ignore_index) is not int
        or reduction not in _REDUCTIONS
    ):
        return None
    ndim = log_probs.ndim
    if not -ndim <= axis < ndim or (ndim == 1 and target.ndim != 0):
        return None  # torch checks the target's shape against batched input itself
    if log_probs.shape[axis] == 0:
        return None  # no classes: torch gives NaN, crossent refuses
    try:
        if ndim <= 2:
            if ndim == 2 and axis != 1 and axis != -1:
                log_probs = log_probs.movedim(axis, 1)
            return F.nll_loss(log_probs, target, weight, None, ignore_index, None, reduction)
        if (axis == 1 or axis == 1 - ndim) and log_probs.is_contiguous():
            return F.nll_loss(log_probs, target, weight, None, ignore_index, None, reduction)
        # the class axis elsewhere, or a strided view: class-last rows (see _nll_class_last),
        # whose shape torch cannot check against the target's
        if axis != -1 and axis != ndim - 1:
            log_probs = log_probs.movedim(axis, -1)
        if target.shape != log_probs.shape[:-1]:
            return None
        return _nll_class_last(log_probs, target, weight, ignore_index, reduction)
    except _TORCH_ERRORS:
        return None


def direct_binary_cross_entropy(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    eps: float | None = None,
) -> Array:
    # With eps, crossent checks the probabilities before clipping them: the full path.
    if eps is not None or not (
        _same_dtype(probs, target, weight) and _plain(probs, -1, reduction)
    ):
        return None
    if weight is not None and not broadcasts_to(weight.shape, probs.shape):
        return None
    try:
        return F.binary_cross_entropy(probs, target, weight=weight, reduction=reduction)
    except _TORCH_ERRORS:
        return None


class _BlockedHalfBCEWithLogits(torch.autograd.Function):  # type: ignore[misc]
    """torch's binary cross-entropy with logits of flat half-precision tensors, computed in
    float32 block by block (each block converted while it is in the cache), never a float32
    copy of the whole input. ``"none"`` writes each block's loss in the input's dtype; the
    sums are float32. The backward pass recomputes ``sigmoid(x) - t`` per block."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target: torch.Tensor, total: bool) -> Any:
        ctx.save_for_backward(logits, target)
        step = _block_elements(logits)
        if total:
            out = torch.zeros((), dtype=torch.float32, device=logits.device)
        else:
            out = torch.empty_like(logits)
        for i in range(0, logits.shape[0], step):
            j = i + step
            loss = F.binary_cross_entropy_with_logits(
                logits[i:j].float(), target[i:j].float(), reduction="sum" if total else "none"
            )
            if total:
                out += loss
            else:
                out[i:j] = loss
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        logits, target = ctx.saved_tensors
        grad = torch.empty_like(logits)  # ours to write into
        step = _block_elements(logits)
        scalar = upstream.ndim == 0
        for i in range(0, logits.shape[0], step):
            j = i + step
            block = torch.sigmoid(logits[i:j].float()).sub_(target[i:j].float())
            grad[i:j] = block.mul_(upstream if scalar else upstream[i:j].float())
        return grad, None, None


def _blocked_half_bce_with_logits(
    logits: torch.Tensor, target: torch.Tensor, reduction: str
) -> Array | None:
    """Half-precision logits and target of one dtype, no weights, contiguous, the target not
    differentiated: :class:`_BlockedHalfBCEWithLogits`. Eager only: torch.compile fuses the
    conversion by itself."""
    dtype = logits.dtype
    if (
        dtype not in (torch.float16, torch.bfloat16)
        or type(target) is not torch.Tensor
        or target.dtype != dtype
        or target.shape != logits.shape
        or target.requires_grad
        or not (logits.is_contiguous() and target.is_contiguous())
        or torch.compiler.is_compiling()
        or _transformed(logits, target)
    ):
        return None
    flat = logits.reshape(-1)
    if reduction == "none":
        out: torch.Tensor = _BlockedHalfBCEWithLogits.apply(flat, target.reshape(-1), False)
        return out.reshape(logits.shape)
    total = _BlockedHalfBCEWithLogits.apply(flat, target.reshape(-1), True)
    if reduction == "mean":
        total = total / flat.shape[0]  # 0 / 0 = NaN for no element, as torch's
    return total.to(dtype)


def direct_binary_cross_entropy_with_logits(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> Array:
    if weight is None and pos_weight is None and _plain(logits, -1, reduction):
        blocked = _blocked_half_bce_with_logits(logits, target, reduction)
        if blocked is not None:
            return blocked
    if not (_same_dtype(logits, target, weight, pos_weight) and _plain(logits, -1, reduction)):
        return None
    for extra in (weight, pos_weight):
        if extra is not None and not broadcasts_to(extra.shape, logits.shape):
            return None
    try:
        return F.binary_cross_entropy_with_logits(
            logits, target, weight=weight, pos_weight=pos_weight, reduction=reduction
        )
    except _TORCH_ERRORS:
        return None


#: The public function whose generic function is the key -> its direct call.
DIRECT_CALLS: dict[Callable[..., Any], Callable[..., Any]] = {
    _categorical.cross_entropy: direct_cross_entropy,
    _categorical.nll_loss: direct_nll_loss,
    _binary.binary_cross_entropy: direct_binary_cross_entropy,
    _binary.binary_cross_entropy_with_logits: direct_binary_cross_entropy_with_logits,
}
