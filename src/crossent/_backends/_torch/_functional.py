"""The kernels that are torch's own functions (``torch.logsumexp``, ``torch.softmax``,
``F.cross_entropy``, ``F.nll_loss``, ``F.binary_cross_entropy`` ...) on prepared problems, and
the compositions of them that crossent's options beyond torch's need (soft-capping, the z-loss,
sample weights). Autograd through them is torch's own backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..._generic import _categorical
from ..._generic._problems import Classes, Pointwise, Unreduced
from ..._typing import Array, Namespace
from ._common import _FLOATS, _class_first, _torch_cross_entropy, _weighted_positions
from ._half import _blocked_half_cross_entropy
from ._triton import cross_entropy as _triton_cross_entropy
from ._triton import serves as _triton_serves

__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "nll_loss",
    "softmax",
]


def logsumexp(xp: Namespace, x: torch.Tensor, axes: tuple[int, ...]) -> Array:
    return torch.logsumexp(x, dim=axes, keepdim=True)


def softmax(xp: Namespace, x: torch.Tensor, axis: int) -> Array:
    return torch.softmax(x, dim=axis)


def log_softmax(xp: Namespace, x: torch.Tensor, axis: int) -> Array:
    return torch.log_softmax(x, dim=axis)


def log_sigmoid(xp: Namespace, x: torch.Tensor) -> Array:
    return F.logsigmoid(x)


def _composed_cross_entropy(problem: Classes, smoothing: float) -> Array:
    """torch's cross-entropy of the soft-capped logits (``Classes.scores``), with the z-loss
    from one ``logsumexp`` more and the sample weights: torch's kernels composed, which
    autograd and torch.compile see through."""
    rows = problem.scores()  # float32 for half precision, capped with softcap
    classes = rows.shape[-1]
    rows = rows.reshape(-1, classes)
    picks = _categorical.picks_of(problem) if problem.index_target else None
    target = (
        problem.target.reshape(-1) if picks is not None else problem.target.reshape(-1, classes)
    )
    losses = F.cross_entropy(
        rows,
        target,
        weight=problem.weight,
        ignore_index=problem.ignore_index,
        reduction="none",
        label_smoothing=smoothing,
    ).reshape(problem.predictions.shape[:-1])
    if problem.z_loss > 0.0:
        lse = torch.logsumexp(rows, dim=1).reshape(losses.shape)
        if picks is None:
            losses = losses + problem.z_loss * lse * lse
        else:  # weighted as its position, by w[y_n]; nothing where ignored
            w = 1.0 if problem.weight is None else torch.take(problem.weight, picks.index)
            losses = losses + torch.where(picks.kept, problem.z_loss * w * (lse * lse), 0.0)
    if picks is not None and picks.bad is not None:
        losses = torch.where(picks.bad, torch.nan, losses)
    return _weighted_positions(problem, losses, picks)


def cross_entropy(problem: Classes, smoothing: float) -> Array:
    if _triton_serves(problem):  # CUDA tensors where Triton is installed
        return _triton_cross_entropy(problem, smoothing)
    if not problem.plain:
        return _composed_cross_entropy(problem, smoothing)
    target = problem.target if problem.index_target else _class_first(problem.target)
    logits = _class_first(problem.predictions)
    half = logits.dtype not in _FLOATS
    if half:
        blocked = _blocked_half_cross_entropy(problem, smoothing)
        if blocked is not None:
            return blocked
        # float16 and bfloat16: torch's log_softmax reads them and computes and writes float32
        # in one pass, where converting first would take two
        logits = torch.log_softmax(logits, dim=1 if logits.ndim > 1 else 0, dtype=torch.float32)
    options = (problem.ignore_index, smoothing, problem.reduction)
    out = _torch_cross_entropy(logits, target, problem.weight, options, log_probs=half)
    return problem.finish(out)


def nll_loss(problem: Classes) -> Array:
    if problem.sample_weight is not None:
        picks = _categorical.picks_of(problem)
        # the class weights in the compute dtype, after torch's exact gather: torch's half
        # kernel takes no float32 weights
        negated = _nll_class_last(
            problem.predictions, problem.target, None, problem.ignore_index, "none"
        )
        losses = negated.to(problem.compute_dtype)
        if problem.weight is not None:
            # gather, not indexing: a 0-d index compiles, and vmap batches it (not take)
            index = picks.index
            losses = losses * problem.weight.gather(0, index.reshape(-1)).reshape(index.shape)
        if picks.bad is not None:
            losses = torch.where(picks.bad, torch.nan, losses)
        return _weighted_positions(problem, losses, picks)
    if problem.predictions.dtype not in _FLOATS:
        # float16 and bfloat16: torch's kernel gathers -x_y exactly (0 where ignored), and its
        # backward scatters without the conversions that make torch's generic scatter slow;
        # weights and sums are then float32, where torch's half kernel would round them.
        negated = _nll_class_last(
            problem.predictions, problem.target, None, problem.ignore_index, "none"
        )
        if problem.weight is None:  # the common case, in as few operations as it takes
            return _reduce_half_nll(
                negated, problem.target, problem.ignore_index, problem.reduction
            )
        picks = _categorical.picks_of(problem)
        loss = picks.weight * negated.to(torch.float32)
        return problem.reduce(Unreduced(loss, torch.sum(picks.weight)))
    out = _nll_class_last(
        problem.predictions,
        problem.target,
        problem.weight,
        problem.ignore_index,
        problem.reduction,
    )
    return problem.finish(out)


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


def binary_cross_entropy(problem: Pointwise, eps: float | None) -> Array:
    probs = problem.pred if eps is None else torch.clamp(problem.pred, eps, 1.0 - eps)
    # torch raises on a NaN probability or target, where crossent gives NaN: NaN positions
    # enter torch as 1/2, and come out NaN again. (Out-of-range values raised already.)
    nan = torch.isnan(probs) | torch.isnan(problem.target)
    loss = F.binary_cross_entropy(
        torch.where(nan, 0.5, probs),
        torch.where(nan, 0.5, problem.target),
        weight=problem.weight,
        reduction="none",
    )
    return problem.reduce(Unreduced(torch.where(nan, torch.nan, loss)))


def binary_cross_entropy_with_logits(problem: Pointwise) -> Array:
    # torch sums (1 - t) x - log_sigmoid(x): where the loss is below 1e-16 of |x| it cancels to
    # 0, where the generic path keeps the tiny loss; both are exact to the rounding of x.
    out = F.binary_cross_entropy_with_logits(
        problem.pred,
        problem.target,
        weight=problem.weight,
        pos_weight=problem.pos_weight,
        reduction=problem.reduction,
    )
    return problem.finish(out)
