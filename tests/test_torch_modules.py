"""crossent.torch: a ``torch.nn`` module for every declared loss, equal to ``torch.nn``'s own
where torch has the loss (its constructor's arguments, defaults and order; its values and
gradients), equal to the function elsewhere; buffers, ``state_dict``, ``torch.compile`` and
``torch.export``."""

from __future__ import annotations

import inspect
import io

import pytest
from array_api_compat import is_torch_namespace
from conftest import XP

if not is_torch_namespace(XP):
    pytest.skip("torch.nn modules take torch tensors", allow_module_level=True)

import torch

import crossent
import crossent.torch as ct
from crossent._dispatch import LOSSES


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _inputs(name: str, device) -> tuple[torch.Tensor, ...]:
    """Arguments for ``forward`` of the loss ``name``, float64, on ``device``."""
    g = _gen()
    n, c = 6, 4
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    classes = torch.randint(0, c, (n,), generator=g)
    classes[1] = -100
    labels = torch.randint(0, 2, (n, c), generator=g).double()
    probs = torch.rand(n, c, generator=g, dtype=torch.float64)
    if name in ("cross_entropy", "softmax_focal_loss", "poly1_cross_entropy"):
        out = (logits, classes)
    elif name == "nll_loss":
        out = (torch.log_softmax(logits, -1), classes)
    elif name == "cross_entropy_from_probs":
        out = (torch.softmax(logits, -1), classes.clamp(min=0))
    elif name == "binary_cross_entropy":
        out = (probs, labels)
    elif name in (
        "binary_cross_entropy_with_logits",
        "sigmoid_focal_loss",
        "multilabel_soft_margin_loss",
    ):
        out = (logits, labels)
    elif name == "kl_div":
        out = (torch.log_softmax(logits, -1), torch.softmax(logits.flip(0), -1))
    elif name == "entropy":
        out = (logits,)
    elif name == "linear_cross_entropy":
        hidden = torch.randn(n, 5, generator=g, dtype=torch.float64)
        weight = torch.randn(c, 5, generator=g, dtype=torch.float64)
        out = (hidden, weight, classes)
    else:  # pragma: no cover - test_every_loss_has_a_module names it
        raise AssertionError(f"no inputs for {name}")
    return tuple(x.to(device) for x in out)


def _value_and_grads(module, inputs):
    leaves = [_leaf(x) if x.is_floating_point() else x for x in inputs]
    out = module(*leaves)
    floating = [x for x in leaves if x.requires_grad]
    grads = torch.autograd.grad(out.sum(), floating)
    return out.detach(), grads


def _assert_same(a, b):
    out_a, grads_a = a
    out_b, grads_b = b
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-12)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-10, atol=1e-12)


def test_every_loss_has_a_module():
    assert sorted(ct.class_name(name) for name in LOSSES) == ct.__all__
    for name in LOSSES:
        module_class = getattr(ct, ct.class_name(name))
        assert issubclass(module_class, torch.nn.modules.loss._Loss)
        assert module_class.__module__ == "crossent.torch"
        assert f":func:`crossent.{name}`" in module_class.__doc__


@pytest.mark.parametrize("name", sorted(ct.TORCH_NAMES))
def test_constructor_is_torch_nn_s(name):
    """torch's arguments, in torch's order, with torch's defaults, then crossent's own,
    keyword-only."""
    torch_name, _ = ct.TORCH_NAMES[name]
    ours = list(inspect.signature(getattr(ct, torch_name)).parameters.values())
    theirs = list(inspect.signature(getattr(torch.nn, torch_name)).parameters.values())
    assert [(p.name, p.default) for p in ours[: len(theirs)]] == [
        (p.name, p.default) for p in theirs
    ]
    assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in ours[len(theirs) :])


OPTIONS = {
    "cross_entropy": [{}, {"reduction": "sum", "label_smoothing": 0.2}, {"weight": "classes"}],
    "nll_loss": [{}, {"reduction": "none"}, {"weight": "classes", "reduction": "sum"}],
    "binary_cross_entropy": [{}, {"weight": "elements", "reduction": "sum"}],
    "binary_cross_entropy_with_logits": [{}, {"pos_weight": "classes"}, {"weight": "elements"}],
    "kl_div": [{}, {"reduction": "batchmean"}, {"reduction": "none"}],
    "multilabel_soft_margin_loss": [{}, {"weight": "classes", "reduction": "none"}],
}


def _arrays(options, device):
    g = _gen()
    made = {"classes": (4,), "elements": (6, 4)}
    return {
        k: torch.rand(made[v], generator=g, dtype=torch.float64).to(device) + 0.5
        if v in made
        else v
        for k, v in options.items()
    }


@pytest.mark.parametrize(
    ("name", "options"),
    [(name, options) for name, grid in OPTIONS.items() for options in grid],
)
def test_equals_torch_nn(name, options, device):
    torch_name, _ = ct.TORCH_NAMES[name]
    options = _arrays(options, device)
    inputs = _inputs(name, device)
    ours = getattr(ct, torch_name)(**options)
    theirs = getattr(torch.nn, torch_name)(**options)
    _assert_same(_value_and_grads(ours, inputs), _value_and_grads(theirs, inputs))


