"""``linear_cross_entropy`` for torch: chunks of logits computed in place in one buffer
(:func:`_linear_chunk`), every chunk's pass (:func:`_linear_pass`), and the
``autograd.Function`` over them (:class:`_LinearCrossEntropy`), which ``_torch_distributed``
also runs, over its sharded chunks (:func:`linear_autograd`'s ``run``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..._generic import _linear
from ..._generic._categorical import IndexTerms
from ..._generic._linear import Linear
from ..._typing import Array
from ._common import _FLOATS, _transformed
from ._triton import linear_cross_entropy as _triton_linear
from ._triton import linear_cross_entropy_value_and_grad as _triton_linear_value_and_grad
from ._triton import serves_linear as _triton_serves_linear

__all__ = [
    "LinearPass",
    "linear_autograd",
    "linear_cross_entropy",
    "linear_cross_entropy_value_and_grad",
]


def _linear_chunk(
    problem: Linear,
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
    if buffer is None or problem.softcap is not None or problem.z_loss > 0.0:
        # class probabilities (the target is as large as the logits anyway), soft-capping and
        # the z-loss: the generic chunk, in torch's operations, of torch's product
        logits = F.linear(hidden, problem.weight, problem.bias).to(problem.compute_dtype)
        return _linear.chunk_pass(
            problem, smoothing, hidden, target, factor, gradient=gradient, logits=logits
        )
    logits = buffer[: hidden.shape[0]]
    if problem.hidden.dtype in _FLOATS:
        torch.mm(hidden, problem.weight.T, out=logits)
        if problem.bias is not None:
            logits += problem.bias
    else:  # the product in half precision, rounded as the dense one, then float32
        logits.copy_(F.linear(hidden, problem.weight, problem.bias))
    cp = problem.chunk(logits, target)
    terms = IndexTerms.of(cp, smoothing)
    picks = terms.picks
    index = picks.index[:, None]
    shift = logits.amax(dim=1, keepdim=True)
    shift.masked_fill_(shift == -torch.inf, 0.0)  # a row of all -inf: exp gives 0, not NaN
    logits -= shift
    shifted_target = logits.gather(1, index)[:, 0]
    shifted_sum = None
    if smoothing > 0.0:
        w = cp.weight
        shifted_sum = logits.sum(dim=1) if w is None else torch.mv(logits, w)
    logits.exp_()
    total = logits.sum(dim=1)
    loss = terms.loss(cp, torch.log(total), shifted_target, shifted_sum)
    if not gradient:
        return loss, None
    coefficient = terms.softmax_coefficient(cp) / total
    at_target = terms.target_term()
    spread = picks.kept.to(total.dtype) * (smoothing / problem.num_classes)
    if factor is not None:
        coefficient, at_target, spread = (x * factor for x in (coefficient, at_target, spread))
    logits *= coefficient[:, None]
    if smoothing > 0.0:  # (eps / C) w_c from every class of a kept position
        if cp.weight is None:
            logits -= spread[:, None]
        else:
            logits.addr_(spread, cp.weight, alpha=-1.0)
    logits.scatter_add_(1, index, -at_target[:, None])
    if picks.bad is not None:
        logits *= torch.where(picks.bad, torch.nan, 1.0)[:, None].to(logits.dtype)
    return loss, logits


#: What runs the chunks of ``linear_cross_entropy``: ``(problem, smoothing, wanted, factor)`` to
#: the positions' losses and the gradients of hidden, weight and bias (None where not wanted).
LinearPass = Callable[
    [Linear, float, tuple[bool, bool, bool], Any],
    tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None],
]


def _linear_pass(
    problem: Linear,
    smoothing: float,
    wanted: tuple[bool, bool, bool],
    factor: torch.Tensor | float | None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Every chunk: the positions' losses and the gradients ``wanted`` (hidden's in the
    caller's dtype, weight's and bias's summed in the compute dtype: ``addmm_`` adds each
    chunk's product into the sum without a temporary)."""
    n, d = problem.hidden.shape
    v = problem.num_classes
    compute = problem.compute_dtype
    on = {"device": problem.hidden.device}
    gradient = any(wanted)
    losses = torch.empty((n,), dtype=compute, **on)
    d_hidden = torch.empty((n, d), dtype=problem.dtype, **on) if wanted[0] else None
    d_weight = torch.zeros((v, d), dtype=compute, **on) if wanted[1] else None
    d_bias = (
        torch.zeros((v,), dtype=compute, **on) if wanted[2] and problem.bias is not None else None
    )
    buffer = None
    if problem.index_target and n:
        buffer = torch.empty((min(problem.chunk_size, n), v), dtype=compute, **on)
    for start, stop in problem.spans():
        hidden, target = problem.hidden[start:stop], problem.target[start:stop]
        rows = _linear.rows_of(factor, start, stop)
        loss, g = _linear_chunk(problem, smoothing, hidden, target, rows, buffer, gradient)
        losses[start:stop] = loss
        if g is None:
            continue
        if d_hidden is not None:
            torch.mm(g.to(problem.dtype), problem.weight, out=d_hidden[start:stop])
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
        problem: Linear,
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
        early = problem.reduction != "none" and any(wanted) and problem.hidden.dtype in _FLOATS
        factor = _linear.gradient_factor(problem) if early else None
        losses, *gradients = run(
            problem, smoothing, wanted if early else _linear.NO_GRADIENTS, factor
        )
        ctx.problem, ctx.smoothing, ctx.wanted, ctx.early = problem, smoothing, wanted, early
        ctx.run = run
        # Ours, not the graph's: the backward pass scales them in place and hands them over
        ctx.gradients = gradients if early else None
        return problem.reduce_losses(losses)

    @staticmethod
    @torch.autograd.function.once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        problem: Linear = ctx.problem
        if ctx.early:
            gradients, ctx.gradients = ctx.gradients, None
            if gradients is None:
                raise RuntimeError(
                    "linear_cross_entropy made its gradients in the forward pass, and the first "
                    "backward pass took them: call linear_cross_entropy again to go backward "
                    "through it again"
                )
            scale = upstream.to(problem.compute_dtype)
            for g in gradients:  # in place: a copy of the weight's gradient would be the peak
                if g is not None:
                    g.mul_(scale.to(g.dtype))
        else:
            factor = _linear.upstream_factor(problem, upstream)
            _, *gradients = ctx.run(problem, ctx.smoothing, ctx.wanted, factor)
        d_hidden, d_weight, d_bias = _linear.finish_gradients(problem, ctx.wanted, *gradients)
        if d_hidden is not None:  # the flattened positions this function was given
            d_hidden = d_hidden.reshape(problem.hidden.shape)
        return d_hidden, d_weight, d_bias, None, None, None


