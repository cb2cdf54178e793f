"""Sphinx directives that write tables from the project's own files, never by hand.

- ``support-matrix``: backends x devices from ``backends/*.toml``, each capability probed by
  running crossent on that backend while the docs build (jit, autodiff, lazy evaluation,
  analytic gradients, agreement with torch, the linear loss, the focal and other variants),
  beside the counts of the last test session of that
  pair found in ``.test-results/`` (written by ``tests/conftest.py``).
- ``benchmark-results``: the figures of ``benchmarks/results.json`` and the machine they came
  from.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "backends"))
import matrix  # noqa: E402

import crossent  # noqa: E402
from crossent._dispatch import FAMILIES, LOSSES  # noqa: E402

YES, NO, NOT_HERE, NONE = "yes", "**no**", "not run here", "—"


def _list_table(
    header: list[str] | None, rows: list[list[str]], widths: str = "auto"
) -> list[str]:
    lines = [".. list-table::", f"   :header-rows: {0 if header is None else 1}"]
    lines += [f"   :widths: {widths}", ""]
    for row in rows if header is None else [header, *rows]:
        lines.append(f"   * - {row[0]}")
        lines.extend(f"     - {cell}" for cell in row[1:])
    return lines


class _TableDirective(SphinxDirective):
    def render(self, lines: list[str]) -> list[nodes.Node]:
        container = nodes.container()
        self.state.nested_parse(StringList(lines), self.content_offset, container)
        return list(container.children)


# --- The support matrix ------------------------------------------------------------------------

_LOGITS = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1e4, -1e4, 0.0]])
_TARGET = np.array([0, 2, 1])


def _reference() -> tuple[float, np.ndarray]:
    torch = importlib.import_module("torch")
    functional = importlib.import_module("torch.nn.functional")
    logits = torch.tensor(_LOGITS, requires_grad=True)
    loss = functional.cross_entropy(logits, torch.tensor(_TARGET))
    loss.backward()
    return float(loss), logits.grad.numpy()


def _to_numpy(x: Any) -> np.ndarray:
    library = type(x).__module__.split(".")[0]
    if library == "torch":
        return x.detach().cpu().numpy()
    if library == "dask":
        return np.asarray(x.compute())
    if library == "cupy":
        return x.get()
    if library == "array_api_strict":
        return np.from_dlpack(x)
    return np.asarray(x)


def _probe(spec: matrix.Session) -> dict[str, str]:
    """Run crossent on one backend now; what each capability showed."""
    try:
        module = importlib.import_module(spec.module)
    except ImportError:
        return dict.fromkeys(_CAPABILITIES, f"{NOT_HERE} (not installed)")
    if spec.device != "cpu":
        return dict.fromkeys(_CAPABILITIES, f"{NOT_HERE} (no {spec.device} device)")
    if spec.backend == "jax":
        importlib.import_module("jax").config.update("jax_enable_x64", True)
    loss_ref, grad_ref = _reference()
    logits, target = module.asarray(_LOGITS), module.asarray(_TARGET)
    out: dict[str, str] = {}
    loss = crossent.cross_entropy(logits, target)
    out["agrees with torch"] = YES if np.isclose(_to_numpy(loss), loss_ref, rtol=1e-12) else NO
    _, grad = crossent.value_and_grad(crossent.cross_entropy)(logits, target)
    out["analytic gradients"] = YES if np.allclose(_to_numpy(grad), grad_ref, rtol=1e-12) else NO
    out["jit"] = NONE
    out["autodiff"] = NONE
    out["lazy"] = "eager"
    if spec.backend == "jax":
        jax = importlib.import_module("jax")
        jitted = jax.jit(crossent.cross_entropy)(logits, target)
        out["jit"] = "jax.jit: " + (
            YES if np.isclose(_to_numpy(jitted), loss_ref, rtol=1e-12) else NO
        )
        auto = jax.grad(crossent.cross_entropy)(logits, target)
        out["autodiff"] = "jax.grad: " + (YES if np.allclose(auto, grad_ref) else NO)
        out["lazy"] = "traced under jit"
    if spec.backend == "torch":
        compiled = module.compile(crossent.cross_entropy, fullgraph=True, backend="aot_eager")
        loss = compiled(module.tensor(_LOGITS), target)
        out["jit"] = "torch.compile: " + (YES if np.isclose(_to_numpy(loss), loss_ref) else NO)
        leaf = module.tensor(_LOGITS, requires_grad=True)
        crossent.cross_entropy(leaf, target).backward()
        ok = np.allclose(leaf.grad.numpy(), grad_ref, rtol=1e-12)
        out["autodiff"] = "autograd: " + (YES if ok else NO)
    if spec.backend == "dask":
        dask = importlib.import_module("dask")
        computed: list[int] = []

        def count(*args: Any, **kwargs: Any) -> Any:
            computed.append(1)
            return dask.get(*args, **kwargs)

        with dask.config.set(scheduler=count):
            lazy = crossent.cross_entropy(module.from_array(_LOGITS, chunks=2), target)
        built_lazily = not computed and type(lazy).__module__.startswith("dask")
        out["lazy"] = "built lazily: " + (YES if built_lazily else NO)
    # declared, not probed: a cluster is no probe for a docs build; `code` in the file is
    # Markdown's, and this table is reStructuredText
    out["distributed"] = spec.distributed.replace("`", "``")
    out["linear_cross_entropy"] = _probe_linear(spec, module)
    out["variants"] = _probe_variants(module)
    out["every loss"] = _probe_losses(module)
    return out


_CAPABILITIES = [
    "agrees with torch",
    "analytic gradients",
    "jit",
    "autodiff",
    "lazy",
    "distributed",
    "linear_cross_entropy",
    "variants",
    "every loss",
]

_HIDDEN = np.array([[0.5, -1.0], [2.0, 0.25], [-0.5, 1.5]])
_WEIGHT = np.array([[1.0, 0.5], [-0.5, 2.0], [0.25, -1.0]])


def _linear_reference() -> tuple[float, np.ndarray, np.ndarray]:
    torch = importlib.import_module("torch")
    functional = importlib.import_module("torch.nn.functional")
    hidden = torch.tensor(_HIDDEN, requires_grad=True)
    weight = torch.tensor(_WEIGHT, requires_grad=True)
    loss = functional.cross_entropy(functional.linear(hidden, weight), torch.tensor(_TARGET))
    loss.backward()
    return float(loss), hidden.grad.numpy(), weight.grad.numpy()


def _probe_linear(spec: matrix.Session, module: Any) -> str:
    """linear_cross_entropy's value and its gradients of hidden and weight, by the backend's
    own route (autograd, jax.grad, or value_and_grad with argnums), against torch's dense."""
    loss_ref, hidden_ref, weight_ref = _linear_reference()
    hidden, weight, target = (module.asarray(x) for x in (_HIDDEN, _WEIGHT, _TARGET))
    if spec.backend == "torch":
        hidden.requires_grad_(True)
        weight.requires_grad_(True)
        loss = crossent.linear_cross_entropy(hidden, weight, target, chunk_size=2)
        loss.backward()
        grads = (hidden.grad, weight.grad)
        route = "autograd"
    elif spec.backend == "jax":
        jax = importlib.import_module("jax")

        def f(h: Any, w: Any) -> Any:
            return crossent.linear_cross_entropy(h, w, target, chunk_size=2)

        loss, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(hidden, weight)
        route = "jax.grad"
    else:
        step = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1))
        loss, grads = step(hidden, weight, target, chunk_size=2)
        route = "value_and_grad"
    ok = np.isclose(_to_numpy(loss), loss_ref, rtol=1e-12) and all(
        np.allclose(_to_numpy(g), r, rtol=1e-12, atol=1e-15)
        for g, r in zip(grads, (hidden_ref, weight_ref), strict=True)
    )
    return f"{route}: " + (YES if ok else NO)


