"""How far bfloat16 losses and gradients are from the exact ones: crossent against torch's own
bfloat16 kernels, at the benchmark shapes (the numerics page quotes the figures).

``python benchmarks/half_precision.py`` (torch installed; ``nox -s bench`` has it). The exact
values are torch's float64 functions on the same bfloat16 inputs. A loss error is counted in
units of bfloat16's spacing at the exact loss (rounding once gives at most 0.5); a gradient's,
as the largest error over the largest exact entry.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suites

import crossent

LOSSES = {
    "cross_entropy": (crossent.cross_entropy, F.cross_entropy),
    "nll_loss": (crossent.nll_loss, F.nll_loss),
    "binary_cross_entropy_with_logits": (
        crossent.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
    ),
}


def _inputs(name: str, shape: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    logits, target = suites._data(shape)
    x = torch.from_numpy(logits).to(torch.bfloat16)
    if name == "nll_loss":
        x = torch.log_softmax(x.double(), dim=1).to(torch.bfloat16)
    if name == "binary_cross_entropy_with_logits":
        labels = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.5).double()
        return x, labels.to(torch.bfloat16)
    return x, torch.from_numpy(target)


def _loss_and_grad(func, x: torch.Tensor, t: torch.Tensor) -> tuple[float, torch.Tensor]:
    leaf = x.detach().clone().requires_grad_(True)
    loss = func(leaf, t)
    loss.backward()
    return float(loss.detach()), leaf.grad.double()


def main() -> None:
    print(f"{'loss':<34}{'(N, C)':<14}{'loss error, ulps':>22}{'gradient error':>26}")
    print(f"{'':<34}{'':<14}{'crossent':>11}{'torch':>11}{'crossent':>13}{'torch':>13}")
    for name, (ours, theirs) in LOSSES.items():
        for shape in suites.SHAPES:
            x, t = _inputs(name, shape)
            exact, exact_grad = _loss_and_grad(
                theirs, x.double(), t.double() if t.is_floating_point() else t
            )
            ulp = float(np.spacing(np.float32(torch.tensor(exact).bfloat16().float())) * 2**16)
            scale = float(exact_grad.abs().max())
            row = f"{name:<34}{f'{shape[0]}x{shape[1]}':<14}"
            losses, grads = [], []
            for func in (ours, theirs):
                value, grad = _loss_and_grad(func, x, t)
                losses.append(abs(value - exact) / ulp)
                grads.append(float((grad - exact_grad).abs().max()) / scale)
            row += f"{losses[0]:>11.2f}{losses[1]:>11.2f}{grads[0]:>13.1e}{grads[1]:>13.1e}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
