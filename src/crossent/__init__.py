"""crossent: the cross-entropy family of losses, written once against the Array API standard.

Every function takes arrays of NumPy, PyTorch, JAX, CuPy, Dask or array-api-strict and returns
arrays of the same library, on the same device, in the same dtype, with the numbers of
``torch.nn.functional``.
"""

from ._binary import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    multilabel_soft_margin_loss,
    sigmoid_focal_loss,
)
from ._categorical import cross_entropy, cross_entropy_from_probs, nll_loss
from ._categorical_variants import poly1_cross_entropy, softmax_focal_loss
from ._divergence import entropy, kl_div
from ._linear import linear_cross_entropy
from ._softmax import log_sigmoid, log_softmax, logsumexp, softmax

# isort: split
# last: the declarations of the losses above fill the list its docstrings give
from ._gradients import grad, value_and_grad

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "cross_entropy_from_probs",
    "entropy",
    "grad",
    "kl_div",
    "linear_cross_entropy",
    "log_sigmoid",
    "log_softmax",
    "logsumexp",
    "multilabel_soft_margin_loss",
    "nll_loss",
    "poly1_cross_entropy",
    "sigmoid_focal_loss",
    "softmax",
    "softmax_focal_loss",
    "value_and_grad",
]