_MULTI_LABEL = np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
_SAMPLE_WEIGHT = np.array([0.5, 2.0, 1.0])


def _variant_references() -> list[tuple[float, np.ndarray]]:
    """torch autograd of each variant's formula (torch's own multilabel_soft_margin_loss), in
    the order of :func:`_variant_calls`: the loss and its gradient of the logits."""
    torch = importlib.import_module("torch")
    functional = importlib.import_module("torch.nn.functional")
    target, labels = torch.tensor(_TARGET), torch.tensor(_MULTI_LABEL)
    sample_weight = torch.tensor(_SAMPLE_WEIGHT)

    def softmax_focal(x: Any) -> Any:
        log_p = functional.log_softmax(x, dim=-1).gather(1, target[:, None])[:, 0]
        return -((1 - log_p.exp()) ** 2 * log_p).mean()

    def poly1(x: Any) -> Any:
        p = functional.softmax(x, dim=-1).gather(1, target[:, None])[:, 0]
        return functional.cross_entropy(x, target) + (1 - p).mean()

    def sigmoid_focal(x: Any) -> Any:  # torchvision.ops.sigmoid_focal_loss, alpha=0.25
        p = torch.sigmoid(x)
        ce = functional.binary_cross_entropy_with_logits(x, labels, reduction="none")
        p_t = p * labels + (1 - p) * (1 - labels)
        return ((0.25 * labels + 0.75 * (1 - labels)) * (1 - p_t) ** 2 * ce).mean()

    def options(x: Any) -> Any:  # softcap=5, z_loss=1e-3, sample_weight
        capped = 5.0 * torch.tanh(x / 5.0)
        lse = torch.logsumexp(capped, dim=-1)
        losses = functional.cross_entropy(capped, target, reduction="none") + 1e-3 * lse**2
        return (sample_weight * losses).sum() / sample_weight.sum()

    references = []
    for formula in (
        softmax_focal,
        poly1,
        sigmoid_focal,
        lambda x: functional.multilabel_soft_margin_loss(x, labels),
        options,
    ):
        logits = torch.tensor(_LOGITS, requires_grad=True)
        loss = formula(logits)
        loss.backward()
        references.append((loss.item(), logits.grad.numpy()))
    return references


