"""Every loss with every combination of its options, as data: the grid the gradient tests walk.

A :class:`Case` holds NumPy inputs and options; :meth:`Case.crossent_args` turns them into the
backend's arrays and :meth:`Case.torch_loss` computes torch's own function on float64 tensors,
the oracle.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import oracle
import torch
import torch.nn.functional as F
from oracle import T, class_first

from crossent._dispatch import LOSSES as DECLARED

N, C = 5, 4

#: The losses of the grid below, by their public name. The newer losses have grids of their
#: own (test_categorical_variants, test_pointwise_variants, test_linear).
LOSSES = [
    "cross_entropy",
    "nll_loss",
    "cross_entropy_from_probs",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "kl_div",
]
#: Every loss of a prediction (all but the linear layer's), from the declarations: the oracle
#: :meth:`Case.torch_loss` computes each, and the properties that walk every loss
#: (:func:`variant_cases` beside the grid) are checked to cover each.
ALL_LOSSES = [name for name, declared in DECLARED.items() if declared.family != "linear"]

#: The oracles of the losses torch lacks, in torch float64.
VARIANT_ORACLES = {
    "softmax_focal_loss": oracle.focal_torch,
    "poly1_cross_entropy": oracle.poly1_torch,
    "sigmoid_focal_loss": oracle.torchvision_focal_loss,
    "multilabel_soft_margin_loss": oracle.torch_multilabel,
    "entropy": oracle.entropy_torch,
}


@dataclass(frozen=True)
class Case:
    name: str
    pred: np.ndarray
    #: None for a loss of the predictions alone (entropy).
    target: np.ndarray | None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # 0-d cases come out of NumPy as scalars: keep them arrays
        object.__setattr__(self, "pred", np.asarray(self.pred))
        if self.target is not None:
            object.__setattr__(self, "target", np.asarray(self.target))

    @property
    def id(self) -> str:
        shown = {k: ("array" if isinstance(v, np.ndarray) else v) for k, v in self.options.items()}
        return f"{self.name}-{self.pred.shape}-{shown}"

    def crossent_args(self, to_xp: Callable[..., Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The positional arguments (the predictions, and the target where there is one) and
        the options, as the backend's arrays."""
        options = {
            k: to_xp(v) if isinstance(v, np.ndarray) else v for k, v in self.options.items()
        }
        if self.target is None:
            return (to_xp(self.pred),), options
        return (to_xp(self.pred), to_xp(self.target)), options

    def torch_loss(self, pred: torch.Tensor) -> torch.Tensor:
        """torch's own function of this case, differentiable in ``pred``."""
        options = {k: T(v) if isinstance(v, np.ndarray) else v for k, v in self.options.items()}
        if self.target is None:
            return VARIANT_ORACLES[self.name](pred, **options)
        target = T(self.target)
        if self.name in VARIANT_ORACLES:
            if self.name == "sigmoid_focal_loss":  # torchvision's defaults are not crossent's
                options = {"alpha": 0.25, "gamma": 2.0, "reduction": "mean", **options}
            return VARIANT_ORACLES[self.name](pred, target, **options)
        beyond_torch = {"softcap", "z_loss", "sample_weight"} & set(options)
        if self.name == "cross_entropy" and beyond_torch:
            return oracle.cross_entropy(pred, target, **options)
        if self.name == "nll_loss" and beyond_torch:
            return oracle.nll_loss(pred, target, **options)
        if self.name in ("cross_entropy", "nll_loss"):
            axis = options.pop("axis", -1)
            if target.is_floating_point():
                target = class_first(target, axis)
            return getattr(F, self.name)(class_first(pred, axis), target, **options)
        if self.name == "cross_entropy_from_probs":
            return oracle.cross_entropy_from_probs(pred, target, **options)
        if self.name == "binary_cross_entropy":
            return oracle.binary_cross_entropy(pred, target, **options)
        return getattr(F, self.name)(pred, target, **options)


LAYOUTS = {"NC": ((N, C), -1), "C": ((C,), -1), "NCd": ((N, C, 3), 1)}


