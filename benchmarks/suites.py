"""The comparisons: crossent against what a user would pick instead, on the same data.

Each suite yields :class:`Case` objects: a name, crossent's side, the peer's side, and the
sizes that memory is judged against. Frameworks are imported only by the suite that needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import crossent

#: The (N, C) shapes of every suite, float32.
SHAPES = [(65536, 10), (16384, 1000), (2048, 32000), (256, 128000)]
#: The shape the targets are stated for.
HEADLINE = (16384, 1000)


@dataclass
class Case:
    suite: str
    name: str
    ours: str
    peer: str
    run_ours: Callable[[], Any]
    run_peer: Callable[[], Any]
    input_bytes: int
    #: Bytes of what crossent returns (a gradient): not counted against its extra memory.
    output_bytes: int = 0
    #: Measures (ours, peer) peak extra bytes itself, instead of the harness's RSS in-process.
    memory: Callable[[], tuple[int | None, int | None]] | None = None
    #: What extra memory is judged against, where not the input (the linear suite: the bytes
    #: the dense logits would take). 0 for none.
    reference_bytes: int = 0


def _data(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal(shape, dtype=np.float32) * 3
    target = rng.integers(0, shape[1], shape[0])
    return logits, target


def numpy_suite(shape: tuple[int, int]) -> Iterator[Case]:
    import scipy.special
    import torch
    import torch.nn.functional as F
    from sklearn.metrics import log_loss

    logits, target = _data(shape)
    rows = np.arange(shape[0])
    size = logits.nbytes + target.nbytes

    def from_scratch() -> Any:
        # the way tutorials teach it: softmax, clip, pick the target column, mean
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
        return -np.mean(np.log(np.clip(probs[rows, target], 1e-7, 1.0)))

    def with_scipy() -> Any:
        return -np.mean(scipy.special.log_softmax(logits, axis=1)[rows, target])

    ours = "crossent.cross_entropy"
    yield Case(
        "numpy",
        "forward vs from scratch",
        ours,
        "NumPy from scratch",
        lambda: crossent.cross_entropy(logits, target),
        from_scratch,
        size,
    )
    yield Case(
        "numpy",
        "forward vs SciPy",
        ours,
        "scipy.special.log_softmax + pick",
        lambda: crossent.cross_entropy(logits, target),
        with_scipy,
        size,
    )

    tensor, labels = torch.from_numpy(logits), torch.from_numpy(target)
    yield Case(
        "numpy",
        "forward vs torch",
        ours,
        "F.cross_entropy, same CPU data",
        lambda: crossent.cross_entropy(logits, target),
        lambda: F.cross_entropy(tensor, labels),
        size,
    )

    step = crossent.value_and_grad(crossent.cross_entropy)
    leaf = tensor.clone().requires_grad_(True)

    def torch_forward_backward() -> Any:
        leaf.grad = None
        loss = F.cross_entropy(leaf, labels)
        loss.backward()
        return loss

    yield Case(
        "numpy",
        "value_and_grad vs torch forward+backward",
        "crossent.value_and_grad(cross_entropy)",
        "F.cross_entropy + backward",
        lambda: step(logits, target),
        torch_forward_backward,
        size,
        logits.nbytes,
    )

    # class probabilities: the tutorial way against the blocked kernel
    soft = scipy.special.softmax(np.roll(logits, 1, axis=0), axis=1)

    def soft_from_scratch() -> Any:
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
        return -np.mean(np.sum(soft * np.log(np.clip(probs, 1e-7, 1.0)), axis=1))

    yield Case(
        "numpy",
        "class probabilities vs from scratch",
        ours,
        "NumPy from scratch",
        lambda: crossent.cross_entropy(logits, soft),
        soft_from_scratch,
        size + soft.nbytes,
    )

    # (N, C, d) with the classes on axis 1, as segmentation losses have them
    spatial = np.ascontiguousarray(logits.reshape(-1, 16, shape[1]).transpose(0, 2, 1))
    spatial_target = target.reshape(-1, 16)

    def spatial_from_scratch() -> Any:
        exp = np.exp(spatial - spatial.max(axis=1, keepdims=True))
        probs = exp / exp.sum(axis=1, keepdims=True)
        picked = np.take_along_axis(probs, spatial_target[:, None, :], axis=1)
        return -np.mean(np.log(np.clip(picked, 1e-7, 1.0)))

    yield Case(
        "numpy",
        "(N, C, 16) axis=1 vs from scratch",
        ours,
        "NumPy from scratch",
        lambda: crossent.cross_entropy(spatial, spatial_target, axis=1),
        spatial_from_scratch,
        size,
    )

    probs = scipy.special.softmax(logits, axis=1)
    classes = np.arange(shape[1])
    yield Case(
        "numpy",
        "from probabilities vs scikit-learn",
        "crossent.cross_entropy_from_probs",
        "sklearn.metrics.log_loss",
        lambda: crossent.cross_entropy_from_probs(probs, target),
        lambda: log_loss(target, probs, labels=classes),
        probs.nbytes + target.nbytes,
    )


def torch_suite(shape: tuple[int, int], dtype: str) -> Iterator[Case]:
    import torch
    import torch.nn.functional as F

    logits, target = _data(shape)
    tensor = torch.from_numpy(logits).to(getattr(torch, dtype))
    labels = torch.from_numpy(target)
    log_probs = torch.log_softmax(tensor.float(), dim=1).to(tensor.dtype)
    binary = (torch.rand(shape) < 0.5).to(tensor.dtype)
    size = tensor.element_size() * tensor.numel()

    pairs = [
        ("cross_entropy", crossent.cross_entropy, F.cross_entropy, tensor, labels),
        ("nll_loss", crossent.nll_loss, F.nll_loss, log_probs, labels),
        (
            "binary_cross_entropy_with_logits",
            crossent.binary_cross_entropy_with_logits,
            F.binary_cross_entropy_with_logits,
            tensor,
            binary,
        ),
    ]
    for name, ours, theirs, inputs, targets in pairs:
        yield Case(
            "torch",
            f"{name} forward",
            f"crossent.{name}",
            f"F.{name}",
            lambda ours=ours, i=inputs, t=targets: ours(i, t),
            lambda theirs=theirs, i=inputs, t=targets: theirs(i, t),
            size,
        )
        leaf = inputs.clone().requires_grad_(True)

        def backward(func: Callable[..., Any], leaf: Any = leaf, t: Any = targets) -> Any:
            leaf.grad = None
            loss = func(leaf, t)
            loss.backward()
            return loss

        yield Case(
            "torch",
            f"{name} forward+backward",
            f"crossent.{name}",
            f"F.{name}",
            lambda ours=ours, b=backward: b(ours),
            lambda theirs=theirs, b=backward: b(theirs),
            size,
        )


def jax_suite(shape: tuple[int, int], dtype: str = "float32") -> Iterator[Case]:
    import jax
    import jax.numpy as jnp
    import optax

    logits, target = _data(shape)
    x, t = jnp.asarray(logits, dtype=dtype), jnp.asarray(target, dtype=jnp.int32)
    labels = (jax.random.uniform(jax.random.key(0), shape) < 0.5).astype(dtype)
    size = x.nbytes

    def optax_ce(x: Any, t: Any) -> Any:
        return optax.softmax_cross_entropy_with_integer_labels(x, t).mean()

    def optax_bce(x: Any, t: Any) -> Any:
        return optax.sigmoid_binary_cross_entropy(x, t).mean()

    for name, ours, theirs, targets in [
        ("cross_entropy", crossent.cross_entropy, optax_ce, t),
        (
            "binary_cross_entropy_with_logits",
            crossent.binary_cross_entropy_with_logits,
            optax_bce,
            labels,
        ),
    ]:
        peer = "optax." + (
            "softmax_cross_entropy_with_integer_labels"
            if name == "cross_entropy"
            else "sigmoid_binary_cross_entropy"
        )
        ours_jit, theirs_jit = jax.jit(ours), jax.jit(theirs)
        yield Case(
            "jax",
            f"{name} forward (jit)",
            f"crossent.{name}",
            peer,
            lambda f=ours_jit, y=targets: f(x, y),
            lambda f=theirs_jit, y=targets: f(x, y),
            size,
        )
        analytic = jax.jit(crossent.value_and_grad(ours))
        autodiff = jax.jit(jax.value_and_grad(ours))
        theirs_vg = jax.jit(jax.value_and_grad(theirs))
        yield Case(
            "jax",
            f"{name} value_and_grad (jit)",
            f"crossent.value_and_grad({name})",
            f"jax.value_and_grad({peer})",
            lambda f=analytic, y=targets: f(x, y),
            lambda f=theirs_vg, y=targets: f(x, y),
            size,
            x.nbytes,
        )
        yield Case(
            "jax",
            f"{name} jax.value_and_grad (jit)",
            f"jax.value_and_grad(crossent.{name})",
            f"jax.value_and_grad({peer})",
            lambda f=autodiff, y=targets: f(x, y),
            lambda f=theirs_vg, y=targets: f(x, y),
            size,
            x.nbytes,
        )


# --- linear_cross_entropy ---------------------------------------------------------------------

#: The (N, D, V) shapes of the linear suite, float32: a 32k and a 128k vocabulary.
LINEAR_SHAPES = [(4096, 512, 32000), (2048, 256, 128000)]


def _linear_data(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, d, v = shape
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n, d), dtype=np.float32)
    weight = rng.standard_normal((v, d), dtype=np.float32) / np.float32(np.sqrt(d))
    return hidden, weight, rng.integers(0, v, n)


def linear_suite(shape: tuple[int, int, int]) -> Iterator[Case]:
    """The loss and the gradients of hidden and weight, against the dense computation a user
    writes today. Memory: peak bytes beyond the inputs and the returned gradients, NumPy's and
    torch's by RSS in a fresh process each (``linear_memory.py``), JAX's from XLA's own
    account of the compiled program (``memory_analysis().temp_size_in_bytes``)."""
    import jax
    import jax.numpy as jnp
    import optax
    import torch
    import torch.nn.functional as F

    hidden, weight, target = _linear_data(shape)
    n, _, v = shape
    inputs = hidden.nbytes + weight.nbytes + target.nbytes
    gradients = hidden.nbytes + weight.nbytes
    logits_bytes = n * v * 4

    # NumPy: crossent's dense value_and_grad on the logits, then the two products
    dense_step = crossent.value_and_grad(crossent.cross_entropy)
    step = crossent.value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1))

    def numpy_dense() -> Any:
        loss, g = dense_step(hidden @ weight.T, target)
        return loss, g @ weight, g.T @ hidden

    yield Case(
        "linear",
        "NumPy value_and_grad vs dense",
        "value_and_grad(crossent.linear_cross_entropy, argnums=(0, 1))",
        "value_and_grad(crossent.cross_entropy) on hidden @ weight.T",
        lambda: step(hidden, weight, target),
        numpy_dense,
        inputs,
        gradients,
        memory=lambda: _both_memories("numpy", shape),
        reference_bytes=logits_bytes,
    )

    h, w, t = torch.from_numpy(hidden), torch.from_numpy(weight), torch.from_numpy(target)
    leaves = (h.clone().requires_grad_(True), w.clone().requires_grad_(True))

    def torch_step(loss_of: Callable[[Any, Any], Any]) -> Any:
        for leaf in leaves:
            leaf.grad = None
        loss = loss_of(*leaves)
        loss.backward()
        return loss

    yield Case(
        "linear",
        "torch forward+backward vs dense",
        "crossent.linear_cross_entropy(...).backward()",
        "F.cross_entropy(F.linear(...)).backward()",
        lambda: torch_step(lambda a, b: crossent.linear_cross_entropy(a, b, t)),
        lambda: torch_step(lambda a, b: F.cross_entropy(F.linear(a, b), t)),
        inputs,
        gradients,
        memory=lambda: _both_memories("torch", shape),
        reference_bytes=logits_bytes,
    )

    jh, jw, jt = jnp.asarray(hidden), jnp.asarray(weight), jnp.asarray(target, dtype=jnp.int32)

    def ours_jax(a: Any, b: Any) -> Any:
        return crossent.linear_cross_entropy(a, b, jt)

    def optax_jax(a: Any, b: Any) -> Any:
        return optax.softmax_cross_entropy_with_integer_labels(a @ b.T, jt).mean()

    ours_vg = jax.jit(jax.value_and_grad(ours_jax, argnums=(0, 1)))
    peer_vg = jax.jit(jax.value_and_grad(optax_jax, argnums=(0, 1)))

    def xla_temporaries() -> tuple[int | None, int | None]:
        out = []
        for f in (ours_vg, peer_vg):
            analysis = f.lower(jh, jw).compile().memory_analysis()
            out.append(None if analysis is None else int(analysis.temp_size_in_bytes))
        return out[0], out[1]

    yield Case(
        "linear",
        "JAX jax.value_and_grad (jit) vs optax dense",
        "jax.value_and_grad(crossent.linear_cross_entropy)",
        "jax.value_and_grad(optax.softmax_cross_entropy_with_integer_labels(h @ w.T))",
        lambda: ours_vg(jh, jw),
        lambda: peer_vg(jh, jw),
        inputs,
        gradients,
        memory=xla_temporaries,
        reference_bytes=logits_bytes,
    )


def _both_memories(backend: str, shape: tuple[int, int, int]) -> tuple[int | None, int | None]:
    return _subprocess_memory(backend, "ours", shape), _subprocess_memory(backend, "peer", shape)


def _subprocess_memory(backend: str, side: str, shape: tuple[int, int, int]) -> int | None:
    """Peak extra bytes of one call in a fresh process (``linear_memory.py``)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("linear_memory.py")
    shape_text = "x".join(str(s) for s in shape)
    done = subprocess.run(
        [sys.executable, str(script), backend, side, shape_text],
        capture_output=True,
        text=True,
        check=True,
    )
    value = json.loads(done.stdout.strip().splitlines()[-1])["extra_bytes"]
    return None if value is None else int(value)