def test_legacy_reduction_arguments_as_torch_reads_them(device):
    inputs = _inputs("cross_entropy", device)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        ours = ct.CrossEntropyLoss(None, False)
    with pytest.warns(UserWarning, match="size_average and reduce args will be deprecated"):
        theirs = torch.nn.CrossEntropyLoss(None, False)
    assert ours.reduction == theirs.reduction == "sum"
    _assert_same(_value_and_grads(ours, inputs), _value_and_grads(theirs, inputs))


OWN = {
    "softmax_focal_loss": {"gamma": 1.5, "weight": "classes"},
    "poly1_cross_entropy": {"epsilon": -0.5, "label_smoothing": 0.1},
    "cross_entropy_from_probs": {"reduction": "sum"},
    "sigmoid_focal_loss": {"alpha": 0.3},
    "entropy": {"reduction": "none"},
    "linear_cross_entropy": {"class_weight": "classes", "z_loss": 1e-3, "chunk_size": 2},
}


def test_own_losses_are_covered():
    assert set(OWN) | set(OPTIONS) == set(LOSSES)


@pytest.mark.parametrize("name", sorted(OWN))
def test_equals_the_function(name, device):
    options = _arrays(OWN[name], device)
    inputs = _inputs(name, device)
    module = getattr(ct, ct.class_name(name))(**options)
    function = getattr(crossent, name)

    def call(*args):
        return function(*args, **options)

    _assert_same(_value_and_grads(module, inputs), _value_and_grads(call, inputs))


def test_sample_weight_goes_with_the_batch(device):
    logits, target = _inputs("cross_entropy", device)
    sample_weight = torch.linspace(0.5, 2.0, 6, dtype=torch.float64, device=device)
    module = ct.CrossEntropyLoss(label_smoothing=0.1)
    expected = crossent.cross_entropy(
        logits, target, label_smoothing=0.1, sample_weight=sample_weight
    )
    torch.testing.assert_close(module(logits, target, sample_weight=sample_weight), expected)


def test_linear_forward_takes_hidden_weight_target_bias(device):
    hidden, weight, target = _inputs("linear_cross_entropy", device)
    bias = torch.linspace(-1.0, 1.0, 4, dtype=torch.float64, device=device)
    module = ct.LinearCrossEntropyLoss(label_smoothing=0.1)
    expected = crossent.linear_cross_entropy(hidden, weight, target, bias, label_smoothing=0.1)
    torch.testing.assert_close(module(hidden, weight, target, bias), expected)
    assert list(inspect.signature(module.forward).parameters) == [
        "hidden",
        "weight",
        "target",
        "bias",
        "sample_weight",
    ]


def test_weights_are_buffers_and_state_dict_round_trips(device):
    weight = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64, device=device)
    module = ct.CrossEntropyLoss(weight, label_smoothing=0.1)
    assert [name for name, _ in module.named_buffers()] == ["weight"]
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    fresh = ct.CrossEntropyLoss(torch.ones(4, dtype=torch.float64, device=device))
    fresh.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(fresh.weight, weight)
    inputs = _inputs("cross_entropy", device)
    assert (module.label_smoothing, fresh.label_smoothing) == (0.1, 0.0)
    fresh.label_smoothing = 0.1  # an attribute, read by each call, as torch.nn's
    _assert_same(_value_and_grads(fresh, inputs), _value_and_grads(module, inputs))
    # .to() moves and casts the buffers, as torch.nn's
    assert module.to(torch.float32).weight.dtype == torch.float32
    assert ct.BCEWithLogitsLoss(pos_weight=weight).state_dict().keys() == {"pos_weight"}


def test_repr_and_errors():
    assert repr(ct.CrossEntropyLoss()) == "CrossEntropyLoss()"
    assert repr(ct.CrossEntropyLoss(label_smoothing=0.1, z_loss=1e-4, reduction="sum")) == (
        "CrossEntropyLoss(label_smoothing=0.1, z_loss=0.0001, reduction='sum')"
    )
    with pytest.raises(TypeError, match="label_smothing"):
        ct.CrossEntropyLoss(label_smothing=0.1)
    with pytest.raises(TypeError):
        ct.SoftmaxFocalLoss(2.0)  # crossent's own options are keyword-only
    logits, target = _inputs("cross_entropy", "cpu")
    with pytest.raises(ValueError, match="label_smoothing"):
        ct.CrossEntropyLoss(label_smoothing=2.0)(logits, target)


# torch 2.13's Dynamo instantiates every autograd.Function it traces, and warns of it itself
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.parametrize("name", ["cross_entropy", "linear_cross_entropy", "entropy"])
def test_compile_fullgraph_and_export(name, device):
    torch._dynamo.reset()
    options = {"cross_entropy": {"label_smoothing": 0.1}, "entropy": {}}.get(
        name, {"chunk_size": 2}
    )
    module = getattr(ct, ct.class_name(name))(**options)
    inputs = _inputs(name, device)
    eager = _value_and_grads(module, inputs)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    _assert_same(_value_and_grads(compiled, inputs), eager)
    exported = torch.export.export(module, inputs).module()
    torch.testing.assert_close(exported(*inputs), eager[0], rtol=1e-10, atol=1e-12)
    torch._dynamo.reset()