def _targets(rng: np.random.Generator, shape: tuple[int, ...], axis: int, ignore: bool) -> Any:
    positions = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    target = rng.integers(0, C, size=positions)
    if ignore and target.ndim:
        target.flat[:: max(1, target.size // 2)] = -100
    return target


def _soft(rng: np.random.Generator, shape: tuple[int, ...], axis: int) -> np.ndarray:
    positions = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
    return np.moveaxis(rng.dirichlet(np.ones(C), size=positions), -1, axis)


def categorical_cases(seed: int = 0) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    reductions = ("mean", "sum", "none")
    weight = rng.uniform(0.2, 2.0, C)
    for (shape, axis), weighted, reduction in itertools.product(
        LAYOUTS.values(), (False, True), reductions
    ):
        logits = rng.standard_normal(shape) * 3
        base = {"axis": axis, "reduction": reduction}
        if weighted:
            base["weight"] = weight
        for ignore, smoothing in itertools.product((False, True), (0.0, 0.3, 1.0)):
            target = _targets(rng, shape, axis, ignore)
            yield Case("cross_entropy", logits, target, {**base, "label_smoothing": smoothing})
        for smoothing in (0.0, 0.3):
            yield Case(
                "cross_entropy",
                logits,
                _soft(rng, shape, axis),
                {**base, "label_smoothing": smoothing},
            )
        log_probs = torch.log_softmax(T(logits), dim=axis).numpy()
        for ignore in (False, True):
            yield Case("nll_loss", log_probs, _targets(rng, shape, axis, ignore), base)
        probs = torch.softmax(T(logits) * 3, dim=axis).numpy()
        for eps, ignore in itertools.product((None, 1e-3), (False, True)):
            target = _targets(rng, shape, axis, ignore)
            yield Case("cross_entropy_from_probs", probs, target, {**base, "eps": eps})
        yield Case(
            "cross_entropy_from_probs", probs, _soft(rng, shape, axis), {**base, "eps": 0.01}
        )
        # crossent's options beyond torch's: soft-capping, the z-loss, sample weights
        positions = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
        s = {"sample_weight": rng.uniform(0.0, 3.0, positions)}
        capped = {"softcap": 2.0, "z_loss": 0.1}
        every = {**base, **s, **capped, "label_smoothing": 0.3}
        yield Case("cross_entropy", logits, _targets(rng, shape, axis, True), every)
        yield Case(
            "cross_entropy", logits, _targets(rng, shape, axis, False), {**base, "z_loss": 0.1}
        )
        yield Case("cross_entropy", logits, _soft(rng, shape, axis), every)
        yield Case("nll_loss", log_probs, _targets(rng, shape, axis, True), {**base, **s})
        target = _targets(rng, shape, axis, True)
        yield Case("cross_entropy_from_probs", probs, target, {**base, **s, "eps": 1e-3})
        soft = _soft(rng, shape, axis)
        yield Case("cross_entropy_from_probs", probs, soft, {**base, **s, "eps": 0.01})


def pointwise_cases(seed: int = 1) -> Iterator[Case]:
    rng = np.random.default_rng(seed)
    for shape, reduction in itertools.product(((7,), (N, C), ()), ("mean", "sum", "none")):
        logits = rng.standard_normal(shape) * 4
        probs = 1 / (1 + np.exp(-logits))
        soft = rng.random(shape)
        hard = (rng.random(shape) < 0.5).astype(np.float64)
        weights = [None, rng.uniform(0.1, 2, shape)]
        if shape:
            weights.append(rng.uniform(0.1, 2, shape[-1:]))
        for target, weight in itertools.product((soft, hard), weights):
            base: dict[str, Any] = {"reduction": reduction}
            if weight is not None:
                base["weight"] = weight
            for eps in (None, 1e-7, 0.05):
                yield Case("binary_cross_entropy", probs, target, {**base, "eps": eps})
            yield Case("binary_cross_entropy_with_logits", logits, target, base)
            if shape:
                pos_weight = rng.uniform(0.2, 3, shape[-1:])
                yield Case(
                    "binary_cross_entropy_with_logits",
                    logits,
                    target,
                    {**base, "pos_weight": pos_weight},
                )
    for shape, reduction, log_target in itertools.product(
        ((C,), (N, C), (2, 3, C)), ("mean", "batchmean", "sum", "none"), (False, True)
    ):
        log_probs = torch.log_softmax(T(rng.standard_normal(shape)), dim=-1).numpy()
        target = rng.dirichlet(np.ones(C), size=shape[:-1])
        if log_target:
            target = np.log(target)
        yield Case("kl_div", log_probs, target, {"reduction": reduction, "log_target": log_target})


def variant_cases(seed: int = 2) -> Iterator[Case]:
    """The newer losses with each of their options, fewer combinations than their own grids
    (test_categorical_variants, test_pointwise_variants): for the properties that walk every
    loss (vmap, half precision, kinks)."""
    rng = np.random.default_rng(seed)
    for (shape, axis), reduction in itertools.product(LAYOUTS.values(), ("mean", "sum", "none")):
        logits = rng.standard_normal(shape) * 3
        positions = shape[: axis % len(shape)] + shape[axis % len(shape) + 1 :]
        base: dict[str, Any] = {"axis": axis, "reduction": reduction}
        weighted = {
            **base,
            "weight": rng.uniform(0.2, 2.0, C),
            "sample_weight": rng.uniform(0.0, 3.0, positions),
        }
        for options in (base, weighted):
            for target in (_targets(rng, shape, axis, True), _soft(rng, shape, axis)):
                yield Case("softmax_focal_loss", logits, target, {**options, "gamma": 2.0})
                yield Case(
                    "poly1_cross_entropy",
                    logits,
                    target,
                    {**options, "epsilon": -1.0, "label_smoothing": 0.3},
                )
        labels = (rng.random(shape) < 0.5) * 1.0
        sample = {"sample_weight": rng.uniform(0.1, 2.0, shape[-1:])}
        pointwise = {"reduction": reduction}
        for alpha, gamma, extra in ((0.25, 2.0, {}), (None, 0.5, sample)):
            options = {**pointwise, "alpha": alpha, "gamma": gamma, **extra}
            yield Case("sigmoid_focal_loss", logits, labels, options)
        multilabel = {**pointwise, "weight": rng.uniform(0.2, 2.0, shape[-1:])}
        if len(shape) > 1:
            multilabel["sample_weight"] = rng.uniform(0.1, 2.0, shape[:-1])
        yield Case("multilabel_soft_margin_loss", logits, labels, multilabel)
        yield Case("entropy", logits, None, base)
        yield Case("entropy", logits, None, {**base, "sample_weight": weighted["sample_weight"]})


def all_cases() -> list[Case]:
    return [*categorical_cases(), *pointwise_cases()]