def torch_linear_suite(shape: tuple[int, int, int], dtype: str) -> Iterator[Case]:
    """crossent's ``linear_cross_entropy`` forward and backward on torch, against torch 2.13's
    own ``F.linear_cross_entropy``, chunked (``options=LinearCrossEntropyOptions()``) and on
    its reference path (``options=None``, the dense logits). Memory: peak extra bytes in a
    fresh process each (``linear_memory.py``)."""
    import torch
    import torch.nn.functional as F

    hidden, weight, target = _linear_data(shape)
    n, _, v = shape
    torch_dtype = getattr(torch, dtype)
    h = torch.from_numpy(hidden).to(torch_dtype)
    w = torch.from_numpy(weight).to(torch_dtype)
    t = torch.from_numpy(target)
    leaves = (h.clone().requires_grad_(True), w.clone().requires_grad_(True))
    inputs = h.nbytes + w.nbytes + t.nbytes
    gradients = h.nbytes + w.nbytes

    def step(loss_of: Callable[[Any, Any], Any]) -> Any:
        for leaf in leaves:
            leaf.grad = None
        loss = loss_of(*leaves)
        loss.backward()
        return loss

    def ours() -> Any:
        return step(lambda a, b: crossent.linear_cross_entropy(a, b, t))

    chunked = torch.nn.LinearCrossEntropyOptions()
    for label, options, side, written in (
        ("chunked", chunked, "chunked", "LinearCrossEntropyOptions()"),
        ("reference path", None, "reference", "None"),
    ):
        yield Case(
            "linear",
            f"torch fwd+bwd vs F.linear_cross_entropy {label}",
            "crossent.linear_cross_entropy(...).backward()",
            f"F.linear_cross_entropy(..., options={written}).backward()",
            ours,
            lambda o=options: step(lambda a, b: F.linear_cross_entropy(a, b, t, options=o)),
            inputs,
            gradients,
            memory=lambda s=side: (
                _subprocess_memory(f"torch:{dtype}", "ours", shape),
                _subprocess_memory(f"torch:{dtype}", s, shape),
            ),
            reference_bytes=n * v * 4,
        )