def _variant_calls(module: Any) -> list[tuple[Any, tuple[Any, ...], dict[str, Any]]]:
    """Each variant as ``(loss, arguments, options)`` for ``crossent.value_and_grad``."""
    logits, target = module.asarray(_LOGITS), module.asarray(_TARGET)
    labels = module.asarray(_MULTI_LABEL)
    return [
        (crossent.softmax_focal_loss, (logits, target), {}),
        (crossent.poly1_cross_entropy, (logits, target), {}),
        (crossent.sigmoid_focal_loss, (logits, labels), {}),
        (crossent.multilabel_soft_margin_loss, (logits, labels), {}),
        (
            crossent.cross_entropy,
            (logits, target),
            {"softcap": 5.0, "z_loss": 1e-3, "sample_weight": module.asarray(_SAMPLE_WEIGHT)},
        ),
    ]


def _declared_arguments(name: str, asarray: Any) -> tuple[Any, ...]:
    """Positional arguments of the declared loss ``name``, from its parameters' names and its
    family: a categorical loss (and a linear layer's) reads class indices, the others labels
    or probabilities."""
    shifted = _LOGITS - _LOGITS.max(axis=-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    probs = np.exp(log_probs)
    family = LOSSES[name].family
    targets = {"categorical": _TARGET, "linear": _TARGET, "binary": _MULTI_LABEL}
    values = {
        "logits": _LOGITS,
        "probs": np.clip(probs, 0.05, 0.95),
        "log_probs": log_probs,
        "hidden": _LOGITS,
        "weight": np.eye(3) + 0.25,
        "target": targets.get(family, probs),
    }
    arguments = []
    for parameter in inspect.signature(LOSSES[name].public).parameters.values():
        if parameter.kind is not parameter.POSITIONAL_OR_KEYWORD:
            break
        if parameter.default is parameter.empty:
            arguments.append(asarray(values[parameter.name]))
    return tuple(arguments)


def _probe_losses(module: Any) -> str:
    """Every declared loss (``crossent._dispatch.LOSSES``): its value and analytic gradient on
    this backend against NumPy's, which the test sessions check against torch."""
    failed = []
    for name, declared in LOSSES.items():
        step = crossent.value_and_grad(declared.public)
        try:  # a loss this probe cannot call (a new argument's name) is a failing row too
            expected = step(*_declared_arguments(name, np.asarray))
            found = step(*_declared_arguments(name, module.asarray))
            ok = all(
                np.allclose(_to_numpy(a), b, rtol=1e-10, atol=1e-15, equal_nan=True)
                for a, b in zip(found, expected, strict=True)
            )
        except Exception:  # a failure is a row of the table, not a broken build
            ok = False
        if not ok:
            failed.append(f"``{name}``")
    if failed:
        return f"{NO}: " + ", ".join(failed)
    return f"{YES} ({len(LOSSES)})"


def _probe_variants(module: Any) -> str:
    """The focal, Poly-1 and multi-label losses and cross_entropy's softcap, z_loss and
    sample_weight: value and analytic gradient against torch autograd of their formulas."""
    failed = []
    calls = _variant_calls(module)
    for (loss_fn, args, options), (loss_ref, grad_ref) in zip(
        calls, _variant_references(), strict=True
    ):
        loss, grad = crossent.value_and_grad(loss_fn)(*args, **options)
        ok = np.isclose(_to_numpy(loss), loss_ref, rtol=1e-10) and np.allclose(
            _to_numpy(grad), grad_ref, rtol=1e-10, atol=1e-15
        )
        if not ok:
            name = loss_fn.__name__ + (" (options)" if options else "")
            failed.append(f"``{name}``")
    return YES if not failed else f"{NO}: " + ", ".join(failed)


def _test_results(spec: matrix.Session) -> str:
    path = ROOT / ".test-results" / f"{spec.backend}-{spec.device}.json"
    if not path.exists():
        return "no run here"
    record = json.loads(path.read_text())
    failed = record.get("failed", 0)
    text = f"{record.get('passed', 0)} passed, {record.get('skipped', 0)} skipped"
    if failed:
        text += f", **{failed} failed**"
    return f"{text} ({record.get('date', '?')})"


class SupportMatrix(_TableDirective):
    """``.. support-matrix::``: one row per (backend, device) of ``backends/``."""

    def run(self) -> list[nodes.Node]:
        rows = []
        for spec in matrix.sessions():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    probed = _probe(spec)
                except Exception as error:  # shown, not hidden: the build still fails on -W
                    probed = dict.fromkeys(_CAPABILITIES, f"**error**: {error}")
            name = f"``{spec.backend}``"
            rows.append(
                [name, spec.device, *[probed[c] for c in _CAPABILITIES], _test_results(spec)]
            )
        header = ["backend", "device", *_CAPABILITIES, "last test session here"]
        lines = _list_table(header, rows)
        lines += [
            "",
            f"*Probed while these docs were built, {time.strftime('%Y-%m-%d')}, from the "
            f"files in* ``backends/``.",
        ]
        return self.render(lines)


# --- Benchmarks --------------------------------------------------------------------------------


def _load_results() -> dict[str, Any]:
    return json.loads((ROOT / "benchmarks" / "results.json").read_text())


def _mib(value: int | None) -> str:
    return NONE if value is None else f"{value / 2**20:,.1f}"


class BenchmarkMachine(_TableDirective):
    """``.. benchmark-machine::``: what the figures were measured on."""

    def run(self) -> list[nodes.Node]:
        data = _load_results()
        machine, versions = data["machine"], data["versions"]
        rows = [[k, f"{v}"] for k, v in machine.items()]
        rows += [[name, version] for name, version in versions.items()]
        return self.render(_list_table(None, rows, "1 3"))


def _shape_key(shape: list[int] | str) -> tuple[int, ...] | None:
    """A target's shape as a key: None for ``"every"``."""
    return None if shape == "every" else tuple(shape)


class BenchmarkResults(_TableDirective):
    """``.. benchmark-results:: SUITE``: every comparison of one suite, with its target."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        data = _load_results()
        suite = self.arguments[0]
        # float32 targets at one shape; targets with a dtype hold at every shape
        targets = {
            (t["suite"], t["name"], t.get("dtype", "float32"), _shape_key(t["shape"])): t["ratio"]
            for t in data["targets"]
        }
        rows = []
        for r in data["results"]:
            if r["suite"] != suite:
                continue
            key = (r["suite"], r["name"], r["dtype"])
            target = targets.get((*key, _shape_key(r["shape"])), targets.get((*key, None)))
            verdict = (
                NONE
                if target is None
                else (f"≤ {target}: " + ("met" if r["ratio"] <= target else "**missed**"))
            )
            reference = r.get("reference_bytes", 0)
            if reference:  # measured beyond the returned gradients already: with its share
                ours_mib = _mib(r["ours_peak_bytes"]) + _share(r["ours_peak_bytes"], reference)
                peer_mib = _mib(r["peer_peak_bytes"]) + _share(r["peer_peak_bytes"], reference)
            else:
                ours_mib = _mib(_extra(r["ours_peak_bytes"], r["output_bytes"]))
                peer_mib = _mib(r["peer_peak_bytes"])
            rows.append(
                [
                    " x ".join(str(s) for s in r["shape"]),
                    r["dtype"],
                    r["name"],
                    f"**{r['ratio']:.2f}**",
                    verdict,
                    f"{r['ours_seconds'] * 1e3:.2f}",
                    f"{r['peer_seconds'] * 1e3:.2f}",
                    ours_mib,
                    peer_mib,
                    r["peer"],
                ]
            )
        header = [
            "(N, D, V)" if suite == "linear" else "(N, C)",
            "dtype",
            "comparison",
            "ratio",
            "target",
            "crossent ms",
            "peer ms",
            "crossent MiB",
            "peer MiB",
            "peer",
        ]
        return self.render(_list_table(header, rows))


def _share(extra: int | None, reference: int) -> str:
    """``extra`` as a share of the dense logits' bytes: ``(1/N of the logits)``, or
    ``(1.9x the logits)`` for the dense computation."""
    if not extra:
        return ""
    if extra >= reference:
        return f" ({extra / reference:.1f}x the logits)"
    return f" (1/{reference / extra:,.0f} of the logits)"


def _extra(peak: int | None, output: int) -> int | None:
    """Peak memory beyond what crossent returns (a gradient)."""
    return None if peak is None else max(0, peak - output)


# --- The API page -------------------------------------------------------------------------------


class Losses(_TableDirective):
    """``.. losses:: FAMILY``: the autosummary of every loss of one family, as declared
    (``crossent._dispatch.LOSSES``), in the order of declaration."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        family = self.arguments[0]
        if family not in FAMILIES:
            raise self.error(f"no family {family!r}: the families are {', '.join(FAMILIES)}")
        names = [name for name, declared in LOSSES.items() if declared.family == family]
        lines = [".. autosummary::", "   :toctree: generated/", "   :nosignatures:", ""]
        return self.render(lines + [f"   {name}" for name in names])


def _write_loss_pages(app: Sphinx) -> None:
    """The page of each declared loss, as autosummary writes those it finds in the sources
    (which do not hold the names a ``losses`` directive lists)."""
    folder = Path(app.srcdir) / "api" / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    for name in LOSSES:
        title = f"crossent.{name}".replace("_", "\\_")
        text = f"{title}\n{'=' * len(title)}\n\n.. currentmodule:: crossent\n\n"
        text += f".. autofunction:: {name}\n"
        page = folder / f"crossent.{name}.rst"
        if not page.exists() or page.read_text() != text:
            page.write_text(text)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("builder-inited", _write_loss_pages)
    app.add_directive("losses", Losses)
    app.add_directive("support-matrix", SupportMatrix)
    app.add_directive("benchmark-results", BenchmarkResults)
    app.add_directive("benchmark-machine", BenchmarkMachine)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