def linear_autograd(
    problem: Linear, smoothing: float, run: LinearPass | None = None
) -> Array | None:
    """``linear_cross_entropy`` through :class:`_LinearCrossEntropy`, whose chunks ``run``
    computes (:func:`_linear_pass` by default; the sharded pass of
    ``_torch_distributed``): only the losses where nothing is differentiated. None inside a
    ``torch.func`` transform, whose wrapped tensors neither the Function nor the in-place
    chunks take: the generic chunks then run, in torch's operations, which it sees through."""
    differentiable = [x for x in (problem.hidden, problem.weight, problem.bias) if x is not None]
    if _transformed(*differentiable, problem.target, problem.class_weight, problem.sample_weight):
        return None
    differentiated = torch.is_grad_enabled() and any(x.requires_grad for x in differentiable)
    if run is None and _triton_serves_linear(problem):  # CUDA tensors where Triton is installed
        if differentiated:
            _refuse_differentiated_targets(problem)
        return _triton_linear(problem, smoothing)
    if not differentiated:
        # evaluation (no_grad, inference_mode, frozen weights): the losses alone
        with torch.no_grad():
            passed = _linear_pass if run is None else run
            losses = passed(problem, smoothing, _linear.NO_GRADIENTS, None)[0]
            return problem.reduce_losses(losses)
    _refuse_differentiated_targets(problem)
    # no run passed where there is none: torch.compile traces the plain call
    args = (problem.hidden, problem.weight, problem.bias, problem, smoothing) + (
        () if run is None else (run,)
    )
    out: torch.Tensor = _LinearCrossEntropy.apply(*args)
    return out


def _refuse_differentiated_targets(problem: Linear) -> None:
    named = (("target", problem.target), ("class_weight", problem.class_weight))
    for name, x in (*named, ("sample_weight", problem.sample_weight)):
        if x is not None and x.requires_grad:
            raise TypeError(
                f"linear_cross_entropy is differentiated in hidden, weight and bias only, not "
                f"in its {name}; pass {name}.detach()"
            )


def linear_cross_entropy(problem: Linear, smoothing: float) -> Array | None:
    return linear_autograd(problem, smoothing)


def linear_cross_entropy_value_and_grad(
    problem: Linear, smoothing: float, wanted: tuple[bool, bool, bool]
) -> tuple[Array, tuple[Array | None, ...]]:
    if _triton_serves_linear(problem):
        return _triton_linear_value_and_grad(problem, smoothing, wanted)
    with torch.no_grad():
        losses, *gradients = _linear_pass(
            problem, smoothing, wanted, _linear.gradient_factor(problem)
        )
        value = problem.reduce_losses(losses)
        return value, _linear.finish_gradients(problem, wanted, *gradients)