#: The tiny Llama of the transformers suite: (vocabulary, hidden size, layers), and the batch.
LLAMA = {"vocab_size": 32000, "hidden_size": 256, "intermediate_size": 512, "layers": 2}
LLAMA_BATCH = (4, 256)


def transformers_suite() -> Iterator[Case]:
    """A training step (forward, backward) of a tiny Llama, patched by
    ``crossent.transformers.patch`` against the stock model, on the CPU."""
    import torch
    import transformers

    from crossent.transformers import patch

    config = transformers.LlamaConfig(
        vocab_size=LLAMA["vocab_size"],
        hidden_size=LLAMA["hidden_size"],
        intermediate_size=LLAMA["intermediate_size"],
        num_hidden_layers=LLAMA["layers"],
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    torch.manual_seed(0)
    stock = transformers.LlamaForCausalLM(config).train()
    patched = patch(transformers.LlamaForCausalLM(config).train())
    patched.load_state_dict(stock.state_dict())
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, config.vocab_size, LLAMA_BATCH, generator=g)

    def step(model: Any) -> Any:
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        return loss

    parameters = sum(p.nbytes for p in stock.parameters())
    yield Case(
        "hf",
        "Llama training step, patched vs stock",
        "crossent.transformers.patch(model)(..., labels=...).loss.backward()",
        "model(..., labels=...).loss.backward()",
        lambda: step(patched),
        lambda: step(stock),
        parameters + input_ids.nbytes,
        parameters,  # the gradients
        reference_bytes=LLAMA_BATCH[0] * LLAMA_BATCH[1] * config.vocab_size * 4,
    )
