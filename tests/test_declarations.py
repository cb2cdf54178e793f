"""The declarations of the losses (``crossent._dispatch.LOSSES``): one record per public loss,
from which every list of losses derives. A loss that is missing from one of those places, or a
list that is kept by hand again, fails here."""

from __future__ import annotations

import inspect
import re
import sys
import typing
from pathlib import Path

import cases
import pytest

import crossent
from crossent import _dispatch, _gradients
from crossent._dispatch import FAMILIES, LOSSES, PUBLIC_FUNCTIONS
from crossent._generic import _divergence as _generic_divergence

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
#: The public functions that are not losses: the softmax family, and the two transforms.
NOT_LOSSES = {"__version__", "grad", "value_and_grad", "logsumexp", "softmax", "log_softmax"}
NOT_LOSSES |= {"log_sigmoid"}


def test_every_public_loss_is_declared():
    assert set(crossent.__all__) - NOT_LOSSES == set(LOSSES)


@pytest.mark.parametrize("name", list(LOSSES))
def test_the_declaration_is_the_public_function(name):
    declared = LOSSES[name]
    assert declared.name == name
    assert getattr(crossent, name) is declared.public
    assert PUBLIC_FUNCTIONS[declared.generic] is declared.public
    assert _dispatch.declaration(declared.public) is declared
    assert declared.family in FAMILIES
    for generic in (declared.generic, declared.value_and_grad):
        assert generic.__module__.startswith("crossent._generic."), generic
    # the public signature is the preparation's, returning the loss
    public = inspect.signature(declared.public)
    assert list(public.parameters) == list(inspect.signature(declared.prepare).parameters)
    assert public.return_annotation == "Array"
    assert typing.get_type_hints(declared.public)["return"] is not tuple
    assert inspect.getsourcelines(declared.public) == inspect.getsourcelines(declared.prepare)
    # numpydoc's sections: the Notes after a blank line, not read as more of Raises
    assert "\n\n    Notes\n    -----\n" in declared.public.__doc__, name
    assert declared.public.__doc__.strip()


def test_a_function_that_is_not_a_loss_has_no_declaration():
    assert _dispatch.declaration(crossent.log_softmax) is None
    assert _dispatch.declaration(lambda x: x) is None


@pytest.mark.parametrize("name", list(LOSSES))
def test_value_and_grad_takes_and_lists_every_loss(name):
    assert callable(crossent.value_and_grad(LOSSES[name].public))
    assert callable(crossent.grad(LOSSES[name].public))
    assert f"``{name}``" in _gradients.value_and_grad.__doc__


def test_a_loss_is_declared_once():
    def kl_div(log_probs, target):  # another module's loss of the same name
        return None, ()

    kl_div.__module__ = "elsewhere"
    with pytest.raises(ValueError, match="declared twice"):
        _dispatch.loss("divergence", _generic_divergence)(kl_div)
    assert LOSSES["kl_div"].public is crossent.kl_div
    with pytest.raises(ValueError, match="family must be one of"):
        _dispatch.loss("nonsense", _generic_divergence)


def test_a_loss_without_its_generic_functions_is_refused_at_import():
    def no_such_loss(logits):
        return None, ()

    with pytest.raises(AttributeError, match="no_such_loss"):
        _dispatch.loss("divergence", _generic_divergence)(no_such_loss)


def test_a_preparation_is_given_the_public_arguments(xp):
    # problem=: the family's preparation gets the arrays by position or by name, the options
    # the caller gave and the loss's defaults for the others; the body its own options
    log_probs = xp.asarray([[-0.5, -1.5, -2.0], [-3.0, -0.1, -2.5]])
    target = xp.asarray([1, 0])
    expected = crossent.nll_loss(log_probs, target, reduction="sum")
    by_name = crossent.nll_loss(log_probs=log_probs, target=target, reduction="sum")
    assert float(by_name) == float(expected) == 4.5
    smoothed = crossent.poly1_cross_entropy(log_probs, target=target, label_smoothing=0.1)
    assert float(smoothed) == float(
        crossent.poly1_cross_entropy(log_probs, target, epsilon=1.0, label_smoothing=0.1)
    )
    with pytest.raises(TypeError, match="ignore_indexx"):
        crossent.nll_loss(log_probs, target, ignore_indexx=1)
    with pytest.raises(ValueError, match="label_smoothing"):
        crossent.poly1_cross_entropy(log_probs, target, label_smoothing=2.0)


def test_a_preparation_the_loss_cannot_feed_is_refused_at_import():
    from functools import partial

    from crossent._generic._problems import prepare_classes

    def kl_div(log_probs, target):  # prepare_classes needs axis, weight, ...: not here
        return ()

    with pytest.raises(TypeError, match="has no parameter axis"):
        _dispatch.loss(
            "divergence",
            _generic_divergence,
            problem=partial(prepare_classes, probability_target=True),
        )(kl_div)


def test_the_api_page_has_a_section_per_family():
    page = (ROOT / "docs" / "api" / "index.md").read_text()
    assert re.findall(r"^\.\. losses:: (\w+)$", page, flags=re.M) == list(FAMILIES)
    for name in LOSSES:  # listed by the directive alone, never by hand
        assert not re.search(rf"^\s+{name}$", page, flags=re.M), name


def test_the_import_contracts_name_every_module_of_a_loss():
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers, kernels, frameworks = contracts["contracts"]
    modules = {LOSSES[name].public.__module__ for name in LOSSES}
    public_layer = {m.strip() for m in layers["layers"][2].split("|")}
    assert modules <= public_layer
    assert modules <= set(kernels["forbidden_modules"])
    assert modules <= set(frameworks["source_modules"])


def test_the_tests_walk_every_loss_of_a_prediction():
    assert set(cases.ALL_LOSSES) == {n for n, d in LOSSES.items() if d.family != "linear"}
    walked = {case.name for case in [*cases.all_cases(), *cases.variant_cases()]}
    assert walked == set(cases.ALL_LOSSES)
